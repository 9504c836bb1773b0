//! Households and cases: the locks a window takes on the households its intakes name, id
//! allocation, and the set-based writes of cases and households (one statement per table per
//! window). A case row is made from the [`Caller`] who creates it: its network, agent and group
//! can be no one else's.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::case::CaseInput;
use crate::domain::matching::MatchKeys;
use crate::domain::ssn::Ssn;
use crate::store::auth::Caller;
use crate::store::crypto::{Purpose, Vault};
use crate::store::ids::{HeadUpdate, InNetwork, NetworkId};
use crate::store::unnest::{bind_references, column};

/// A household's network and current head (`None` when it has no case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HouseholdState {
    pub network_id: NetworkId,
    pub head: Option<i64>,
}

/// Locks the referenced households (in id order, so concurrent windows cannot deadlock) and
/// returns their state. Households of another network than the one paired are not returned.
pub async fn lock_households(
    tx: &mut PgConnection,
    refs: &[InNetwork],
) -> Result<HashMap<i64, HouseholdState>, sqlx::Error> {
    if refs.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, NetworkId, Option<i64>)> = bind_references(
        sqlx::query_as(
            "SELECT h.id, h.network_id, h.head_case_id FROM households h
               JOIN unnest($1::bigint[], $2::bigint[]) AS u(id, n) ON h.id = u.id AND h.network_id = u.n
              ORDER BY h.id
                FOR UPDATE OF h",
        ),
        refs,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, network_id, head)| (id, HouseholdState { network_id, head }))
        .collect())
}

/// Takes `cases` case ids and `households` household ids from their sequences in one round trip.
pub async fn allocate_ids(
    tx: &mut PgConnection,
    cases: usize,
    households: usize,
) -> Result<(Vec<i64>, Vec<i64>), sqlx::Error> {
    if cases == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    sqlx::query_as(
        "SELECT ARRAY(SELECT nextval('cases_id_seq') FROM generate_series(1, $1)),
                ARRAY(SELECT nextval('households_id_seq') FROM generate_series(1, $2))",
    )
    .bind(cases as i64)
    .bind(households as i64)
    .fetch_one(&mut *tx)
    .await
}

/// A household created by a window.
#[derive(Debug, Clone)]
pub struct NewHousehold {
    pub id: i64,
    pub network_id: NetworkId,
    pub head_case_id: i64,
}

/// A case as written to the `cases` table.
#[derive(Debug, Clone)]
pub struct CaseRow {
    pub id: i64,
    pub household_id: i64,
    pub head_of_household: bool,
    pub created_at: DateTime<Utc>,
    pub fields: CaseInput,
    /// The keys the case is matched by (`cases.match_name`, `cases.match_address`).
    pub match_keys: MatchKeys,
    /// The creating caller's, set only by [`CaseRow::new`].
    network_id: NetworkId,
    agent_id: i64,
    group_id: i64,
}

impl CaseRow {
    /// The agent the case is entered by (its caller's): read-only, as the network and group.
    pub fn agent_id(&self) -> i64 {
        self.agent_id
    }

    /// The group the case belongs to (its caller's).
    pub fn group_id(&self) -> i64 {
        self.group_id
    }

    pub fn new(
        id: i64,
        household_id: i64,
        head_of_household: bool,
        caller: &Caller,
        fields: &CaseInput,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            household_id,
            network_id: caller.network_id(),
            head_of_household,
            agent_id: caller.agent_id(),
            group_id: caller.group_id(),
            created_at: now,
            fields: fields.clone(),
            match_keys: MatchKeys::default(),
        }
    }
}

/// Takes the head flag from cases that were replaced as head.
pub async fn unflag_heads(
    tx: &mut PgConnection,
    case_ids: &[i64],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if case_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE cases SET head_of_household = false, updated_at = $2, mod_agent = mod_agent
          WHERE id = ANY($1)",
    )
    .bind(case_ids)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Runs the checks of deferred constraints (the household ↔ head-case references) for what
/// the transaction wrote so far, then defers them again for what follows.
pub async fn check_deferred_constraints(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Inserts the households a window creates, each naming its head case (a reference checked
/// with the deferred constraints, once the case is written too).
pub async fn insert_households(
    tx: &mut PgConnection,
    rows: &[NewHousehold],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO households (id, network_id, head_case_id, created_at, updated_at)
         SELECT id, n, head, $4, $4 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, n, head)",
    )
    .bind(column(rows, |h| h.id))
    .bind(column(rows, |h| h.network_id))
    .bind(column(rows, |h| h.head_case_id))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Column-wise arrays of optional text, for `unnest`.
fn texts<'a>(
    rows: &'a [CaseRow],
    f: impl Fn(&'a CaseInput) -> Option<&'a str>,
) -> Vec<Option<&'a str>> {
    rows.iter().map(|r| f(&r.fields)).collect()
}

/// The SSN columns of a batch of cases: sealed under the active key, that key's id, the HMAC
/// an SSN is matched by, and the last four digits a masked SSN shows. Never the SSN in clear.
struct SsnColumns<'a> {
    sealed: Vec<Option<Vec<u8>>>,
    key_ids: Vec<Option<&'a str>>,
    hmacs: Vec<Option<Vec<u8>>>,
    last4: Vec<Option<&'a str>>,
}

