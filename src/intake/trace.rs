//! W3C Trace Context (`traceparent`, `tracestate`) read from an intake's headers. A trace
//! context is carried, never required: a header that does not follow the format exactly is
//! ignored (never an error, never logged), and the intake goes on without it.

use lapin::types::{AMQPValue, FieldTable};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` kept (the W3C limit a platform must propagate).
const MAX_TRACESTATE_BYTES: usize = 512;
/// The most list members a `tracestate` may hold.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A validated trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase.
    pub traceparent: String,
    /// Kept only beside a valid `traceparent`, and only when well-formed.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Builds a context from header texts; `None` unless `traceparent` is valid.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        valid_traceparent(traceparent).then(|| Self {
            traceparent: traceparent.to_owned(),
            tracestate: tracestate
                .filter(|s| valid_tracestate(s))
                .map(str::to_owned),
        })
    }

    /// The 32-hex trace id, as logged.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The context of a delivery's headers (names matched case-insensitively). Several
    /// `traceparent` headers with different values are ambiguous: then none is kept.
    pub fn of_headers(headers: &FieldTable) -> Option<Self> {
        let parent = single_text(headers, TRACEPARENT)?;
        let state = single_text(headers, TRACESTATE);
        Self::parse(&parent, state.as_deref())
    }
}

/// The one text value of the headers named `name` (any case); `None` when absent, not text,
/// or given several different values.
fn single_text(headers: &FieldTable, name: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for (k, v) in headers.inner() {
        if !k.as_str().eq_ignore_ascii_case(name) {
            continue;
        }
        let text = match v {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.to_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            _ => return None,
        };
        match &found {
            Some(f) if *f != text => return None,
            _ => found = Some(text),
        }
    }
    found
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Version 00 exactly: `00-` 32 hex (not all zeros) `-` 16 hex (not all zeros) `-` 2 hex.
fn valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [version, trace_id, parent_id, flags] = parts.as_slice() else {
        return false;
    };
    *version == "00"
        && trace_id.len() == 32
        && parent_id.len() == 16
        && flags.len() == 2
        && [trace_id, parent_id, flags].iter().all(|p| is_lower_hex(p))
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0')
}

/// At most 512 bytes and 32 list members, each `key=value` as the W3C grammar has them
/// (empty members between commas are allowed).
fn valid_tracestate(s: &str) -> bool {
    if s.len() > MAX_TRACESTATE_BYTES {
        return false;
    }
    let members: Vec<&str> = s
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .collect();
    members.len() <= MAX_TRACESTATE_MEMBERS
        && members.iter().all(|m| match m.split_once('=') {
            Some((key, value)) => valid_key(key) && valid_value(value),
            None => false,
        })
}

/// `simple-key` or `tenant@system`: lowercase letters, digits, `_ - * /`, starting with a
/// letter or digit (a tenant id may start with a digit; a system id starts with a letter).
fn valid_key(key: &str) -> bool {
    let part = |p: &str, max: usize, digit_first: bool| {
        let mut bytes = p.bytes();
        let first_ok = match bytes.next() {
            Some(b) => b.is_ascii_lowercase() || (digit_first && b.is_ascii_digit()),
            None => false,
        };
        first_ok
            && p.len() <= max
            && bytes.all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'-' | b'*' | b'/')
            })
    };
    match key.split_once('@') {
        Some((tenant, system)) => part(tenant, 241, true) && part(system, 14, false),
        None => part(key, 256, true),
    }
}

/// 1 to 256 printable ASCII characters other than `,` and `=`, not ending in a space (spaces
/// around a member are the list's optional whitespace, trimmed before this check).
fn valid_value(value: &str) -> bool {
    (1..=256).contains(&value.len())
        && value
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && !value.ends_with(' ')
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(
                (*k).into(),
                AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
            );
        }
        t
    }

    #[test]
    fn a_valid_traceparent_is_kept_with_its_trace_id() {
        let t = TraceContext::parse(GOOD, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad}");
        }
    }

    #[test]
    fn a_malformed_tracestate_is_dropped_alone() {
        for bad in [
            "no-equals",
            "UPPER=x",
            "k=",
            "k=a,b",
            "k=a\u{1}b",
            "k=é",
            &format!("k={}", "v".repeat(600)),
            &(0..33)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(","),
        ] {
            let t = TraceContext::parse(GOOD, Some(bad)).unwrap();
            assert_eq!(t.tracestate, None, "{bad}");
        }
        for good in [
            "a=1",
            "a=1, b@vendor=2 ,,",
            "t61rcwkgmze@rojo=00f067aa0ba902b7",
        ] {
            let t = TraceContext::parse(GOOD, Some(good)).unwrap();
            assert_eq!(t.tracestate.as_deref(), Some(good));
        }
    }

    #[test]
    fn headers_are_matched_case_insensitively_and_must_agree() {
        let t = TraceContext::of_headers(&headers(&[("TraceParent", GOOD), ("TRACESTATE", "a=1")]));
        assert_eq!(t.unwrap().tracestate.as_deref(), Some("a=1"));
        assert_eq!(TraceContext::of_headers(&headers(&[("x", GOOD)])), None);
        let other = "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01";
        let two = headers(&[("traceparent", GOOD), ("Traceparent", other)]);
        assert_eq!(TraceContext::of_headers(&two), None);
        let same = headers(&[("traceparent", GOOD), ("Traceparent", GOOD)]);
        assert!(TraceContext::of_headers(&same).is_some());
        let mut number = FieldTable::default();
        number.insert("traceparent".into(), AMQPValue::LongLongInt(1));
        assert_eq!(TraceContext::of_headers(&number), None);
    }
}
