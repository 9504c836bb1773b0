//! The unit tests of `intake::validate`, kept beside it so that the module reads as its rules.

use super::*;
use serde_json::json;

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 6, 15).unwrap()
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

/// The seed's example body (the harness's fixture), naming household 1001 and county 1.
fn seed() -> Map<String, Value> {
    let mut v: Value =
        serde_json::from_str(include_str!("../../../harness/fixtures/seed-body.json")).unwrap();
    v["household"] = json!(1001);
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn minimal() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("first_name".into(), json!("John"));
    m.insert("last_name".into(), json!("Smith"));
    m
}

fn with(mut body: Map<String, Value>, field: &str, value: Value) -> Map<String, Value> {
    body.insert(field.to_owned(), value);
    body
}

/// The errors of a body expected to fail.
fn errors(body: &Map<String, Value>) -> FieldErrors {
    validate(body, today()).expect_err("body should be invalid")
}

/// Asserts that setting `field` to `value` on the seed fails with exactly `message` there.
fn assert_field_error(field: &str, value: Value, message: &str) {
    let errs = errors(&with(seed(), field, value.clone()));
    assert_eq!(
        errs,
        FieldErrors::from([(field.to_owned(), vec![message.to_owned()])]),
        "{field} = {value}"
    );
}

/// The validated case when setting `field` to `value` on the seed is accepted.
fn accepted(field: &str, value: Value) -> CaseInput {
    validate(&with(seed(), field, value), today())
        .expect("should be valid")
        .case
}

#[test]
fn seed_body_validates_completely() {
    let v = validate(&seed(), today()).unwrap();
    assert!(v.warnings.is_empty());
    let c = v.case;
    assert_eq!(
        c,
        CaseInput {
            first_name: "John".into(),
            middle_name: Some("Tom".into()),
            last_name: "Smith".into(),
            suffix: Some("Sr".into()),
            nickname: Some("Tommy".into()),
            date_of_birth: Some(date(1950, 12, 3)),
            email: Some("john.smith@example.org".into()),
            head_of_household: false,
            mailing_address: Some("123 Adams Street".into()),
            mailing_apt_number: Some("Apt 45".into()),
            mailing_city: Some("Exampleville".into()),
            mailing_state: Some("NY".into()),
            mailing_zip_code: Some("12345".into()),
            ss_number: Some(Ssn::parse("111223333").unwrap()),
            street_address: Some("123 Adams Street".into()),
            street_apt_number: Some("Apt 45".into()),
            street_city: Some("Exampleville".into()),
            street_state: Some("NY".into()),
            street_zip_code: Some("12345".into()),
            street_county: Some(1),
            yearly_expenses: Some(Money::from_cents(1_158_000)),
            yearly_income: Some(Money::from_cents(1_535_000)),
            deceased: false,
            private: false,
            household: Some(1001),
        }
    );
    assert_eq!(c.ss_number.as_ref().unwrap().masked(), "*****3333");
}

#[test]
fn the_seed_page_placeholder_email_is_rejected() {
    assert_field_error(
        "email",
        json!("[email protected]"),
        "must be a valid email address",
    );
}

#[test]
fn minimal_body_has_defaults() {
    let c = validate(&minimal(), today()).unwrap().case;
    assert_eq!(c.first_name, "John");
    assert_eq!(c.last_name, "Smith");
    assert_eq!(c.middle_name, None);
    assert_eq!(c.date_of_birth, None);
    assert_eq!(c.ss_number, None);
    assert_eq!(c.yearly_income, None);
    assert_eq!(c.household, None);
    assert!(!c.head_of_household && !c.deceased && !c.private);
}

#[test]
fn names_are_required() {
    let errs = errors(&Map::new());
    assert_eq!(errs["first_name"], vec!["is required"]);
    assert_eq!(errs["last_name"], vec!["is required"]);
    assert_eq!(errs.len(), 2);
    assert_field_error("first_name", json!(null), "is required");
    assert_field_error("last_name", json!("   "), "is required");
    assert_field_error("first_name", json!(""), "is required");
}

#[test]
fn null_and_blank_are_absent_for_every_optional_field() {
    for field in fields::KNOWN_FIELDS {
        if field == "first_name" || field == "last_name" {
            continue;
        }
        let from_null = validate(&with(minimal(), field, Value::Null), today());
        assert_eq!(from_null, validate(&minimal(), today()), "{field}");
    }
    // Every optional text field (the required names have their own rule).
    let optional = text_fields().filter(|f| !["first_name", "last_name"].contains(f));
    for field in optional {
        let from_blank = validate(&with(minimal(), field, json!(" \t ")), today());
        assert_eq!(from_blank, validate(&minimal(), today()), "{field}");
    }
}