impl<'a> SsnColumns<'a> {
    fn of(rows: &'a [CaseRow], vault: &'a Vault) -> Self {
        let ssns: Vec<Option<&'a Ssn>> = column(rows, |r| r.fields.ss_number.as_ref());
        Self {
            sealed: column(&ssns, |s| {
                s.map(|s| vault.seal(Purpose::Ssn, s.digits().as_bytes()))
            }),
            key_ids: column(&ssns, |s| s.map(|_| vault.active_key())),
            hmacs: column(&ssns, |s| s.map(|s| vault.ssn_hmac(s.digits()).to_vec())),
            last4: column(&ssns, |s| s.map(|s| s.last4())),
        }
    }
}

/// The statement of [`insert_cases`]: every column of a case, one array each.
const INSERT_CASES: &str =
    "INSERT INTO cases (id, network_id, household_id, head_of_household, entry_agent, mod_agent,
                            \"group\", created_at, updated_at, first_name, middle_name, last_name,
                            suffix, nickname, date_of_birth, email, mailing_address,
                            mailing_apt_number, mailing_city, mailing_state, mailing_zip_code,
                            ss_number_sealed, street_address, street_apt_number, street_city,
                            street_state, street_zip_code, street_county, yearly_expenses,
                            yearly_income, deceased, private, ss_number_key_id, ss_number_hmac,
                            ss_number_last4, match_name, match_address)
         SELECT id, n, h, head, agent, agent, grp, ts, ts, fname, mname, lname, suffix, nick,
                dob::date, email, maddr, mapt, mcity, mstate, mzip, ssn, saddr, sapt, scity,
                sstate, szip, county, expenses::numeric, income::numeric, deceased, private,
                ssn_key, ssn_hmac, ssn_last4, m_name, m_address
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bool[], $5::bigint[],
                       $6::bigint[], $7::timestamptz[], $8::text[], $9::text[], $10::text[],
                       $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                       $16::text[], $17::text[], $18::text[], $19::text[], $20::bytea[],
                       $21::text[], $22::text[], $23::text[], $24::text[], $25::text[],
                       $26::bigint[], $27::text[], $28::text[], $29::bool[], $30::bool[],
                       $31::text[], $32::bytea[], $33::text[], $34::bigint[], $35::bigint[])
             AS u(id, n, h, head, agent, grp, ts, fname, mname, lname, suffix, nick, dob, email,
                  maddr, mapt, mcity, mstate, mzip, ssn, saddr, sapt, scity, sstate, szip,
                  county, expenses, income, deceased, private, ssn_key, ssn_hmac, ssn_last4,
                  m_name, m_address)";

/// Inserts a window's cases in one statement, their SSNs sealed (see [`SsnColumns`]).
pub async fn insert_cases(
    tx: &mut PgConnection,
    rows: &[CaseRow],
    vault: &Vault,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ssn = SsnColumns::of(rows, vault);
    sqlx::query(INSERT_CASES)
        .bind(column(rows, |r| r.id))
        .bind(column(rows, |r| r.network_id))
        .bind(column(rows, |r| r.household_id))
        .bind(column(rows, |r| r.head_of_household))
        .bind(column(rows, |r| r.agent_id))
        .bind(column(rows, |r| r.group_id))
        .bind(column(rows, |r| r.created_at))
        .bind(texts(rows, |c| Some(c.first_name.as_str())))
        .bind(texts(rows, |c| c.middle_name.as_deref()))
        .bind(texts(rows, |c| Some(c.last_name.as_str())))
        .bind(texts(rows, |c| c.suffix.as_deref()))
        .bind(texts(rows, |c| c.nickname.as_deref()))
        .bind(column(rows, |r| {
            r.fields.date_of_birth.map(|d| d.to_string())
        }))
        .bind(texts(rows, |c| c.email.as_deref()))
        .bind(texts(rows, |c| c.mailing_address.as_deref()))
        .bind(texts(rows, |c| c.mailing_apt_number.as_deref()))
        .bind(texts(rows, |c| c.mailing_city.as_deref()))
        .bind(texts(rows, |c| c.mailing_state.as_deref()))
        .bind(texts(rows, |c| c.mailing_zip_code.as_deref()))
        .bind(&ssn.sealed)
        .bind(texts(rows, |c| c.street_address.as_deref()))
        .bind(texts(rows, |c| c.street_apt_number.as_deref()))
        .bind(texts(rows, |c| c.street_city.as_deref()))
        .bind(texts(rows, |c| c.street_state.as_deref()))
        .bind(texts(rows, |c| c.street_zip_code.as_deref()))
        .bind(column(rows, |r| r.fields.street_county))
        .bind(column(rows, |r| {
            r.fields.yearly_expenses.map(|m| m.to_decimal_string())
        }))
        .bind(column(rows, |r| {
            r.fields.yearly_income.map(|m| m.to_decimal_string())
        }))
        .bind(column(rows, |r| r.fields.deceased))
        .bind(column(rows, |r| r.fields.private))
        .bind(&ssn.key_ids)
        .bind(&ssn.hmacs)
        .bind(&ssn.last4)
        .bind(column(rows, |r| r.match_keys.name))
        .bind(column(rows, |r| r.match_keys.address))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Points existing households at their new heads.
pub async fn update_heads(
    tx: &mut PgConnection,
    updates: &[HeadUpdate],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let households = column(updates, |u| u.household);
    let heads = column(updates, |u| u.case);
    sqlx::query(
        "UPDATE households h SET head_case_id = u.head, updated_at = $3
           FROM unnest($1::bigint[], $2::bigint[]) AS u(id, head)
          WHERE h.id = u.id",
    )
    .bind(&households)
    .bind(&heads)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
