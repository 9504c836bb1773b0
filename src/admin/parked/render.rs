//! Operator-facing text of broker-supplied bytes: control characters, invisible formatting
//! characters and invalid UTF-8 escaped, SSN-shaped digits masked, credentials redacted,
//! nesting and lengths truncated. Nothing here ever sees a message body.
//!
//! What an SSN looks like, its mask (`*****6789`) and how a control character is written are
//! [`crate::infra::redact`]'s, as for every other output; this module only deals with raw bytes.

use super::wire::{FieldValue, Headers, Properties, Table};
use crate::infra::redact::{escape_controls, mask_ssns, mask_ssns_bytes};

/// Container levels shown before a value is cut short with its depth reported.
pub const SHOW_LEVELS: usize = 4;
/// Items shown per array or table.
const SHOW_ITEMS: usize = 20;
/// Characters shown per string (after escaping).
const SHOW_CHARS: usize = 200;

/// Escapes bytes for a terminal: `\xff` for bytes that are not UTF-8; in the valid text `\\`
/// and `\"` (so the text can be quoted), then control and invisible characters as
/// [`escape_controls`] writes them (`\u{1b}`), like every other output of the service.
/// No masking: see [`show`].
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        let quoted = chunk.valid().replace('\\', "\\\\").replace('"', "\\\"");
        s.push_str(&escape_controls(&quoted));
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Masked, escaped and cut to [`SHOW_CHARS`] characters.
///
/// Masking runs on the whole value before it is split into UTF-8 chunks, not chunk by chunk
/// and not on the lossy text: [`mask_ssns_bytes`] reads an invalid sequence as a gap
/// that may stand for nothing or a separator, so `123\xff45-6789` is shown `*****6789`. Per
/// chunk (`123`, `45-6789`) or lossily (`123\u{fffd}45-6789`) it would not be SSN-shaped and
/// its nine digits would be shown. Masking also comes before escaping, so the digits of an
/// escape (`\x96`, `\u{9}`) never join an SSN's.
pub fn show(bytes: &[u8]) -> String {
    let s = escape(&mask_ssns_bytes(bytes));
    let n = s.chars().count();
    if n <= SHOW_CHARS {
        return s;
    }
    let cut: String = s.chars().take(SHOW_CHARS).collect();
    format!("{cut}… ({} bytes)", bytes.len())
}

/// A number (or timestamp) as text, SSN-shaped digits masked.
fn masked(s: String) -> String {
    mask_ssns(&s).into_owned()
}

