//! Holds the service to its published contract, docs/asyncapi.yaml: the document's examples
//! against its schemas, real events of the service (created, joined, replaced, replayed and
//! every kind of failure) against the event schemas, the intake schema against
//! `validate::validate`, the names against the defaults, and README.md's marked examples.

use case_intake::intake::trace::{TRACEPARENT, TRACESTATE, TraceContext};
use std::collections::BTreeSet;
use std::path::PathBuf;

use case_intake::admin::failed::Filter;
use case_intake::domain::error::{ALL_CODES, ErrorCode, IntakeError};
use case_intake::infra::settings::Settings;
use case_intake::intake::delivery::{
    CORRELATION_HEADER, KEY_HEADER, RETRIES_HEADER, RETRIES_TAG_HEADER,
};
use case_intake::intake::envelope::MAX_KEY_CHARS;
use case_intake::intake::event::{
    CASE_CREATED, CASE_FAILED, CASE_MATCHED, CONTENT_TYPE, EVENT_TYPES, INTAKE_RESOLVED,
};
use case_intake::intake::validate::{KNOWN_FIELDS, READ_ONLY_FIELDS, validate};
use case_intake::intake::window::Outcome;
use case_intake::store::auth::TOKEN_HEADERS;
use case_intake_harness::support::{TestEnv, seed_body};
use case_intake_harness::testkit::{created, replay, with};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The placement fields `case.created` data adds to a case: with the fields the system sets
/// (`READ_ONLY_FIELDS`), everything in it that is not an intake field.
const PLACEMENT_FIELDS: [&str; 9] = [
    "created_at",
    "updated_at",
    "household_id",
    "household_created",
    "previous_head_case_id",
    "message_key",
    "warnings",
    "replay",
    "possible_duplicates",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// docs/asyncapi.yaml, parsed.
struct Contract {
    doc: Value,
}

impl Contract {
    fn load() -> Self {
        let path = repo().join("docs/asyncapi.yaml");
        let text = std::fs::read_to_string(&path).expect("docs/asyncapi.yaml is readable");
        let doc = Value::deserialize(serde_norway::Deserializer::from_str(&text))
            .expect("docs/asyncapi.yaml is YAML");
        assert_eq!(doc["asyncapi"], "3.0.0");
        Self { doc }
    }

    fn schema(&self, name: &str) -> &Value {
        let s = &self.doc["components"]["schemas"][name];
        assert!(s.is_object(), "components.schemas.{name} exists");
        s
    }

    fn message(&self, name: &str) -> &Value {
        let m = &self.doc["components"]["messages"][name];
        assert!(m.is_object(), "components.messages.{name} exists");
        m
    }

    fn channel(&self, name: &str) -> &Value {
        let c = &self.doc["channels"][name];
        assert!(c.is_object(), "channels.{name} exists");
        c
    }

    /// Follows a local `$ref` of the document.
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value["$ref"].as_str() {
            Some(r) => {
                let pointer = r.strip_prefix('#').expect("local reference");
                self.doc
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{r} resolves"))
            }
            None => value,
        }
    }

    /// A draft-07 validator for `schema`, whose `$ref`s resolve within the document.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let root = json!({
            "allOf": [schema],
            "components": self.doc["components"],
        });
        jsonschema::draft7::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("schema {schema} compiles: {e}"))
    }

    fn named(&self, name: &str) -> jsonschema::Validator {
        self.validator(&json!({ "$ref": format!("#/components/schemas/{name}") }))
    }

    /// The payload validator of the channel whose address is `routing_key`.
    fn event_validator(&self, routing_key: &str) -> jsonschema::Validator {
        let channels = self.doc["channels"].as_object().expect("channels");
        let (_, channel) = channels
            .iter()
            .find(|(_, c)| c["address"] == routing_key)
            .unwrap_or_else(|| panic!("a channel has the address {routing_key}"));
        let messages = channel["messages"].as_object().expect("messages");
        assert_eq!(messages.len(), 1);
        let message = self.resolve(messages.values().next().unwrap());
        self.validator(&message["payload"])
    }
}