#[test]
fn strings_are_trimmed() {
    let c = accepted("first_name", json!("  John \n"));
    assert_eq!(c.first_name, "John");
    let c = accepted("email", json!(" john.smith@example.org "));
    assert_eq!(c.email.as_deref(), Some("john.smith@example.org"));
    let c = accepted("ss_number", json!(" 111-22-3333 "));
    assert_eq!(c.ss_number.unwrap().digits(), "111223333");
}

#[test]
fn text_fields_must_be_strings() {
    for field in text_fields() {
        for value in [json!(1), json!(true), json!(["x"]), json!({"x": "y"})] {
            assert_field_error(field, value, "must be a string");
        }
    }
    // An SSN sent as a number is still refused: leading zeros would have been lost.
    assert_field_error("ss_number", json!(111_223_333), "must be a string");
}

#[test]
fn control_characters_are_rejected() {
    for value in [
        "Jo\u{0}hn",
        "Jo\nhn",
        "Jo\thn",
        "Jo\u{1b}hn",
        "Jo\u{7f}hn",
        "Jo\u{85}hn",
    ] {
        assert_field_error(
            "first_name",
            json!(value),
            "must not contain control characters",
        );
        assert_field_error(
            "mailing_city",
            json!(value),
            "must not contain control characters",
        );
    }
    assert_field_error(
        "ss_number",
        json!("111\u{0}223333"),
        "must not contain control characters",
    );
    // Non-control Unicode is fine.
    assert_eq!(
        accepted("last_name", json!("Müller-Łukasz 王")).last_name,
        "Müller-Łukasz 王"
    );
}

/// The fields read as something other than text: flags, record ids and money.
const FLAG_FIELDS: [&str; 3] = ["head_of_household", "deceased", "private"];
const ID_FIELDS: [&str; 2] = ["street_county", "household"];
const MONEY_FIELDS: [&str; 2] = ["yearly_expenses", "yearly_income"];

/// The names and their length limits (a name also needs a visible character).
const NAME_LIMITS: [(&str, usize); 5] = [
    ("first_name", 100),
    ("middle_name", 100),
    ("last_name", 100),
    ("nickname", 100),
    ("suffix", 20),
];

/// The other free-text fields and their length limits.
const TEXT_LIMITS: [(&str, usize); 6] = [
    ("mailing_address", 200),
    ("street_address", 200),
    ("mailing_apt_number", 50),
    ("street_apt_number", 50),
    ("mailing_city", 100),
    ("street_city", 100),
];

/// Every field read as text: each accepted field that is not a flag, an id or money.
fn text_fields() -> impl Iterator<Item = &'static str> {
    let not_text = [FLAG_FIELDS.as_slice(), &ID_FIELDS, &MONEY_FIELDS].concat();
    fields::KNOWN_FIELDS
        .into_iter()
        .filter(move |f| !not_text.contains(f))
}

#[test]
fn eighteen_fields_are_read_as_text() {
    // Pinned so that a field moving out of (or into) the text readers is noticed here.
    assert_eq!(text_fields().count(), 18);
    for (field, _) in NAME_LIMITS.iter().chain(&TEXT_LIMITS) {
        assert!(text_fields().any(|f| f == *field), "{field}");
    }
}

#[test]
fn names_need_a_visible_character() {
    for (field, _) in NAME_LIMITS {
        for value in [
            "\u{200B}",
            " \u{200B}\u{200C} ",
            "\u{200D}",
            "\u{2060}",
            "\u{FEFF}",
            "\u{00AD}\u{3164}",
            "\u{E0041}",
        ] {
            assert_field_error(field, json!(value), "must contain a visible character");
        }
    }
    // Joiners inside a name are legitimate (Persian, Indic scripts, emoji sequences).
    assert_eq!(
        accepted("first_name", json!("Mi\u{200C}ran")).first_name,
        "Mi\u{200C}ran"
    );
    // Whitespace alone stays "absent", as before.
    assert_field_error("first_name", json!(" \u{3000} "), "is required");
}

#[test]
fn bidi_controls_are_rejected_in_every_text_field() {
    for field in text_fields() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            assert_field_error(
                field,
                json!(format!("ab{c}cd")),
                "must not contain bidirectional control characters",
            );
        }
    }
}

