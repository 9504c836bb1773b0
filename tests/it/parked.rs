//! `case-intake parked list|drop|republish` against the real local RabbitMQ: messages lapin
//! cannot parse are published raw into a parked queue of the test's own, then the binary is
//! run and the queues are read back byte for byte with the same minimal client.

use case_intake_harness::wait::{SETTLE, until};
use std::process::Output;
use std::time::Duration;

use case_intake::admin::parked::{Client, FieldValue, Headers, Properties, Table, decode_value};
use case_intake::outbox::topology::parked_queue;
use serde_json::Value;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TIMEOUT: Duration = Duration::from_secs(20);

/// The test's own intake and parked queues; deleted when dropped, also when a test panics.
struct Queues {
    intake: String,
    parked: String,
}

impl Queues {
    async fn new() -> Queues {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let intake = format!("test.{}.intake", &id[..12]);
        let q = Queues {
            parked: parked_queue(&intake),
            intake,
        };
        let mut c = client().await;
        let quorum = Table(vec![(
            b"x-queue-type".to_vec(),
            FieldValue::LongStr(b"quorum".to_vec()),
        )]);
        c.declare(&q.parked, false, true, &quorum).await.unwrap();
        c.declare(&q.intake, false, true, &quorum).await.unwrap();
        c.close().await;
        q
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let names = [self.intake.clone(), self.parked.clone()];
        // Drop cannot await, and may run inside the test's runtime: delete from a thread with
        // a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = Client::connect(URL, TIMEOUT).await {
                    for name in &names {
                        let _ = c.delete_queue(name).await;
                    }
                    c.close().await;
                }
            });
        })
        .join();
    }
}

async fn client() -> Client {
    Client::connect(URL, TIMEOUT)
        .await
        .expect("connect to RabbitMQ")
}

fn long(s: &[u8]) -> FieldValue {
    FieldValue::LongStr(s.to_vec())
}

/// An array nested `depth` levels, encoded linearly (each level's length is known).
fn nested_array(depth: usize) -> FieldValue {
    let mut raw = Vec::with_capacity(depth * 5);
    for level in 0..depth {
        raw.push(b'A');
        raw.extend_from_slice(&((5 * (depth - 1 - level)) as u32).to_be_bytes());
    }
    decode_value(&raw).unwrap()
}

const BODY: &[u8] = br#"{"first_name":"John","ss_number":"111-22-3333"}"#;
const TOKEN: &[u8] = b"Token s3cr3t-api-token-value";

/// The four hostile messages, each with an `app_id` naming it.
fn hostile() -> Vec<(&'static str, Properties)> {
    let base = |app: &str, headers: Table| Properties {
        app_id: Some(app.as_bytes().to_vec()),
        delivery_mode: Some(2),
        headers: Some(Headers::Parsed(headers)),
        ..Properties::default()
    };
    let auth = (b"authorization".to_vec(), long(TOKEN));
    let mut bad_id = base("bad-id", Table(vec![auth.clone()]));
    bad_id.message_id = Some(vec![0xff, 0xfe, 0x41]);
    let mut bad_name = base(
        "bad-name",
        Table(vec![auth.clone(), (vec![0xff, b'x'], long(b"v"))]),
    );
    bad_name.message_id = Some(b"key-2".to_vec());
    let mut deep = base(
        "deep",
        Table(vec![auth.clone(), (b"deep".to_vec(), nested_array(20_000))]),
    );
    deep.message_id = Some(b"key-3".to_vec());
    let mut ssn = base(
        "ssn",
        Table(vec![
            auth,
            (
                b"note".to_vec(),
                long(b"client 123-45-6789 alias 987654321"),
            ),
            // An SSN split by a byte that is not UTF-8, and terminal controls around one.
            (b"split".to_vec(), long(b"444\xff55-6666")),
            (
                b"ctl".to_vec(),
                long(b"\x1b[2J\x07 555 66 7777\x00\xe2\x80\xae"),
            ),
        ]),
    );
    ssn.message_id = Some(b"key-4".to_vec());
    vec![
        ("bad-id", bad_id),
        ("bad-name", bad_name),
        ("deep", deep),
        ("ssn", ssn),
    ]
}

async fn park_hostile(q: &Queues) {
    let mut c = client().await;
    c.confirm_select().await.unwrap();
    for (_, props) in hostile() {
        c.publish("", &q.parked, true, &props, BODY).await.unwrap();
    }
    c.close().await;
}

/// Parks the hostile messages and returns their ids, once all four are in the parking queue.
async fn park_hostile_with_ids(q: &Queues) -> std::collections::HashMap<String, String> {
    park_hostile(q).await;
    let ids = ids(q).await;
    assert_count(&q.parked, 4).await;
    ids
}

