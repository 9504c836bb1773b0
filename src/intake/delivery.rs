//! Reads an AMQP delivery into an [`Envelope`]: the checks of every property and header the
//! pipeline uses (key, correlation id, credentials, header nesting, body size), and the retry
//! count that only the service can write.
//!
//! A delivery is input like its body: none of these checks fails the process or the window;
//! an unusable envelope becomes a failed intake with a stable code.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString};
use sha2::{Digest, Sha256};

use crate::domain::error::{ErrorCode, IntakeError, OVERRIDE_HEADER};
use crate::intake::envelope::{
    Attempt, Envelope, KeyProblem, MessageKey, Oversize, check_correlation_id, unsafe_text,
};
use crate::intake::trace::TraceContext;
use crate::store::auth::{TOKEN_HEADERS, hash_token, parse_token_header};
use crate::store::crypto::Vault;

/// The deepest nesting of a header value accepted (a plain value is depth 1, an array of
/// values depth 2). The pipeline reads only flat text headers; deeper values are refused
/// before anything walks them recursively.
pub const MAX_HEADER_DEPTH: usize = 16;

/// How much of an oversized body is kept (sealed, in `failed_intakes`) for an operator to
/// recognise it; the rest is dropped as soon as its size and hash are known.
pub const OVERSIZE_PREFIX_BYTES: usize = 4096;

/// Header carrying the message key when the `message_id` property is absent, for publishers
/// that can set headers but not AMQP properties (matched case-insensitively).
pub const KEY_HEADER: &str = "message-id";

/// Header carrying the correlation id when the `correlation_id` property is absent (matched
/// case-insensitively).
pub const CORRELATION_HEADER: &str = "correlation-id";

/// Header counting how many times an intake went through the retry queue (first delivery: 0).
pub const RETRIES_HEADER: &str = "x-case-intake-retries";

/// Header with the service's tag over the message key and the retry count: a count without a
/// valid tag (set by a publisher) is read as 0.
pub const RETRIES_TAG_HEADER: &str = "x-case-intake-retries-tag";

const RETRIES_DOMAIN: &str = "retries";

/// Builds the envelope of a delivery, taking its body out of it (no copy). Never fails: every
/// problem makes the envelope's attempt [`Attempt::Failing`], the first one found winning.
pub fn envelope_of(delivery: &mut Delivery, max_body_bytes: usize) -> Envelope {
    let props = &delivery.properties;
    let mut problem: Option<IntakeError> = None;

    let headers = props.headers().as_ref();
    let message_key = message_key_of(props, &mut problem);
    let correlation_id = envelope_text(
        props.correlation_id().as_ref().map(|c| c.as_str()),
        headers,
        "correlation_id",
        CORRELATION_HEADER,
    )
    .and_then(|c| check_correlation_id(c.as_deref()));
    let correlation_id = correlation_id.unwrap_or_else(|e| {
        problem.get_or_insert(e);
        None
    });
    let mut token = None;
    let trace = props.headers().as_ref().and_then(TraceContext::of_headers);
    let duplicate_override = duplicate_override_of(headers).unwrap_or_else(|e| {
        problem.get_or_insert(e);
        false
    });
    if let Some(headers) = props.headers() {
        let depth = header_depth(headers);
        if depth > MAX_HEADER_DEPTH {
            problem.get_or_insert(IntakeError::new(
                ErrorCode::InvalidEnvelope,
                format!(
                    "a header value nests {depth} levels deep; the limit is {MAX_HEADER_DEPTH}"
                ),
            ));
        } else {
            match token_of(headers) {
                Ok(t) => token = t,
                Err(e) => {
                    problem.get_or_insert(e);
                }
            }
        }
    }

    let (body, oversize) = body_of(std::mem::take(&mut delivery.data), max_body_bytes);
    Envelope {
        message_key,
        correlation_id,
        token,
        body,
        oversize,
        attempt: problem.map_or(Attempt::Delivered, Attempt::Failing),
        trace,
        duplicate_override,
    }
}

