//! Masking of SSN-shaped text and escaping of invisible or terminal-controlling characters,
//! applied to caller text before it is stored in an error, published, or shown to an operator.
//!
//! One place on purpose: validation (error field names), errors (messages), events, and the
//! `failed` and `parked list` commands (raw AMQP bytes, see [`mask_ssns_bytes`]) must agree on
//! what an SSN looks like and how a control character is written, or one path leaks what
//! another hides. Both transformations are idempotent, so a value redacted when it was stored
//! can safely be redacted again when it is shown.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

/// What replaces the first five digits of an SSN: `*****3333`. Events have shown this form
/// since the first release (`ss_number` of `case.created`), so every mask uses it.
const MASK_PREFIX: &str = "*****";

/// The display form of an SSN given its last four digits, e.g. `*****3333`.
pub fn mask_last4(last4: &str) -> String {
    format!("{MASK_PREFIX}{last4}")
}

/// Unicode bidirectional controls (embeddings, overrides, isolates and marks). They reorder how
/// text is displayed ("Trojan Source"), so a name or key holding one can read differently from
/// what it is.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Characters that render as nothing: zero-width characters, bidi controls, other invisible
/// format characters, variation selectors, tag characters and the blank fillers (Hangul,
/// braille) that spammers use for "empty-looking" names. Whitespace is not included: it is
/// visible as space and `char::is_whitespace` already covers it.
pub fn is_invisible(c: char) -> bool {
    is_bidi_control(c)
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200D}'
                | '\u{2060}'..='\u{2065}'
                | '\u{206A}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// True for characters that must not reach a terminal or a log line as they are: C0, DEL and
/// C1 controls (ESC starts terminal sequences, BEL rings, NUL truncates C strings), the line
/// and paragraph separators, and everything [`is_invisible`].
fn needs_escape(c: char) -> bool {
    c.is_control() || is_invisible(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Writes each character of [`needs_escape`] as `\u{hex}` (e.g. NUL as `\u{0}`, ESC as
/// `\u{1b}`), so the text is printable, storable in PostgreSQL text and jsonb (which refuse
/// NUL), and shows the operator that something hidden was there. Backslashes are left alone:
/// this is a display form, not a reversible encoding.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Replaces every SSN-shaped run in `s` by `*****` and its last four digits.
///
/// SSN-shaped: nine digits written `123456789`, `123-45-6789` or `123 45 6789`, not part of a
/// longer digit run (so 10-digit phone numbers, `555-123-4567` and long ids are left alone).
pub fn mask_ssns(s: &str) -> Cow<'_, str> {
    // Valid UTF-8 holds no gap, so this is the plain rule; and a mask (ASCII) replaces ASCII
    // digits and separators only, so the text stays UTF-8.
    match mask_spans(s.as_bytes(), s.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(s),
        Cow::Owned(masked) => Cow::Owned(
            String::from_utf8(masked)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
    }
}

/// [`mask_ssns`] for raw bytes that may not be UTF-8 (broker-supplied AMQP fields): every SSN
/// replaced by `*****` and its last four digits, every other byte (invalid ones included) left
/// as it is, for the caller to escape.
///
/// The rule is the same, seen across the whole value: a sequence of bytes that is not UTF-8
/// (what [`<[u8]>::utf8_chunks`] calls invalid) is a *gap* that may stand for nothing or for a
/// separator, never a boundary that hides an SSN. So `123\xff45-6789`, `123\x9645\x966789`
/// (en dashes in Windows-1252) and `12345\xff6789` are masked whole, gaps included, although
/// neither the lossy text (`123\u{fffd}45-6789`) nor its valid pieces taken one by one are
/// SSN-shaped. Reading gaps this way can only mask more than the plain rule, never less.
pub fn mask_ssns_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    let probe: Cow<'_, [u8]> = if std::str::from_utf8(bytes).is_ok() {
        Cow::Borrowed(bytes)
    } else {
        let mut p = Vec::with_capacity(bytes.len());
        for chunk in bytes.utf8_chunks() {
            p.extend_from_slice(chunk.valid().as_bytes());
            p.resize(p.len() + chunk.invalid().len(), GAP);
        }
        Cow::Owned(p)
    };
    mask_spans(bytes, &probe)
}

/// `bytes` with the SSN shapes found in `probe` (the same bytes, gaps marked) masked.
fn mask_spans<'a>(bytes: &'a [u8], probe: &[u8]) -> Cow<'a, [u8]> {
    let spans = ssn_spans(probe);
    if spans.is_empty() {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for (start, end) in spans {
        out.extend_from_slice(&bytes[copied..start]);
        out.extend_from_slice(mask_last4(&last4(&bytes[start..end])).as_bytes());
        copied = end;
    }
    out.extend_from_slice(&bytes[copied..]);
    Cow::Owned(out)
}