/// Every error of `instance`, or nothing.
fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errs = errors(v, instance);
    assert!(
        errs.is_empty(),
        "{what} does not match its schema: {errs:#?}\n{instance:#}"
    );
}

fn object(v: &Value) -> &Map<String, Value> {
    v.as_object().expect("a JSON object")
}

fn today() -> chrono::NaiveDate {
    chrono::Utc::now().date_naive()
}

/// The full "seed" example of the createCase message.
fn seed_example(c: &Contract) -> Value {
    c.message("createCase")["examples"]
        .as_array()
        .expect("examples")
        .iter()
        .find(|e| e["name"] == "seed")
        .expect("a `seed` example")["payload"]
        .clone()
}

/// `body` with one field set to one of its values, for every value of `values` (a field name
/// to an array of values).
fn with_each(body: &Value, values: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for (field, values) in object(values) {
        for value in values.as_array().expect("an array of values") {
            out.push(with(body.clone(), field, value.clone()));
        }
    }
    out
}

fn without(mut body: Value, field: &str) -> Value {
    body.as_object_mut().unwrap().remove(field);
    body
}

#[test]
fn the_schemas_are_draft_07_and_every_example_matches_its_schema() {
    let c = Contract::load();
    let schemas = object(&c.doc["components"]["schemas"]);
    let mut checked = 0;
    for (name, schema) in schemas {
        if let Err(e) = jsonschema::draft7::meta::validate(schema) {
            panic!("components.schemas.{name} is not a draft-07 schema: {e}");
        }
        let v = c.named(name);
        for (i, example) in schema["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            assert_valid(&v, example, &format!("schemas.{name}.examples[{i}]"));
            checked += 1;
        }
    }
    for (name, message) in object(&c.doc["components"]["messages"]) {
        let payload = c.validator(&message["payload"]);
        assert!(
            !payload.is_valid(&json!({})),
            "{name}: the payload schema accepts anything"
        );
        let examples = message["examples"].as_array().expect("examples");
        assert!(!examples.is_empty(), "{name} has examples");
        for example in examples {
            let what = format!("messages.{name}.examples.{}", example["name"]);
            assert_valid(&payload, &example["payload"], &what);
            if message.get("headers").is_some() {
                let headers = c.validator(&message["headers"]);
                assert_valid(&headers, &example["headers"], &format!("{what}.headers"));
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} examples");
}

#[test]
fn the_documented_names_are_the_service_defaults() {
    let c = Contract::load();
    let s = Settings::load(None).expect("defaults load");
    let intake = c.channel("intake");
    assert_eq!(intake["address"], s.amqp.intake_queue.as_str());
    assert_eq!(intake["bindings"]["amqp"]["is"], "queue");
    assert_eq!(
        intake["bindings"]["amqp"]["queue"]["name"],
        s.amqp.intake_queue.as_str()
    );
    for (channel, routing_key, message, event_type) in [
        (
            "caseCreated",
            &s.amqp.created_routing_key,
            "caseCreated",
            CASE_CREATED,
        ),
        (
            "caseFailed",
            &s.amqp.failed_routing_key,
            "caseFailed",
            CASE_FAILED,
        ),
        (
            "intakeResolved",
            &s.amqp.resolved_routing_key,
            "intakeResolved",
            INTAKE_RESOLVED,
        ),
    ] {
        let ch = c.channel(channel);
        assert_eq!(ch["address"], routing_key.as_str());
        assert_eq!(ch["bindings"]["amqp"]["is"], "routingKey");
        let exchange = &ch["bindings"]["amqp"]["exchange"];
        assert_eq!(exchange["name"], s.amqp.events_exchange.as_str());
        assert_eq!(exchange["type"], "topic");
        assert_eq!(exchange["durable"], true);
        let m = c.message(message);
        assert_eq!(m["contentType"], CONTENT_TYPE);
        assert_eq!(m["bindings"]["amqp"]["messageType"], routing_key.as_str());
        let payload = c.resolve(&m["payload"]);
        assert_eq!(payload["properties"]["type"]["const"], event_type);
        for example in m["examples"].as_array().unwrap() {
            assert_eq!(example["payload"]["source"], s.events.source.as_str());
        }
    }
    for b in c
        .doc
        .pointer("/channels")
        .unwrap()
        .as_object()
        .unwrap()
        .values()
    {
        assert_eq!(b["bindings"]["amqp"]["bindingVersion"], "0.3.0");
    }
    assert_eq!(
        c.schema("EventProperties")["properties"]["content_type"]["const"],
        CONTENT_TYPE
    );

    // AMQP properties and headers of an intake.
    let props = c.schema("IntakeProperties");
    // The key may come from the `message-id` header instead, so the property is not required.
    assert_eq!(props.get("required"), None);
    assert_eq!(
        props["properties"]["message_id"]["maxLength"],
        json!(MAX_KEY_CHARS)
    );
    assert_eq!(props["properties"]["message_id"]["minLength"], 1);
    assert_eq!(
        c.message("createCase")["bindings"]["amqp"]["x-properties"]["$ref"],
        "#/components/schemas/IntakeProperties"
    );
    let headers: BTreeSet<String> = object(&c.schema("IntakeHeaders")["properties"])
        .keys()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    // The token headers, the key and correlation headers, the W3C trace context, the
    // duplicate override, and the retry counter the service keeps (reserved, never accepted).
    let expected: BTreeSet<String> = TOKEN_HEADERS
        .iter()
        .chain([&KEY_HEADER, &CORRELATION_HEADER])
        .chain([&TRACEPARENT, &TRACESTATE])
        .chain([&case_intake::domain::error::OVERRIDE_HEADER])
        .chain([&RETRIES_HEADER, &RETRIES_TAG_HEADER])
        .map(|h| h.to_string())
        .collect();
    assert_eq!(headers, expected);
    let intake_headers = c.named("IntakeHeaders");
    assert!(!intake_headers.is_valid(&json!({"authorization": "Token a", RETRIES_HEADER: 1})));
    // The override's documented values are the ones the service accepts.
    let over = case_intake::domain::error::OVERRIDE_HEADER;
    for (value, accepted) in [
        ("create", true),
        (" Create ", true),
        ("yes", false),
        ("", false),
    ] {
        assert_eq!(
            intake_headers.is_valid(&json!({"authorization": "Token a", over: value})),
            accepted,
            "{value:?}"
        );
    }
    // The documented trace header format is the one the service keeps.
    let parent = c.named("TraceParent");
    for candidate in [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
    ] {
        assert_eq!(
            parent.is_valid(&json!(candidate)),
            TraceContext::parse(candidate, None).is_some(),
            "{candidate}"
        );
    }
    let token = c.named("TokenHeader");
    for ok in ["Token abc", "  token   abc  ", "TOKEN abc"] {
        assert!(
            case_intake::store::auth::parse_token_header(ok).is_some()
                && token.is_valid(&json!(ok))
        );
    }
    for bad in ["Bearer abc", "Token", "Token a b", "abc"] {
        assert!(
            case_intake::store::auth::parse_token_header(bad).is_none()
                && !token.is_valid(&json!(bad)),
            "{bad}"
        );
    }
}

/// The string literals of `source` that follow `marker`, up to the closing quote.
fn literals_after<'a>(source: &'a str, marker: &str) -> BTreeSet<&'a str> {
    source
        .match_indices(marker)
        .filter_map(|(at, _)| source[at + marker.len()..].split('"').next())
        .collect()
}

