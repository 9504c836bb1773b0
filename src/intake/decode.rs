//! Turns a message body's bytes into a JSON object, and fingerprints bodies for idempotency.
//!
//! Bodies come from outside, so every failure is an [`IntakeError`] (never a panic), and no
//! error message quotes the body: it may hold an SSN.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::error::{ErrorCode, IntakeError};

/// Size and shape limits applied before a body is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Bodies longer than this are refused unparsed.
    pub max_body_bytes: usize,
    /// The deepest nesting of arrays and objects allowed; the top-level object is depth 1.
    pub max_depth: usize,
}

/// The longest duplicate key quoted in an error; keys are not values, but are still caller text.
const MAX_QUOTED_KEY_CHARS: usize = 64;

/// Decodes a body into its top-level JSON object.
///
/// Checks run cheapest first: size, UTF-8, nesting depth (a byte scan, so a body of 100 000 `[`
/// is refused without recursing), then the parse proper, which also refuses duplicate top-level
/// keys: `{"ss_number": "a", "ss_number": "b"}` is ambiguous, and readers disagree on which
/// one wins.
pub fn decode_body(bytes: &[u8], limits: &BodyLimits) -> Result<Map<String, Value>, IntakeError> {
    if bytes.len() > limits.max_body_bytes {
        return Err(too_large(bytes.len(), limits.max_body_bytes));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("body is not valid UTF-8"))?;
    if nesting_exceeds(text.as_bytes(), limits.max_depth) {
        return Err(malformed(format!(
            "body nests arrays and objects deeper than {} levels",
            limits.max_depth
        )));
    }

    let mut duplicate = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = TopLevel {
        duplicate: &mut duplicate,
    }
    .deserialize(&mut de)
    .and_then(|top| de.end().map(|()| top));
    match parsed {
        Ok(Some(map)) => Ok(map),
        Ok(None) => Err(malformed("body must be a JSON object")),
        Err(e) => Err(match duplicate {
            Some(key) => malformed(format!(
                "body has the key {key:?} more than once (line {} column {})",
                e.line(),
                e.column()
            )),
            None => syntax_error(&e),
        }),
    }
}

/// SHA-256 of a body's canonical form, to tell a redelivery from a different body reusing a key.
///
/// A parsed body is re-serialised: serde_json's map is sorted, so whitespace and key order do
/// not change the hash. A body that did not parse is hashed as raw bytes.
pub fn payload_hash(bytes: &[u8], parsed: Option<&Map<String, Value>>) -> [u8; 32] {
    let canonical = parsed.and_then(|map| serde_json::to_vec(map).ok());
    Sha256::digest(canonical.as_deref().unwrap_or(bytes)).into()
}

/// The error of a body of `size` bytes over the limit; names sizes, never content.
pub fn too_large(size: usize, limit: usize) -> IntakeError {
    IntakeError::new(
        ErrorCode::PayloadTooLarge,
        format!("body is {size} bytes, larger than the limit of {limit} bytes"),
    )
}

fn malformed(message: impl Into<String>) -> IntakeError {
    IntakeError::new(ErrorCode::MalformedJson, message)
}

/// Describes a parse failure by position. serde_json's syntax messages do not quote input, but
/// its data errors can ("invalid type: string \"…\""), so only syntax messages are passed on.
fn syntax_error(e: &serde_json::Error) -> IntakeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => malformed(format!("body is not valid JSON: {e}")),
        Category::Data | Category::Io => malformed(format!(
            "body is not valid JSON (line {} column {})",
            e.line(),
            e.column()
        )),
    }
}

