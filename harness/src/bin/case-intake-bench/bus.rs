//! The broker side of a run: the publishing and consuming connections, and the tap that records
//! every event of the run's exchange.

use std::time::Instant;

use case_intake::infra::settings::Settings;
use case_intake::outbox::topology;
use case_intake_harness::broker;
use case_intake_harness::ledger::SharedLog;
use case_intake_harness::ledger::lock;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::Connection;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use tokio::task::JoinHandle;

use crate::args::Args;
use crate::{Names, Result};

/// The run's broker side: a publishing and a consuming connection, the events tap.
pub struct Bus {
    pub publishing: Connection,
    pub consuming: Connection,
    pub publish: Channel,
    pub ledger: SharedLog,
    pub tap: JoinHandle<()>,
}

/// Declares the topology and binds the events tap before any worker can publish.
pub async fn open_broker(args: &Args, names: &Names, settings: &Settings) -> Result<Bus> {
    let name = Some("case-intake-bench");
    let publishing = broker::connect(&args.amqp, name).await?;
    let consuming = broker::connect(&args.amqp, name).await?;
    {
        topology::declare(&publishing, &settings.amqp).await?;
    }
    let ledger = SharedLog::default();
    let tap = start_tap(&consuming, names, ledger.clone()).await?;
    let publish = broker::confirming_channel(&publishing).await?;
    Ok(Bus {
        publishing,
        consuming,
        publish,
        ledger,
        tap,
    })
}

/// Binds a private queue to every routing key of the events exchange (declared with the
/// topology) and records every event into `ledger`.
pub async fn start_tap(
    conn: &Connection,
    names: &Names,
    ledger: SharedLog,
) -> Result<JoinHandle<()>> {
    let ch = conn.create_channel().await?;
    broker::declare_private_queue(&ch, &names.tap).await?;
    broker::bind_all_events(&ch, &names.tap, &names.events).await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(
            names.tap.as_str().into(),
            "case-intake-bench".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        let _channel = ch;
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = Instant::now();
            lock(&ledger).record(&delivery.data, at);
        }
        lock(&ledger).closed = true;
    }))
}

pub async fn cleanup_broker(conn: &Connection, names: &Names) {
    let taps = [names.tap.as_str()];
    for problem in broker::delete_run_objects(conn, &names.intake, &names.events, &taps).await {
        eprintln!("case-intake-bench: {problem}");
    }
}