/// Stands for a byte of an invalid UTF-8 sequence in what [`ssn_spans`] reads. Never part of
/// valid UTF-8, so text read as it is holds none.
const GAP: u8 = 0xFF;

/// The last four ASCII digits of an SSN span (gaps are never ASCII).
fn last4(span: &[u8]) -> String {
    let digits: Vec<u8> = span.iter().copied().filter(u8::is_ascii_digit).collect();
    String::from_utf8_lossy(&digits[digits.len().saturating_sub(4)..]).into_owned()
}

/// The byte ranges of the SSN shapes in `b`, in order, each from its first digit to its last.
fn ssn_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // `i` starts a digit run.
        if let Some(end) = ssn_shape_at(b, i) {
            spans.push((i, end));
            i = end;
        } else {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    spans
}

/// Where the SSN shape that starts at `b[i]` (which starts a digit run) ends, if there is one.
/// A [`GAP`] run may stand inside a digit group, next to a separator, or for a separator.
fn ssn_shape_at(b: &[u8], i: usize) -> Option<usize> {
    let digit = |at: usize| b.get(at).is_some_and(u8::is_ascii_digit);
    let skip_gaps = |mut at: usize| {
        while b.get(at) == Some(&GAP) {
            at += 1;
        }
        at
    };
    // `n` digits from `at`, gaps allowed between them: where the last one ends.
    let digits = |mut at: usize, n: usize| {
        for k in 0..n {
            if k > 0 {
                at = skip_gaps(at);
            }
            if !digit(at) {
                return None;
            }
            at += 1;
        }
        Some(at)
    };
    // A separator (`-` or space, gaps around it allowed) or a gap standing for one: where it
    // ends, and which one it was (`None` for a gap).
    let separator = |at: usize| {
        let from = skip_gaps(at);
        match b.get(from) {
            Some(&c @ (b'-' | b' ')) => Some((skip_gaps(from + 1), Some(c))),
            _ if from > at => Some((from, None)),
            _ => None,
        }
    };
    if let Some(end) = digits(i, 9).filter(|&end| !digit(end)) {
        return Some(end);
    }
    let at = digits(i, 3)?;
    let (at, first) = separator(at)?;
    let at = digits(at, 2)?;
    let (at, second) = separator(at)?;
    if let (Some(x), Some(y)) = (first, second)
        && x != y
    {
        return None;
    }
    digits(at, 4).filter(|&end| !digit(end))
}

/// A JSON number holding an SSN-shaped digit run (e.g. `111223333`), masked as a string.
pub fn mask_number(n: &Number) -> Option<String> {
    match mask_ssns(&n.to_string()) {
        Cow::Owned(masked) => Some(masked),
        Cow::Borrowed(_) => None,
    }
}

/// True for keys that name an SSN however they are spelled: `ss_number`, `SS_Number`, `ssn`,
/// `social_security_number`. Their values are masked whole, whatever their shape.
fn is_ssn_key(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    matches!(
        norm.as_str(),
        "ssn" | "ssnumber" | "ssno" | "socialsecuritynumber" | "socialsecurity"
    )
}

