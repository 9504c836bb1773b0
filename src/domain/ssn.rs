//! Social Security number parsing and the masked forms that are safe to log or publish.
//!
//! The digits are sensitive: `Debug` prints only the masked form, so a stray `{:?}` of a case or
//! a validation failure cannot leak a whole number into logs.

use std::fmt;

/// A Social Security number that passed the SSA's never-issued rules; digits only.
#[derive(Clone, PartialEq, Eq)]
pub struct Ssn(String);

/// Error when the text is not nine digits once dashes are removed.
pub(crate) const NOT_NINE_DIGITS: &str = "must be 9 digits, dashes allowed";
/// Error when the digits fall in a range the SSA has never issued.
pub(crate) const NEVER_ISSUED: &str = "is not a number the SSA issues";

impl Ssn {
    /// Parses `123-45-6789` or `123456789`. Only dashes are removed: spaces, dots and other
    /// separators are rejected rather than guessed at.
    ///
    /// Never-issued numbers are rejected: area 000, 666 and 900–999 (the 9xx range is ITINs and
    /// advertising numbers), group 00 and serial 0000.
    pub fn parse(s: &str) -> Result<Ssn, &'static str> {
        let digits: String = s.chars().filter(|&c| c != '-').collect();
        if digits.len() != 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NOT_NINE_DIGITS);
        }
        let (area, rest) = digits.split_at(3);
        let (group, serial) = rest.split_at(2);
        if area == "000" || area == "666" || area.starts_with('9') {
            return Err(NEVER_ISSUED);
        }
        if group == "00" || serial == "0000" {
            return Err(NEVER_ISSUED);
        }
        Ok(Ssn(digits))
    }

    /// The nine digits, without dashes. Only for storage; never log this.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The last four digits, the part people commonly use to confirm identity.
    pub fn last4(&self) -> &str {
        &self.0[5..]
    }

    /// Five stars and the last four digits, e.g. `*****3333`: the one mask format of
    /// [`crate::infra::redact`], so an event's `ss_number` and a masked payload look alike.
    pub fn masked(&self) -> String {
        crate::infra::redact::mask_last4(self.last4())
    }
}

/// Masked on purpose: derived `Debug` would print all nine digits.
impl fmt::Debug for Ssn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Ssn").field(&self.masked()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_dashed_forms_to_the_same_digits() {
        let plain = Ssn::parse("111223333").unwrap();
        let dashed = Ssn::parse("111-22-3333").unwrap();
        assert_eq!(plain, dashed);
        assert_eq!(plain.digits(), "111223333");
        assert_eq!(
            Ssn::parse("-1-1-1-2-2-3-3-3-3-").unwrap().digits(),
            "111223333"
        );
    }

    #[test]
    fn accessors_and_masking() {
        let ssn = Ssn::parse("111-22-3333").unwrap();
        assert_eq!(ssn.last4(), "3333");
        assert_eq!(ssn.masked(), "*****3333");
    }

    #[test]
    fn the_mask_is_the_one_redaction_uses() {
        let ssn = Ssn::parse("111-22-3333").unwrap();
        assert_eq!(ssn.masked(), crate::infra::redact::mask_ssns("111-22-3333"));
    }

    #[test]
    fn debug_never_shows_the_digits() {
        let ssn = Ssn::parse("123456789").unwrap();
        let debug = format!("{ssn:?}");
        assert_eq!(debug, r#"Ssn("*****6789")"#);
        assert!(!debug.contains("12345"));
        let nested = format!("{:?}", Some(ssn));
        assert!(!nested.contains("12345"));
    }

    #[test]
    fn rejects_wrong_shapes() {
        for bad in [
            "",
            "12345678",
            "1234567890",
            "123 45 6789",
            "123.45.6789",
            "12345678a",
            "１２３４５６７８９",
            "+23456789",
            "---",
        ] {
            assert_eq!(Ssn::parse(bad), Err(NOT_NINE_DIGITS), "{bad:?}");
        }
    }

    #[test]
    fn rejects_never_issued_numbers() {
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "950-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert_eq!(Ssn::parse(bad), Err(NEVER_ISSUED), "{bad}");
        }
    }

    #[test]
    fn accepts_edges_of_the_issued_ranges() {
        for good in ["001-01-0001", "665-99-9999", "667-01-0001", "899-99-9999"] {
            assert!(Ssn::parse(good).is_ok(), "{good}");
        }
    }
}
