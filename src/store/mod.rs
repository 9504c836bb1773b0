//! The SQL boundary, by area: `auth` (tokens, the [`Caller`] proof), `crypto` (sealing SSNs
//! and payloads), and here the statements of a window. May call `infra` only.
//!
//! The SQL of a window: set-based statements (one per table per window, arrays bound with
//! `unnest`) so that a window of a few hundred intakes costs about ten round trips.
//!
//! Every lookup takes the caller's network as part of its key; nothing here can read or write
//! a row of another network than the one a [`Caller`] proves.

pub mod auth;
pub mod crypto;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::intake::event::Event;
use crate::intake::validate::{CaseInput, Ssn};
use crate::store::auth::{Caller, TokenHash};
use crate::store::crypto::{Purpose, Vault};

/// Resolves token hashes to callers: key not revoked, agent active.
pub async fn callers(
    tx: &mut PgConnection,
    tokens: &[TokenHash],
) -> Result<HashMap<TokenHash, Caller>, sqlx::Error> {
    if tokens.is_empty() {
        return Ok(HashMap::new());
    }
    let hashes: Vec<Vec<u8>> = tokens.iter().map(|t| t.to_vec()).collect();
    let rows = sqlx::query(
        "SELECT k.token_hash, k.id, a.id, a.group_id, a.network_id
           FROM api_keys k
           JOIN agents a ON a.id = k.agent_id AND a.network_id = k.network_id
          WHERE k.token_hash = ANY($1) AND k.revoked_at IS NULL AND a.active",
    )
    .bind(&hashes)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let hash: Vec<u8> = row.try_get(0)?;
        let Ok(hash) = TokenHash::try_from(hash.as_slice()) else {
            continue;
        };
        out.insert(
            hash,
            Caller::authenticated(
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            ),
        );
    }
    Ok(out)
}

/// The caller behind one token, through the pipeline's authentication query (`callers`):
/// `None` for an unknown or revoked key or an inactive agent.
pub async fn caller_of(pool: &PgPool, token: TokenHash) -> Result<Option<Caller>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    Ok(callers(&mut conn, &[token]).await?.remove(&token))
}

/// A county as the HTTP surface lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct County {
    pub id: i64,
    pub name: String,
    pub state: Option<String>,
}

/// The counties of the caller's network, by name.
pub async fn counties(pool: &PgPool, caller: &Caller) -> Result<Vec<County>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT id, name, state FROM counties WHERE network_id = $1 ORDER BY name, id")
            .bind(caller.network_id())
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(County {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                state: r.try_get(2)?,
            })
        })
        .collect()
}

/// The outbox's backlog: how many events wait, and the age in seconds of the oldest.
pub async fn outbox_backlog(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::bigint
           FROM outbox",
    )
    .fetch_one(pool)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Whether PostgreSQL answers.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// A message key to claim in a network namespace.
#[derive(Debug, Clone)]
pub struct ClaimedKey {
    pub network_id: i64,
    pub message_key: String,
    pub payload_hash: Vec<u8>,
}

/// Claims keys; returns the `(network, key)` pairs that were NOT claimed because an outcome
/// already exists. A key claimed by a concurrent, uncommitted transaction makes this wait
/// for it, so the same key is never processed twice at once.
pub async fn claim_keys(
    tx: &mut PgConnection,
    claims: &[ClaimedKey],
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let mut sorted: Vec<&ClaimedKey> = claims.iter().collect();
    // One order for every window, so that two windows claiming overlapping keys cannot deadlock.
    sorted.sort_by(|a, b| (a.network_id, &a.message_key).cmp(&(b.network_id, &b.message_key)));
    let networks: Vec<i64> = sorted.iter().map(|c| c.network_id).collect();
    let keys: Vec<&str> = sorted.iter().map(|c| c.message_key.as_str()).collect();
    let hashes: Vec<&[u8]> = sorted.iter().map(|c| c.payload_hash.as_slice()).collect();
    let rows = sqlx::query(
        "INSERT INTO intake_outcomes (network_id, message_key, payload_hash)
         SELECT n, k, h FROM unnest($1::bigint[], $2::text[], $3::bytea[]) WITH ORDINALITY AS u(n, k, h, o)
          ORDER BY o
         ON CONFLICT DO NOTHING
         RETURNING network_id, message_key",
    )
    .bind(&networks)
    .bind(&keys)
    .bind(&hashes)
    .fetch_all(&mut *tx)
    .await?;
    let mut claimed = HashSet::with_capacity(rows.len());
    for row in rows {
        claimed.insert((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?));
    }
    Ok(sorted
        .into_iter()
        .map(|c| (c.network_id, c.message_key.clone()))
        .filter(|k| !claimed.contains(k))
        .collect())
}