#[test]
fn c1_and_other_controls_are_rejected_in_every_text_field() {
    for field in text_fields() {
        for c in [
            '\u{1}', '\u{7}', '\u{1b}', '\u{7f}', '\u{80}', '\u{9b}', '\u{9f}',
        ] {
            assert_field_error(
                field,
                json!(format!("ab{c}cd")),
                "must not contain control characters",
            );
        }
    }
}

#[test]
fn a_nul_anywhere_is_an_error_on_its_top_level_key() {
    let nul = "must not contain NUL characters (U+0000), in keys or values at any depth";
    let unknown = "is not a recognized field";
    // In an unknown key: the key is named with the NUL escaped.
    let errs = errors(&with(seed(), "a\u{0}b", json!(1)));
    assert_eq!(
        errs,
        FieldErrors::from([(r"a\u{0}b".to_owned(), vec![unknown.into(), nul.into()])])
    );
    // Nested in a known field's value, in a key or a string (keys are checked first).
    let errs = errors(&with(seed(), "private", json!({"x": [{"y\u{0}": 1}]})));
    assert_eq!(errs["private"], vec![nul, "must be true or false"]);
    let errs = errors(&with(seed(), "mailing_city", json!(["ok", ["\u{0}"]])));
    assert_eq!(errs["mailing_city"], vec![nul, "must be a string"]);
    // A known text field's own string: one error, the control-character one.
    assert_field_error(
        "first_name",
        json!("Jo\u{0}hn"),
        "must not contain control characters",
    );
    // In a read-only field, even deep down (the decoder allows 32 levels by default).
    let mut deep = json!("\u{0}");
    for _ in 0..30 {
        deep = json!({ "k": [deep] });
    }
    let errs = errors(&with(seed(), "import_id", deep));
    assert_eq!(
        errs["import_id"],
        vec!["is read-only and set by the system", nul]
    );
    // Whatever the body, no NUL reaches the error that is stored and published.
    let mut body = seed();
    body.insert("\u{0}".into(), json!("\u{0}"));
    body.insert("x".into(), json!({"\u{0}": "\u{0}"}));
    let text = serde_json::to_string(&errors(&body)).unwrap();
    assert!(!text.contains("\\u0000"), "{text}");
    assert!(text.contains(r#""\\u{0}""#), "{text}");
}

#[test]
fn field_names_in_errors_are_escaped_and_masked() {
    let errs = errors(&with(seed(), "\u{1b}[31mX\u{7}", json!(1)));
    assert!(errs.contains_key(r"\u{1b}[31mX\u{7}"), "{errs:?}");
    let errs = errors(&with(seed(), "x\u{202E}y\u{200B}", json!(1)));
    assert!(errs.contains_key(r"x\u{202e}y\u{200b}"), "{errs:?}");
    for ssn in ["123-45-6789", "123456789", "123 45 6789"] {
        let errs = errors(&with(seed(), ssn, json!(1)));
        assert_eq!(
            errs,
            FieldErrors::from([(
                "*****6789".to_owned(),
                vec!["is not a recognized field".to_owned()]
            )])
        );
    }
}

#[test]
fn length_limits_in_characters() {
    for &(field, max) in NAME_LIMITS.iter().chain(&TEXT_LIMITS) {
        // Multi-byte characters: the limit is characters, not bytes.
        accepted(field, json!("é".repeat(max)));
        accepted(field, json!(format!("  {}  ", "a".repeat(max))));
        assert_field_error(
            field,
            json!("é".repeat(max + 1)),
            &format!("must be at most {max} characters"),
        );
    }
    let local = "a".repeat(64);
    let label = "b".repeat(63);
    let long_email = format!("{local}@{label}.{label}.{}", "c".repeat(62));
    assert_eq!(long_email.chars().count(), 255);
    assert_field_error("email", json!(long_email), "must be at most 254 characters");
    let ok_email = format!("{local}@{label}.{label}.{}", "c".repeat(61));
    assert_eq!(ok_email.chars().count(), 254);
    assert_eq!(
        accepted("email", json!(ok_email.clone())).email,
        Some(ok_email)
    );
}

#[test]
fn read_only_and_unknown_fields() {
    // The list itself is held to the published contract by tests/contract.rs.
    for field in fields::READ_ONLY_FIELDS {
        assert_field_error(field, json!(5), "is read-only and set by the system");
        assert_field_error(field, json!(null), "is read-only and set by the system");
    }
    for field in ["firstname", "First_Name", "ssn", "", "household_id"] {
        assert_field_error(field, json!("x"), "is not a recognized field");
    }
}

#[test]
fn date_of_birth_format() {
    assert_eq!(
        accepted("date_of_birth", json!("2000-02-29")).date_of_birth,
        Some(date(2000, 2, 29))
    );
    for bad in [
        "2001-02-29",
        "1950-13-01",
        "1950-12-32",
        "1950-1-03",
        "1950-12-3",
        "50-12-03",
        "1950/12/03",
        "12/03/1950",
        "1950-12-03T00:00:00",
        "+950-12-03",
        "19501203",
        "1950-12-0x",
        "December 3, 1950",
    ] {
        assert_field_error(
            "date_of_birth",
            json!(bad),
            "must be a date in the form YYYY-MM-DD",
        );
    }
}

#[test]
fn date_of_birth_in_the_future() {
    assert_eq!(
        accepted("date_of_birth", json!("2025-06-15")).date_of_birth,
        Some(today())
    );
    assert_field_error(
        "date_of_birth",
        json!("2025-06-16"),
        "must not be in the future",
    );
    assert_field_error(
        "date_of_birth",
        json!("9999-12-31"),
        "must not be in the future",
    );
}

#[test]
fn very_old_birth_dates_are_accepted_with_a_warning() {
    let v = validate(&with(seed(), "date_of_birth", json!("1914-12-31")), today()).unwrap();
    assert_eq!(v.case.date_of_birth, Some(date(1914, 12, 31)));
    assert_eq!(v.warnings.len(), 1);
    let w = &v.warnings[0];
    assert_eq!(w.field, "date_of_birth");
    assert_eq!(w.code, "date_of_birth_before_1915");
    assert!(!w.message.is_empty() && !w.message.contains("1914-12-31"));
    assert_eq!(
        serde_json::to_value(w).unwrap(),
        json!({"field": "date_of_birth", "code": "date_of_birth_before_1915", "message": w.message})
    );

    let v = validate(&with(seed(), "date_of_birth", json!("0001-01-01")), today()).unwrap();
    assert_eq!(v.warnings.len(), 1);
    let v = validate(&with(seed(), "date_of_birth", json!("1915-01-01")), today()).unwrap();
    assert!(v.warnings.is_empty());
}

#[test]
fn email_syntax() {
    assert_eq!(
        accepted("email", json!("A.B+c@Sub.Example.org"))
            .email
            .as_deref(),
        Some("A.B+c@Sub.Example.org")
    );
    for bad in [
        "john",
        "john@example",
        "@example.org",
        "a@b@example.org",
        "john@exa_mple.org",
        "jo hn@example.org",
    ] {
        assert_field_error("email", json!(bad), "must be a valid email address");
    }
}

#[test]
fn ss_number_rules() {
    let c = accepted("ss_number", json!("123-45-6789"));
    assert_eq!(c.ss_number.as_ref().unwrap().digits(), "123456789");
    assert_eq!(c.ss_number.as_ref().unwrap().last4(), "6789");
    assert_field_error(
        "ss_number",
        json!("12345678"),
        "must be 9 digits, dashes allowed",
    );
    assert_field_error(
        "ss_number",
        json!("123 45 6789"),
        "must be 9 digits, dashes allowed",
    );
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
    ] {
        assert_field_error("ss_number", json!(bad), "is not a number the SSA issues");
    }
}

#[test]
fn states_are_uppercased() {
    let c = validate(
        &with(
            with(seed(), "mailing_state", json!("ny")),
            "street_state",
            json!(" pr "),
        ),
        today(),
    )
    .unwrap()
    .case;
    assert_eq!(c.mailing_state.as_deref(), Some("NY"));
    assert_eq!(c.street_state.as_deref(), Some("PR"));
    assert_eq!(
        accepted("street_state", json!("ap"))
            .street_state
            .as_deref(),
        Some("AP")
    );
    for field in ["mailing_state", "street_state"] {
        for bad in ["XX", "New York", "N"] {
            assert_field_error(field, json!(bad), "must be a USPS state code");
        }
    }
}

#[test]
fn zip_codes() {
    for field in ["mailing_zip_code", "street_zip_code"] {
        accepted(field, json!("12345-6789"));
        for bad in ["1234", "123456", "12345-67", "12345 6789", "ABCDE"] {
            assert_field_error(
                field,
                json!(bad),
                "must be a ZIP code (12345 or 12345-6789)",
            );
        }
        assert_field_error(field, json!(12345), "must be a string");
    }
}

#[test]
fn county_and_household_ids() {
    assert_eq!(
        accepted("household", json!(i64::MAX)).household,
        Some(i64::MAX)
    );
    assert_eq!(accepted("street_county", json!(7)).street_county, Some(7));
    for field in ID_FIELDS {
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!(1.0),
            json!("1"),
            json!(u64::MAX),
            json!(true),
        ] {
            assert_field_error(field, bad, "must be a positive integer id");
        }
    }
}