/// The delivery's message key (`message_id`, or the `message-id` header), if it has a usable
/// one; an unusable property (control characters, a wrong type) is the delivery's problem.
fn message_key_of(
    props: &BasicProperties,
    problem: &mut Option<IntakeError>,
) -> Option<MessageKey> {
    let text = envelope_text(
        props.message_id().as_ref().map(|k| k.as_str()),
        props.headers().as_ref(),
        "message_id",
        KEY_HEADER,
    );
    match text {
        Err(e) => {
            problem.get_or_insert(e);
            None
        }
        Ok(None) => None,
        Ok(Some(k)) => match MessageKey::parse(&k) {
            Ok(key) => Some(key),
            Err(KeyProblem::Unsafe) => {
                problem.get_or_insert(unsafe_text("message_id"));
                None
            }
            // No usable key: the intake fails `missing_message_key`.
            Err(KeyProblem::Length) => None,
        },
    }
}

/// The body to keep: all of it, or past `max_body_bytes` a bounded prefix with the size and
/// hash of the whole.
fn body_of(data: Vec<u8>, max_body_bytes: usize) -> (Vec<u8>, Option<Oversize>) {
    if data.len() <= max_body_bytes {
        return (data, None);
    }
    let oversize = Oversize {
        bytes: data.len(),
        sha256: Sha256::digest(&data).into(),
    };
    let mut prefix = data;
    prefix.truncate(OVERSIZE_PREFIX_BYTES.min(max_body_bytes));
    prefix.shrink_to_fit();
    (prefix, Some(oversize))
}

/// The override of the duplicate policy: the header [`OVERRIDE_HEADER`] (name matched
/// case-insensitively) with the text `create`. Any other value, or the header twice with
/// different values, is an unusable envelope: a sender that meant to override must learn that
/// it did not, rather than see its intake rejected again for a reason it thought it had waived.
fn duplicate_override_of(headers: Option<&FieldTable>) -> Result<bool, IntakeError> {
    let Some(headers) = headers else {
        return Ok(false);
    };
    let mut values = headers
        .inner()
        .iter()
        .filter(|(name, _)| name.as_str().eq_ignore_ascii_case(OVERRIDE_HEADER))
        .map(|(_, v)| text_of(v));
    let Some(first) = values.next() else {
        return Ok(false);
    };
    let create = |v: &Option<String>| {
        v.as_deref()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("create"))
    };
    if create(&first) && values.all(|v| create(&v)) {
        return Ok(true);
    }
    Err(IntakeError::new(
        ErrorCode::InvalidEnvelope,
        format!("the {OVERRIDE_HEADER} header must be the text `create` (once) when present"),
    ))
}

