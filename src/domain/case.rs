//! A validated case body: the one shape of a case that the pipeline decides on and the store
//! writes. Only `intake::validate` makes one (parse, don't validate), so the store never sees
//! an unchecked value.

use chrono::NaiveDate;

use crate::domain::money::Money;
use crate::domain::ssn::Ssn;

/// A validated case body. Optional text fields are `None` when absent, null or blank.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseInput {
    pub first_name: String,
    pub middle_name: Option<String>,
    pub last_name: String,
    pub suffix: Option<String>,
    pub nickname: Option<String>,
    pub date_of_birth: Option<NaiveDate>,
    pub email: Option<String>,
    pub head_of_household: bool,
    pub mailing_address: Option<String>,
    pub mailing_apt_number: Option<String>,
    pub mailing_city: Option<String>,
    pub mailing_state: Option<String>,
    pub mailing_zip_code: Option<String>,
    pub ss_number: Option<Ssn>,
    pub street_address: Option<String>,
    pub street_apt_number: Option<String>,
    pub street_city: Option<String>,
    pub street_state: Option<String>,
    pub street_zip_code: Option<String>,
    pub street_county: Option<i64>,
    pub yearly_expenses: Option<Money>,
    pub yearly_income: Option<Money>,
    pub deceased: bool,
    pub private: bool,
    pub household: Option<i64>,
}
