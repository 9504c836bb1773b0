//! What the harness's command-line programs share: their error type and how a run's result
//! becomes the exit code (0 passed, 1 failed its checks, 2 could not run).

use std::future::Future;
use std::process::ExitCode;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `suite` on a multi-threaded runtime and maps its result to the exit code; `no_runtime`
/// is the code when the runtime itself cannot start.
pub fn exit_code_of<F>(program: &str, no_runtime: ExitCode, suite: F) -> ExitCode
where
    F: Future<Output = Result<bool, BoxError>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            return no_runtime;
        }
    };
    match runtime.block_on(suite) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::from(2)
        }
    }
}

/// `key<sep>value` pairs joined by ", " (the reports' way of listing counts).
pub fn listed<K, V>(pairs: impl IntoIterator<Item = (K, V)>, sep: &str) -> String
where
    K: std::fmt::Display,
    V: std::fmt::Display,
{
    let shown: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("{k}{sep}{v}"))
        .collect();
    shown.join(", ")
}