/// True when arrays and objects nest deeper than `max_depth`, ignoring brackets inside strings.
/// Works on bytes: in UTF-8 no byte of a multi-byte character equals `"`, `\`, `[` or `{`.
fn nesting_exceeds(bytes: &[u8], max_depth: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            // Unbalanced closers are a syntax error the parser reports; just don't underflow.
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Deserialises the top level: `Some(map)` for an object, `None` for any other JSON value.
/// Duplicate keys fail the parse and are reported through `duplicate`.
struct TopLevel<'d> {
    duplicate: &'d mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Option<Map<String, Value>>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Option<Map<String, Value>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                let quoted: String = key.chars().take(MAX_QUOTED_KEY_CHARS).collect();
                *self.duplicate = Some(quoted);
                return Err(de::Error::custom("duplicate key"));
            }
            let value: Value = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Some(map))
    }

    // Every other JSON type is "not an object"; answering `None` instead of a serde type error
    // keeps the value's text out of the message. Arrays are drained so trailing syntax is
    // still checked.
    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        while access.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: BodyLimits = BodyLimits {
        max_body_bytes: 1024,
        max_depth: 8,
    };

    fn err(bytes: &[u8]) -> IntakeError {
        decode_body(bytes, &LIMITS).expect_err("should fail")
    }

    #[test]
    fn decodes_an_object() {
        let map = decode_body(
            br#" {"first_name": "John", "household": 1001, "x": {"y": [1]}} "#,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(map["first_name"], json!("John"));
        assert_eq!(map["household"], json!(1001));
        assert_eq!(map["x"], json!({"y": [1]}));
        assert_eq!(decode_body(b"{}", &LIMITS).unwrap(), Map::new());
    }

    #[test]
    fn decodes_the_seed_body() {
        let seed = br#"{
            "first_name": "John", "middle_name": "Tom", "last_name": "Smith", "suffix": "Sr",
            "nickname": "Tommy", "date_of_birth": "1950-12-03", "email": "john.smith@example.org",
            "head_of_household": false, "ss_number": "111223333", "street_county": 1,
            "yearly_expenses": 11580, "yearly_income": 15350, "household": 1001
        }"#;
        let map = decode_body(seed, &LIMITS).unwrap();
        assert_eq!(map.len(), 13);
    }

    #[test]
    fn too_large_mentions_the_limit_not_the_body() {
        let limits = BodyLimits {
            max_body_bytes: 10,
            max_depth: 8,
        };
        let body = br#"{"ss_number":"111223333"}"#;
        let e = decode_body(body, &limits).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        assert!(e.message.contains("10 bytes"), "{}", e.message);
        assert!(!e.message.contains("111223333"));
        assert!(e.fields.is_empty());
        // Exactly at the limit is fine.
        assert!(
            decode_body(
                b"{\"a\":12345}",
                &BodyLimits {
                    max_body_bytes: 11,
                    max_depth: 8
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn invalid_utf8() {
        let e = err(b"{\"a\": \"\xff\"}");
        assert_eq!(e.code, ErrorCode::MalformedJson);
        assert_eq!(e.message, "body is not valid UTF-8");
    }

    #[test]
    fn nesting_limit() {
        let ok = format!("{}{}", "[".repeat(7), "]".repeat(7));
        assert!(decode_body(format!(r#"{{"a":{ok}}}"#).as_bytes(), &LIMITS).is_ok());
        let deep = format!("{}{}", "[".repeat(8), "]".repeat(8));
        let e = err(format!(r#"{{"a":{deep}}}"#).as_bytes());
        assert_eq!(e.code, ErrorCode::MalformedJson);
        assert!(e.message.contains("deeper than 8"), "{}", e.message);
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let body = r#"{"a": "[[[[[[[[[[{{{{{{{{{{", "b": "\"[[[[[[[[[[\\"}"#;
        let map = decode_body(body.as_bytes(), &LIMITS).unwrap();
        assert_eq!(map["a"], json!("[[[[[[[[[[{{{{{{{{{{"));
    }

    #[test]
    fn huge_nesting_is_refused_without_recursion() {
        let limits = BodyLimits {
            max_body_bytes: 1 << 20,
            max_depth: 64,
        };
        let e = decode_body("[".repeat(100_000).as_bytes(), &limits).unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedJson);
        let e = decode_body("{\"a\":".repeat(100_000).as_bytes(), &limits).unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedJson);
    }

    #[test]
    fn syntax_errors_give_position_but_not_input() {
        let e = err(b"{\"ss_number\": \"111223333\",,}");
        assert_eq!(e.code, ErrorCode::MalformedJson);
        assert!(
            e.message.starts_with("body is not valid JSON"),
            "{}",
            e.message
        );
        assert!(e.message.contains("line 1 column"), "{}", e.message);
        assert!(!e.message.contains("111223333"));

        let e = err(b"{\"a\": 1");
        assert!(e.message.contains("EOF"), "{}", e.message);
        let e = err(b"");
        assert_eq!(e.code, ErrorCode::MalformedJson);
        let e = err(b"{\"a\": 1} trailing");
        assert!(e.message.contains("trailing"), "{}", e.message);
        assert_eq!(err(b"{\"a\": 1} {}").code, ErrorCode::MalformedJson);
    }

    #[test]
    fn non_objects_are_refused_without_quoting_them() {
        for body in [
            &b"[1, 2]"[..],
            b"\"111-22-3333\"",
            b"111223333",
            b"-1.5",
            b"true",
            b"null",
        ] {
            let e = err(body);
            assert_eq!(e.code, ErrorCode::MalformedJson);
            assert_eq!(e.message, "body must be a JSON object");
        }
        // A non-object followed by garbage is still a syntax error.
        assert!(err(b"[1] x").message.starts_with("body is not valid JSON"));
    }

    #[test]
    fn duplicate_top_level_keys_are_named() {
        let e = err(br#"{"ss_number": "111223333", "first_name": "J", "ss_number": "222334444"}"#);
        assert_eq!(e.code, ErrorCode::MalformedJson);
        assert!(e.message.contains("\"ss_number\""), "{}", e.message);
        assert!(e.message.contains("more than once"), "{}", e.message);
        assert!(!e.message.contains("111223333") && !e.message.contains("222334444"));

        // Escapes that spell the same key are the same key.
        let e = err(br#"{"a": 1, "\u0061": 2}"#);
        assert!(e.message.contains("\"a\""), "{}", e.message);

        let long = "k".repeat(500);
        let e = decode_body(
            format!(r#"{{"{long}":1,"{long}":2}}"#).as_bytes(),
            &BodyLimits {
                max_body_bytes: 4096,
                max_depth: 8,
            },
        )
        .unwrap_err();
        assert!(e.message.len() < 200, "{}", e.message);
    }

    #[test]
    fn nested_duplicates_are_left_to_serde_json() {
        // Only the top level is the case; nested objects are plain values (last one wins).
        let map = decode_body(br#"{"a": {"b": 1, "b": 2}}"#, &LIMITS).unwrap();
        assert_eq!(map["a"], json!({"b": 2}));
    }

    #[test]
    fn hash_ignores_whitespace_and_key_order() {
        let a = br#"{"first_name":"John","last_name":"Smith","x":{"q":1,"p":2}}"#;
        let b = br#"{ "x": {"p": 2, "q": 1},
                      "last_name": "Smith", "first_name": "John" }"#;
        let pa = decode_body(a, &LIMITS).unwrap();
        let pb = decode_body(b, &LIMITS).unwrap();
        assert_eq!(payload_hash(a, Some(&pa)), payload_hash(b, Some(&pb)));

        let c = br#"{"first_name":"Jon","last_name":"Smith","x":{"q":1,"p":2}}"#;
        let pc = decode_body(c, &LIMITS).unwrap();
        assert_ne!(payload_hash(a, Some(&pa)), payload_hash(c, Some(&pc)));
    }

    #[test]
    fn hash_of_unparsed_body_is_sha256_of_the_bytes() {
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            hex::encode(payload_hash(b"abc", None)),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(payload_hash(b"{ }", None), payload_hash(b"{}", None));
        let empty = Map::new();
        assert_eq!(
            payload_hash(b"{ }", Some(&empty)),
            payload_hash(b"{}", None)
        );
    }
}
