//! Privacy and tenant isolation: sealed payloads, key rotation, and what one network can learn
//! about another (nothing).

use case_intake::admin::failed::{self, Filter};
use case_intake::domain::error::ErrorCode;
use case_intake::intake::window::Outcome;
use case_intake::store::crypto::{Purpose, Vault};
use case_intake_harness::support::TestEnv;
use case_intake_harness::testkit::{
    created, envelope_from, event_of, failed, foreign_and_missing, list_failed, process_as,
    process_seed, seed_envelope, seed_of, with,
};
use secrecy::SecretString;
use serde_json::json;
use sqlx::Row;

#[tokio::test]
async fn failed_payloads_are_sealed_and_keys_rotate() {
    let mut env = TestEnv::new().await;
    let bad = with(seed_of(&env.a), "last_name", json!(null));
    env.process(&[
        envelope_from(&env, "sealed-1", &env.a, &bad),
        seed_envelope(&env, "sealed-2", &env.a),
    ])
    .await;
    let row = sqlx::query("SELECT payload_sealed, payload_key_id FROM failed_intakes")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let sealed: Vec<u8> = row.get(0);
    let key_id: String = row.get(1);
    assert_eq!(key_id, "dev");
    assert!(!sealed.windows(9).any(|w| w == b"111223333"));
    assert!(
        !sealed
            .windows(5)
            .any(|w| w == b"Smith".as_slice() || w == b"Adams")
    );

    // A new key becomes active; the old one stays configured until rotation is done.
    env.settings
        .crypto
        .keys
        .insert("2027".into(), SecretString::from("11".repeat(32)));
    env.settings.crypto.active_key = "2027".into();
    let vault = Vault::from_settings(&env.settings.crypto).unwrap();
    let rotated = case_intake::admin::rotate::rotate(&env.pool, &vault, |_| {})
        .await
        .unwrap();
    assert_eq!((rotated.ssns, rotated.payloads), (1, 1));
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT ss_number_key_id FROM cases UNION ALL SELECT payload_key_id FROM failed_intakes",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(keys, ["2027", "2027"]);
    // Now readable with the new key alone.
    env.settings.crypto.keys.remove("dev");
    let only_new = Vault::from_settings(&env.settings.crypto).unwrap();
    let row = sqlx::query("SELECT ss_number_sealed, ss_number_key_id FROM cases")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let ssn = only_new
        .open(
            Purpose::Ssn,
            &row.get::<String, _>(1),
            &row.get::<Vec<u8>, _>(0),
        )
        .unwrap();
    assert_eq!(ssn, b"111223333");
    let shown = failed::show(&env.pool, &only_new, "sealed-1", None)
        .await
        .unwrap();
    assert_eq!(shown[0].payload["ss_number"], "*****3333");
    // A second rotation has nothing left to do.
    let again = case_intake::admin::rotate::rotate(&env.pool, &only_new, |_| {})
        .await
        .unwrap();
    assert_eq!((again.ssns, again.payloads), (0, 0));
    env.cleanup().await;
}

#[tokio::test]
async fn network_a_can_learn_nothing_about_network_b() {
    let env = TestEnv::new().await;
    // B has a case, a household and counties; A tries to reach them.
    let (_, b_household) = created(&process_seed(&env, "b-key", &env.b).await);
    let [into_b, nowhere] = foreign_and_missing(&env, ["a-1", "a-2"], &env.a, &env.b, b_household);
    // The same key as B's: a separate intake, no collision, no reuse error.
    let same_key = seed_envelope(&env, "b-key", &env.a);
    let out = env.process(&[into_b, nowhere, same_key]).await;
    // Same error for B's county and household as for ids that exist nowhere.
    let a1 = event_of(&env, "a-1", env.a.network_id).await;
    let a2 = event_of(&env, "a-2", env.a.network_id).await;
    assert_eq!(a1["data"]["error"], a2["data"]["error"]);
    assert!(matches!(out[2], Outcome::Created { .. }), "{out:?}");
    // B's household was not touched.
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM cases WHERE household_id = $1")
        .bind(b_household)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(members, 1);
    // B's listing shows B's failures only, and A's events never name B's data.
    let bad_b = with(seed_of(&env.b), "email", json!("nope"));
    process_as(&env, "b-bad", &env.b, &bad_b).await;
    let of_b = Filter {
        network: Some(env.b.network_id),
        limit: 100,
        ..Filter::default()
    };
    let b_failed = list_failed(&env, &of_b).await;
    let keys: Vec<_> = b_failed
        .rows
        .iter()
        .filter_map(|f| f.message_key.clone())
        .collect();
    assert_eq!(keys, ["b-bad"]);
    let a_events: Vec<String> =
        sqlx::query_scalar("SELECT event::text FROM intake_outcomes WHERE network_id = $1")
            .bind(env.a.network_id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for ev in &a_events {
        assert!(!ev.contains("Travis") && !ev.contains("Bexar"), "{ev}");
        assert!(
            !ev.contains(&format!("\"household_id\":{b_household}")),
            "{ev}"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_token_of_one_network_never_authenticates_as_another() {
    let env = TestEnv::new().await;
    // B's token with A's county: B's caller is used, so A's county is "not of your network".
    let out = process_as(&env, "x", &env.b, &seed_of(&env.a)).await;
    assert_eq!(failed(&out), ErrorCode::ValidationFailed);
    let network: Option<i64> =
        sqlx::query_scalar("SELECT network_id FROM failed_intakes WHERE message_key = 'x'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(network, Some(env.b.network_id));
    env.cleanup().await;
}