/// Header names whose values are credentials: never shown.
fn secret_name(name: &[u8]) -> bool {
    let n = String::from_utf8_lossy(name).to_ascii_lowercase();
    [
        "authoriz", "token", "secret", "password", "passwd", "api-key", "apikey", "api_key",
        "cookie",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// A credential: its scheme (`Token`, `Bearer`, …) when it has a plain one, never the rest.
fn redact(bytes: &[u8]) -> String {
    let scheme = bytes
        .iter()
        .position(|b| *b == b' ')
        .map(|i| &bytes[..i])
        .filter(|s| !s.is_empty() && s.len() <= 16 && s.iter().all(u8::is_ascii_alphabetic));
    match scheme {
        Some(s) => format!("\"{} [redacted, {} bytes]\"", escape(s), bytes.len()),
        None => format!("\"[redacted, {} bytes]\"", bytes.len()),
    }
}

/// A credential-looking string value (`Token x`, `Bearer x`, `Basic x`), whatever its name.
fn looks_like_credential(bytes: &[u8]) -> bool {
    let lower: Vec<u8> = bytes.iter().take(7).map(u8::to_ascii_lowercase).collect();
    lower.starts_with(b"token ") || lower.starts_with(b"bearer ") || lower.starts_with(b"basic ")
}

/// Renders a header value on one line, [`SHOW_LEVELS`] levels deep; `secret` redacts every
/// string inside it.
pub fn value(v: &FieldValue, secret: bool) -> String {
    let mut s = String::new();
    render(v, 0, secret, &mut s);
    let depth = v.depth();
    if depth > SHOW_LEVELS {
        s.push_str(&format!(
            " (nested {depth} levels deep, shown to {SHOW_LEVELS})"
        ));
    }
    s
}

fn render(v: &FieldValue, level: usize, secret: bool, out: &mut String) {
    match v {
        FieldValue::LongStr(b) | FieldValue::Bytes(b) => {
            let prefix = if matches!(v, FieldValue::Bytes(_)) {
                "bytes"
            } else {
                ""
            };
            if secret || looks_like_credential(b) {
                out.push_str(prefix);
                out.push_str(&redact(b));
            } else {
                out.push_str(&format!("{prefix}\"{}\"", show(b)));
            }
        }
        FieldValue::Bool(b) => out.push_str(&b.to_string()),
        FieldValue::I8(x) => out.push_str(&x.to_string()),
        FieldValue::U8(x) => out.push_str(&x.to_string()),
        FieldValue::I16(x) => out.push_str(&x.to_string()),
        FieldValue::U16(x) => out.push_str(&x.to_string()),
        FieldValue::I32(x) => out.push_str(&masked(x.to_string())),
        FieldValue::U32(x) => out.push_str(&masked(x.to_string())),
        FieldValue::I64(x) => out.push_str(&masked(x.to_string())),
        FieldValue::F32(x) => out.push_str(&masked(x.to_string())),
        FieldValue::F64(x) => out.push_str(&masked(x.to_string())),
        FieldValue::Decimal { scale, value } => {
            out.push_str(&masked(format!("{value}e-{scale}")));
        }
        FieldValue::Timestamp(t) => out.push_str(&masked(format!("timestamp {t}"))),
        FieldValue::Void => out.push_str("void"),
        FieldValue::Deep { .. } => out.push('…'),
        FieldValue::Array(_) | FieldValue::Table(_) if level >= SHOW_LEVELS => out.push('…'),
        FieldValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().take(SHOW_ITEMS).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(item, level + 1, secret, out);
            }
            if items.len() > SHOW_ITEMS {
                out.push_str(&format!(", … {} more", items.len() - SHOW_ITEMS));
            }
            out.push(']');
        }
        FieldValue::Table(t) => {
            out.push('{');
            for (i, (name, item)) in t.0.iter().take(SHOW_ITEMS).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&format!("\"{}\": ", show(name)));
                render(item, level + 1, secret || secret_name(name), out);
            }
            if t.0.len() > SHOW_ITEMS {
                out.push_str(&format!(", … {} more", t.0.len() - SHOW_ITEMS));
            }
            out.push('}');
        }
    }
}

/// One header, rendered: name, value (redacted if the name says credential), depth.
pub struct ShownHeader {
    pub name: String,
    pub value: String,
    pub depth: usize,
}

pub fn headers(t: &Table) -> Vec<ShownHeader> {
    t.0.iter()
        .map(|(name, v)| ShownHeader {
            name: show(name),
            value: value(v, secret_name(name)),
            depth: v.depth(),
        })
        .collect()
}

/// The non-header properties, rendered, in wire order.
pub fn properties(p: &Properties) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (name, v) in p.short_strings() {
        if let Some(v) = v {
            out.push((name, format!("\"{}\"", show(v))));
        }
    }
    if let Some(m) = p.delivery_mode {
        out.push(("delivery_mode", m.to_string()));
    }
    if let Some(m) = p.priority {
        out.push(("priority", m.to_string()));
    }
    if let Some(t) = p.timestamp {
        out.push(("timestamp", masked(t.to_string())));
    }
    out
}

/// Where the message holds bytes that are not UTF-8 (the likely reason lapin refused it).
pub fn invalid_utf8(p: &Properties) -> Vec<String> {
    let mut found = Vec::new();
    for (name, v) in p.short_strings() {
        if v.is_some_and(|v| std::str::from_utf8(v).is_err()) {
            found.push(format!("property {name}"));
        }
    }
    if let Some(Headers::Parsed(t)) = &p.headers {
        walk_table(t, "header ", &mut found);
    }
    found
}

fn walk_table(t: &Table, prefix: &str, found: &mut Vec<String>) {
    for (name, v) in &t.0 {
        if std::str::from_utf8(name).is_err() {
            found.push(format!("{prefix}name \"{}\"", show(name)));
        }
        walk_value(v, &format!("{prefix}\"{}\"", show(name)), found);
    }
}