#[test]
fn money_fields() {
    for field in MONEY_FIELDS {
        let get = |c: CaseInput| {
            if field == "yearly_income" {
                c.yearly_income
            } else {
                c.yearly_expenses
            }
        };
        assert_eq!(get(accepted(field, json!(0))), Some(Money::from_cents(0)));
        assert_eq!(
            get(accepted(field, json!(15350.5))),
            Some(Money::from_cents(1_535_050))
        );
        assert_eq!(
            get(accepted(field, json!(0.29))),
            Some(Money::from_cents(29))
        );
        assert_eq!(
            get(accepted(field, json!(999_999_999_999.99))),
            Some(Money::from_cents(99_999_999_999_999))
        );
        assert_field_error(field, json!(-1), "must not be negative");
        assert_field_error(field, json!(-0.5), "must not be negative");
        assert_field_error(field, json!(1.005), "must have at most 2 decimal places");
        assert_field_error(
            field,
            json!(0.1 + 0.2),
            "must have at most 2 decimal places",
        );
        assert_field_error(field, json!(1_000_000_000_000_u64), "is too large");
        assert_field_error(field, json!(1e300), "is too large");
        assert_field_error(field, json!("15350"), "must be a number");
        assert_field_error(field, json!(false), "must be a number");
    }
}