/// Every event the code can publish is in the contract, so the two cannot drift: each event
/// type constant of src/intake/event.rs is in `EVENT_TYPES`; the AMQP `type` of events allows
/// exactly those; each has a channel at its default routing key on the events exchange whose
/// message is of that type; and the AMQP headers the relay sets on events are exactly the
/// documented event headers.
#[test]
fn every_event_type_routing_key_and_header_is_in_the_contract() {
    let c = Contract::load();
    let s = Settings::load(None).expect("defaults load");
    let listed: BTreeSet<&str> = EVENT_TYPES.into_iter().collect();
    let source = std::fs::read_to_string(repo().join("src/intake/event.rs")).unwrap();
    let defined = literals_after(&source, ": &str = \"");
    let defined: BTreeSet<&str> = defined
        .into_iter()
        .filter(|t| t.starts_with("case."))
        .collect();
    assert_eq!(
        defined, listed,
        "every event type constant is in EVENT_TYPES"
    );

    let allowed: BTreeSet<&str> = c.schema("EventProperties")["properties"]["type"]["enum"]
        .as_array()
        .expect("EventProperties.type lists its values")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(allowed, listed, "the AMQP type of events");

    let channels = c.doc["channels"].as_object().expect("channels");
    for event_type in EVENT_TYPES {
        let routing_key = match event_type {
            CASE_CREATED => &s.amqp.created_routing_key,
            CASE_FAILED => &s.amqp.failed_routing_key,
            CASE_MATCHED => &s.amqp.matched_routing_key,
            INTAKE_RESOLVED => &s.amqp.resolved_routing_key,
            other => panic!("no routing key setting for {other}"),
        };
        assert_eq!(
            routing_key, event_type,
            "the default routing key is the type"
        );
        let (_, channel) = channels
            .iter()
            .find(|(_, ch)| ch["address"] == routing_key.as_str())
            .unwrap_or_else(|| panic!("a channel has the address {routing_key}"));
        let exchange = &channel["bindings"]["amqp"]["exchange"];
        assert_eq!(exchange["name"], s.amqp.events_exchange.as_str());
        let messages = channel["messages"].as_object().expect("messages");
        for m in messages.values() {
            let m = c.resolve(m);
            assert_eq!(m["bindings"]["amqp"]["messageType"], event_type);
            let payload = c.resolve(&m["payload"]);
            assert_eq!(payload["properties"]["type"]["const"], event_type);
            assert_eq!(
                c.resolve(&m["headers"]),
                c.schema("EventHeaders"),
                "{event_type}: the event headers"
            );
        }
    }

    let relay = std::fs::read_to_string(repo().join("src/outbox/relay.rs")).unwrap();
    let set: BTreeSet<&str> = literals_after(&relay, "headers.insert(\"");
    let documented: BTreeSet<&str> = c.schema("EventHeaders")["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(!set.is_empty(), "the relay's header names are found");
    assert_eq!(set, documented, "the AMQP headers of events");
}

#[test]
fn the_error_codes_are_exactly_the_service_codes() {
    let c = Contract::load();
    let codes: Vec<&str> = ALL_CODES.iter().map(|c| c.as_str()).collect();
    let schema = c.schema("ErrorCode");
    assert_eq!(schema["enum"], json!(codes), "same codes, same order");
    let description = schema["description"].as_str().unwrap();
    for code in codes {
        assert!(
            description.contains(&format!("`{code}`")),
            "{code} is explained"
        );
    }
}

#[test]
fn the_intake_schema_agrees_with_validate() {
    let c = Contract::load();
    let schema = c.named("IntakeBody");
    let accepts = |body: &Value| validate(object(body), today()).is_ok();

    // Every intake example is accepted by the service.
    let mut examples: Vec<Value> = c.message("createCase")["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"].clone())
        .collect();
    examples.extend(
        c.schema("IntakeBody")["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .cloned(),
    );
    for body in &examples {
        assert!(accepts(body), "validate refuses the example {body}");
        assert_valid(&schema, body, "an intake example");
    }

    // The schema lists exactly the fields of the seed example, each of which validate knows.
    let seed = seed_example(&c);
    let properties: BTreeSet<&String> = object(&c.schema("IntakeBody")["properties"])
        .keys()
        .collect();
    let seed_fields: BTreeSet<&String> = object(&seed).keys().collect();
    assert_eq!(properties, seed_fields);
    assert_eq!(properties.len(), 25);
    // The fields validate accepts are the schema's; the ones it refuses as set by the system
    // are those the schema's description names.
    let known: BTreeSet<&String> = KNOWN_FIELDS
        .iter()
        .map(|f| {
            properties
                .get(&f.to_string())
                .copied()
                .unwrap_or_else(|| panic!("{f} is not in the schema"))
        })
        .collect();
    assert_eq!(known, properties);
    let description = c.schema("IntakeBody")["description"].as_str().unwrap();
    let description = description.split_whitespace().collect::<Vec<_>>().join(" ");
    let named = description
        .split("the fields the system sets:")
        .nth(1)
        .expect("the read-only fields are named");
    let named: BTreeSet<&str> = named
        .split('.')
        .next()
        .unwrap()
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    assert_eq!(named, READ_ONLY_FIELDS.into_iter().collect());
    for field in &properties {
        // Null is "not given" for every optional field; the required names get a value.
        let mut body = json!({"first_name": "A", "last_name": "B"});
        body.as_object_mut()
            .unwrap()
            .entry(field.as_str())
            .or_insert(Value::Null);
        assert!(accepts(&body), "validate does not know {field}");
    }

    // Per field, the values validate refuses; each is tried alone in the seed.
    let refused = json!({
        "first_name": ["   ", null, "a".repeat(101), "\u{200B}", "Ann\u{202E}"],
        "last_name": [7, " \u{FEFF}\u{2060} "],
        "middle_name": ["a\u{7}b", "\u{200C}\u{200D}"],
        "nickname": ["line\nbreak", "\u{3164}"],
        "suffix": ["s".repeat(21), "\u{00AD}"],
        "mailing_address": ["x".repeat(201)],
        "street_apt_number": ["x".repeat(51)],
        "date_of_birth": ["2023-02-30", "1950-1-3", "03/12/1950"],
        "email": [
            "[email protected]", "john@localhost", "john smith@example.org", "john@-example.org"
        ],
        "head_of_household": ["true"],
        "deceased": [1],
        "mailing_state": ["XX"],
        "street_state": ["New York"],
        "mailing_zip_code": ["1234"],
        "street_zip_code": ["123456789"],
        "ss_number": [
            "666-12-3456", "000-12-3456", "900-12-3456", "123-00-4567", "123-45-0000",
            "12345678", "123 45 6789", 111223333
        ],
        "street_county": [0, -1, "1", 1.5],
        "household": ["1001"],
        "yearly_income": [-1, 0.001],
        "yearly_expenses": [1e12, "11580"],
        "id": [5],
        "group": [1],
        "import_id": [null],
        "favorite_color": ["blue"],
        "mailing_city": ["\u{2066}City\u{2069}"],
        "street_address": ["1 Main St\u{200F}"],
        "mailing_apt_number": ["4\u{9B}"],
        "x\u{0}": [1],
    });
    let bad: Vec<Value> = [
        without(seed.clone(), "last_name"),
        without(seed.clone(), "first_name"),
    ]
    .into_iter()
    .chain(with_each(&seed, &refused))
    .collect();
    for body in &bad {
        assert!(!accepts(body), "validate accepts {body}");
        assert!(
            !schema.is_valid(body),
            "the schema accepts a body validate refuses: {body}"
        );
    }

    let minimal = json!({"first_name": "Ann", "last_name": "Lee"});
    // Per field, values validate accepts; each is tried alone in the seed.
    let accepted = json!({
        "ss_number": ["111-22-3333", "899-99-9999", null],
        "mailing_zip_code": ["12345-6789"],
        "street_state": ["PR"],
        "email": ["o'brien@example.ie", "x@1.2.3.4"],
        "yearly_income": [15350.5, 0.29, 4.35, 0, 999_999_999_999.99],
        "date_of_birth": ["1910-01-01", "2000-02-29"],
        "head_of_household": [true],
        "suffix": ["s".repeat(20), "   "],
        "first_name": ["é".repeat(100), "Mi\u{200C}ran"],
    });
    let good: Vec<Value> = [
        minimal.clone(),
        with(minimal.clone(), "household", json!(null)),
        with(minimal.clone(), "middle_name", json!("")),
        with(minimal.clone(), "first_name", json!("  Ann  ")),
    ]
    .into_iter()
    .chain(with_each(&seed, &accepted))
    .collect();
    for body in &good {
        assert!(accepts(body), "validate refuses {body}");
        assert_valid(&schema, body, "a valid body");
    }
}

/// An envelope whose body is raw bytes rather than JSON.
fn raw(
    env: &TestEnv,
    key: &str,
    token: Option<&str>,
    body: &[u8],
) -> case_intake::intake::envelope::Envelope {
    let mut e = env.envelope(key, token, &json!({}));
    e.body = body.to_vec();
    e
}

#[tokio::test]
async fn real_events_match_the_event_schemas() {
    let c = Contract::load();
    let env = TestEnv::new().await;
    let token = env.a.token.clone();
    let t = Some(token.as_str());
    let county = env.a.county_ids[0];

    // A new household, and a minimal case in another one (with a W3C trace context).
    let mut minimal = env.envelope(
        "minimal",
        t,
        &json!({"first_name": "Ann", "last_name": "Lee"}),
    );
    minimal.trace = TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("congo=t61rcWkgMzE"),
    );
    assert!(minimal.trace.is_some());
    let out = env
        .process(&[env.envelope("new", t, &seed_body(county)), minimal])
        .await;
    let (head, household) = created(&out[0]);
    created(&out[1]);

    // Joining it, then replacing its head (with a warning and the other value forms).
    let join = with(seed_body(county), "household", json!(household));
    let out = env.process(&[env.envelope("join", t, &join)]).await;
    created(&out[0]);
    let replace = json!({
        "first_name": " Jane ", "last_name": "Smith", "household": household,
        "head_of_household": true, "date_of_birth": "1910-05-06", "ss_number": "123-45-6789",
        "mailing_state": "ny", "mailing_zip_code": "12345-6789", "yearly_income": 15350.5,
        "yearly_expenses": 0.29, "email": "", "street_county": county,
    });
    let out = env.process(&[env.envelope("replace", t, &replace)]).await;
    created(&out[0]);

    // Every kind of failure.
    let mut no_key = env.envelope("unused", t, &seed_body(county));
    no_key.message_key = None;
    let too_large = json!({"first_name": "A", "last_name": "B", "nickname": "x".repeat(70_000)});
    let invalid = json!({
        "first_name": "", "last_name": "Smith", "email": "[email protected]",
        "ss_number": "666-12-3456", "id": 5, "favorite_color": "blue",
    });
    let other_network = seed_body(env.b.county_ids[0]);
    let mut dead = env.envelope("dead", t, &seed_body(county));
    dead.fail_with(IntakeError::new(
        ErrorCode::DeadLettered,
        "the broker dead-lettered this intake",
    ));
    // An unusable envelope: a message_id with control characters (no key), and a correlation
    // id with them (under its key), as `delivery::envelope_of` reads them.
    let mut bad_key = env.envelope("unused", t, &seed_body(county));
    bad_key.message_key = None;
    bad_key.fail_with(case_intake::intake::envelope::unsafe_text("message_id"));
    let mut bad_correlation = env.envelope("bad-correlation", t, &seed_body(county));
    bad_correlation.correlation_id = None;
    let refused = case_intake::intake::envelope::check_correlation_id(Some("c\u{1b}[31m"));
    bad_correlation.fail_with(refused.expect_err("control characters are refused"));
    let mut exhausted = env.envelope("exhausted", t, &seed_body(county));
    exhausted.trace = TraceContext::parse(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        None,
    );
    exhausted.fail_with(IntakeError::new(
        ErrorCode::RetriesExhausted,
        "transient database errors persisted through every retry",
    ));
    let out = env
        .process(&[
            raw(&env, "not-json", t, b"not json"),
            raw(&env, "array", t, b"[1, 2]"),
            env.envelope("too-large", t, &too_large),
            no_key,
            env.envelope("no-token", None, &seed_body(county)),
            env.envelope("bad-token", Some("not-a-token"), &seed_body(county)),
            env.envelope("invalid", t, &invalid),
            env.envelope("other-network", t, &other_network),
            dead,
            exhausted,
            bad_key,
            bad_correlation,
            // The same key and body again: the original event once more.
            env.envelope("new", t, &seed_body(county)),
            // The same key with another body.
            env.envelope(
                "new",
                t,
                &json!({"first_name": "Other", "last_name": "Body"}),
            ),
        ])
        .await;
    assert!(
        matches!(out[12], Outcome::Duplicate { .. }),
        "{:?}",
        out[12]
    );

    // A replay: fails again (attempt 2) until the county exists, then creates the case.
    let missing_county: i64 = 990_001;
    let body = with(seed_body(county), "street_county", json!(missing_county));
    env.process(&[env.envelope("replayed", t, &body)]).await;
    let only = Filter {
        key: Some("replayed".into()),
        limit: 0,
        ..Filter::default()
    };
    let r = replay(&env, &only).await;
    assert_eq!(r.failed, 1);
    sqlx::query("INSERT INTO counties (id, network_id, name) VALUES ($1, $2, 'Late County')")
        .bind(missing_county)
        .bind(env.a.network_id)
        .execute(&env.pool)
        .await
        .unwrap();
    let r = replay(&env, &only).await;
    assert_eq!(r.created, 1);

    // The seed person once more: refused under `reject`, linked under `link`.
    for (policy, key) in [("reject", "dup-rejected"), ("link", "dup-linked")] {
        sqlx::query("UPDATE networks SET duplicate_policy = $1 WHERE id = $2")
            .bind(policy)
            .bind(env.a.network_id)
            .execute(&env.pool)
            .await
            .unwrap();
        env.process(&[env.envelope(key, t, &seed_body(county))])
            .await;
    }

    // Every event ever queued, and every event stored beside its key.
    let outbox: Vec<(String, Value)> =
        sqlx::query_as("SELECT routing_key, body FROM outbox_events ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let stored: Vec<(String, Value)> =
        sqlx::query_as("SELECT routing_key, event FROM intake_outcomes WHERE event IS NOT NULL")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let created_v = c.event_validator(&env.settings.amqp.created_routing_key);
    let failed_v = c.event_validator(&env.settings.amqp.failed_routing_key);
    let resolved_v = c.event_validator(&env.settings.amqp.resolved_routing_key);
    let matched_v = c.event_validator(&env.settings.amqp.matched_routing_key);
    for (routing_key, event) in outbox.iter().chain(&stored) {
        assert_eq!(event["type"], routing_key.as_str());
        let v = if *routing_key == env.settings.amqp.created_routing_key {
            &created_v
        } else if *routing_key == env.settings.amqp.resolved_routing_key {
            &resolved_v
        } else if *routing_key == env.settings.amqp.matched_routing_key {
            &matched_v
        } else {
            &failed_v
        };
        assert_valid(v, event, &format!("a real {routing_key} event"));
    }
    // The replay that created the case announced the resolution.
    assert!(
        outbox
            .iter()
            .any(|(k, e)| *k == env.settings.amqp.resolved_routing_key
                && e["data"]["resolution"] == "replayed"
                && e["data"]["case_id"].is_i64()),
        "a case.intake_resolved event for the replay that created its case"
    );

    // Trace context is carried on created and failed events alike.
    for rk in [
        &env.settings.amqp.created_routing_key,
        &env.settings.amqp.failed_routing_key,
    ] {
        assert!(
            outbox
                .iter()
                .any(|(k, e)| k == rk && e.get("traceparent").is_some()),
            "a {rk} event with a traceparent"
        );
    }

    // The events cover every placement and every error code.
    let data = |rk: &str| -> Vec<&Value> {
        outbox
            .iter()
            .filter(|(k, _)| k == rk)
            .map(|(_, e)| &e["data"])
            .collect()
    };
    let created_data = data(&env.settings.amqp.created_routing_key);
    assert!(created_data.iter().any(|d| d["household_created"] == true));
    assert!(
        created_data
            .iter()
            .any(|d| d["household_created"] == false && d["head_of_household"] == false)
    );
    assert!(
        created_data
            .iter()
            .any(|d| d["previous_head_case_id"] == head)
    );
    assert!(created_data.iter().any(|d| d["ss_number"] == "*****6789"));
    assert!(
        created_data
            .iter()
            .any(|d| !d["warnings"].as_array().unwrap().is_empty())
    );
    assert!(created_data.iter().any(|d| d["replay"]["replayed"] == true));
    assert!(
        created_data
            .iter()
            .any(|d| !d["possible_duplicates"].as_array().unwrap().is_empty())
    );
    assert_eq!(data(&env.settings.amqp.matched_routing_key).len(), 1);
    let codes: BTreeSet<&str> = data(&env.settings.amqp.failed_routing_key)
        .iter()
        .map(|d| d["error"]["code"].as_str().unwrap())
        .collect();
    let all: BTreeSet<&str> = ALL_CODES.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes, all, "a real event of every error code");
    assert!(
        data(&env.settings.amqp.failed_routing_key)
            .iter()
            .any(|d| d["replay"]["attempt"] == 2)
    );

    // The intake schema has exactly the case fields of a created event.
    let case_fields: BTreeSet<&str> = object(created_data[0])
        .keys()
        .map(String::as_str)
        .filter(|k| !READ_ONLY_FIELDS.contains(k) && !PLACEMENT_FIELDS.contains(k))
        .collect();
    let intake_fields: BTreeSet<&str> = object(&c.schema("IntakeBody")["properties"])
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(intake_fields, case_fields);

    env.cleanup().await;
}

