//! The operator commands as an operator runs them: the `case-intake` binary against a private
//! database of the real PostgreSQL. Tenancy commands (networks, counties, agents, API keys)
//! with their `--json` output and their messages for duplicates and unknown ids; and how
//! commands other than `run`/`migrate` open the database: a missing one is refused and not
//! created, a schema behind the binary is refused, a server that never answers times out.

use std::process::Output;

use case_intake::store::auth::{caller_of, hash_token};
use case_intake_harness::support::TestEnv;
use secrecy::ExposeSecret;
use serde_json::Value;

/// Runs the binary against the database of `url`.
async fn run_with(url: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(crate::cli::BIN);
    cmd.args(args)
        .env("CASE_INTAKE__DATABASE__URL", url)
        .env("CASE_INTAKE__LOG__FORMAT", "text")
        .env_remove("CASE_INTAKE_CONFIG")
        .env_remove("RUST_LOG");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn run(env: &TestEnv, args: &[&str]) -> Output {
    run_with(env.settings.database.url.expose_secret(), &[], args).await
}

/// Runs a command that must succeed and parses its `--json` output.
async fn json(env: &TestEnv, args: &[&str]) -> Value {
    let out = run(env, args).await;
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command that must fail and returns what it said.
async fn refused(env: &TestEnv, args: &[&str]) -> String {
    let out = run(env, args).await;
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = stderr(&out);
    // The operator sees the meaning, not the database's words.
    for raw in ["violates", "duplicate key", "constraint", "SQLSTATE"] {
        assert!(
            !err.contains(raw),
            "{args:?} printed a raw SQL error: {err}"
        );
    }
    err
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn id(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

async fn authenticates(env: &TestEnv, token: &str) -> bool {
    caller_of(&env.pool, hash_token(token))
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn networks_and_counties_are_created_listed_and_duplicates_refused() {
    let env = TestEnv::new().await;
    let c = json(&env, &["network", "create", "network C", "--json"]).await;
    let net = id(&c, "network_id").to_string();
    assert!(id(&c, "group_id") > 0);

    let list = json(&env, &["network", "list", "--json"]).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["network A", "network B", "network C"]);
    assert_eq!(list[0]["counties"], 2);
    assert_eq!(list[0]["usable_keys"], 1);
    let human = run(&env, &["network", "list"]).await;
    assert!(String::from_utf8_lossy(&human.stdout).contains("network C"));

    let err = refused(&env, &["network", "create", "network A"]).await;
    assert!(
        err.contains(r#"a network named "network A" already exists"#),
        "{err}"
    );
    let err = refused(&env, &["provision", "--network", "network A"]).await;
    assert!(
        err.contains(r#"a network named "network A" already exists"#),
        "{err}"
    );

    let k = json(
        &env,
        &["county", "add", "--network", &net, "Kings", "--json"],
    )
    .await;
    assert_eq!(k["name"], "Kings");
    json(
        &env,
        &[
            "county",
            "add",
            "--network",
            &net,
            "Kings",
            "--state",
            "NY",
            "--json",
        ],
    )
    .await;
    let err = refused(&env, &["county", "add", "--network", &net, "Kings"]).await;
    assert!(err.contains(r#"already has a county "Kings""#), "{err}");
    let err = refused(&env, &["county", "add", "--network", "999999", "Kings"]).await;
    assert!(err.contains("no network with id 999999"), "{err}");
    let counties = json(&env, &["county", "list", "--network", &net, "--json"]).await;
    assert_eq!(counties.as_array().unwrap().len(), 2);
    assert_eq!(counties[0]["id"], k["county_id"]);
    let err = refused(&env, &["county", "list", "--network", "999999"]).await;
    assert!(err.contains("no network with id 999999"), "{err}");
    env.cleanup().await;
}

#[tokio::test]
async fn agents_and_keys_control_who_authenticates() {
    let env = TestEnv::new().await;
    let net = env.a.network_id.to_string();
    let a = json(
        &env,
        &["agent", "create", "--network", &net, "partner", "--json"],
    )
    .await;
    let agent = id(&a, "agent_id").to_string();
    let err = refused(&env, &["agent", "create", "--network", &net, "partner"]).await;
    assert!(
        err.contains(r#"already has an agent named "partner""#),
        "{err}"
    );
    let err = refused(&env, &["agent", "create", "--network", "999999", "x"]).await;
    assert!(err.contains("no network with id 999999"), "{err}");
    let agents = json(&env, &["agent", "list", "--network", &net, "--json"]).await;
    assert_eq!(agents.as_array().unwrap().len(), 2);

    let k = json(
        &env,
        &[
            "key", "create", "--agent", &agent, "--label", "l1", "--json",
        ],
    )
    .await;
    let token = k["token"].as_str().unwrap().to_owned();
    assert_eq!(k["network_id"], env.a.network_id);
    assert!(authenticates(&env, &token).await);
    let err = refused(&env, &["key", "create", "--agent", "999999"]).await;
    assert!(err.contains("no agent with id 999999"), "{err}");

    // Listing shows the key but neither its token nor its hash.
    let listed = run(&env, &["key", "list", "--network", &net, "--json"]).await;
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(!text.contains(&token) && !text.contains(&hex::encode(hash_token(&token))));
    let keys: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys[1]["id"], k["api_key_id"]);
    assert_eq!(keys[1]["usable"], true);

    json(&env, &["agent", "deactivate", &agent, "--json"]).await;
    assert!(!authenticates(&env, &token).await);
    let err = refused(&env, &["agent", "deactivate", &agent]).await;
    assert!(err.contains("is already inactive"), "{err}");
    let back = json(&env, &["agent", "reactivate", &agent, "--json"]).await;
    assert_eq!(back["active"], true);
    let err = refused(&env, &["agent", "reactivate", "999999"]).await;
    assert!(err.contains("no agent with id 999999"), "{err}");
    assert!(authenticates(&env, &token).await);
    env.cleanup().await;
}

#[tokio::test]
async fn revoking_the_last_key_is_allowed_and_warns() {
    let env = TestEnv::new().await;
    let key = env.b.api_key_id.to_string();
    let out = run(&env, &["key", "revoke", &key, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["usable_keys"], 0);
    assert!(stderr(&out).contains("has no usable API key left"));
    assert!(!authenticates(&env, &env.b.token).await);
    // Network A keeps its key.
    assert!(authenticates(&env, &env.a.token).await);

    let err = refused(&env, &["key", "revoke", &key]).await;
    assert!(err.contains("is already revoked"), "{err}");
    let err = refused(&env, &["revoke-key", "999999"]).await;
    assert!(err.contains("no API key with id 999999"), "{err}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_missing_database_is_refused_and_not_created() {
    let env = TestEnv::new().await;
    let name = format!("{}_typo", env.db_name);
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    for args in [
        &["failed", "list"][..],
        &["network", "list"],
        &["provision", "--network", "x"],
    ] {
        let out = run_with(&url, &[], args).await;
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "database \"{name}\" does not exist; run `case-intake migrate` first"
            )),
            "{args:?}: {err}"
        );
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(!exists, "a read-only command created {name}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_schema_behind_the_binary_is_refused() {
    let env = TestEnv::new().await;
    let last = case_intake::infra::db::MIGRATOR.iter().last().unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(last.version)
        .execute(&env.pool)
        .await
        .unwrap();
    let err = refused(&env, &["failed", "list"]).await;
    assert!(
        err.contains(&format!(
            "is behind this binary: migration {} ({}) is not applied; run `case-intake migrate` first",
            last.version, last.description
        )),
        "{err}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn migrate_does_not_log_the_migration_table_notice() {
    let env = TestEnv::new().await;
    let out = run(&env, &["migrate"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(text.contains("migrations applied"), "{text}");
    assert!(!text.contains("_sqlx_migrations"), "{text}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_with_a_clear_message() {
    // Accepts connections and holds them without a byte of answer.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/silent");
    let bound = [("CASE_INTAKE__DATABASE__CONNECT_TIMEOUT_MS", "1000")];
    for (args, database) in [
        (&["failed", "list"][..], "silent"),
        (&["migrate"], "postgres"),
    ] {
        let out = run_with(&url, &bound, args).await;
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        let expected = format!(
            "waited 1000 ms for PostgreSQL at 127.0.0.1:{port} (database \"{database}\") to answer"
        );
        assert!(err.contains(&expected), "{args:?}: {err}");
    }
}