#[test]
fn booleans() {
    for field in FLAG_FIELDS {
        let c = accepted(field, json!(true));
        let got = match field {
            "head_of_household" => c.head_of_household,
            "deceased" => c.deceased,
            _ => c.private,
        };
        assert!(got, "{field}");
        for bad in [json!("true"), json!(1), json!(0), json!("false"), json!([])] {
            assert_field_error(field, bad, "must be true or false");
        }
    }
}

#[test]
fn every_error_is_collected_at_once() {
    let mut body = seed();
    body.remove("first_name");
    body.insert("last_name".into(), json!(42));
    body.insert("date_of_birth".into(), json!("2099-01-01"));
    body.insert("email".into(), json!("nope"));
    body.insert("ss_number".into(), json!("666-12-3456"));
    body.insert("mailing_state".into(), json!("ZZ"));
    body.insert("street_zip_code".into(), json!("1"));
    body.insert("street_county".into(), json!(0));
    body.insert("yearly_income".into(), json!(-5));
    body.insert("private".into(), json!("yes"));
    body.insert("id".into(), json!(9));
    body.insert("favourite_colour".into(), json!("blue"));
    let errs = errors(&body);
    let expected: FieldErrors = [
        ("first_name", "is required"),
        ("last_name", "must be a string"),
        ("date_of_birth", "must not be in the future"),
        ("email", "must be a valid email address"),
        ("ss_number", "is not a number the SSA issues"),
        ("mailing_state", "must be a USPS state code"),
        (
            "street_zip_code",
            "must be a ZIP code (12345 or 12345-6789)",
        ),
        ("street_county", "must be a positive integer id"),
        ("yearly_income", "must not be negative"),
        ("private", "must be true or false"),
        ("id", "is read-only and set by the system"),
        ("favourite_colour", "is not a recognized field"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), vec![v.to_owned()]))
    .collect();
    assert_eq!(errs, expected);
}

#[test]
fn error_messages_never_contain_submitted_values() {
    let secret = "987-65-4321";
    let mut body = Map::new();
    for field in fields::KNOWN_FIELDS
        .iter()
        .chain(fields::READ_ONLY_FIELDS.iter())
    {
        body.insert((*field).to_owned(), json!(secret));
    }
    let errs = errors(&body);
    let all = serde_json::to_string(&errs).unwrap();
    assert!(!all.contains("987"), "{all}");
    assert!(!all.contains("4321"), "{all}");
    // A valid SSN never shows up in a Debug of the whole case either.
    let v = validate(&with(seed(), "ss_number", json!("123-45-6789")), today()).unwrap();
    let debug = format!("{v:?}");
    assert!(
        !debug.contains("123456789") && debug.contains("*****6789"),
        "{debug}"
    );
}
