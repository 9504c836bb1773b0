//! Possible-duplicate clients at intake: each rule by name, placeholders and normalization,
//! the three policies (in a window and through the broker), the override header, isolation
//! between networks and for private cases, households, and concurrency (one person twice in
//! one window and in two windows at once).

use std::collections::BTreeSet;

use case_intake::admin::{status, tenancy};
use case_intake::domain::error::{ErrorCode, OVERRIDE_HEADER};
use case_intake::intake::envelope::Envelope;
use case_intake::intake::window::Outcome;
use case_intake_harness::support::{Broker, TestEnv, seed_body, token_header};
use case_intake_harness::testkit::{
    broker_and_worker, created, envelope_from, event_of, failed, process_as, to_bytes,
};
use case_intake_harness::wait::{SETTLE, until};
use serde_json::{Value, json};
use sqlx::Connection;

/// A person: the seed body with these names, date of birth, SSN and street (`None` removes).
fn person(
    county: i64,
    first: &str,
    last: &str,
    dob: Option<&str>,
    ssn: Option<&str>,
    street: Option<&str>,
) -> Value {
    let mut body = seed_body(county);
    body["first_name"] = json!(first);
    body["last_name"] = json!(last);
    for (field, value) in [
        ("date_of_birth", dob),
        ("ss_number", ssn),
        ("street_address", street),
    ] {
        match value {
            Some(v) => body[field] = json!(v),
            None => {
                body.as_object_mut().unwrap().remove(field);
            }
        }
    }
    // Mailing address and nickname are not matched on; keep them from confusing a reader.
    body.as_object_mut().unwrap().remove("nickname");
    body
}

async fn set_policy(env: &TestEnv, network: i64, policy: &str) {
    sqlx::query("UPDATE networks SET duplicate_policy = $1 WHERE id = $2")
        .bind(policy)
        .bind(network)
        .execute(&env.pool)
        .await
        .unwrap();
}