/// Deletes the failed outcomes of keys being replayed, so that they can be claimed again in
/// the same transaction (and, for an intake that first failed authentication, also the
/// unauthenticated namespace).
pub async fn forget_failed_outcomes(
    tx: &mut PgConnection,
    keys: &[(i64, String)],
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let networks: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    // An unpublished outbox row may still refer to the event of a forgotten outcome (a replay
    // right after the failure, the broker down): its event is copied into the row first.
    sqlx::query(
        "WITH gone AS (
             DELETE FROM intake_outcomes o
              USING unnest($1::bigint[], $2::text[]) AS u(n, k)
              WHERE o.message_key = u.k AND o.network_id IN (u.n, 0) AND o.outcome = 'failed'
          RETURNING o.network_id, o.message_key, o.event_id, o.event)
         UPDATE outbox b
            SET body = g.event, outcome_network_id = NULL, outcome_key = NULL
           FROM gone g
          WHERE b.outcome_network_id = g.network_id
            AND b.outcome_key = g.message_key AND b.event_id = g.event_id",
    )
    .bind(&networks)
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The committed outcome of a key.
#[derive(Debug, Clone)]
pub struct StoredOutcome {
    pub payload_hash: Vec<u8>,
    pub event: Event,
}

/// Reads the committed outcomes of keys that could not be claimed.
pub async fn stored_outcomes(
    tx: &mut PgConnection,
    keys: &[(i64, String)],
) -> Result<HashMap<(i64, String), StoredOutcome>, sqlx::Error> {
    let networks: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let rows = sqlx::query(
        "SELECT o.network_id, o.message_key, o.payload_hash, o.event_id, o.event, o.routing_key
           FROM intake_outcomes o
           JOIN unnest($1::bigint[], $2::text[]) AS u(n, k) ON o.network_id = u.n AND o.message_key = u.k
          WHERE o.outcome IS NOT NULL",
    )
    .bind(&networks)
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let event = Event {
            id: row.try_get(3)?,
            body: row.try_get(4)?,
            routing_key: row.try_get(5)?,
        };
        out.insert(
            (row.try_get(0)?, row.try_get(1)?),
            StoredOutcome {
                payload_hash: row.try_get(2)?,
                event,
            },
        );
    }
    Ok(out)
}

/// Which of `(county, network)` pairs exist.
pub async fn existing_counties(
    tx: &mut PgConnection,
    refs: &[(i64, i64)],
) -> Result<HashSet<(i64, i64)>, sqlx::Error> {
    if refs.is_empty() {
        return Ok(HashSet::new());
    }
    let (ids, networks): (Vec<i64>, Vec<i64>) = refs.iter().copied().unzip();
    let rows = sqlx::query(
        "SELECT c.id, c.network_id FROM counties c
           JOIN unnest($1::bigint[], $2::bigint[]) AS u(id, n) ON c.id = u.id AND c.network_id = u.n",
    )
    .bind(&ids)
    .bind(&networks)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// A household's network and current head (`None` when it has no case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HouseholdState {
    pub network_id: i64,
    pub head: Option<i64>,
}

/// Locks the referenced households (in id order, so concurrent windows cannot deadlock) and
/// returns their state. Households of another network than the one paired are not returned.
pub async fn lock_households(
    tx: &mut PgConnection,
    refs: &[(i64, i64)],
) -> Result<HashMap<i64, HouseholdState>, sqlx::Error> {
    if refs.is_empty() {
        return Ok(HashMap::new());
    }
    let (ids, networks): (Vec<i64>, Vec<i64>) = refs.iter().copied().unzip();
    let rows = sqlx::query(
        "SELECT h.id, h.network_id, h.head_case_id FROM households h
           JOIN unnest($1::bigint[], $2::bigint[]) AS u(id, n) ON h.id = u.id AND h.network_id = u.n
          ORDER BY h.id
            FOR UPDATE OF h",
    )
    .bind(&ids)
    .bind(&networks)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                HouseholdState {
                    network_id: r.try_get(1)?,
                    head: r.try_get(2)?,
                },
            ))
        })
        .collect()
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
    let row = sqlx::query(
        "SELECT ARRAY(SELECT nextval('cases_id_seq') FROM generate_series(1, $1)),
                ARRAY(SELECT nextval('households_id_seq') FROM generate_series(1, $2))",
    )
    .bind(cases as i64)
    .bind(households as i64)
    .fetch_one(&mut *tx)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A household created by a window.
