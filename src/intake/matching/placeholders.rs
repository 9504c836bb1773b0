//! Values that intake forms put where the real one is unknown: never a match.
//!
//! Two unrelated people whose forms both say "SSN 000-00-0000" or "born 1900-01-01" share a
//! default, not an identity, so such values give no key (`MatchKeys`, `matchable_ssn`). The
//! lists follow what HMIS data-quality practice and the SSA treat as "unknown" or "never
//! issued"; they are specific values, not patterns that also catch real people.

use chrono::NaiveDate;

/// SSNs that are well known but belong to no one who could be a client: the Woolworth wallet
/// card number (078-05-1120) and the one printed in a 1940s advertisement (219-09-9999), both
/// voided by the SSA and still typed into forms.
const ADVERTISED_SSNS: [&str; 2] = ["078051120", "219099999"];

/// Keyboard sequences typed when the form will not accept an empty SSN.
const SEQUENCE_SSNS: [&str; 3] = ["123456789", "987654321", "012345678"];

/// True for an SSN that stands for "unknown" or cannot be anybody's: anything but exactly nine
/// ASCII digits; one digit repeated (000000000 … 999999999); the keyboard sequences 123456789,
/// 987654321 and 012345678; a number the SSA never issues (area 000, 666 or 900–999, group 00,
/// serial 0000 — validation already rejects these, but stored or imported values may hold them);
/// and the advertising numbers 078051120 and 219099999.
pub fn is_placeholder_ssn(digits: &str) -> bool {
    let b = digits.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if b.iter().all(|&d| d == b[0]) {
        return true;
    }
    let (area, group, serial) = (&digits[..3], &digits[3..5], &digits[5..]);
    if area == "000" || area == "666" || area.starts_with('9') {
        return true;
    }
    if group == "00" || serial == "0000" {
        return true;
    }
    SEQUENCE_SSNS.contains(&digits) || ADVERTISED_SSNS.contains(&digits)
}

/// True for a defaulted date of birth: 1900-01-01, 1901-01-01 and 1800-01-01 (the "unknown"
/// defaults of case-management systems), 1970-01-01 (a Unix timestamp of 0 formatted as a
/// date), 2000-01-01 (the Y2K-era default), and every date before 1901-01-01 (no living
/// client was born then, so such a date is a default or a typo, never evidence).
///
/// January 1 of other years is *not* a placeholder: real people are born on January 1 (about
/// 1/365 of them, and more among people whose birth was registered late, who are often given
/// January 1), and treating it as unknown would stop matching exactly those clients. HMIS
/// data-quality checks likewise flag specific default dates, not a day of the year.
pub fn is_placeholder_dob(d: NaiveDate) -> bool {
    let ymd = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("a valid constant date");
    d < ymd(1901, 1, 1) || [ymd(1901, 1, 1), ymd(1970, 1, 1), ymd(2000, 1, 1)].contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_nine_ascii_digits_is_never_matchable() {
        for s in [
            "",
            "12345678",
            "1234567890",
            "123-45-6789",
            "12345678a",
            "１２３４５６７８９",
            "12345678٩",
        ] {
            assert!(is_placeholder_ssn(s), "{s:?}");
        }
    }

    #[test]
    fn repeated_digits_are_placeholders() {
        for d in b'0'..=b'9' {
            let s = String::from_utf8(vec![d; 9]).expect("ascii");
            assert!(is_placeholder_ssn(&s), "{s}");
        }
    }

    #[test]
    fn sequences_and_advertised_numbers_are_placeholders() {
        for s in [
            "123456789",
            "987654321",
            "012345678",
            "078051120",
            "219099999",
        ] {
            assert!(is_placeholder_ssn(s), "{s}");
        }
    }

    #[test]
    fn never_issued_numbers_are_placeholders() {
        for s in [
            "000123456", // area 000
            "666123456", // area 666
            "900123456", // area 9xx
            "999456789",
            "123001234", // group 00
            "123450000", // serial 0000
        ] {
            assert!(is_placeholder_ssn(s), "{s}");
        }
    }

    #[test]
    fn ordinary_numbers_are_matchable() {
        // Made-up numbers in issued ranges, near the placeholders on purpose.
        for s in [
            "123456788",
            "123456780",
            "078051121",
            "219099998",
            "665123456",
            "899123456",
            "001010001",
            "111111112",
        ] {
            assert!(!is_placeholder_ssn(s), "{s}");
        }
    }

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("a date")
    }

    #[test]
    fn default_dates_are_placeholders() {
        for d in [
            ymd(1900, 1, 1),
            ymd(1901, 1, 1),
            ymd(1800, 1, 1),
            ymd(1970, 1, 1),
            ymd(2000, 1, 1),
            ymd(1900, 12, 31),
            ymd(1899, 6, 15),
            ymd(1, 1, 1),
        ] {
            assert!(is_placeholder_dob(d), "{d}");
        }
    }

    #[test]
    fn real_birthdays_including_other_new_years_days_are_not() {
        for d in [
            ymd(1901, 1, 2),
            ymd(1969, 12, 31),
            ymd(1970, 1, 2),
            ymd(1985, 1, 1),
            ymd(1999, 12, 31),
            ymd(2001, 1, 1),
            ymd(2010, 7, 4),
        ] {
            assert!(!is_placeholder_dob(d), "{d}");
        }
    }
}
