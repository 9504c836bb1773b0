//! Reads one field of the body at a time and records its error, so every field gets checked.
//!
//! Each reader returns `None` both for "absent" and for "invalid" (the error is recorded), which
//! lets `validate` read every field unconditionally and decide at the end. Messages never
//! include the submitted value: a value may be an SSN, and errors go into events and logs.
//! Field names are caller text too (an unknown key is named in its error), so they pass through
//! [`redact::display_text`] before they become an error's key.

use serde_json::{Map, Value};

use super::Money;
use crate::domain::error::FieldErrors;
use crate::infra::redact;

pub(crate) const REQUIRED: &str = "is required";
pub(crate) const NOT_A_STRING: &str = "must be a string";
pub(crate) const CONTROL_CHARS: &str = "must not contain control characters";
pub(crate) const BIDI_CHARS: &str = "must not contain bidirectional control characters";
pub(crate) const NOT_VISIBLE: &str = "must contain a visible character";
pub(crate) const NUL_CHARS: &str =
    "must not contain NUL characters (U+0000), in keys or values at any depth";
pub(crate) const NOT_A_BOOL: &str = "must be true or false";
pub(crate) const NOT_AN_ID: &str = "must be a positive integer id";
pub(crate) const READ_ONLY: &str = "is read-only and set by the system";
pub(crate) const UNRECOGNIZED: &str = "is not a recognized field";

/// Fields the create-a-case API accepts.
pub const KNOWN_FIELDS: [&str; 25] = [
    "first_name",
    "middle_name",
    "last_name",
    "suffix",
    "nickname",
    "date_of_birth",
    "email",
    "head_of_household",
    "mailing_address",
    "mailing_apt_number",
    "mailing_city",
    "mailing_state",
    "mailing_zip_code",
    "ss_number",
    "street_address",
    "street_apt_number",
    "street_city",
    "street_state",
    "street_zip_code",
    "street_county",
    "yearly_expenses",
    "yearly_income",
    "deceased",
    "private",
    "household",
];

/// Fields a case has but the system sets; submitting them is a mistake worth telling apart
/// from a typo, because the submitter may expect them to be honoured (e.g. a third-party id).
pub const READ_ONLY_FIELDS: [&str; 6] = [
    "id",
    "roi_exp_date",
    "entry_agent",
    "mod_agent",
    "group",
    "import_id",
];

/// The body being read and the errors found so far.
pub(crate) struct Fields<'a> {
    body: &'a Map<String, Value>,
    pub(crate) errors: FieldErrors,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(body: &'a Map<String, Value>) -> Self {
        Self {
            body,
            errors: FieldErrors::new(),
        }
    }

    /// Records an error on `field`, named in its display form: a key may hold NUL (which
    /// PostgreSQL text and jsonb refuse), terminal escapes or an SSN.
    pub(crate) fn fail(&mut self, field: &str, message: &str) {
        self.errors
            .entry(redact::display_text(field))
            .or_default()
            .push(message.to_owned());
    }

    /// Flags read-only and unrecognised keys. A read-only key is an error even when null, since
    /// sending it at all means the submitter expects something the API will not do.
    ///
    /// Also flags a NUL anywhere under a key (in the key itself, or in any key or string nested
    /// in its value), on that top-level key. The top-level string of a known field is left to
    /// that field's reader, which refuses every control character (or every string).
    pub(crate) fn check_keys(&mut self) {
        let body = self.body;
        for (key, value) in body {
            let known = KNOWN_FIELDS.contains(&key.as_str());
            if READ_ONLY_FIELDS.contains(&key.as_str()) {
                self.fail(key, READ_ONLY);
            } else if !known {
                self.fail(key, UNRECOGNIZED);
            }
            let nul_in_value = match value {
                Value::String(_) if known => false,
                _ => contains_nul(value),
            };
            if key.contains('\0') || nul_in_value {
                self.fail(key, NUL_CHARS);
            }
        }
    }

    /// The value of a field; JSON null counts as absent.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.body.get(field).filter(|v| !v.is_null())
    }

    /// A trimmed, non-empty string without control characters and at most `max_chars` long.
    /// Blank strings count as absent, because forms send "" for fields left empty.
    pub(crate) fn text(&mut self, field: &str, max_chars: Option<usize>) -> Option<&'a str> {
        let value = self.get(field)?;
        let Value::String(s) = value else {
            self.fail(field, NOT_A_STRING);
            return None;
        };
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        if s.chars().any(char::is_control) {
            self.fail(field, CONTROL_CHARS);
            return None;
        }
        if s.chars().any(redact::is_bidi_control) {
            self.fail(field, BIDI_CHARS);
            return None;
        }
        if let Some(max) = max_chars
            && s.chars().count() > max
        {
            self.fail(field, &format!("must be at most {max} characters"));
            return None;
        }
        Some(s)
    }

    /// A name: [`Fields::text`] with at least one visible character. A name of zero-width
    /// spaces or other invisible characters is not blank to `trim`, but names no one.
    fn name(&mut self, field: &str, max_chars: usize) -> Option<&'a str> {
        let s = self.text(field, Some(max_chars))?;
        if s.chars()
            .all(|c| c.is_whitespace() || redact::is_invisible(c))
        {
            self.fail(field, NOT_VISIBLE);
            return None;
        }
        Some(s)
    }

    /// Like [`Fields::name`], but an absent value is an error.
    pub(crate) fn required_name(&mut self, field: &str, max_chars: usize) -> Option<String> {
        let had_error = self.errors.contains_key(field);
        let name = self.name(field, max_chars);
        if name.is_none() && self.errors.contains_key(field) == had_error {
            self.fail(field, REQUIRED);
        }
        name.map(str::to_owned)
    }

    /// An optional name stored as trimmed.
    pub(crate) fn optional_name(&mut self, field: &str, max_chars: usize) -> Option<String> {
        self.name(field, max_chars).map(str::to_owned)
    }

    /// An optional text field stored as trimmed.
    pub(crate) fn optional_text(&mut self, field: &str, max_chars: usize) -> Option<String> {
        self.text(field, Some(max_chars)).map(str::to_owned)
    }

    /// A text field converted by `parse`, whose error message is recorded on failure.
    pub(crate) fn parsed<T>(
        &mut self,
        field: &str,
        max_chars: Option<usize>,
        parse: impl FnOnce(&str) -> Result<T, &'static str>,
    ) -> Option<T> {
        let s = self.text(field, max_chars)?;
        parse(s).map_err(|message| self.fail(field, message)).ok()
    }

    /// A JSON boolean; absent means false.
    pub(crate) fn flag(&mut self, field: &str) -> bool {
        match self.get(field) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.fail(field, NOT_A_BOOL);
                false
            }
        }
    }

    /// A record id: a JSON integer from 1 to i64::MAX. Strings ("1") and floats (1.0) are
    /// rejected rather than coerced, since they usually mean the wrong field was mapped.
    pub(crate) fn positive_id(&mut self, field: &str) -> Option<i64> {
        let value = self.get(field)?;
        match value.as_i64() {
            Some(id) if id >= 1 => Some(id),
            _ => {
                self.fail(field, NOT_AN_ID);
                None
            }
        }
    }

    /// A non-negative amount of money with at most two decimals.
    pub(crate) fn money(&mut self, field: &str) -> Option<Money> {
        let value = self.get(field)?;
        Money::from_json(value)
            .map_err(|message| self.fail(field, message))
            .ok()
    }
}

