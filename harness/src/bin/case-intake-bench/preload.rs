//! The preload: made-up people inserted straight with SQL as cases with households and outcomes, so
//! that matching runs against a network of realistic size.

use std::sync::Arc;
use std::time::Instant;

use case_intake::admin::provision::Provisioned;
use case_intake::intake::matching::MatchKeys;
use case_intake::store::crypto::Purpose;
use case_intake::store::crypto::Vault;
use case_intake_harness::people::Person;
use sqlx::PgPool;
use sqlx::Postgres;
use sqlx::Transaction;
use sqlx::types::chrono::NaiveDate;

use crate::Result;

/// Rows of one preload chunk: cases `c0..c0+n`, households `h0..h0+households`.
pub struct Chunk {
    pub c0: i64,
    pub h0: i64,
    pub n: i64,
    pub households: i64,
}

/// What the preloaded cases share: the network and the vault's key id.
pub struct PreloadCase<'a> {
    pub p: &'a Provisioned,
    pub key_id: &'a str,
}

/// The made-up people of the preload, and what the network held once they were in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Preloaded {
    /// Person number of the first preloaded case (`people::Person::of`).
    pub first_person: u64,
    pub count: u64,
    /// Cases and recorded outcomes of the measured network before any measured phase.
    pub cases: i64,
    pub outcomes: usize,
}

/// Takes `n` consecutive person numbers from the bench database's own sequence: every case a
/// run writes, preloaded or published, is a distinct person unless it is meant to be the same
/// (the `person` kind), also across runs on a kept database.
pub async fn reserve_people(pool: &PgPool, n: u64) -> Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query("CREATE SEQUENCE IF NOT EXISTS bench_people MINVALUE 0 START 0")
        .execute(&mut *tx)
        .await?;
    let first = reserve_ids(&mut tx, "bench_people", n as i64).await?;
    tx.commit().await?;
    Ok(first as u64)
}

