//! `case-intake publish`: reads the body and the token, publishes one intake (`admin::publish`)
//! and, with `--wait`, prints its outcome event; `case.failed` or no outcome is a failing exit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::admin::publish::{self, Intake};
use crate::infra::settings::Settings;

use super::CliResult;

#[derive(clap::Args)]
pub struct PublishArgs {
    /// The intake body: a JSON file, or `-` for standard input.
    body: PathBuf,
    /// The message key (idempotency key), 1 to 255 characters: publishing the same key again
    /// creates nothing and answers the first outcome again.
    #[arg(long)]
    key: String,
    #[command(flatten)]
    token: TokenSource,
    /// Copied onto the outcome event.
    #[arg(long)]
    correlation_id: Option<String>,
    /// Bind a temporary queue to the events exchange first, then wait for this intake's
    /// outcome event and print it: exit status 0 on `case.created` or `case.matched`, 1 on
    /// `case.failed` or when no outcome came within `--timeout`.
    #[arg(long)]
    wait: bool,
    /// With `--wait`: how long to wait for the event, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// The API token: `--token-file` (preferred: a command line is visible to other users) or
/// `--token`, exactly one.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct TokenSource {
    /// The API token (as `provision` printed it).
    #[arg(long)]
    token: Option<String>,
    /// A file holding the API token (as `provision --token-file` wrote it).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// `case-intake publish …`.
pub async fn publish(args: PublishArgs, settings: &Settings) -> CliResult {
    let intake = Intake {
        token: read_token(&args.token)?,
        body: read_body(&args.body)?,
        key: args.key,
        correlation_id: args.correlation_id,
    };
    let wait = args.wait.then(|| Duration::from_secs(args.timeout));
    let Some(outcome) = publish::publish(&settings.amqp, &intake, wait).await? else {
        eprintln!(
            "published intake {:?} to {:?} (confirmed by the broker)",
            intake.key, settings.amqp.intake_queue
        );
        return Ok(());
    };
    println!("{}", serde_json::to_string_pretty(&outcome.event)?);
    if outcome.has_case() {
        Ok(())
    } else {
        let code = outcome.event["data"]["error"]["code"]
            .as_str()
            .unwrap_or("?");
        Err(format!("intake {:?} failed: {code}", intake.key).into())
    }
}

fn read_token(source: &TokenSource) -> Result<SecretString, Box<dyn std::error::Error>> {
    let token = match (&source.token, &source.token_file) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
            .trim()
            .to_owned(),
        (None, None) => unreachable!("clap requires one token source"),
    };
    if token.is_empty() {
        return Err("the API token is empty".into());
    }
    Ok(SecretString::from(token))
}

fn read_body(path: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    if path == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        return Ok(body);
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}