/// True when a NUL is in `value` or in any key or string nested in it. Iterative: the decoder
/// bounds depth, but this check must not depend on that to be safe.
fn contains_nul(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test bodies are objects"),
        }
    }

    #[test]
    fn known_and_read_only_lists_do_not_overlap() {
        for f in READ_ONLY_FIELDS {
            assert!(!KNOWN_FIELDS.contains(&f), "{f}");
        }
        let mut sorted = KNOWN_FIELDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), KNOWN_FIELDS.len());
    }

    #[test]
    fn text_trims_and_treats_blank_and_null_as_absent() {
        let b = body(json!({"a": "  x  ", "b": "   ", "c": null, "d": "\t\n"}));
        let mut f = Fields::new(&b);
        assert_eq!(f.text("a", Some(1)), Some("x"));
        assert_eq!(f.text("b", Some(1)), None);
        assert_eq!(f.text("c", Some(1)), None);
        assert_eq!(f.text("d", Some(1)), None);
        assert_eq!(f.text("missing", Some(1)), None);
        assert!(f.errors.is_empty());
    }

    #[test]
    fn text_counts_characters_not_bytes() {
        let b = body(json!({"a": "ééé", "b": "éééé"}));
        let mut f = Fields::new(&b);
        assert_eq!(f.text("a", Some(3)), Some("ééé"));
        assert_eq!(f.text("b", Some(3)), None);
        assert_eq!(f.errors["b"], vec!["must be at most 3 characters"]);
    }

    #[test]
    fn required_reports_one_error_per_field() {
        let b = body(json!({"a": 5, "b": "", "c": "x\u{0}y"}));
        let mut f = Fields::new(&b);
        assert_eq!(f.required_name("a", 10), None);
        assert_eq!(f.required_name("b", 10), None);
        assert_eq!(f.required_name("c", 10), None);
        assert_eq!(f.required_name("d", 10), None);
        assert_eq!(f.errors["a"], vec![NOT_A_STRING]);
        assert_eq!(f.errors["b"], vec![REQUIRED]);
        assert_eq!(f.errors["c"], vec![CONTROL_CHARS]);
        assert_eq!(f.errors["d"], vec![REQUIRED]);
    }

    #[test]
    fn ids_accept_only_positive_json_integers() {
        let b = body(json!({
            "one": 1, "max": i64::MAX, "zero": 0, "neg": -3, "float": 1.0, "frac": 1.5,
            "string": "1", "too_big": u64::MAX, "bool": true
        }));
        let mut f = Fields::new(&b);
        assert_eq!(f.positive_id("one"), Some(1));
        assert_eq!(f.positive_id("max"), Some(i64::MAX));
        assert_eq!(f.positive_id("missing"), None);
        for bad in ["zero", "neg", "float", "frac", "string", "too_big", "bool"] {
            assert_eq!(f.positive_id(bad), None, "{bad}");
            assert_eq!(f.errors[bad], vec![NOT_AN_ID], "{bad}");
        }
    }

    #[test]
    fn flags_accept_only_booleans() {
        let b = body(json!({"t": true, "f": false, "n": null, "s": "true", "i": 1}));
        let mut f = Fields::new(&b);
        assert!(f.flag("t"));
        assert!(!f.flag("f"));
        assert!(!f.flag("n"));
        assert!(!f.flag("missing"));
        assert!(f.errors.is_empty());
        assert!(!f.flag("s"));
        assert!(!f.flag("i"));
        assert_eq!(f.errors["s"], vec![NOT_A_BOOL]);
        assert_eq!(f.errors["i"], vec![NOT_A_BOOL]);
    }
}