fn walk_value(v: &FieldValue, path: &str, found: &mut Vec<String>) {
    match v {
        FieldValue::LongStr(s) if std::str::from_utf8(s).is_err() => found.push(path.to_owned()),
        FieldValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, &format!("{path}[{i}]"), found);
            }
        }
        FieldValue::Table(t) => walk_table(t, &format!("{path}."), found),
        FieldValue::Deep {
            invalid_utf8: true, ..
        } => found.push(format!("{path} (deep inside)")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssn_shapes_are_masked_as_everywhere_else_other_numbers_are_not() {
        assert_eq!(show(b"ssn 123456789 x"), "ssn *****6789 x");
        assert_eq!(show(b"123-45-6789"), "*****6789");
        assert_eq!(show(b"123 45 6789"), "*****6789");
        assert_eq!(show(b"a123-45-6789b"), "a*****6789b");
        assert_eq!(show(b"1234567890"), "1234567890");
        assert_eq!(show(b"12345678"), "12345678");
        assert_eq!(show(b"1123-45-6789"), "1123-45-6789");
        assert_eq!(show(b"123-45-67890"), "123-45-67890");
        assert_eq!(show(b"111222333/444555666"), "*****2333/*****5666");
        assert_eq!(show(b"intake-2026-11-27-0001"), "intake-2026-11-27-0001");
        // The one mask of the service.
        assert_eq!(
            show(b"123-45-6789"),
            crate::infra::redact::mask_last4("6789")
        );
    }

    #[test]
    fn an_ssn_split_by_invalid_bytes_is_still_masked() {
        assert_eq!(show(b"123\xff45-6789"), "*****6789");
        assert_eq!(show(b"ssn 123\x9645\x966789!"), "ssn *****6789!");
        assert_eq!(show(b"12345\xff6789"), "*****6789");
        for shown in [show(b"123\xff45-6789"), show(b"12345\xff6789")] {
            assert!(!shown.contains("123") && !shown.contains("45"), "{shown}");
        }
        // Invalid bytes elsewhere are still shown, and so are those inside a non-SSN.
        assert_eq!(show(b"\xfe123-45-6789\xff"), r"\xfe*****6789\xff");
        assert_eq!(show(b"555\xff123\xff4567"), r"555\xff123\xff4567");
    }

    #[test]
    fn masking_comes_before_escaping() {
        // An escape's digits never complete an SSN; an SSN next to a control is masked.
        assert_eq!(show(b"12345\x096789"), r"12345\u{9}6789");
        assert_eq!(show(b"1234567\x99"), r"1234567\x99");
        assert_eq!(show(b"\x1b123456789\x07"), r"\u{1b}*****6789\u{7}");
    }

    #[test]
    fn escaping() {
        assert_eq!(escape(&[0xff, 0xfe, b'A']), r"\xff\xfeA");
        assert_eq!(escape("a\u{1b}[31m\"\\".as_bytes()), r#"a\u{1b}[31m\"\\"#);
        assert_eq!(escape("x\u{202e}y".as_bytes()), r"x\u{202e}y");
        assert_eq!(escape("né".as_bytes()), "né");
        // redact's classes: every invisible character and the line separators too.
        assert_eq!(
            escape("a\u{3164}b\u{2028}".as_bytes()),
            r"a\u{3164}b\u{2028}"
        );
        assert_eq!(escape("\u{9b}2J\u{7f}".as_bytes()), r"\u{9b}2J\u{7f}");
        // No masking: that is `show`'s.
        assert_eq!(escape(b"123-45-6789"), "123-45-6789");
    }

    #[test]
    fn credentials_are_redacted() {
        let t = Table(vec![
            (
                b"Authorization".to_vec(),
                FieldValue::LongStr(b"Token abcdef".to_vec()),
            ),
            (
                b"other".to_vec(),
                FieldValue::LongStr(b"bearer xyz".to_vec()),
            ),
        ]);
        let shown = headers(&t);
        assert_eq!(shown[0].value, "\"Token [redacted, 12 bytes]\"");
        assert_eq!(shown[1].value, "\"bearer [redacted, 10 bytes]\"");
    }

    #[test]
    fn numbers_are_masked_too() {
        assert_eq!(value(&FieldValue::I64(123456789), false), "*****6789");
        assert_eq!(value(&FieldValue::I32(-123456789), false), "-*****6789");
        assert_eq!(value(&FieldValue::I64(1234567890), false), "1234567890");
        assert_eq!(
            value(
                &FieldValue::LongStr(b"a\x1b 123\xff45-6789".to_vec()),
                false
            ),
            r#""a\u{1b} *****6789""#
        );
    }
}
