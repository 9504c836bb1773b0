//! The command line and the plan it resolves to: which faults, how often, how many intakes, how
//! long.

use std::collections::HashSet;
use std::time::Duration;

use case_intake_harness::cluster::ClusterFault;
use case_intake_harness::pgpair::Replication;
use clap::Parser;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Fault {
    /// `kill -9` of a worker by pid; the supervisor restarts it.
    Kill,
    /// `rabbitmqctl stop_app`, a pause, `start_app`, `await_startup`.
    Broker,
    /// `rabbitmqctl close_all_connections`.
    Close,
    /// PostgreSQL fast restart.
    Pgrestart,
    /// PostgreSQL stopped for `--outage-secs`.
    Outage,
    /// `pg_terminate_backend` of every worker session.
    Terminate,
    /// `LOCK TABLE households IN ACCESS EXCLUSIVE MODE` held past the worker's lock_timeout.
    Lock,
    /// `--db-failover` only: `kill -9` of the primary of the PostgreSQL pair, the address
    /// moved to the standby, its promotion; then the dead node rebuilt as the new standby.
    Failover,
}

impl Fault {
    /// Relative size of the burst published around one repetition: larger where the fault
    /// lasts longer, so that intakes keep arriving while it lasts.
    pub fn weight(self) -> usize {
        match self {
            Fault::Kill | Fault::Terminate => 1,
            Fault::Pgrestart | Fault::Lock => 2,
            Fault::Close | Fault::Outage | Fault::Failover => 4,
            Fault::Broker => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Broker => "broker",
            Fault::Close => "close",
            Fault::Pgrestart => "pgrestart",
            Fault::Outage => "outage",
            Fault::Terminate => "terminate",
            Fault::Lock => "lock",
            Fault::Failover => "failover",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "case-intake-faults",
    about = "Fault-injection suite: every intake enqueued ends in exactly one outcome"
)]
pub struct Args {
    /// Faults to inject, each in its own phase, in the order given.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,broker,close,pgrestart,outage,terminate,lock"
    )]
    pub faults: Vec<Fault>,
    /// Intakes to publish (distinct keys, duplicates not counted) [default: 3000, quick: 600].
    #[arg(long)]
    pub count: Option<usize>,
    /// The CI variant: 600 intakes, 3 kills, one of each other fault, a 10 s outage.
    #[arg(long)]
    pub quick: bool,
    /// Length of the PostgreSQL outage [default: 60, quick: 10].
    #[arg(long)]
    pub outage_secs: Option<u64>,
    /// Worker kills in the `kill` phase [default: 10, quick: 3].
    #[arg(long)]
    pub kills: Option<u32>,
    /// Publish rate within a burst, intakes per second.
    #[arg(long, default_value_t = 250)]
    pub rate: u32,
    /// How long to wait for the queue to drain after healing, in seconds.
    #[arg(long, default_value_t = 300)]
    pub drain_secs: u64,
    /// Seed of the intake mix (printed; the default is taken from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep the database afterwards for inspection.
    #[arg(long)]
    pub keep_db: bool,
    /// The database-failover run: the workers' database on a primary with a streaming standby
    /// behind haproxy (harness/pg-pair.sh), and the one fault `failover` [repetitions:
    /// default 3, quick 1]. `--faults` is ignored.
    #[arg(long)]
    pub db_failover: bool,
    /// With `--db-failover`: asynchronous replication, to measure what a failover loses.
    #[arg(long, requires = "db_failover")]
    pub async_replication: bool,
    /// With `--db-failover`: how long the address is on the standby before its promotion
    /// (writes meet a read-only server); 0 moves it just after the promotion.
    #[arg(long, default_value_t = 2, requires = "db_failover")]
    pub read_only_secs: u64,
    /// Run against a three-node cluster of .ci/rabbit-cluster (started and removed by the
    /// suite), the workers given all three endpoints, with the node faults instead of
    /// `--faults` (see harness/src/cluster.rs).
    #[arg(long)]
    pub cluster: bool,
}

/// The resolved plan of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub count: usize,
    pub outage: Duration,
    pub rate: f64,
    pub drain: Duration,
    pub seed: u64,
    /// Each fault with its number of repetitions.
    pub phases: Vec<(Fault, u32)>,
    /// `--cluster`: each node fault with its number of repetitions (`phases` is then empty).
    pub cluster: Vec<(ClusterFault, u32)>,
    /// Hard bound of the whole run.
    pub limit: Duration,
    pub keep_db: bool,
    /// `--db-failover`: the replication of the pair, and the read-only time of a failover.
    pub db_failover: Option<(Replication, Duration)>,
}

impl Plan {
    pub fn from_args(args: &Args) -> Self {
        let quick = args.quick;
        let kills = args.kills.unwrap_or(if quick { 3 } else { 10 });
        let mut seen = HashSet::new();
        let faults = if args.db_failover {
            vec![Fault::Failover]
        } else {
            args.faults.clone()
        };
        let phases = faults
            .iter()
            .filter(|f| seen.insert(**f))
            .map(|&f| {
                let reps = match f {
                    Fault::Kill => kills,
                    _ if quick => 1,
                    Fault::Failover => 3,
                    Fault::Broker | Fault::Pgrestart | Fault::Lock => 2,
                    Fault::Close | Fault::Terminate => 3,
                    Fault::Outage => 1,
                };
                (f, reps)
            })
            .collect();
        let seed = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        let (phases, cluster) = if args.cluster {
            let reps = if quick { 1 } else { 2 };
            (Vec::new(), ClusterFault::ALL.map(|f| (f, reps)).to_vec())
        } else {
            (phases, Vec::new())
        };
        Plan {
            count: args.count.unwrap_or(if quick { 600 } else { 3000 }).max(1),
            outage: Duration::from_secs(args.outage_secs.unwrap_or(if quick { 10 } else { 60 })),
            rate: f64::from(args.rate.clamp(1, 5000)),
            drain: Duration::from_secs(args.drain_secs.max(10)),
            seed,
            phases,
            cluster,
            limit: Duration::from_secs(if quick { 15 * 60 } else { 60 * 60 }),
            keep_db: args.keep_db,
            db_failover: args.db_failover.then(|| {
                let replication = if args.async_replication {
                    Replication::Async
                } else {
                    Replication::Sync
                };
                (replication, Duration::from_secs(args.read_only_secs))
            }),
        }
    }
}