/// The candidates a `case.created` (or failure) event names: (case id, rule names).
fn candidates_of(list: &Value) -> Vec<(i64, Vec<String>)> {
    list.as_array()
        .unwrap_or_else(|| panic!("a candidate list: {list}"))
        .iter()
        .map(|c| {
            let rules = c["rules"].as_array().unwrap();
            let score = c["score"].as_f64().unwrap();
            assert!(score > 0.0 && score <= 1.0, "{c}");
            // Ids, rule names and a score: nothing of the other client.
            let keys: BTreeSet<&str> = c.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            assert_eq!(keys, BTreeSet::from(["case_id", "rules", "score"]), "{c}");
            (
                c["case_id"].as_i64().unwrap(),
                rules
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

async fn flagged_in_event(env: &TestEnv, key: &str, network: i64) -> Vec<(i64, Vec<String>)> {
    candidates_of(&event_of(env, key, network).await["data"]["possible_duplicates"])
}

fn rules(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn cases_named(env: &TestEnv, network: i64, last: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM cases WHERE network_id = $1 AND last_name = $2")
        .bind(network)
        .bind(last)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn each_rule_is_reported_by_name_and_normalization_folds_what_forms_vary() {
    let env = TestEnv::new().await;
    let a = &env.a;
    let c = a.county_ids[0];
    let base = person(
        c,
        "Robert",
        "Muñoz-Díaz",
        Some("1961-04-09"),
        Some("212-33-4455"),
        Some("18 North Elm Street"),
    );
    let (first, _) = created(&process_as(&env, "base", a, &base).await);
    assert_eq!(flagged_in_event(&env, "base", a.network_id).await, vec![]);

    let cases = [
        // The SSN alone: another name, another birthday.
        (
            "ssn",
            person(
                c,
                "Zed",
                "Other",
                Some("1999-02-02"),
                Some("212334455"),
                None,
            ),
            rules(&["ssn"]),
        ),
        // A nickname, case, accents, punctuation and spacing folded.
        (
            "nickname",
            person(c, "BOB", "munoz diaz", Some("1961-04-09"), None, None),
            rules(&["name_dob"]),
        ),
        // First and last name swapped.
        (
            "swapped",
            person(c, "Muñoz Díaz", "Robert", Some("1961-04-09"), None, None),
            rules(&["name_dob"]),
        ),
        // Another first name at the same address, written the short way.
        (
            "address",
            person(
                c,
                "Maria",
                "Munoz-Diaz",
                Some("1961-04-09"),
                None,
                Some("18 N. Elm St"),
            ),
            rules(&["last_name_dob_address"]),
        ),
        // Everything at once.
        (
            "all",
            person(
                c,
                "Rob",
                "Munoz Diaz",
                Some("1961-04-09"),
                Some("212334455"),
                Some("18 n elm st."),
            ),
            rules(&["ssn", "name_dob", "last_name_dob_address"]),
        ),
    ];
    for (key, body, expected) in cases {
        created(&process_as(&env, key, a, &body).await);
        let flagged = flagged_in_event(&env, key, a.network_id).await;
        // Earlier cases of this test may match too; the base case is always there first.
        let base_match = flagged.iter().find(|(id, _)| *id == first);
        assert_eq!(
            base_match.map(|(_, r)| r.clone()),
            Some(expected),
            "{key}: {flagged:?}"
        );
    }

    // Near misses are not matches: another birthday, another house number, another name.
    let misses = [
        person(c, "Robert", "Munoz-Diaz", Some("1961-04-10"), None, None),
        person(
            c,
            "Roberta",
            "Munoz-Diaz",
            Some("1962-04-09"),
            None,
            Some("19 N Elm St"),
        ),
        person(c, "Robert", "Munoz", Some("1961-04-09"), None, None),
    ];
    for (n, body) in misses.iter().enumerate() {
        let key = format!("miss-{n}");
        created(&process_as(&env, &key, a, body).await);
        let flagged = flagged_in_event(&env, &key, a.network_id).await;
        assert!(
            flagged.iter().all(|(id, _)| *id != first),
            "{key}: {flagged:?}"
        );
    }
    // Each flagged pair is recorded for an administrator.
    let pairs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM possible_duplicates WHERE candidate_case_id = $1 AND NOT overridden",
    )
    .bind(first)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(pairs, 5);
    env.cleanup().await;
}

#[tokio::test]
async fn placeholder_ssns_and_defaulted_birthdays_never_match() {
    let env = TestEnv::new().await;
    let a = &env.a;
    let c = a.county_ids[0];
    // Different people sharing a placeholder SSN.
    for (n, ssn) in ["111111111", "123456789"].iter().enumerate() {
        let one = person(
            c,
            "Ann",
            &format!("First{n}"),
            Some("1970-05-05"),
            Some(ssn),
            None,
        );
        let two = person(
            c,
            "Ben",
            &format!("Second{n}"),
            Some("1980-06-06"),
            Some(ssn),
            None,
        );
        created(&process_as(&env, &format!("p{n}-1"), a, &one).await);
        created(&process_as(&env, &format!("p{n}-2"), a, &two).await);
        assert_eq!(
            flagged_in_event(&env, &format!("p{n}-2"), a.network_id).await,
            vec![]
        );
    }
    // The same name with a defaulted date of birth, at the same address.
    for (n, dob) in ["1900-01-01", "1901-01-01"].iter().enumerate() {
        let body = person(c, "Carl", "Defaulted", Some(dob), None, Some("1 Main St"));
        created(&process_as(&env, &format!("d{n}"), a, &body).await);
        assert_eq!(
            flagged_in_event(&env, &format!("d{n}"), a.network_id).await,
            vec![]
        );
    }
    // Without a date of birth the name rules cannot apply.
    for n in 0..2 {
        let body = person(c, "Dora", "Nobirth", None, None, Some("2 Main St"));
        created(&process_as(&env, &format!("n{n}"), a, &body).await);
        assert_eq!(
            flagged_in_event(&env, &format!("n{n}"), a.network_id).await,
            vec![]
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn candidates_stay_in_the_network_and_private_cases_in_their_group() {
    let env = TestEnv::new().await;
    let (a, b) = (&env.a, &env.b);
    let same = |county| {
        person(
            county,
            "Eve",
            "Shared",
            Some("1977-07-07"),
            Some("301-22-4444"),
            None,
        )
    };
    let (in_a, _) = created(&process_as(&env, "a-1", a, &same(a.county_ids[0])).await);
    // The same person in network B: B knows nothing of A's case.
    created(&process_as(&env, "b-1", b, &same(b.county_ids[0])).await);
    assert_eq!(flagged_in_event(&env, "b-1", b.network_id).await, vec![]);

    // A private case of A's first group, and an agent of another group of A.
    let private = {
        let mut p = person(
            a.county_ids[0],
            "Fay",
            "Hidden",
            Some("1966-06-06"),
            Some("302-33-5555"),
            None,
        );
        p["private"] = json!(true);
        p
    };
    let (hidden, _) = created(&process_as(&env, "a-private", a, &private).await);
    let other = tenancy::create_agent(&env.pool, a.network_id, "other agent", "Other agency")
        .await
        .unwrap();
    let key = tenancy::create_api_key(&env.pool, other.agent_id, "other")
        .await
        .unwrap();
    let same_private = |key: &str, token: &str| {
        let mut e = env.envelope(key, Some(token), &private);
        e.correlation_id = None;
        e
    };
    // Another group does not see the private case (nor learns it exists)...
    let out = env.process(&[same_private("g2-1", &key.token)]).await;
    created(&out[0]);
    assert_eq!(flagged_in_event(&env, "g2-1", a.network_id).await, vec![]);
    // ...but does see the ordinary case of the network.
    let out = env
        .process(&[env.envelope("g2-2", Some(&key.token), &same(a.county_ids[0]))])
        .await;
    created(&out[0]);
    let flagged = flagged_in_event(&env, "g2-2", a.network_id).await;
    assert!(flagged.iter().any(|(id, _)| *id == in_a), "{flagged:?}");
    // The private case's own group does.
    created(&process_as(&env, "g1-1", a, &private).await);
    let flagged = flagged_in_event(&env, "g1-1", a.network_id).await;
    assert!(flagged.iter().any(|(id, _)| *id == hidden), "{flagged:?}");

    // With `reject`, a third group's intake of the private person is created, not refused:
    // both earlier cases of her are private to other groups.
    set_policy(&env, a.network_id, "reject").await;
    let third = tenancy::create_agent(&env.pool, a.network_id, "third agent", "Third agency")
        .await
        .unwrap();
    let third = tenancy::create_api_key(&env.pool, third.agent_id, "third")
        .await
        .unwrap();
    let out = env.process(&[same_private("g3-1", &third.token)]).await;
    created(&out[0]);
    // Her own group's next intake of her is refused: its private case is a candidate.
    let out = process_as(&env, "g1-2", a, &private).await;
    assert_eq!(failed(&out), ErrorCode::PossibleDuplicate);
    env.cleanup().await;
}

#[tokio::test]
async fn off_neither_matches_nor_says_anything() {
    let env = TestEnv::new().await;
    let a = &env.a;
    set_policy(&env, a.network_id, "off").await;
    created(&process_as(&env, "o-1", a, &seed_body(a.county_ids[0])).await);
    created(&process_as(&env, "o-2", a, &seed_body(a.county_ids[0])).await);
    let ev = event_of(&env, "o-2", a.network_id).await;
    assert!(ev["data"].get("possible_duplicates").is_none(), "{ev}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM possible_duplicates")
            .await,
        0
    );
    // The keys are stored all the same, so that turning matching on later finds these cases.
    let keyed = env
        .scalar_i64(
            "SELECT count(*) FROM cases WHERE match_name IS NOT NULL AND match_address IS NOT NULL",
        )
        .await;
    assert_eq!(keyed, 2);
    env.cleanup().await;
}

#[tokio::test]
async fn one_person_twice_in_one_window_gives_one_case_under_reject_and_link() {
    let env = TestEnv::new().await;
    let a = &env.a;
    let body = seed_body(a.county_ids[0]);

    set_policy(&env, a.network_id, "reject").await;
    let out = env
        .process(&[
            envelope_from(&env, "r-1", a, &body),
            envelope_from(&env, "r-2", a, &body),
        ])
        .await;
    let (first, _) = created(&out[0]);
    assert_eq!(failed(&out[1]), ErrorCode::PossibleDuplicate);
    let err = &event_of(&env, "r-2", a.network_id).await["data"]["error"];
    assert_eq!(err["code"], "possible_duplicate");
    let named = candidates_of(&err["candidates"]);
    assert_eq!(named[0].0, first);
    assert_eq!(
        named[0].1,
        rules(&["ssn", "name_dob", "last_name_dob_address"])
    );

    set_policy(&env, a.network_id, "link").await;
    let body2 = person(
        a.county_ids[0],
        "Gus",
        "Linked",
        Some("1955-05-05"),
        None,
        None,
    );
    let out = env
        .process(&[
            envelope_from(&env, "l-1", a, &body2),
            envelope_from(&env, "l-2", a, &body2),
        ])
        .await;
    let (made, household) = created(&out[0]);
    assert_eq!(
        out[1],
        Outcome::Matched {
            case_id: made,
            household_id: household,
            event_id: out[1].event_id()
        }
    );
    assert_eq!(cases_named(&env, a.network_id, "Linked").await, 1);
    env.cleanup().await;
}

/// Runs `one` and `two` as two windows at once, and makes sure they overlap: the test holds
/// `cases` locked, so the window that takes the person's match lock first stops at its
/// candidate lookup, and lets go only once the other window waits for that match lock. Each
/// window's transaction is then open while the other's is.
async fn two_windows_at_once(
    env: &TestEnv,
    one: &[Envelope],
    two: &[Envelope],
) -> (Vec<Outcome>, Vec<Outcome>) {
    let mut held = sqlx::PgConnection::connect(&format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        env.db_name
    ))
    .await
    .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE cases IN ACCESS EXCLUSIVE MODE")
        .execute(&mut held)
        .await
        .unwrap();
    let release = async {
        until(
            "one window at the cases lock and the other at the match lock",
            SETTLE,
            || async {
                let (relation, advisory): (i64, i64) = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE wait_event = 'relation'),
                            count(*) FILTER (WHERE wait_event = 'advisory')
                       FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&env.pool)
                .await
                .unwrap();
                relation == 1 && advisory == 1
            },
        )
        .await;
        sqlx::raw_sql("COMMIT").execute(&mut held).await.unwrap();
    };
    // A window whose lock wait outlasts `lock_timeout` runs again, as the consumer's would.
    let (x, y, ()) = tokio::join!(
        env.process_retrying(one),
        env.process_retrying(two),
        release
    );
    (x, y)
}

#[tokio::test]
async fn one_person_in_two_windows_at_once_gives_one_case() {
    let env = TestEnv::new().await;
    let a = &env.a;
    for policy in ["reject", "link"] {
        set_policy(&env, a.network_id, policy).await;
        for round in 0..8 {
            let last = format!("Racer{policy}{round}");
            let body = person(
                a.county_ids[0],
                "Hal",
                &last,
                Some("1988-08-08"),
                None,
                None,
            );
            let one = [envelope_from(&env, &format!("{last}-1"), a, &body)];
            let two = [envelope_from(&env, &format!("{last}-2"), a, &body)];
            let (x, y) = two_windows_at_once(&env, &one, &two).await;
            let outcomes = [x[0].clone(), y[0].clone()];
            let made = outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Created { .. }))
                .count();
            assert_eq!(made, 1, "{policy} round {round}: {outcomes:?}");
            assert_eq!(
                cases_named(&env, a.network_id, &last).await,
                1,
                "{outcomes:?}"
            );
            let other = outcomes
                .iter()
                .find(|o| !matches!(o, Outcome::Created { .. }))
                .unwrap();
            match policy {
                "reject" => assert_eq!(failed(other), ErrorCode::PossibleDuplicate),
                _ => assert!(matches!(other, Outcome::Matched { .. }), "{other:?}"),
            }
        }
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_household_keeps_its_twins_and_a_link_keeps_the_existing_case_where_it_is() {
    let env = TestEnv::new().await;
    let a = &env.a;
    let c = a.county_ids[0];
    set_policy(&env, a.network_id, "link").await;
    let street = Some("40 Oak Avenue");
    let mut head = person(c, "Ida", "Twin", Some("2010-03-03"), None, street);
    head["head_of_household"] = json!(true);
    let (ida, household) = created(&process_as(&env, "t-1", a, &head).await);
    // Her twin joins the household: same last name, birthday and address, another first name.
    let mut twin = person(
        c,
        "Ivy",
        "Twin",
        Some("2010-03-03"),
        None,
        Some("40 Oak Ave"),
    );
    twin["household"] = json!(household);
    let (ivy, in_household) = created(&process_as(&env, "t-2", a, &twin).await);
    assert_eq!(in_household, household);
    assert_ne!(ivy, ida);
    // Ida added again to her own household is Ida.
    let mut again = head.clone();
    again["household"] = json!(household);
    again["head_of_household"] = json!(false);
    let out = process_as(&env, "t-3", a, &again).await;
    assert!(
        matches!(out, Outcome::Matched { case_id, household_id, .. } if case_id == ida && household_id == household),
        "{out:?}"
    );
    // Ida named in another household is linked where she is: no case moves.
    let mut elsewhere = person(c, "Ida", "Twin", Some("2010-03-03"), None, None);
    elsewhere["head_of_household"] = json!(true);
    let out = process_as(&env, "t-4", a, &elsewhere).await;
    assert!(
        matches!(out, Outcome::Matched { case_id, .. } if case_id == ida),
        "{out:?}"
    );
    let ev = event_of(&env, "t-4", a.network_id).await;
    assert_eq!(ev["type"], "case.matched");
    assert_eq!(ev["data"]["case_id"], ida);
    assert_eq!(ev["data"]["household_id"], household);
    assert_eq!(cases_named(&env, a.network_id, "Twin").await, 2);
    // The key's status says it was matched, with the existing case.
    let shown = status::for_operator(&env.pool, "t-4", Some(a.network_id))
        .await
        .unwrap();
    let shown = serde_json::to_value(&shown).unwrap();
    assert_eq!(shown[0]["status"], "matched", "{shown}");
    assert_eq!(shown[0]["case_id"], ida);
    env.assert_household_invariant().await;
    env.cleanup().await;
}

/// Publishes `body` under `key` with `token`, and the override header when `over`.
async fn publish(broker: &Broker, token: &str, key: &str, body: Value, over: bool) {
    let (h, v) = token_header(token);
    let mut headers = vec![(h, v.as_str())];
    if over {
        headers.push((OVERRIDE_HEADER, "create"));
    }
    broker
        .publish(Some(key), &headers, None, &to_bytes(&body))
        .await;
}

#[tokio::test]
async fn every_policy_through_the_broker_and_the_override_header() {
    let env = TestEnv::new().await;
    let a = &env.a;
    let (mut broker, worker) = broker_and_worker(&env).await;
    let (h, v) = token_header(&a.token);
    let body = |last: &str| person(a.county_ids[0], "Jo", last, Some("1944-04-04"), None, None);

    // flag: created, the event names the candidate.
    publish(&broker, &a.token, "f-1", body("Flagged"), false).await;
    let (_, _, first) = broker.next_event_for("f-1").await;
    publish(&broker, &a.token, "f-2", body("Flagged"), false).await;
    let (rk, _, second) = broker.next_event_for("f-2").await;
    assert_eq!(rk, "case.created");
    let named = candidates_of(&second["data"]["possible_duplicates"]);
    assert_eq!(
        named,
        vec![(first["data"]["id"].as_i64().unwrap(), rules(&["name_dob"]))]
    );

    // reject: fails with the candidates; the same body with the override creates the case.
    set_policy(&env, a.network_id, "reject").await;
    publish(&broker, &a.token, "r-1", body("Flagged"), false).await;
    let (rk, _, refused) = broker.next_event_for("r-1").await;
    assert_eq!(rk, "case.failed");
    assert_eq!(refused["data"]["error"]["code"], "possible_duplicate");
    assert_eq!(
        candidates_of(&refused["data"]["error"]["candidates"]).len(),
        2
    );
    // A redelivery without the header answers the recorded failure.
    publish(&broker, &a.token, "r-1", body("Flagged"), false).await;
    let (_, _, again) = broker.next_event_for("r-1").await;
    assert_eq!(again["id"], refused["id"]);
    publish(&broker, &a.token, "r-1", body("Flagged"), true).await;
    let (rk, _, overridden) = broker.next_event_for("r-1").await;
    assert_eq!(rk, "case.created", "{overridden}");
    assert_eq!(
        overridden["data"]["replay"]["supersedes_event_id"],
        refused["id"]
    );
    assert_eq!(
        candidates_of(&overridden["data"]["possible_duplicates"]).len(),
        2
    );
    let (rk, _, resolved) = broker.next_event_for("r-1").await;
    assert_eq!(
        (rk.as_str(), &resolved["data"]["resolution"]),
        ("case.intake_resolved", &json!("resent"))
    );
    let marked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM possible_duplicates WHERE message_key = 'r-1' AND overridden",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(marked, 2);
    // A header with another value is refused, not ignored.
    broker
        .publish(
            Some("r-2"),
            &[(h, &v), (OVERRIDE_HEADER, "yes")],
            None,
            &to_bytes(&body("Flagged")),
        )
        .await;
    let (_, _, bad) = broker.next_event_for("r-2").await;
    assert_eq!(bad["data"]["error"]["code"], "invalid_envelope");

    // link: no new case; the outcome is the oldest matching case.
    set_policy(&env, a.network_id, "link").await;
    let before = cases_named(&env, a.network_id, "Flagged").await;
    publish(&broker, &a.token, "l-1", body("Flagged"), false).await;
    let (rk, _, linked) = broker.next_event_for("l-1").await;
    assert_eq!(rk, "case.matched");
    assert_eq!(linked["type"], "case.matched");
    assert_eq!(linked["data"]["case_id"], first["data"]["id"]);
    assert_eq!(
        linked["data"]["household_id"],
        first["data"]["household_id"]
    );
    assert_eq!(linked["data"]["rules"], json!(["name_dob"]));
    assert_eq!(cases_named(&env, a.network_id, "Flagged").await, before);
    // Its redelivery answers the same event; the override under a new key creates.
    publish(&broker, &a.token, "l-1", body("Flagged"), false).await;
    let (_, _, again) = broker.next_event_for("l-1").await;
    assert_eq!(again["id"], linked["id"]);
    publish(&broker, &a.token, "l-2", body("Flagged"), true).await;
    let (rk, _, _) = broker.next_event_for("l-2").await;
    assert_eq!(rk, "case.created");
    assert_eq!(cases_named(&env, a.network_id, "Flagged").await, before + 1);
    worker.stop().await;
    env.cleanup().await;
}
