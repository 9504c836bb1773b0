//! What a finished shell command said: its output and error streams together, or why it
//! failed, named by the command line it ran (the fault suite's service commands, pg-pair.sh).

use std::process::Output;

/// The command's stdout and stderr, or, when it exited unsuccessfully, an error naming
/// `shown` (the command line) with its status and what it printed.
pub fn output_text(shown: &str, out: &Output) -> Result<String, String> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{shown}: {} {}", out.status, text.trim()))
    }
}