/// Inserts `total` cases (two per household, the first its head) with their households and
/// outcomes into the network `p`, in chunks, straight with SQL; returns the first person number.
/// The next chunk's people (sealing, HMAC and matching keys, CPU-bound) are computed on a
/// blocking thread while PostgreSQL inserts the current one.
pub async fn preload(pool: &PgPool, p: &Provisioned, vault: Vault, total: u64) -> Result<u64> {
    const CHUNK: u64 = 50_000;
    let started = Instant::now();
    let first_person = reserve_people(pool, total).await?;
    let vault = Arc::new(vault);
    let compute = |person0: u64, n: u64| {
        let vault = vault.clone();
        tokio::task::spawn_blocking(move || PeopleColumns::of(&vault, person0, n as usize))
    };
    let case = PreloadCase {
        p,
        key_id: vault.active_key(),
    };
    let mut next = Some(compute(first_person, CHUNK.min(total)));
    let mut done = 0u64;
    while let Some(computing) = next.take() {
        let columns = computing.await?;
        let n = columns.first.len() as u64;
        let after = done + n;
        if after < total {
            next = Some(compute(first_person + after, CHUNK.min(total - after)));
        }
        preload_chunk(pool, &case, &columns).await?;
        done = after;
        eprintln!(
            "preload: {done}/{total} cases ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let inserted = started.elapsed().as_secs_f64();
    sqlx::raw_sql("VACUUM (ANALYZE) cases, households, intake_outcomes")
        .execute(pool)
        .await?;
    eprintln!(
        "preload: {total} cases inserted in {inserted:.1} s, done in {:.1} s (vacuumed and \
         analyzed)",
        started.elapsed().as_secs_f64()
    );
    Ok(first_person)
}

/// One transaction of the preload: the cases of `columns`, their households and outcomes.
pub async fn preload_chunk(
    pool: &PgPool,
    case: &PreloadCase<'_>,
    columns: &PeopleColumns,
) -> Result<()> {
    let n = columns.first.len() as i64;
    let households = (n + 1) / 2;
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await?;
    let chunk = Chunk {
        c0: reserve_ids(&mut tx, "cases_id_seq", n).await?,
        h0: reserve_ids(&mut tx, "households_id_seq", households).await?,
        n,
        households,
    };
    preload_cases(&mut tx, case, &chunk, columns).await?;
    sqlx::query(HOUSEHOLDS_SQL)
        .bind(case.p.network_id)
        .bind(chunk.c0)
        .bind(chunk.h0)
        .bind(chunk.households)
        .execute(&mut *tx)
        .await?;
    sqlx::query(OUTCOMES_SQL)
        .bind(case.p.network_id)
        .bind(chunk.c0)
        .bind(chunk.n)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Takes `n` consecutive ids of `sequence`; returns the first.
pub async fn reserve_ids(
    tx: &mut Transaction<'_, Postgres>,
    sequence: &str,
    n: i64,
) -> Result<i64> {
    let first: i64 = sqlx::query_scalar("SELECT nextval($1::regclass)")
        .bind(sequence)
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query("SELECT setval($1::regclass, $2)")
        .bind(sequence)
        .bind(first + n - 1)
        .execute(&mut **tx)
        .await?;
    Ok(first)
}

/// The columns of one chunk's people, bound as arrays and inserted with one `unnest`.
#[derive(Default)]
pub struct PeopleColumns {
    pub first: Vec<String>,
    pub last: Vec<String>,
    pub dob: Vec<NaiveDate>,
    pub street: Vec<String>,
    pub sealed: Vec<Vec<u8>>,
    pub hmac: Vec<Vec<u8>>,
    pub last4: Vec<String>,
    pub match_name: Vec<Option<i64>>,
    pub match_address: Vec<Option<i64>>,
}

impl PeopleColumns {
    /// People `person0..person0+n`, with the SSN sealed and hashed and the matching keys
    /// computed as the service computes them.
    pub fn of(vault: &Vault, person0: u64, n: usize) -> Self {
        let mut c = PeopleColumns::default();
        for k in 0..n as u64 {
            let person = Person::of(person0 + k);
            let street = person.street_address();
            let keys = MatchKeys::from_parts(
                person.first_name(),
                person.last_name,
                Some(person.date_of_birth),
                Some(&street),
            );
            c.sealed
                .push(vault.seal(Purpose::Ssn, person.ssn.as_bytes()));
            c.hmac.push(vault.ssn_hmac(&person.ssn).to_vec());
            c.last4.push(person.ssn[5..].to_owned());
            c.first.push(person.first_name().to_owned());
            c.last.push(person.last_name.to_owned());
            c.dob.push(person.date_of_birth);
            c.street.push(street);
            c.match_name.push(keys.name);
            c.match_address.push(keys.address);
        }
        c
    }
}

pub async fn preload_cases(
    tx: &mut Transaction<'_, Postgres>,
    case: &PreloadCase<'_>,
    chunk: &Chunk,
    c: &PeopleColumns,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cases (id, network_id, household_id, head_of_household, entry_agent,
                            mod_agent, \"group\", first_name, last_name, date_of_birth, email,
                            mailing_address, mailing_city, mailing_state, mailing_zip_code,
                            street_address, street_city, street_state, street_zip_code,
                            street_county, yearly_expenses, yearly_income, ss_number_sealed,
                            ss_number_key_id, ss_number_hmac, ss_number_last4, match_name,
                            match_address)
         SELECT $1 + u.g - 1, $2, $3 + (u.g - 1) / 2, (u.g - 1) % 2 = 0, $4, $4, $5, u.first,
                u.last, u.dob, 'pre' || ($1 + u.g - 1) || '@example.org', u.street,
                'Exampleville', 'NY', '12345', u.street, 'Exampleville', 'NY', '12345', $6,
                11580, 15350, u.sealed, $7, u.hmac, u.last4, u.match_name, u.match_address
           FROM unnest($8::text[], $9::text[], $10::date[], $11::text[], $12::bytea[],
                       $13::bytea[], $14::text[], $15::int8[], $16::int8[])
                WITH ORDINALITY AS u(first, last, dob, street, sealed, hmac, last4, match_name,
                                     match_address, g)",
    )
    .bind(chunk.c0)
    .bind(case.p.network_id)
    .bind(chunk.h0)
    .bind(case.p.agent_id)
    .bind(case.p.group_id)
    .bind(case.p.county_ids[0])
    .bind(case.key_id)
    .bind(&c.first)
    .bind(&c.last)
    .bind(&c.dob)
    .bind(&c.street)
    .bind(&c.sealed)
    .bind(&c.hmac)
    .bind(&c.last4)
    .bind(&c.match_name)
    .bind(&c.match_address)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The preloaded households: $1 network, $2 first case, $3 first household, $4 households.
pub const HOUSEHOLDS_SQL: &str = "INSERT INTO households (id, network_id, head_case_id)
     SELECT $3 + j, $1, $2 + 2 * j FROM generate_series(0::bigint, $4 - 1) AS j";

/// The preloaded cases' outcomes, from the cases just inserted: $1 network, $2 first case,
/// $3 cases.
pub const OUTCOMES_SQL: &str = "INSERT INTO intake_outcomes (network_id, message_key, payload_hash,
                                  outcome, case_id, event_id, event, routing_key)
     SELECT $1, 'preload-' || c.id, sha256(convert_to('preload-' || c.id, 'UTF8')),
            'created', c.id, gen_random_uuid(),
            jsonb_build_object('specversion', '1.0', 'type', 'case.created',
                'source', 'urn:case-intake', 'subject', 'preload-' || c.id,
                'data', jsonb_build_object('id', c.id, 'household_id', c.household_id,
                    'first_name', c.first_name, 'last_name', c.last_name,
                    'street_address', c.street_address, 'street_city', c.street_city,
                    'street_state', c.street_state, 'street_zip_code', c.street_zip_code)),
            'case.created'
       FROM cases c
      WHERE c.id >= $2 AND c.id < $2 + $3";