#[derive(Debug, Clone)]
pub struct NewHousehold {
    pub id: i64,
    pub network_id: i64,
    pub head_case_id: i64,
}

/// A case as written to the `cases` table.
#[derive(Debug, Clone)]
pub struct CaseRow {
    pub id: i64,
    pub household_id: i64,
    pub network_id: i64,
    pub head_of_household: bool,
    pub agent_id: i64,
    pub group_id: i64,
    pub created_at: DateTime<Utc>,
    pub fields: CaseInput,
}

impl CaseRow {
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
        }
    }
}

/// The stored case as it appears in `case.created`: every field, the SSN masked.
pub fn case_json(row: &CaseRow, c: &CaseInput) -> Value {
    let ts = row
        .created_at
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    json!({
        "id": row.id,
        "first_name": c.first_name,
        "middle_name": c.middle_name,
        "last_name": c.last_name,
        "suffix": c.suffix,
        "nickname": c.nickname,
        "date_of_birth": c.date_of_birth.map(|d| d.to_string()),
        "email": c.email,
        "head_of_household": row.head_of_household,
        "mailing_address": c.mailing_address,
        "mailing_apt_number": c.mailing_apt_number,
        "mailing_city": c.mailing_city,
        "mailing_state": c.mailing_state,
        "mailing_zip_code": c.mailing_zip_code,
        "ss_number": c.ss_number.as_ref().map(|s| s.masked()),
        "street_address": c.street_address,
        "street_apt_number": c.street_apt_number,
        "street_city": c.street_city,
        "street_state": c.street_state,
        "street_zip_code": c.street_zip_code,
        "street_county": c.street_county,
        "yearly_expenses": c.yearly_expenses.map(|m| m.to_json()),
        "yearly_income": c.yearly_income.map(|m| m.to_json()),
        "deceased": c.deceased,
        "private": c.private,
        "household": row.household_id,
        "roi_exp_date": Value::Null,
        "entry_agent": row.agent_id,
        "mod_agent": row.agent_id,
        "group": row.group_id,
        "import_id": Value::Null,
        "created_at": ts,
        "updated_at": ts,
    })
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

pub async fn insert_households(
    tx: &mut PgConnection,
    rows: &[NewHousehold],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|h| h.id).collect();
    let networks: Vec<i64> = rows.iter().map(|h| h.network_id).collect();
    let heads: Vec<i64> = rows.iter().map(|h| h.head_case_id).collect();
    sqlx::query(
        "INSERT INTO households (id, network_id, head_case_id, created_at, updated_at)
         SELECT id, n, head, $4, $4 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, n, head)",
    )
    .bind(&ids)
    .bind(&networks)
    .bind(&heads)
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