/// The deepest nesting among the values of `headers`, computed without recursion (a header
/// may nest tens of thousands of levels within one frame).
pub fn header_depth(headers: &FieldTable) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&AMQPValue, usize)> = headers.inner().values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match value {
            AMQPValue::FieldArray(a) => stack.extend(a.as_slice().iter().map(|v| (v, depth + 1))),
            AMQPValue::FieldTable(t) => stack.extend(t.inner().values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// One envelope text: its AMQP property, or else its header (`header`, any case). Two sources
/// that disagree (the property and a header, or two headers) are refused as
/// `invalid_envelope`, never resolved by picking one; so is a header that is not text.
fn envelope_text(
    property: Option<&str>,
    headers: Option<&FieldTable>,
    property_name: &str,
    header: &str,
) -> Result<Option<String>, IntakeError> {
    let values = headers
        .into_iter()
        .flat_map(|h| h.inner().iter())
        .filter(|(name, _)| name.as_str().eq_ignore_ascii_case(header))
        .map(|(_, value)| text_of(value));
    let mut chosen = property.map(str::to_owned);
    let refuse = |message: String| Err(IntakeError::new(ErrorCode::InvalidEnvelope, message));
    for value in values {
        let Some(value) = value else {
            return refuse(format!("the {header} header must be a text value"));
        };
        match &chosen {
            Some(c) if *c != value => {
                return refuse(format!(
                    "the {property_name} property and the {header} header (or two {header} \
                     headers) differ; send one value"
                ));
            }
            Some(_) => {}
            None => chosen = Some(value),
        }
    }
    Ok(chosen)
}

/// The token of the authorization headers (`authorization` or the seed's `Authorize`, names
/// matched case-insensitively). Several such headers must carry the same value: two different
/// credentials on one message are ambiguous and refused, never resolved by picking one.
fn token_of(headers: &FieldTable) -> Result<Option<[u8; 32]>, IntakeError> {
    let mut values = headers.inner().iter().filter_map(|(name, value)| {
        TOKEN_HEADERS
            .iter()
            .any(|h| name.as_str().eq_ignore_ascii_case(h))
            .then_some(value)
    });
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|v| text_of(v) != text_of(first) || text_of(v).is_none()) {
        return Err(IntakeError::new(
            ErrorCode::Unauthorized,
            "the message carries several authorization headers with different values; send one",
        ));
    }
    Ok(text_of(first)
        .as_deref()
        .and_then(parse_token_header)
        .map(hash_token))
}

/// A header value as text, when it is text.
fn text_of(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// How many times a delivery already went through the retry queue, as written by the service:
/// the count is trusted only with a valid tag over the message key and the count, so a
/// publisher cannot opt a message out of its retries (or into more).
pub fn retries_of(props: &BasicProperties, vault: &Vault) -> u32 {
    let Some(headers) = props.headers() else {
        return 0;
    };
    let (Some(AMQPValue::LongLongInt(n)), Some(AMQPValue::LongString(tag))) = (
        headers.inner().get(RETRIES_HEADER),
        headers.inner().get(RETRIES_TAG_HEADER),
    ) else {
        return 0;
    };
    let Ok(count) = u32::try_from(*n) else {
        return 0;
    };
    let key = message_id_bytes(props);
    let tag = hex::decode(tag.as_bytes()).unwrap_or_default();
    if vault.verify_tag(RETRIES_DOMAIN, &[key, &count.to_be_bytes()], &tag) {
        count
    } else {
        0
    }
}

/// The headers for a delivery's next trip through the retry queue: the publisher's headers
/// with the service's count and tag (any publisher-set values replaced).
pub fn retry_headers(props: &BasicProperties, vault: &Vault, count: u32) -> FieldTable {
    let mut headers = props.headers().clone().unwrap_or_default();
    let tag = vault.tag(
        RETRIES_DOMAIN,
        &[message_id_bytes(props), &count.to_be_bytes()],
    );
    headers.insert(RETRIES_HEADER.into(), AMQPValue::LongLongInt(count.into()));
    headers.insert(
        RETRIES_TAG_HEADER.into(),
        AMQPValue::LongString(LongString::from(hex::encode(tag).into_bytes())),
    );
    headers
}

/// The bytes of the key a retry tag is bound to: the `message_id` property, or else the key
/// header (a delivery whose key the pipeline refused never reaches the retry queue).
fn message_id_bytes(props: &BasicProperties) -> &[u8] {
    if let Some(k) = props.message_id() {
        return k.as_str().as_bytes();
    }
    let header = props.headers().as_ref().and_then(|h| {
        h.inner()
            .iter()
            .find(|(name, _)| name.as_str().eq_ignore_ascii_case(KEY_HEADER))
    });
    match header {
        Some((_, AMQPValue::LongString(s))) => s.as_bytes(),
        Some((_, AMQPValue::ShortString(s))) => s.as_str().as_bytes(),
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::settings::Settings;
    use crate::infra::stack;
    use lapin::types::FieldArray;
    use lapin::types::parsing::parse_field_table;

    fn vault() -> Vault {
        Vault::from_settings(&Settings::load(None).unwrap().crypto).unwrap()
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
    }

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn nested(depth: usize) -> AMQPValue {
        let mut v = AMQPValue::Boolean(true);
        for _ in 1..depth {
            v = AMQPValue::FieldArray(FieldArray::from(vec![v]));
        }
        v
    }

    #[test]
    fn depth_counts_arrays_and_tables() {
        assert_eq!(header_depth(&FieldTable::default()), 0);
        assert_eq!(header_depth(&table(&[("a", text("x"))])), 1);
        assert_eq!(header_depth(&table(&[("a", nested(5))])), 5);
        let inner = AMQPValue::FieldTable(table(&[("b", nested(3))]));
        assert_eq!(header_depth(&table(&[("a", text("x")), ("t", inner)])), 4);
    }

    #[test]
    fn depth_is_measured_without_recursion() {
        // A thread with a small stack walks a value far deeper than it could recurse into.
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                // Built in place: `table` would clone the value, recursively.
                let mut t = FieldTable::default();
                t.insert("deep".into(), nested(50_000));
                let depth = header_depth(&t);
                // Dropping the value recurses; keep that off this small stack.
                std::mem::forget(t);
                depth
            })
            .unwrap();
        assert_eq!(handle.join().unwrap(), 50_000);
    }

    #[test]
    fn one_token_or_the_same_token_twice() {
        let t = table(&[("authorization", text("Token abc"))]);
        assert_eq!(token_of(&t).unwrap(), Some(hash_token("abc")));
        let t = table(&[("Authorize", text("token abc"))]);
        assert_eq!(token_of(&t).unwrap(), Some(hash_token("abc")));
        let t = table(&[
            ("authorization", text("Token abc")),
            ("Authorize", text("Token abc")),
        ]);
        assert_eq!(token_of(&t).unwrap(), Some(hash_token("abc")));
        assert_eq!(token_of(&table(&[("x", text("Token abc"))])).unwrap(), None);
        let t = table(&[("authorization", text("Bearer abc"))]);
        assert_eq!(token_of(&t).unwrap(), None);
    }

    #[test]
    fn the_key_header_stands_in_for_the_property() {
        let text_of =
            |p: Option<&str>, t: &FieldTable| envelope_text(p, Some(t), "message_id", KEY_HEADER);
        let empty = FieldTable::default();
        assert_eq!(text_of(Some("k"), &empty).unwrap().as_deref(), Some("k"));
        assert_eq!(text_of(None, &empty).unwrap(), None);
        let t = table(&[("Message-ID", text("k"))]);
        assert_eq!(text_of(None, &t).unwrap().as_deref(), Some("k"));
        assert_eq!(text_of(Some("k"), &t).unwrap().as_deref(), Some("k"));
        // Disagreeing sources, or a header that is not text, are refused, never picked from.
        let refused = [
            text_of(Some("other"), &t),
            text_of(
                None,
                &table(&[("message-id", text("a")), ("MESSAGE-ID", text("b"))]),
            ),
            text_of(None, &table(&[("message-id", AMQPValue::LongLongInt(7))])),
        ];
        for r in refused {
            assert_eq!(r.unwrap_err().code, ErrorCode::InvalidEnvelope);
        }
        assert_eq!(
            envelope_text(None, None, "correlation_id", CORRELATION_HEADER),
            Ok(None)
        );
    }

    #[test]
    fn a_header_key_binds_the_retry_tag() {
        let v = vault();
        let keyed =
            |k: &str| BasicProperties::default().with_headers(table(&[(KEY_HEADER, text(k))]));
        let props = keyed("k-1");
        let ours = props.clone().with_headers({
            let mut h = retry_headers(&props, &v, 2);
            h.insert(KEY_HEADER.into(), text("k-1"));
            h
        });
        assert_eq!(retries_of(&ours, &v), 2);
        let mut moved = retry_headers(&props, &v, 2);
        moved.insert(KEY_HEADER.into(), text("k-2"));
        assert_eq!(retries_of(&keyed("k-2").with_headers(moved), &v), 0);
    }

    #[test]
    fn different_credentials_are_ambiguous() {
        for other in [text("Token def"), AMQPValue::LongLongInt(1), text("")] {
            let t = table(&[("authorization", text("Token abc")), ("Authorize", other)]);
            let e = token_of(&t).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert!(!e.message.contains("abc"));
        }
    }

    #[test]
    fn retry_counts_need_the_service_tag() {
        let v = vault();
        let props = BasicProperties::default().with_message_id("k-1".into());
        assert_eq!(retries_of(&props, &v), 0);

        let ours = props.clone().with_headers(retry_headers(&props, &v, 3));
        assert_eq!(retries_of(&ours, &v), 3);

        // A publisher's count, with or without a made-up tag, counts as 0.
        let forged = props.clone().with_headers(table(&[
            (RETRIES_HEADER, AMQPValue::LongLongInt(999)),
            (RETRIES_TAG_HEADER, text(&"00".repeat(32))),
        ]));
        assert_eq!(retries_of(&forged, &v), 0);
        let bare = props
            .clone()
            .with_headers(table(&[(RETRIES_HEADER, AMQPValue::LongLongInt(999))]));
        assert_eq!(retries_of(&bare, &v), 0);

        // A tag is bound to its key and count.
        let moved = BasicProperties::default()
            .with_message_id("k-2".into())
            .with_headers(retry_headers(&props, &v, 3));
        assert_eq!(retries_of(&moved, &v), 0);
        let mut raised = retry_headers(&props, &v, 3);
        raised.insert(RETRIES_HEADER.into(), AMQPValue::LongLongInt(4));
        assert_eq!(retries_of(&props.clone().with_headers(raised), &v), 0);
    }

    // The stack sizes of src/infra/stack.rs, held to the deepest header a frame can hold.

    /// A header table `{"h": [[[…]]]}` (or tables `{"x": {"x": …}}`) filling `bytes`.
    fn deepest_table(bytes: usize, tables: bool) -> (Vec<u8>, usize) {
        let level = if tables { 7 } else { 5 };
        let depth = (bytes - 16) / level;
        let mut value: Vec<u8> = vec![b'A', 0, 0, 0, 0];
        for _ in 0..depth {
            let mut outer = Vec::with_capacity(value.len() + level);
            if tables {
                outer.push(b'F');
                outer.extend((value.len() as u32 + 2).to_be_bytes());
                outer.extend([1, b'x']);
            } else {
                outer.push(b'A');
                outer.extend((value.len() as u32).to_be_bytes());
            }
            outer.extend(&value);
            value = outer;
        }
        let mut table = Vec::with_capacity(value.len() + 6);
        table.extend((value.len() as u32 + 2).to_be_bytes());
        table.extend([1, b'h']);
        table.extend(&value);
        (table, depth)
    }

    #[test]
    fn the_io_stack_parses_the_deepest_header_a_frame_can_hold() {
        for tables in [false, true] {
            let (bytes, depth) = deepest_table(stack::FRAME_MAX as usize, tables);
            assert!(bytes.len() <= stack::FRAME_MAX as usize);
            assert!(depth <= stack::MAX_FRAME_DEPTH);
            let parsed = std::thread::Builder::new()
                .stack_size(stack::IO_THREAD_STACK_BYTES)
                .spawn(move || parse_field_table(bytes.as_slice()).map(|(_, t)| t).ok())
                .unwrap()
                .join()
                .unwrap()
                .expect("a well-formed table parses");
            let seen = header_depth(&parsed);
            assert_eq!(seen, depth + 1);
            // Dropping it recurses too: on a runtime-sized stack.
            std::thread::Builder::new()
                .stack_size(stack::RUNTIME_THREAD_STACK_BYTES)
                .spawn(move || drop(parsed))
                .unwrap()
                .join()
                .unwrap();
        }
    }
}
