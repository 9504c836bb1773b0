//! Money amounts: exact JSON-number → cents conversion and the forms the store and events use.
//!
//! Amounts are converted from the number's decimal text, never by multiplying an `f64` by 100,
//! so `0.29` is 29 cents and not 28.999…; a number that needs more than two decimals to be
//! written exactly (like `0.30000000000000004`) is rejected rather than silently rounded.

use serde_json::{Number, Value};

/// An amount of money in cents, non-negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money(i64);

/// The largest accepted amount, 999 999 999 999.99, in cents.
pub(crate) const MAX_CENTS: i64 = 99_999_999_999_999;

pub(crate) const NOT_A_NUMBER: &str = "must be a number";
pub(crate) const NEGATIVE: &str = "must not be negative";
pub(crate) const TOO_MANY_DECIMALS: &str = "must have at most 2 decimal places";
pub(crate) const TOO_LARGE: &str = "is too large";

impl Money {
    /// The amount in cents.
    pub fn cents(self) -> i64 {
        self.0
    }

    /// Wraps an amount in cents, e.g. one read back from the database.
    pub fn from_cents(cents: i64) -> Money {
        Money(cents)
    }

    /// The amount with exactly two decimals, e.g. `15350.00`, as PostgreSQL `numeric` reads it.
    pub fn to_decimal_string(self) -> String {
        // unsigned_abs: from_cents accepts any i64, and i64::MIN has no positive i64.
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        format!("{sign}{}.{:02}", abs / 100, abs % 100)
    }

    /// The amount as a JSON number: an integer when there are no cents (`15350`), else a float
    /// (`15350.5`). Every accepted amount is below 2^53 cents, so the float prints back exactly.
    pub fn to_json(self) -> Value {
        if self.0 % 100 == 0 {
            Value::from(self.0 / 100)
        } else {
            // from_f64 only fails for NaN and infinities, which an i64 / 100 never is.
            Number::from_f64(self.0 as f64 / 100.0).map_or(Value::Null, Value::Number)
        }
    }

    /// Reads a JSON number as money, with the field-error message when it is not acceptable.
    pub(crate) fn from_json(value: &Value) -> Result<Money, &'static str> {
        match value {
            Value::Number(n) => parse_decimal(&n.to_string()),
            _ => Err(NOT_A_NUMBER),
        }
    }
}