pub async fn insert_cases(
    tx: &mut PgConnection,
    rows: &[CaseRow],
    vault: &Vault,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let networks: Vec<i64> = rows.iter().map(|r| r.network_id).collect();
    let households: Vec<i64> = rows.iter().map(|r| r.household_id).collect();
    let heads: Vec<bool> = rows.iter().map(|r| r.head_of_household).collect();
    let agents: Vec<i64> = rows.iter().map(|r| r.agent_id).collect();
    let groups: Vec<i64> = rows.iter().map(|r| r.group_id).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|r| r.created_at).collect();
    let dobs: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.fields.date_of_birth.map(|d| d.to_string()))
        .collect();
    let ssns: Vec<Option<&Ssn>> = rows.iter().map(|r| r.fields.ss_number.as_ref()).collect();
    let sealed: Vec<Option<Vec<u8>>> = ssns
        .iter()
        .map(|s| s.map(|s| vault.seal(Purpose::Ssn, s.digits().as_bytes())))
        .collect();
    let key_ids: Vec<Option<&str>> = ssns.iter().map(|s| s.map(|_| vault.active_key())).collect();
    let hmacs: Vec<Option<Vec<u8>>> = ssns
        .iter()
        .map(|s| s.map(|s| vault.ssn_hmac(s.digits()).to_vec()))
        .collect();
    let last4: Vec<Option<&str>> = ssns.iter().map(|s| s.map(|s| s.last4())).collect();
    let counties: Vec<Option<i64>> = rows.iter().map(|r| r.fields.street_county).collect();
    let expenses: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.fields.yearly_expenses.map(|m| m.to_decimal_string()))
        .collect();
    let incomes: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.fields.yearly_income.map(|m| m.to_decimal_string()))
        .collect();
    let deceased: Vec<bool> = rows.iter().map(|r| r.fields.deceased).collect();
    let private: Vec<bool> = rows.iter().map(|r| r.fields.private).collect();
    sqlx::query(
        "INSERT INTO cases (id, network_id, household_id, head_of_household, entry_agent, mod_agent,
                            \"group\", created_at, updated_at, first_name, middle_name, last_name,
                            suffix, nickname, date_of_birth, email, mailing_address,
                            mailing_apt_number, mailing_city, mailing_state, mailing_zip_code,
                            ss_number_sealed, street_address, street_apt_number, street_city,
                            street_state, street_zip_code, street_county, yearly_expenses,
                            yearly_income, deceased, private, ss_number_key_id, ss_number_hmac,
                            ss_number_last4)
         SELECT id, n, h, head, agent, agent, grp, ts, ts, fname, mname, lname, suffix, nick,
                dob::date, email, maddr, mapt, mcity, mstate, mzip, ssn, saddr, sapt, scity,
                sstate, szip, county, expenses::numeric, income::numeric, deceased, private,
                ssn_key, ssn_hmac, ssn_last4
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bool[], $5::bigint[],
                       $6::bigint[], $7::timestamptz[], $8::text[], $9::text[], $10::text[],
                       $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                       $16::text[], $17::text[], $18::text[], $19::text[], $20::bytea[],
                       $21::text[], $22::text[], $23::text[], $24::text[], $25::text[],
                       $26::bigint[], $27::text[], $28::text[], $29::bool[], $30::bool[],
                       $31::text[], $32::bytea[], $33::text[])
             AS u(id, n, h, head, agent, grp, ts, fname, mname, lname, suffix, nick, dob, email,
                  maddr, mapt, mcity, mstate, mzip, ssn, saddr, sapt, scity, sstate, szip,
                  county, expenses, income, deceased, private, ssn_key, ssn_hmac, ssn_last4)",
    )
    .bind(&ids)
    .bind(&networks)
    .bind(&households)
    .bind(&heads)
    .bind(&agents)
    .bind(&groups)
    .bind(&created)
    .bind(texts(rows, |c| Some(c.first_name.as_str())))
    .bind(texts(rows, |c| c.middle_name.as_deref()))
    .bind(texts(rows, |c| Some(c.last_name.as_str())))
    .bind(texts(rows, |c| c.suffix.as_deref()))
    .bind(texts(rows, |c| c.nickname.as_deref()))
    .bind(&dobs)
    .bind(texts(rows, |c| c.email.as_deref()))
    .bind(texts(rows, |c| c.mailing_address.as_deref()))
    .bind(texts(rows, |c| c.mailing_apt_number.as_deref()))
    .bind(texts(rows, |c| c.mailing_city.as_deref()))
    .bind(texts(rows, |c| c.mailing_state.as_deref()))
    .bind(texts(rows, |c| c.mailing_zip_code.as_deref()))
    .bind(&sealed)
    .bind(texts(rows, |c| c.street_address.as_deref()))
    .bind(texts(rows, |c| c.street_apt_number.as_deref()))
    .bind(texts(rows, |c| c.street_city.as_deref()))
    .bind(texts(rows, |c| c.street_state.as_deref()))
    .bind(texts(rows, |c| c.street_zip_code.as_deref()))
    .bind(&counties)
    .bind(&expenses)
    .bind(&incomes)
    .bind(&deceased)
    .bind(&private)
    .bind(&key_ids)
    .bind(&hmacs)
    .bind(&last4)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Points existing households at their new heads.