/// The mask of a value given under an SSN key: the last four of its digits when it has at least
/// nine (a typo'd SSN is still an SSN), otherwise the bare prefix.
fn mask_whole(digits: &str) -> String {
    if digits.len() >= 9 {
        mask_last4(&digits[digits.len() - 4..])
    } else {
        MASK_PREFIX.to_owned()
    }
}

/// True for the output of [`mask_whole`].
fn is_mask(s: &str) -> bool {
    s.strip_prefix(MASK_PREFIX).is_some_and(|rest| {
        rest.is_empty() || (rest.len() == 4 && rest.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Caller text made safe to store in an error, publish or print: SSNs masked, then controls
/// escaped. (Masking first: an escape such as `\u{9}` never joins the digits around it.)
pub fn display_text(s: &str) -> String {
    match mask_ssns(s) {
        Cow::Borrowed(s) => escape_controls(s).into_owned(),
        Cow::Owned(masked) => escape_controls(&masked).into_owned(),
    }
}

/// Redacts a JSON value in place for display: every key and string through [`display_text`],
/// every SSN-shaped number masked (it becomes a string), and every string or number under an
/// SSN key (see [`is_ssn_key`]) masked whole. Iterative, so no nesting depth can overflow the
/// stack.
pub fn redact_json(root: &mut Value) {
    let mut stack: Vec<&mut Value> = vec![root];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                let old = std::mem::take(map);
                for (key, mut child) in old {
                    if is_ssn_key(&key) {
                        mask_ssn_value(&mut child);
                    }
                    insert_unique(map, display_text(&key), child);
                }
                stack.extend(map.values_mut());
            }
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::String(s) => {
                if let Cow::Owned(redacted) = redact_str(s) {
                    *s = redacted;
                }
            }
            Value::Number(n) => {
                if let Some(masked) = mask_number(n) {
                    *value = Value::String(masked);
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
}

fn redact_str(s: &str) -> Cow<'_, str> {
    let shown = display_text(s);
    if shown == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(shown)
    }
}

/// Masks a string or number given under an SSN key; other values are walked as usual.
fn mask_ssn_value(v: &mut Value) {
    let digits: String = match v {
        // Already a mask (`*****` or `*****3333`): masking it again would lose the last four.
        Value::String(s) if is_mask(s) => return,
        Value::String(s) => s.chars().filter(char::is_ascii_digit).collect(),
        Value::Number(n) => n.to_string().chars().filter(char::is_ascii_digit).collect(),
        _ => return,
    };
    *v = Value::String(mask_whole(&digits));
}

/// Inserts without losing a value when two keys redact to the same text (two SSN keys with the
/// same last four digits): the later one gets a ` (2)`, ` (3)`… suffix.
fn insert_unique(map: &mut Map<String, Value>, key: String, value: Value) {
    if !map.contains_key(&key) {
        map.insert(key, value);
        return;
    }
    let mut n = 2;
    loop {
        let candidate = format!("{key} ({n})");
        if !map.contains_key(&candidate) {
            map.insert(candidate, value);
            return;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_three_ssn_shapes_are_masked_to_the_last_four() {
        assert_eq!(mask_ssns("123456789"), "*****6789");
        assert_eq!(mask_ssns("123-45-6789"), "*****6789");
        assert_eq!(mask_ssns("123 45 6789"), "*****6789");
        assert_eq!(
            mask_ssns("ssn 123-45-6789, again 987654321."),
            "ssn *****6789, again *****4321."
        );
        assert_eq!(mask_ssns("x123456789y"), "x*****6789y");
        assert_eq!(mask_ssns("é123456789é"), "é*****6789é");
        // Never-issued numbers are still SSN-shaped: masking is about shape, not validity.
        assert_eq!(mask_ssns("000-00-0000"), "*****0000");
    }

    #[test]
    fn other_digit_shapes_are_left_alone() {
        for s in [
            "1234567890",
            "0123456789",
            "12345678",
            "123-45-67890",
            "0123-45-6789",
            "555-123-4567",
            "(555) 123-4567",
            "+1 555 123 4567",
            "12345-6789",
            "123-45 6789",
            "123.45.6789",
            "1950-12-03",
            "",
            "no digits",
        ] {
            assert_eq!(mask_ssns(s), s, "{s:?}");
            assert!(matches!(mask_ssns(s), Cow::Borrowed(_)), "{s:?}");
        }
    }

    #[test]
    fn raw_bytes_are_masked_by_the_same_rule() {
        let m = |b: &[u8]| mask_ssns_bytes(b).into_owned();
        // Valid UTF-8: exactly what `mask_ssns` does, borrowed when nothing is masked.
        for s in [
            "ssn 123-45-6789, again 987654321.",
            "123 45 6789",
            "é123456789é",
            "555-123-4567",
            "123-45 6789",
            "1234567890",
            "",
        ] {
            assert_eq!(m(s.as_bytes()), mask_ssns(s).as_bytes(), "{s:?}");
        }
        assert!(matches!(mask_ssns_bytes(b"1234567890"), Cow::Borrowed(_)));
        assert!(matches!(mask_ssns_bytes(b"a\xffb 12"), Cow::Borrowed(_)));
        // Invalid bytes outside an SSN are kept for the caller to show.
        assert_eq!(m(b"\xff123-45-6789\xfe"), b"\xff*****6789\xfe");
        assert_eq!(m(b"\xff\xfeA"), b"\xff\xfeA");
    }

    #[test]
    fn an_invalid_byte_does_not_hide_an_ssn() {
        let m = |b: &[u8]| mask_ssns_bytes(b).into_owned();
        // Neither the lossy text nor the valid pieces alone are SSN-shaped, yet each is one.
        assert_eq!(
            mask_ssns(&String::from_utf8_lossy(b"123\xff45-6789")),
            "123\u{fffd}45-6789"
        );
        assert_eq!(m(b"123\xff45-6789"), b"*****6789");
        assert_eq!(m(b"123-45\xff6789"), b"*****6789");
        assert_eq!(m(b"123\xff45\xff6789"), b"*****6789");
        // Windows-1252 en dashes and Latin-1 no-break spaces.
        assert_eq!(m(b"ssn 123\x9645\x966789."), b"ssn *****6789.");
        assert_eq!(m(b"123\xa045\xa06789"), b"*****6789");
        // A gap inside a digit group or next to a separator, of any length.
        assert_eq!(m(b"12345\xff6789"), b"*****6789");
        assert_eq!(m(b"1\xff\xfe\xfd23456789"), b"*****6789");
        assert_eq!(m(b"123-\xff45-\xc3(6789"), b"123-\xff45-\xc3(6789");
        assert_eq!(m(b"123-\xff45-6789"), b"*****6789");
        assert_eq!(m(b"x 123\xff-45-6789 y"), b"x *****6789 y");
        // The separators still have to agree when both are real, and lengths still count.
        assert_eq!(m(b"123-45\xff 6789"), b"123-45\xff 6789");
        assert_eq!(m(b"12345\xff678"), b"12345\xff678");
        assert_eq!(m(b"12345\xff67890"), b"12345\xff67890");
        assert_eq!(m(b"555\xff123\xff4567"), b"555\xff123\xff4567");
        // Idempotent like the rest.
        let once = m(b"a 123\xff45-6789 b");
        assert_eq!(m(&once), once);
    }

    #[test]
    fn nine_digit_numbers_are_masked() {
        let n = |v: Value| match v {
            Value::Number(n) => n,
            _ => unreachable!(),
        };
        assert_eq!(
            mask_number(&n(json!(111_223_333))).as_deref(),
            Some("*****3333")
        );
        assert_eq!(
            mask_number(&n(json!(-111_223_333))).as_deref(),
            Some("-*****3333")
        );
        assert_eq!(mask_number(&n(json!(1_112_233_334))), None);
        assert_eq!(mask_number(&n(json!(15350))), None);
        assert_eq!(mask_number(&n(json!(11_580.5))), None);
    }

    #[test]
    fn masking_is_idempotent() {
        let once = mask_ssns("a 123-45-6789 b 123456789").into_owned();
        assert_eq!(mask_ssns(&once), once);
        let shown = display_text("\u{0}123456789\u{1b}");
        assert_eq!(shown, r"\u{0}*****6789\u{1b}");
        assert_eq!(display_text(&shown), shown);
    }

    #[test]
    fn controls_bidi_and_invisible_characters_are_escaped() {
        assert_eq!(escape_controls("plain é 王"), "plain é 王");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\u{0}b"), r"a\u{0}b");
        assert_eq!(escape_controls("\u{1b}[31mX\u{7}"), r"\u{1b}[31mX\u{7}");
        assert_eq!(escape_controls("\u{9b}2J\u{7f}"), r"\u{9b}2J\u{7f}");
        assert_eq!(escape_controls("ab\u{202e}cd"), r"ab\u{202e}cd");
        assert_eq!(escape_controls("\u{2066}x\u{2069}"), r"\u{2066}x\u{2069}");
        assert_eq!(escape_controls("x\u{200b}\u{feff}"), r"x\u{200b}\u{feff}");
        assert_eq!(escape_controls("l1\nl2\u{2028}"), r"l1\u{a}l2\u{2028}");
        let escaped = escape_controls("\u{1b}]0;title\u{7}");
        assert!(!escaped.chars().any(needs_escape), "{escaped}");
    }

    #[test]
    fn character_classes() {
        for c in [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
            '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
        ] {
            assert!(is_bidi_control(c), "{c:?}");
            assert!(is_invisible(c), "{c:?}");
        }
        for c in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{3164}',
            '\u{E0041}',
        ] {
            assert!(is_invisible(c) && !is_bidi_control(c), "{c:?}");
        }
        for c in ['a', ' ', 'é', '王', '-', '\u{0301}'] {
            assert!(!is_invisible(c) && !is_bidi_control(c), "{c:?}");
        }
    }

    #[test]
    fn json_is_redacted_at_every_depth_keys_strings_and_numbers() {
        let mut v = json!({
            "ss_number": "111-22-3333",
            "SS_Number": "1-1-1-2-2-3-3-3-3",
            "ssn": 123_456_789,
            "social_security_number": "12",
            "first_name": "Ann",
            "123-45-6789": 1,
            "note": "call 555-123-4567, ssn 987 65 4321",
            "income": 15350,
            "bare": 987_654_321,
            "nested": [{"deep": {"x": ["222-33-4444", {"\u{1b}[31m": "\u{7}"}]}}],
        });
        redact_json(&mut v);
        assert_eq!(
            v,
            json!({
                "ss_number": "*****3333",
                "SS_Number": "*****3333",
                "ssn": "*****6789",
                "social_security_number": "*****",
                "first_name": "Ann",
                "*****6789": 1,
                "note": "call 555-123-4567, ssn *****4321",
                "income": 15350,
                "bare": "*****4321",
                "nested": [{"deep": {"x": ["*****4444", {r"\u{1b}[31m": r"\u{7}"}]}}],
            })
        );
        // Already redacted: unchanged.
        let again = v.clone();
        redact_json(&mut v);
        assert_eq!(v, again);
    }

    #[test]
    fn keys_that_redact_alike_keep_both_values() {
        let mut v = json!({"111-22-3333": 1, "444-55-3333": 2});
        redact_json(&mut v);
        assert_eq!(v, json!({"*****3333": 1, "*****3333 (2)": 2}));
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        // serde_json's own parser and drop are recursive, so build the value by hand and take
        // it apart iteratively at the end.
        let mut v = json!("123456789");
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        redact_json(&mut v);
        let mut cur = v;
        loop {
            match cur {
                Value::Array(mut items) => cur = items.pop().unwrap(),
                other => {
                    assert_eq!(other, json!("*****6789"));
                    break;
                }
            }
        }
    }
}