async fn count(queue: &str) -> u32 {
    let mut c = client().await;
    let n = c.message_count(queue).await.unwrap();
    c.close().await;
    n
}

/// Requeues in a quorum queue go through its log: wait until the count settles.
async fn assert_count(queue: &str, expected: u32) {
    until(
        format!("{expected} messages in {queue}"),
        SETTLE,
        || async { count(queue).await == expected },
    )
    .await;
}

/// Runs the binary with the test's queues. The database URL points at a closed port: the
/// parked commands must never need it.
async fn run(q: &Queues, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(crate::cli::BIN);
    cmd.args(args)
        .env("CASE_INTAKE__AMQP__URL", URL)
        .env("CASE_INTAKE__AMQP__INTAKE_QUEUE", &q.intake)
        .env(
            "CASE_INTAKE__DATABASE__URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .env("CASE_INTAKE__LOG__FORMAT", "text")
        // The bound on every broker answer is no part of what these tests check: a loaded
        // machine (quorum-queue writes wait for fsync) must not fail them.
        .env("CASE_INTAKE__AMQP__CONNECT_TIMEOUT_MS", "120000")
        .env_remove("CASE_INTAKE_CONFIG");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// No body, token or SSN digits other than the last four the mask shows (`*****6789`), and no
/// raw control or bidi character: everything the messages hold is escaped.
fn assert_private(text: &str) {
    for secret in [
        "123-45",
        "12345",
        "98765",
        r"444\xff",
        "55-6666",
        "555 66",
        "111-22-3333",
        "John",
        "s3cr3t-api-token-value",
    ] {
        assert!(!text.contains(secret), "{secret:?} printed:\n{text}");
    }
    let raw = text
        .chars()
        .find(|&c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c));
    assert_eq!(raw, None, "raw control printed:\n{text:?}");
}

/// The parked messages' ids by app_id, from `list --json`.
async fn ids(q: &Queues) -> std::collections::HashMap<String, String> {
    let out = run(q, &["parked", "list", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let app = m["properties"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p[0] == "app_id")
                .map(|p| p[1].as_str().unwrap().trim_matches('"').to_owned())
                .unwrap();
            (app, m["id"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn list_escapes_masks_and_puts_everything_back() {
    let q = Queues::new().await;
    park_hostile(&q).await;

    let out = run(&q, &["parked", "list"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_private(&all);
    assert!(text.contains("showing 4 of 4"), "{text}");
    assert!(text.contains(r#"message_id: "\xff\xfeA""#), "{text}");
    assert!(
        text.contains("not valid UTF-8: property message_id"),
        "{text}"
    );
    assert!(text.contains(r#"header "\xffx": "v""#), "{text}");
    assert!(
        text.contains(r#"not valid UTF-8: header name "\xffx""#),
        "{text}"
    );
    assert!(
        text.contains("[[[[…]]]] (nested 20000 levels deep, shown to 4)"),
        "{text}"
    );
    assert!(
        text.contains(r#"header "note": "client *****6789 alias *****4321""#),
        "{text}"
    );
    assert!(text.contains(r#"header "split": "*****6666""#), "{text}");
    assert!(
        text.contains(r#"header "ctl": "\u{1b}[2J\u{7} *****7777\u{0}\u{202e}""#),
        "{text}"
    );
    assert!(
        text.contains(r#"header "authorization": "Token [redacted, 28 bytes]""#),
        "{text}"
    );
    assert!(text.contains(&format!(
        "body: {} bytes, sha256 {}",
        BODY.len(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(BODY))
    )));
    // Listing removes nothing, and ids stay the same across listings (which requeue).
    assert_count(&q.parked, 4).await;
    let first = ids(&q).await;
    assert_count(&q.parked, 4).await;
    assert_eq!(first.len(), 4);
    assert_eq!(ids(&q).await, first);
    // That listing's requeues settle before the next one counts.
    assert_count(&q.parked, 4).await;

    let out = run(&q, &["parked", "list", "--limit", "2", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], 4);
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    assert_private(&stdout(&out));
    assert_count(&q.parked, 4).await;
}

#[tokio::test]
async fn drop_by_id_removes_exactly_one_and_all_needs_yes() {
    let q = Queues::new().await;
    let ids = park_hostile_with_ids(&q).await;

    let out = run(&q, &["parked", "drop", "--id", &ids["ssn"]]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("dropped 1 parked message(s)"));
    assert_count(&q.parked, 3).await;
    let left = self::ids(&q).await;
    assert_eq!(left.len(), 3);
    assert!(!left.contains_key("ssn"));
    assert_eq!(left["deep"], ids["deep"]);

    // An unknown id drops nothing and says so.
    let out = run(&q, &["parked", "drop", "--id", "000000000000"]).await;
    assert!(!out.status.success());
    assert_count(&q.parked, 3).await;

    let out = run(&q, &["parked", "drop", "--all"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to drop all 3 parked message(s) without --yes"),
        "{err}"
    );
    assert_count(&q.parked, 3).await;

    let out = run(&q, &["parked", "drop", "--all", "--yes"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("dropped 3 parked message(s)"));
    assert_count(&q.parked, 0).await;
    assert_eq!(count(&q.intake).await, 0);
}

#[tokio::test]
async fn republish_by_id_moves_one_sanitized_copy() {
    let q = Queues::new().await;
    let ids = park_hostile_with_ids(&q).await;

    for app in ["bad-id", "bad-name", "deep"] {
        let out = run(&q, &["parked", "republish", "--id", &ids[app]]).await;
        assert!(out.status.success(), "{out:?}");
        assert!(stdout(&out).contains(&format!("re-published {}", ids[app])));
        assert_private(&stdout(&out));
    }
    assert_count(&q.parked, 1).await;
    assert!(self::ids(&q).await.contains_key("ssn"));
    assert_count(&q.intake, 3).await;

    let mut c = client().await;
    let mut got = std::collections::HashMap::new();
    while let Some(m) = c.get(&q.intake).await.unwrap() {
        assert_eq!(m.body, BODY, "the body is re-published untouched");
        assert_eq!(m.routing_key, q.intake.as_bytes());
        let p = m.header.unwrap().properties;
        c.ack(m.delivery_tag).await.unwrap();
        got.insert(String::from_utf8(p.app_id.clone().unwrap()).unwrap(), p);
    }
    c.close().await;
    assert_eq!(got.len(), 3);

    let headers = |p: &Properties| match &p.headers {
        Some(Headers::Parsed(t)) => t.clone(),
        other => panic!("headers {other:?}"),
    };
    let p = &got["bad-id"];
    assert_eq!(
        p.message_id.as_deref(),
        Some("\u{fffd}\u{fffd}A".as_bytes())
    );
    assert_eq!(p.delivery_mode, Some(2));
    assert_eq!(headers(p).get(b"authorization"), Some(&long(TOKEN)));

    let t = headers(&got["bad-name"]);
    assert_eq!(t.get("\u{fffd}x".as_bytes()), Some(&long(b"v")));
    assert_eq!(t.get(&[0xff, b'x']), None);
    assert_eq!(got["bad-name"].message_id.as_deref(), Some(&b"key-2"[..]));

    let t = headers(&got["deep"]);
    assert_eq!(
        t.get(b"deep"),
        Some(&long(
            b"[removed by case-intake parked republish: nested 20000 levels deep]"
        ))
    );
    assert_eq!(t.get(b"authorization"), Some(&long(TOKEN)));
    // Every short string and header of every copy is UTF-8 now: lapin can read them.
    for p in got.values() {
        for (name, v) in p.short_strings() {
            if let Some(v) = v {
                assert!(std::str::from_utf8(v).is_ok(), "{name}");
            }
        }
        for (name, _) in &headers(p).0 {
            assert!(std::str::from_utf8(name).is_ok());
        }
    }
}

#[tokio::test]
async fn republish_refuses_a_missing_intake_queue_and_keeps_the_message() {
    let q = Queues::new().await;
    park_hostile(&q).await;
    let ids = ids(&q).await;
    let mut c = client().await;
    c.delete_queue(&q.intake).await.unwrap();
    c.close().await;

    let out = run(&q, &["parked", "republish", "--id", &ids["bad-id"]]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404"), "{err}");
    assert_count(&q.parked, 4).await;
}

#[tokio::test]
async fn broker_refusals_are_reported_without_the_password() {
    let e = Client::connect("amqp://guest:not-the-pw@127.0.0.1:5672/%2f", TIMEOUT)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(!e.contains("not-the-pw"), "{e}");
    assert!(
        e.contains("wrong user or password") || e.contains("403"),
        "{e}"
    );

    // The server's Connection.Close: reply code and text.
    let e = Client::connect("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", TIMEOUT)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("530"), "{e}");
}

#[tokio::test]
async fn amqps_is_refused_with_a_clear_error() {
    let out = std::process::Command::new(crate::cli::BIN)
        .args(["parked", "list"])
        .env(
            "CASE_INTAKE__AMQP__URL",
            "amqps://guest:guest@127.0.0.1:5671/%2f",
        )
        .env("CASE_INTAKE__LOG__FORMAT", "text")
        .env_remove("CASE_INTAKE_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("amqps:// URLs are not supported"), "{err}");
}