/// Fenced blocks of README.md whose info string is exactly "json <tag>".
fn readme_blocks(readme: &str, tag: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        let trimmed = line.trim();
        match &mut current {
            None => {
                let info = trimmed.strip_prefix("```").map(str::split_whitespace);
                if let Some(mut words) = info
                    && words.next() == Some("json")
                    && words.next() == Some(tag)
                {
                    current = Some(String::new());
                }
            }
            Some(text) if trimmed == "```" => {
                blocks.push(std::mem::take(text));
                current = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    blocks
}

#[test]
fn the_readme_examples_match_the_contract() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let c = Contract::load();
    let s = Settings::load(None).unwrap();
    let intake = c.named("IntakeBody");
    let created = c.event_validator(&s.amqp.created_routing_key);
    let failed = c.event_validator(&s.amqp.failed_routing_key);
    let resolved = c.event_validator(&s.amqp.resolved_routing_key);
    let matched = c.event_validator(&s.amqp.matched_routing_key);
    for tag in ["intake", "created", "failed", "resolved", "matched"] {
        let blocks = readme_blocks(&readme, tag);
        // The README shows one of each: a missing or mis-tagged block is a defect, not a pass.
        assert!(!blocks.is_empty(), "README.md has no ```json {tag} block");
        for (i, block) in blocks.iter().enumerate() {
            let what = format!("README.md ```json {tag} block {i}");
            let value: Value =
                serde_json::from_str(block).unwrap_or_else(|e| panic!("{what}: {e}"));
            match tag {
                "intake" => {
                    assert_valid(&intake, &value, &what);
                    assert!(
                        validate(object(&value), today()).is_ok(),
                        "{what}: validate refuses it"
                    );
                }
                "created" => assert_valid(&created, &value, &what),
                "resolved" => assert_valid(&resolved, &value, &what),
                "matched" => assert_valid(&matched, &value, &what),
                _ => assert_valid(&failed, &value, &what),
            }
        }
    }
}

#[test]
fn readme_blocks_are_found_by_their_tag() {
    let text = "x\n```json intake\n{\"a\": 1}\n```\n```json\n{}\n```\n```json failed\n[]\n```\n";
    assert_eq!(readme_blocks(text, "intake"), ["{\"a\": 1}\n"]);
    assert_eq!(readme_blocks(text, "failed"), ["[]\n"]);
    assert!(readme_blocks(text, "created").is_empty());
}