pub async fn update_heads(
    tx: &mut PgConnection,
    updates: &[(i64, i64)],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let (households, heads): (Vec<i64>, Vec<i64>) = updates.iter().copied().unzip();
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

/// The outcome of a claimed key.
#[derive(Debug, Clone)]
pub struct OutcomeRow {
    pub network_id: i64,
    pub message_key: String,
    pub payload_hash: Vec<u8>,
    pub case_id: Option<i64>,
    pub error_code: Option<String>,
    pub event_id: Uuid,
    pub event: String,
    pub routing_key: String,
}

/// Fills in the outcome of keys claimed earlier in the transaction.
pub async fn record_outcomes(
    tx: &mut PgConnection,
    rows: &[OutcomeRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let c = OutcomeColumns::of(rows.iter());
    sqlx::query(
        "UPDATE intake_outcomes o
            SET outcome = CASE WHEN u.case_id IS NULL THEN 'failed' ELSE 'created' END,
                case_id = u.case_id, error_code = u.code, event_id = u.eid,
                event = u.ev::jsonb, routing_key = u.rk, updated_at = now()
           FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::uuid[],
                       $6::text[], $7::text[]) AS u(n, k, case_id, code, eid, ev, rk)
          WHERE o.network_id = u.n AND o.message_key = u.k",
    )
    .bind(&c.networks)
    .bind(&c.keys)
    .bind(&c.cases)
    .bind(&c.codes)
    .bind(&c.event_ids)
    .bind(&c.events)
    .bind(&c.routing)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Outcome rows column by column, for `unnest`.
struct OutcomeColumns<'a> {
    networks: Vec<i64>,
    keys: Vec<&'a str>,
    hashes: Vec<&'a [u8]>,
    cases: Vec<Option<i64>>,
    codes: Vec<Option<&'a str>>,
    event_ids: Vec<Uuid>,
    events: Vec<&'a str>,
    routing: Vec<&'a str>,
}

impl<'a> OutcomeColumns<'a> {
    fn of(rows: impl Iterator<Item = &'a OutcomeRow> + Clone) -> Self {
        Self {
            networks: rows.clone().map(|r| r.network_id).collect(),
            keys: rows.clone().map(|r| r.message_key.as_str()).collect(),
            hashes: rows.clone().map(|r| r.payload_hash.as_slice()).collect(),
            cases: rows.clone().map(|r| r.case_id).collect(),
            codes: rows.clone().map(|r| r.error_code.as_deref()).collect(),
            event_ids: rows.clone().map(|r| r.event_id).collect(),
            events: rows.clone().map(|r| r.event.as_str()).collect(),
            routing: rows.map(|r| r.routing_key.as_str()).collect(),
        }
    }
}

/// Inserts complete outcome rows for keys looked up (not claimed) at the start of the
/// transaction; returns how many were inserted. A row is skipped when its key was written by
/// a transaction that committed meanwhile (after waiting for it, if it was still running):
/// fewer rows than given means the window lost a race for a key.
pub async fn insert_outcomes(
    tx: &mut PgConnection,
    rows: &[OutcomeRow],
) -> Result<usize, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut sorted: Vec<&OutcomeRow> = rows.iter().collect();
    // Key order, as `claim_keys`: two windows waiting on each other's keys cannot deadlock.
    sorted.sort_by(|a, b| (a.network_id, &a.message_key).cmp(&(b.network_id, &b.message_key)));
    let c = OutcomeColumns::of(sorted.iter().copied());
    let inserted = sqlx::query(
        "INSERT INTO intake_outcomes (network_id, message_key, payload_hash, outcome, case_id,
                                      error_code, event_id, event, routing_key)
         SELECT n, k, h, CASE WHEN c IS NULL THEN 'failed' ELSE 'created' END, c, code, eid,
                ev::jsonb, rk
           FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::bigint[], $5::text[],
                       $6::uuid[], $7::text[], $8::text[])
                WITH ORDINALITY AS u(n, k, h, c, code, eid, ev, rk, o)
          ORDER BY o
         ON CONFLICT DO NOTHING",
    )
    .bind(&c.networks)
    .bind(&c.keys)
    .bind(&c.hashes)
    .bind(&c.cases)
    .bind(&c.codes)
    .bind(&c.event_ids)
    .bind(&c.events)
    .bind(&c.routing)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(inserted as usize)
}

/// A failed intake kept for inspection and replay.
#[derive(Debug, Clone)]
pub struct FailedRow {
    pub network_id: Option<i64>,
    pub message_key: Option<String>,
    pub correlation_id: Option<String>,
    pub token_hash: Option<Vec<u8>>,
    /// The body, or its first bytes when `truncated`.
    pub payload: Vec<u8>,
    /// The body's length and SHA-256 as published.
    pub payload_bytes: i64,
    pub payload_sha256: Vec<u8>,
    pub truncated: bool,
    pub error_code: String,
    pub error: String,
    pub attempts: i32,
    pub event_id: Uuid,
}

