//! The `case-intake` binary: reserves the stacks, parses the command line, loads settings,
//! starts telemetry and runs the command (`cli`).

use std::process::ExitCode;

use clap::Parser;

use case_intake::app::telemetry;
use case_intake::cli::{self, Cli, Command};
use case_intake::infra::settings::Settings;
use case_intake::infra::stack;

fn main() -> ExitCode {
    reserve_io_stack();
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("case-intake: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(stack::RUNTIME_THREAD_STACK_BYTES)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("case-intake: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::dispatch(cli.command.unwrap_or(Command::Run), settings));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "case-intake failed");
            ExitCode::FAILURE
        }
    }
}

/// Gives threads spawned without an explicit stack size, lapin's io thread among them, the
/// stack that parses the deepest header a frame can hold (src/stack.rs); a larger
/// `RUST_MIN_STACK` set by the operator is kept.
fn reserve_io_stack() {
    let wanted = stack::IO_THREAD_STACK_BYTES;
    let current = std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if current < wanted {
        // SAFETY: called first thing in `main`, before any thread exists, so nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var("RUST_MIN_STACK", wanted.to_string()) };
    }
}
