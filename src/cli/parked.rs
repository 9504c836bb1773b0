//! `case-intake parked …`: the parking queue's tools, rendered for a terminal or as JSON.
//! RabbitMQ only: the database is never opened.

use clap::Subcommand;

use crate::admin::parked::{self, Listing, Parked};
use crate::infra::settings::Settings;

use super::CliResult;

#[derive(Subcommand)]
pub enum ParkedCommand {
    /// Show parked messages (properties and headers escaped, SSNs masked, credentials
    /// redacted, never the body), then put them all back.
    List {
        /// Show at most this many (all are put back).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON instead of the human listing.
        #[arg(long)]
        json: bool,
    },
    /// Remove parked messages for good (the others are put back).
    Drop {
        #[command(flatten)]
        select: ParkedSelection,
        /// Confirm `--all`; without it `--all` only prints how many would be dropped.
        #[arg(long)]
        yes: bool,
    },
    /// Publish a sanitized copy to the intake queue (publisher confirms), then remove the
    /// parked original.
    Republish {
        #[command(flatten)]
        select: ParkedSelection,
    },
}

/// `--id ID` or `--all`, exactly one.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct ParkedSelection {
    /// A message id as `parked list` prints it (12 hex digits).
    #[arg(long)]
    id: Option<String>,
    /// Every message parked when the command starts.
    #[arg(long)]
    all: bool,
}

impl ParkedSelection {
    fn selection(&self) -> Result<parked::Selection, parked::ParkedError> {
        match &self.id {
            Some(id) => parked::Selection::id(id),
            None => Ok(parked::Selection::All),
        }
    }
}

/// `case-intake parked …`.
pub async fn parked_command(command: ParkedCommand, settings: &Settings) -> CliResult {
    let parked = Parked::from_settings(&settings.amqp);
    match command {
        ParkedCommand::List { limit, json } => {
            let listing = parked.list(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print_listing(&listing);
            }
            Ok(())
        }
        ParkedCommand::Drop { select, yes } => drop(&parked, &select, yes).await,
        ParkedCommand::Republish { select } => republish(&parked, &select, settings).await,
    }
}

/// One block per parked message: escaped, masked, redacted (the listing already is).
fn print_listing(listing: &Listing) {
    println!(
        "parked queue \"{}\": showing {} of {} (all put back)",
        parked::escape(listing.queue.as_bytes()),
        listing.messages.len(),
        listing.total
    );
    for m in &listing.messages {
        println!();
        println!("id {}", m.id);
        println!("  body: {} bytes, sha256 {}", m.body_bytes, m.body_sha256);
        println!(
            "  redelivered: {}",
            if m.redelivered { "yes" } else { "no" }
        );
        println!(
            "  published to: exchange \"{}\", routing key \"{}\"",
            m.exchange, m.routing_key
        );
        if let Some(e) = &m.header_error {
            println!("  properties: unreadable ({e})");
        }
        for (name, value) in &m.properties {
            println!("  {name}: {value}");
        }
        if let Some(e) = &m.headers_error {
            println!("  headers: unreadable ({e})");
        }
        for h in &m.headers {
            println!("  header \"{}\": {}", h.name, h.value);
        }
        if m.headers_omitted > 0 {
            println!("  … {} more headers not shown", m.headers_omitted);
        }
        if m.not_utf8.is_empty() {
            println!("  not valid UTF-8: none");
        } else {
            println!("  not valid UTF-8: {}", m.not_utf8.join(", "));
        }
    }
}

async fn drop(parked: &Parked, select: &ParkedSelection, yes: bool) -> CliResult {
    let selection = select.selection()?;
    if selection == parked::Selection::All && !yes {
        let n = parked.count().await?;
        return Err(format!("refusing to drop all {n} parked message(s) without --yes").into());
    }
    let n = parked.drop(&selection).await?;
    println!("dropped {n} parked message(s)");
    if n == 0 && selection != parked::Selection::All {
        return Err("no parked message has that id".into());
    }
    Ok(())
}

async fn republish(parked: &Parked, select: &ParkedSelection, settings: &Settings) -> CliResult {
    let selection = select.selection()?;
    let report = parked.republish(&selection).await?;
    for id in &report.republished {
        println!("re-published {id}");
    }
    for (id, why) in &report.skipped {
        println!("left parked {id}: {why}");
    }
    println!(
        "re-published {} parked message(s) to \"{}\"",
        report.republished.len(),
        parked::escape(settings.amqp.intake_queue.as_bytes())
    );
    if report.republished.is_empty() && selection != parked::Selection::All {
        return Err("no parked message with that id was re-published".into());
    }
    Ok(())
}