pub async fn insert_failed(
    tx: &mut PgConnection,
    rows: &[FailedRow],
    now: DateTime<Utc>,
    vault: &Vault,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let networks: Vec<Option<i64>> = rows.iter().map(|r| r.network_id).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.message_key.as_deref()).collect();
    let corr: Vec<Option<&str>> = rows.iter().map(|r| r.correlation_id.as_deref()).collect();
    let tokens: Vec<Option<&[u8]>> = rows.iter().map(|r| r.token_hash.as_deref()).collect();
    // The whole payload is sealed: it may hold an SSN in any shape, even when malformed.
    let payloads: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| vault.seal(Purpose::FailedPayload, &r.payload))
        .collect();
    let codes: Vec<&str> = rows.iter().map(|r| r.error_code.as_str()).collect();
    let errors: Vec<&str> = rows.iter().map(|r| r.error.as_str()).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let sizes: Vec<i64> = rows.iter().map(|r| r.payload_bytes).collect();
    let hashes: Vec<&[u8]> = rows.iter().map(|r| r.payload_sha256.as_slice()).collect();
    let truncated: Vec<bool> = rows.iter().map(|r| r.truncated).collect();
    sqlx::query(
        "INSERT INTO failed_intakes (network_id, message_key, correlation_id, token_hash,
                                     payload_sealed, payload_key_id, error_code, error, attempts,
                                     event_id, created_at, payload_bytes, payload_sha256,
                                     payload_truncated)
         SELECT n, k, c, t, p, $11, code, e::jsonb, a, eid, $10, sz, h, tr
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::bytea[],
                       $6::text[], $7::text[], $8::int[], $9::uuid[], $12::bigint[],
                       $13::bytea[], $14::bool[])
             AS u(n, k, c, t, p, code, e, a, eid, sz, h, tr)",
    )
    .bind(&networks)
    .bind(&keys)
    .bind(&corr)
    .bind(&tokens)
    .bind(&payloads)
    .bind(&codes)
    .bind(&errors)
    .bind(&attempts)
    .bind(&ids)
    .bind(now)
    .bind(vault.active_key())
    .bind(&sizes)
    .bind(&hashes)
    .bind(&truncated)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Marks failed intakes as resolved by a replay (whatever the replay's own outcome: a new
/// failure is recorded as a new row with the next attempt number).
pub async fn resolve_failed(
    tx: &mut PgConnection,
    ids: &[i64],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE failed_intakes SET resolved_at = $2 WHERE id = ANY($1) AND resolved_at IS NULL",
    )
    .bind(ids)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// An event to publish.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub event_id: Uuid,
    pub routing_key: String,
    pub body: OutboxBody,
    pub correlation_id: Option<String>,
}

/// Where the relay finds an event's body.
#[derive(Debug, Clone)]
pub enum OutboxBody {
    /// In the `intake_outcomes` row of this key (written in the same transaction, or earlier):
    /// the event is stored once.
    Outcome {
        network_id: i64,
        message_key: String,
    },
    /// In the outbox row itself: the event has no outcome row of its own.
    Inline(String),
}

/// Queues events for the relay; returns the ids of their outbox rows.
pub async fn insert_outbox(
    tx: &mut PgConnection,
    rows: &[OutboxRow],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let routing: Vec<&str> = rows.iter().map(|r| r.routing_key.as_str()).collect();
    let mut bodies: Vec<Option<&str>> = Vec::with_capacity(rows.len());
    let mut networks: Vec<Option<i64>> = Vec::with_capacity(rows.len());
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(rows.len());
    for r in rows {
        match &r.body {
            OutboxBody::Outcome {
                network_id,
                message_key,
            } => {
                bodies.push(None);
                networks.push(Some(*network_id));
                keys.push(Some(message_key));
            }
            OutboxBody::Inline(body) => {
                bodies.push(Some(body));
                networks.push(None);
                keys.push(None);
            }
        }
    }
    let corr: Vec<Option<&str>> = rows.iter().map(|r| r.correlation_id.as_deref()).collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, body, outcome_network_id, outcome_key,
                             correlation_id, created_at)
         SELECT eid, rk, b::jsonb, n, k, c, $7
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
                WITH ORDINALITY AS u(eid, rk, b, n, k, c, o)
          ORDER BY o
         RETURNING id",
    )
    .bind(&ids)
    .bind(&routing)
    .bind(&bodies)
    .bind(&networks)
    .bind(&keys)
    .bind(&corr)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect()
}
