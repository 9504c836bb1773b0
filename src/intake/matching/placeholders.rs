//! Values that intake forms put where the real one is unknown: never a match.

use chrono::NaiveDate;

/// True for an SSN that stands for "unknown".
pub fn is_placeholder_ssn(digits: &str) -> bool {
    digits.chars().all(|c| Some(c) == digits.chars().next())
}

/// True for a defaulted date of birth.
pub fn is_placeholder_dob(d: NaiveDate) -> bool {
    d <= NaiveDate::from_ymd_opt(1901, 1, 1).expect("a date")
}