/// Converts JSON number text (`15350`, `-0.5`, `1.25e2`, `1e15`) into cents.
///
/// serde_json prints floats in their shortest round-trip form, so the text has as few decimals
/// as the submitted value allows; `100.0` and `1e2` are both whole amounts.
fn parse_decimal(text: &str) -> Result<Money, &'static str> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() || !all_digits(int_part) || !all_digits(frac_part) {
        return Err(NOT_A_NUMBER);
    }

    // The value is `significant × 10^-scale`, with no leading or trailing zeros in `significant`.
    let digits = format!("{int_part}{frac_part}");
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        // Zero in any spelling (`0`, `-0.0`, `0e99`) is zero, and not negative.
        return Ok(Money(0));
    }
    if negative {
        return Err(NEGATIVE);
    }
    let significant = trimmed.trim_end_matches('0');
    let trailing_zeros = (trimmed.len() - significant.len()) as i128;
    let exponent: i128 = match exponent {
        None => 0,
        Some(e) => match e.strip_prefix('+').unwrap_or(e).parse::<i128>() {
            Ok(e) => e,
            // Only reachable with absurdly long exponents; the sign says which way it overflows.
            Err(_) if e.starts_with('-') => return Err(TOO_MANY_DECIMALS),
            Err(_) => return Err(TOO_LARGE),
        },
    };
    let scale = frac_part.len() as i128 - exponent - trailing_zeros;
    if scale > 2 {
        return Err(TOO_MANY_DECIMALS);
    }
    // Cents are significant × 10^(2 - scale); past 14 digits it exceeds MAX_CENTS anyway, which
    // also keeps the arithmetic below from overflowing.
    let shift = 2 - scale;
    if significant.len() as i128 + shift > 14 {
        return Err(TOO_LARGE);
    }
    let mut cents: i64 = significant.parse().map_err(|_| NOT_A_NUMBER)?;
    for _ in 0..shift {
        cents *= 10;
    }
    if cents > MAX_CENTS {
        return Err(TOO_LARGE);
    }
    Ok(Money(cents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from_text(json_text: &str) -> Result<Money, &'static str> {
        let value: Value = serde_json::from_str(json_text).unwrap();
        Money::from_json(&value)
    }

    /// What a reader of money text gives: cents, or the field-error message.
    type Expected = Result<i64, &'static str>;

    /// Runs each (text, expected) case through `read`, naming the text that fails.
    fn check(read: fn(&str) -> Result<Money, &'static str>, cases: &[(&str, Expected)]) {
        for &(text, expected) in cases {
            assert_eq!(read(text), expected.map(Money), "{text}");
        }
    }

    #[test]
    fn whole_and_fractional_amounts() {
        check(
            from_text,
            &[
                ("15350", Ok(1_535_000)),
                ("0", Ok(0)),
                ("15350.5", Ok(1_535_050)),
                ("15350.50", Ok(1_535_050)),
                ("0.01", Ok(1)),
                ("100.0", Ok(10_000)),
                ("-0", Ok(0)),
                ("-0.0", Ok(0)),
            ],
        );
    }

    #[test]
    fn decimals_that_floats_get_wrong_are_exact() {
        // 0.29 * 100.0 == 28.999999999999996 in f64; 0.1 + 0.2 as a submitter's float
        // serializes with 17 decimals: rejected, not rounded.
        let cases = [
            ("0.29", Ok(29)),
            ("1.15", Ok(115)),
            ("4.35", Ok(435)),
            ("0.30000000000000004", Err(TOO_MANY_DECIMALS)),
        ];
        check(from_text, &cases);
    }

    #[test]
    fn exponent_forms() {
        let cases = [
            ("1e2", Ok(10_000)),
            ("1.5E3", Ok(150_000)),
            ("125e-2", Ok(125)),
            ("1e-2", Ok(1)),
            ("1e-3", Err(TOO_MANY_DECIMALS)),
            ("1.234e1", Ok(1234)),
            ("1.2345e1", Err(TOO_MANY_DECIMALS)),
            ("1e11", Ok(10_000_000_000_000)),
            ("1e12", Err(TOO_LARGE)),
            ("1e300", Err(TOO_LARGE)),
            ("0e400", Ok(0)),
        ];
        check(from_text, &cases);
    }

    #[test]
    fn direct_text_parsing_handles_forms_serde_json_would_normalise() {
        let huge_exponent = "1e99999999999999999999999999999999999999999";
        let tiny_exponent = "1e-99999999999999999999999999999999999999999";
        check(
            parse_decimal,
            &[
                ("1E+2", Ok(10_000)),
                ("12.3400", Ok(1234)),
                (huge_exponent, Err(TOO_LARGE)),
                (tiny_exponent, Err(TOO_MANY_DECIMALS)),
                ("12345678901234567890123", Err(TOO_LARGE)),
                (".5", Err(NOT_A_NUMBER)),
                ("1.x", Err(NOT_A_NUMBER)),
            ],
        );
    }

    #[test]
    fn upper_limit() {
        check(
            from_text,
            &[
                ("999999999999.99", Ok(MAX_CENTS)),
                ("999999999999", Ok(99_999_999_999_900)),
                ("1000000000000", Err(TOO_LARGE)),
                ("18446744073709551615", Err(TOO_LARGE)),
            ],
        );
    }

    #[test]
    fn negative_amounts() {
        let cases = [
            ("-1", Err(NEGATIVE)),
            ("-0.01", Err(NEGATIVE)),
            ("-9223372036854775808", Err(NEGATIVE)),
        ];
        check(from_text, &cases);
    }

    #[test]
    fn non_numbers() {
        for v in [
            json!("15350"),
            json!(true),
            json!([1]),
            json!({"a": 1}),
            json!(null),
        ] {
            assert_eq!(Money::from_json(&v), Err(NOT_A_NUMBER), "{v}");
        }
    }

    #[test]
    fn conversions() {
        let m = Money::from_cents(1_535_000);
        assert_eq!(m.cents(), 1_535_000);
        assert_eq!(m.to_decimal_string(), "15350.00");
        assert_eq!(m.to_json(), json!(15350));
        assert_eq!(m.to_json().to_string(), "15350");

        let m = Money::from_cents(1_535_050);
        assert_eq!(m.to_decimal_string(), "15350.50");
        assert_eq!(m.to_json().to_string(), "15350.5");

        assert_eq!(Money::from_cents(7).to_decimal_string(), "0.07");
        assert_eq!(Money::from_cents(7).to_json().to_string(), "0.07");
        assert_eq!(Money::from_cents(0).to_decimal_string(), "0.00");
        assert_eq!(Money::from_cents(0).to_json().to_string(), "0");
        assert_eq!(
            Money::from_cents(MAX_CENTS).to_decimal_string(),
            "999999999999.99"
        );
        assert_eq!(
            Money::from_cents(MAX_CENTS).to_json().to_string(),
            "999999999999.99"
        );
        assert_eq!(Money::from_cents(-5).to_decimal_string(), "-0.05");
        assert_eq!(
            Money::from_cents(i64::MIN).to_decimal_string(),
            "-92233720368547758.08"
        );
    }

    #[test]
    fn json_form_reads_back_to_the_same_cents() {
        for cents in [
            1,
            29,
            115,
            1_535_050,
            12_345_678_901_234,
            MAX_CENTS - 1,
            MAX_CENTS,
        ] {
            let m = Money::from_cents(cents);
            assert_eq!(Money::from_json(&m.to_json()), Ok(m), "{cents}");
        }
    }
}
