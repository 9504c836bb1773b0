//! The seed's example "create a case" body (CharityTracker's page, with a real e-mail
//! address): the one fixture the unit tests, integration tests, benchmark and fault suite start
//! from.

use serde_json::{Value, json};

/// The example body with `street_county` set to `county`; no `household`, not head.
pub fn seed_body(county: i64) -> Value {
    json!({
        "first_name": "John",
        "middle_name": "Tom",
        "last_name": "Smith",
        "suffix": "Sr",
        "nickname": "Tommy",
        "date_of_birth": "1950-12-03",
        "email": "john.smith@example.org",
        "head_of_household": false,
        "mailing_address": "123 Adams Street",
        "mailing_apt_number": "Apt 45",
        "mailing_city": "Exampleville",
        "mailing_state": "NY",
        "mailing_zip_code": "12345",
        "ss_number": "111223333",
        "street_address": "123 Adams Street",
        "street_apt_number": "Apt 45",
        "street_city": "Exampleville",
        "street_state": "NY",
        "street_zip_code": "12345",
        "street_county": county,
        "yearly_expenses": 11580,
        "yearly_income": 15350,
        "deceased": false,
        "private": false
    })
}
