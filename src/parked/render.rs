//! Operator-facing text of broker-supplied bytes: control characters, invisible formatting
//! characters and invalid UTF-8 escaped, SSN-shaped digits masked, credentials redacted,
//! nesting and lengths truncated. Nothing here ever sees a message body.

use super::wire::{FieldValue, Headers, Properties, Table};

/// Container levels shown before a value is cut short with its depth reported.
pub const SHOW_LEVELS: usize = 4;
/// Items shown per array or table.
const SHOW_ITEMS: usize = 20;
/// Characters shown per string (after escaping).
const SHOW_CHARS: usize = 200;

/// Masks SSN-shaped digits: a run of exactly 9 ASCII digits, or `ddd-dd-dddd`, neither
/// touching another digit. Digits become `*`, dashes stay, so the shape remains visible.
pub fn mask_ssn(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let run = |i: usize| (i..bytes.len()).take_while(|&j| digit(j)).count();
    let mut i = 0;
    while i < bytes.len() {
        if !digit(i) || (i > 0 && digit(i - 1)) {
            i += 1;
            continue;
        }
        let first = run(i);
        let end = if first == 9 {
            Some(i + 9)
        } else if first == 3
            && bytes.get(i + 3) == Some(&b'-')
            && run(i + 4) == 2
            && bytes.get(i + 6) == Some(&b'-')
            && run(i + 7) == 4
        {
            Some(i + 11)
        } else {
            None
        };
        match end {
            Some(end) => {
                for b in &mut out[i..end] {
                    if b.is_ascii_digit() {
                        *b = b'*';
                    }
                }
                i = end;
            }
            None => i += first,
        }
    }
    out
}

/// Characters that change how a terminal shows text without being control characters
/// (bidirectional overrides, zero-width characters, the byte-order mark).
fn invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// Escapes bytes for a terminal: `\xff` for bytes that are not UTF-8, `\u{1b}` for control and
/// invisible characters, `\\` and `\"` so the text can be quoted. No masking.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                c if c.is_control() || invisible(c) => {
                    s.push_str(&format!("\\u{{{:x}}}", c as u32));
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Masked, escaped and cut to [`SHOW_CHARS`] characters.
pub fn show(bytes: &[u8]) -> String {
    let s = escape(&mask_ssn(bytes));
    let n = s.chars().count();
    if n <= SHOW_CHARS {
        return s;
    }
    let cut: String = s.chars().take(SHOW_CHARS).collect();
    format!("{cut}… ({} bytes)", bytes.len())
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
    let masked = |s: String| String::from_utf8_lossy(&mask_ssn(s.as_bytes())).into_owned();
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
        out.push((
            "timestamp",
            String::from_utf8_lossy(&mask_ssn(t.to_string().as_bytes())).into_owned(),
        ));
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
    fn ssn_shapes_are_masked_other_numbers_are_not() {
        let m = |s: &str| String::from_utf8(mask_ssn(s.as_bytes())).unwrap();
        assert_eq!(m("ssn 123456789 x"), "ssn ********* x");
        assert_eq!(m("123-45-6789"), "***-**-****");
        assert_eq!(m("a123-45-6789b"), "a***-**-****b");
        assert_eq!(m("1234567890"), "1234567890");
        assert_eq!(m("12345678"), "12345678");
        assert_eq!(m("1123-45-6789"), "1123-45-6789");
        assert_eq!(m("123-45-67890"), "123-45-67890");
        assert_eq!(m("111222333/444555666"), "*********/*********");
        assert_eq!(m("intake-2026-11-27-0001"), "intake-2026-11-27-0001");
    }

    #[test]
    fn escaping() {
        assert_eq!(escape(&[0xff, 0xfe, b'A']), "\\xff\\xfeA");
        assert_eq!(escape("a\u{1b}[31m\"\\".as_bytes()), "a\\u{1b}[31m\\\"\\\\");
        assert_eq!(escape("x\u{202e}y".as_bytes()), "x\\u{202e}y");
        assert_eq!(escape("né".as_bytes()), "né");
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
        assert_eq!(value(&FieldValue::I64(123456789), false), "*********");
        assert_eq!(value(&FieldValue::I64(1234567890), false), "1234567890");
    }
}
