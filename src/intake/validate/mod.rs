//! Turns a decoded JSON object into a [`CaseInput`], collecting every field error at once.
//!
//! Parse, don't validate: the only way to hold a [`CaseInput`] is to pass these checks, so the
//! store never sees an unchecked value. Checks that need the database (the county and household
//! belong to the caller's network) happen in the store, scoped to the caller.

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::domain::case::CaseInput;
use crate::domain::error::FieldErrors;
pub use crate::domain::money::Money;
pub use crate::domain::ssn::Ssn;
use fields::Fields;
pub use fields::{KNOWN_FIELDS, READ_ONLY_FIELDS};

mod email;
mod fields;
mod usps;

/// Something accepted but worth a human's attention; travels in the `case.created` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub field: String,
    pub code: String,
    pub message: String,
}

/// A valid body and its warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub case: CaseInput,
    pub warnings: Vec<Warning>,
}

/// Error when `date_of_birth` is not a calendar date written as `YYYY-MM-DD`.
const NOT_A_DATE: &str = "must be a date in the form YYYY-MM-DD";
/// Error when `date_of_birth` is after the day of intake.
const FUTURE_DATE: &str = "must not be in the future";

/// Validates a create-a-case body, reporting every field error at once.
///
/// `today` is passed in (rather than read from the clock) so a redelivered message is judged
/// against the same day by tests and replays alike.
pub fn validate(body: &Map<String, Value>, today: NaiveDate) -> Result<Validated, FieldErrors> {
    let mut f = Fields::new(body);
    let mut warnings = Vec::new();
    f.check_keys();
    let case = read_case(&mut f, today, &mut warnings);
    // A case is only built when both required names are present; any error still refuses it.
    match case {
        Some(case) if f.errors.is_empty() => Ok(Validated { case, warnings }),
        _ => Err(f.errors),
    }
}

/// Reads every field of the body, in the API's order, recording each field's error in `f`.
/// Returns the case when both required names are present; the caller decides on the errors.
fn read_case(f: &mut Fields, today: NaiveDate, warnings: &mut Vec<Warning>) -> Option<CaseInput> {
    let first_name = f.required_name("first_name", 100);
    let middle_name = f.optional_name("middle_name", 100);
    let last_name = f.required_name("last_name", 100);
    let suffix = f.optional_name("suffix", 20);
    let nickname = f.optional_name("nickname", 100);
    let date_of_birth = read_date_of_birth(f, today, warnings);
    let email = f.parsed("email", Some(254), |s| {
        email::check_email(s).map(|()| s.to_owned())
    });
    let head_of_household = f.flag("head_of_household");
    let mailing_address = f.optional_text("mailing_address", 200);
    let mailing_apt_number = f.optional_text("mailing_apt_number", 50);
    let mailing_city = f.optional_text("mailing_city", 100);
    let mailing_state = f.parsed("mailing_state", None, usps::parse_state);
    let mailing_zip_code = f.parsed("mailing_zip_code", None, usps::parse_zip);
    let ss_number = f.parsed("ss_number", None, Ssn::parse);
    let street_address = f.optional_text("street_address", 200);
    let street_apt_number = f.optional_text("street_apt_number", 50);
    let street_city = f.optional_text("street_city", 100);
    let street_state = f.parsed("street_state", None, usps::parse_state);
    let street_zip_code = f.parsed("street_zip_code", None, usps::parse_zip);
    let street_county = f.positive_id("street_county");
    let yearly_expenses = f.money("yearly_expenses");
    let yearly_income = f.money("yearly_income");
    let deceased = f.flag("deceased");
    let private = f.flag("private");
    let household = f.positive_id("household");
    Some(CaseInput {
        first_name: first_name?,
        middle_name,
        last_name: last_name?,
        suffix,
        nickname,
        date_of_birth,
        email,
        head_of_household,
        mailing_address,
        mailing_apt_number,
        mailing_city,
        mailing_state,
        mailing_zip_code,
        ss_number,
        street_address,
        street_apt_number,
        street_city,
        street_state,
        street_zip_code,
        street_county,
        yearly_expenses,
        yearly_income,
        deceased,
        private,
        household,
    })
}

/// `date_of_birth`: a strict date, not after `today`; a very old one adds a warning.
fn read_date_of_birth(
    f: &mut Fields,
    today: NaiveDate,
    warnings: &mut Vec<Warning>,
) -> Option<NaiveDate> {
    let dob = f.parsed("date_of_birth", None, parse_date)?;
    if dob > today {
        f.fail("date_of_birth", FUTURE_DATE);
        return None;
    }
    if dob < oldest_plausible_birth() {
        warnings.push(Warning {
            field: "date_of_birth".to_owned(),
            code: "date_of_birth_before_1915".to_owned(),
            message: "date of birth is before 1915; check that it was entered correctly".to_owned(),
        });
    }
    Some(dob)
}

/// Births before this date are accepted but flagged: such a person would be over 110, which
/// is far more often a typo (1905 for 1995) than a fact.
fn oldest_plausible_birth() -> NaiveDate {
    NaiveDate::from_ymd_opt(1915, 1, 1).unwrap_or(NaiveDate::MIN)
}

/// Strict `YYYY-MM-DD`: chrono alone would also take `2000-1-1` or a signed year.
fn parse_date(s: &str) -> Result<NaiveDate, &'static str> {
    let shape_ok = s.len() == 10
        && s.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if !shape_ok {
        return Err(NOT_A_DATE);
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| NOT_A_DATE)
}

#[cfg(test)]
mod tests;
