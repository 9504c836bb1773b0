//! The `case-intake` binary as the operator-command tests run it: against a test's private
//! database, stdin not a terminal, no operator in the environment unless a test names one,
//! and what it printed read back.

use std::process::Output;

use case_intake_harness::support::TestEnv;
use case_intake_harness::testkit::run_cli;
use serde_json::Value;

/// The binary the tests run.
pub const BIN: &str = env!("CARGO_BIN_EXE_case-intake");

/// Runs the binary against `env`'s database with `vars` set.
pub async fn run_with(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Output {
    run_cli(BIN, env, args, vars, b"").await
}

/// Runs the binary against `env`'s database.
pub async fn run(env: &TestEnv, args: &[&str]) -> Output {
    run_with(env, args, &[]).await
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON a successful run printed.
pub fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}
