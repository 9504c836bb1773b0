//! The three-node RabbitMQ cluster of the fault suite's `--cluster` mode and of the cluster
//! tests: started, faulted and removed through the project script `.ci/rabbit-cluster` (its
//! own node names, ports and folders; never the machine's default node), asked which node a
//! named connection is on and which node leads a quorum queue, and reached by harness clients
//! through its endpoint list.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lapin::Connection;
use rand::seq::SliceRandom;

use crate::broker;

/// The nodes, by number: `<name>1@localhost` … `<name>3@localhost`.
pub const NODES: [u8; 3] = [1, 2, 3];

/// How long one endpoint may take to accept a harness connection before the next is tried.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(3);

/// One cluster of `.ci/rabbit-cluster`, identified by its node-name prefix, first AMQP port
/// and folder (so that a test's cluster and the fault suite's never meet).
#[derive(Debug, Clone)]
pub struct Cluster {
    script: PathBuf,
    name: String,
    port: u16,
    dir: PathBuf,
}

impl Cluster {
    /// The cluster the script runs under `name` (e.g. `ci-rmq`) with AMQP ports `port`,
    /// `port + 1`, `port + 2` and its folder `dir`. Nothing is started yet.
    pub fn new(repo_root: &Path, name: &str, port: u16, dir: &Path) -> Self {
        Cluster {
            script: repo_root.join(".ci/rabbit-cluster"),
            name: name.to_owned(),
            port,
            dir: dir.to_owned(),
        }
    }

    /// The fault suite's cluster: `ci-rmq1..3@localhost` on 5701–5703.
    pub fn for_faults(repo_root: &Path) -> Self {
        Cluster::new(
            repo_root,
            "ci-rmq",
            5701,
            &std::env::temp_dir().join("case-intake-rabbit-cluster"),
        )
    }

    /// Runs the script with `args`, bounded by `limit` (coreutils `timeout`, which also ends
    /// the rabbitmqctl it runs); its output, or why it failed.
    async fn script(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut cmd = std::process::Command::new("timeout");
        cmd.arg("-k")
            .arg("5")
            .arg(limit.as_secs().max(1).to_string())
            .arg(&self.script)
            .args(args)
            .env("RABBIT_CLUSTER_NAME", &self.name)
            .env("RABBIT_CLUSTER_PORT", self.port.to_string())
            .env("RABBIT_CLUSTER_DIR", &self.dir)
            .stdin(Stdio::null());
        let shown = format!("rabbit-cluster {}", args.join(" "));
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(|e| format!("{shown}: {e}"))?
            .map_err(|e| format!("{shown}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{shown}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Starts the three nodes, joins them and waits until all three run.
    pub async fn start(&self) -> Result<(), String> {
        self.script(&["start"], Duration::from_secs(240))
            .await
            .map(drop)
    }

    /// Stops the three nodes and removes their folder.
    pub async fn remove(&self) -> Result<(), String> {
        self.script(&["stop"], Duration::from_secs(150))
            .await
            .map(drop)
    }

    /// The AMQP URL of every node (guest, loopback), in node order.
    pub fn urls(&self) -> Vec<String> {
        NODES.iter().map(|n| self.url(*n)).collect::<Vec<_>>()
    }

    /// The AMQP URL of node `n`.
    pub fn url(&self, n: u8) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.port + u16::from(n) - 1
        )
    }

    /// The full Erlang name of node `n`.
    pub fn node_name(&self, n: u8) -> String {
        format!("{}{n}@localhost", self.name)
    }

    /// The number of the node named `name`, if it is one of this cluster's.
    pub fn node_number(&self, name: &str) -> Option<u8> {
        let n: u8 = name
            .strip_prefix(self.name.as_str())?
            .strip_suffix("@localhost")?
            .parse()
            .ok()?;
        NODES.contains(&n).then_some(n)
    }

    /// The node listening on AMQP port `port` (3.10's `list_connections` has no `node` column:
    /// the server port tells the node).
    pub fn node_of_port(&self, port: u64) -> Option<u8> {
        let n = port.checked_sub(u64::from(self.port))? + 1;
        NODES.iter().copied().find(|m| u64::from(*m) == n)
    }

    /// `kill -9` of node `n` (by its pid file); waits until the process is gone.
    pub async fn kill(&self, n: u8) -> Result<(), String> {
        self.script(&["node-kill", &n.to_string()], Duration::from_secs(30))
            .await
            .map(drop)
    }

    /// Starts node `n` again on its own data (it rejoins the cluster) and waits for it.
    pub async fn restart(&self, n: u8) -> Result<(), String> {
        self.script(&["node-start", &n.to_string()], Duration::from_secs(150))
            .await
            .map(drop)
    }

    /// `rabbitmqctl` against node `n`.
    pub async fn ctl(&self, n: u8, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut all = vec!["ctl".to_owned(), n.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.script(&all, limit).await
    }

    /// `rabbitmqctl stop_app` on node `n`: the Erlang node stays, RabbitMQ on it stops.
    pub async fn stop_app(&self, n: u8) -> Result<(), String> {
        self.ctl(n, &["stop_app"], Duration::from_secs(60))
            .await
            .map(drop)
    }

    /// `rabbitmqctl start_app` on node `n`, then waits until it serves again.
    pub async fn start_app(&self, n: u8) -> Result<(), String> {
        self.ctl(n, &["start_app"], Duration::from_secs(120))
            .await?;
        self.ctl(
            n,
            &["await_startup", "--timeout", "120"],
            Duration::from_secs(150),
        )
        .await
        .map(drop)
    }

    /// The nodes whose RabbitMQ application runs, as one running node sees them.
    pub async fn running(&self) -> Vec<u8> {
        for n in NODES {
            let Ok(out) = self
                .ctl(
                    n,
                    &["cluster_status", "--formatter", "json"],
                    Duration::from_secs(20),
                )
                .await
            else {
                continue;
            };
            let Ok(status) = serde_json::from_str::<serde_json::Value>(&out) else {
                continue;
            };
            let mut nodes: Vec<u8> = status["running_nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| self.node_number(v.as_str()?))
                .collect();
            nodes.sort_unstable();
            return nodes;
        }
        Vec::new()
    }

    /// The nodes that hold a connection whose name starts with `prefix` (the worker names its
    /// connections `case-intake consumer`, `case-intake relay`, …), asked of a running node
    /// (`list_connections` answers for the whole cluster).
    pub async fn nodes_of_connections(&self, prefix: &str) -> Vec<u8> {
        for n in self.running().await {
            let Ok(out) = self
                .ctl(
                    n,
                    &[
                        "list_connections",
                        "port",
                        "client_properties",
                        "--formatter",
                        "json",
                    ],
                    Duration::from_secs(20),
                )
                .await
            else {
                continue;
            };
            let Ok(serde_json::Value::Array(rows)) = serde_json::from_str(&out) else {
                continue;
            };
            let mut nodes: Vec<u8> = rows
                .iter()
                .filter(|row| connection_name(&row["client_properties"]).starts_with(prefix))
                .filter_map(|row| self.node_of_port(row["port"].as_u64()?))
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            return nodes;
        }
        Vec::new()
    }

    /// Column `column` of quorum queue `queue`'s row of `list_queues`, asked of the first
    /// running node that answers; `None` when none answers or the queue is not listed.
    async fn queue_column(&self, queue: &str, column: &str) -> Option<serde_json::Value> {
        for n in self.running().await {
            let Ok(out) = self
                .ctl(
                    n,
                    &["list_queues", "name", column, "--formatter", "json"],
                    Duration::from_secs(20),
                )
                .await
            else {
                continue;
            };
            let Ok(serde_json::Value::Array(rows)) = serde_json::from_str(&out) else {
                continue;
            };
            return rows
                .into_iter()
                .find(|row| row["name"] == queue)
                .map(|mut row| row[column].take());
        }
        None
    }

    /// The node that leads quorum queue `queue`, asked of a running node.
    pub async fn leader_of(&self, queue: &str) -> Option<u8> {
        let leader = self.queue_column(queue, "leader").await?;
        self.node_number(leader.as_str()?)
    }

    /// The members (replicas) of quorum queue `queue`, asked of a running node.
    pub async fn members_of(&self, queue: &str) -> Vec<u8> {
        let members = self.queue_column(queue, "members").await;
        let mut members: Vec<u8> = members
            .as_ref()
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
            .filter_map(|m| self.node_number(m.as_str()?))
            .collect();
        members.sort_unstable();
        members
    }
}

/// A fault of the fault suite's `--cluster` mode; each one heals itself before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFault {
    /// `kill -9` of the node the worker's consumer connection is on, restarted after a while.
    KillConnected,
    /// `kill -9` of the node that leads the intake queue.
    KillLeader,
    /// `kill -9` of a node that holds a follower replica and no worker consumer connection.
    KillFollower,
    /// `rabbitmqctl stop_app`, then `start_app`, on the node the worker is connected to.
    StopApp,
    /// Each node in turn stopped and started again, waiting for it before the next.
    Rolling,
}

impl ClusterFault {
    pub const ALL: [ClusterFault; 5] = [
        ClusterFault::KillConnected,
        ClusterFault::KillLeader,
        ClusterFault::KillFollower,
        ClusterFault::StopApp,
        ClusterFault::Rolling,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClusterFault::KillConnected => "node-kill-connected",
            ClusterFault::KillLeader => "node-kill-leader",
            ClusterFault::KillFollower => "node-kill-follower",
            ClusterFault::StopApp => "node-stop-app",
            ClusterFault::Rolling => "rolling-restart",
        }
    }
}

/// How long a killed or stopped node stays down: long enough that clients must fail over
/// rather than wait for it.
const DOWN_FOR: Duration = Duration::from_secs(8);

impl Cluster {
    /// Injects `fault` against the cluster serving `queue`, whose worker connections are
    /// named starting with `worker_prefix`, and brings the node(s) back; what was done.
    pub async fn inject(
        &self,
        fault: ClusterFault,
        queue: &str,
        worker_prefix: &str,
    ) -> Result<String, String> {
        match fault {
            ClusterFault::KillConnected => {
                let n = *self
                    .nodes_of_connections(worker_prefix)
                    .await
                    .first()
                    .ok_or("no worker connection found")?;
                self.kill_for_a_while(n).await?;
                Ok(format!("kill -9 of node {n} (a worker connection's)"))
            }
            ClusterFault::KillLeader => {
                let n = self.leader_of(queue).await.ok_or("no leader found")?;
                self.kill_for_a_while(n).await?;
                Ok(format!("kill -9 of node {n} (leader of {queue})"))
            }
            ClusterFault::KillFollower => {
                let leader = self.leader_of(queue).await;
                let connected = self.nodes_of_connections(worker_prefix).await;
                let members = self.members_of(queue).await;
                let followers: Vec<u8> = members
                    .iter()
                    .copied()
                    .filter(|m| Some(*m) != leader)
                    .collect();
                let n = followers
                    .iter()
                    .copied()
                    .find(|m| !connected.contains(m))
                    .or(followers.first().copied())
                    .ok_or("no follower found")?;
                self.kill_for_a_while(n).await?;
                Ok(format!("kill -9 of node {n} (a follower)"))
            }
            ClusterFault::StopApp => {
                let n = *self
                    .nodes_of_connections(worker_prefix)
                    .await
                    .first()
                    .ok_or("no worker connection found")?;
                self.stop_app(n).await?;
                tokio::time::sleep(DOWN_FOR).await;
                self.start_app(n).await?;
                Ok(format!("stop_app/start_app of node {n}"))
            }
            ClusterFault::Rolling => {
                for n in NODES {
                    self.ctl(n, &["stop"], Duration::from_secs(90)).await?;
                    self.restart(n).await?;
                    self.await_all_running(Duration::from_secs(120)).await?;
                }
                Ok("rolling restart of nodes 1, 2, 3".into())
            }
        }
    }

    async fn kill_for_a_while(&self, n: u8) -> Result<(), String> {
        self.kill(n).await?;
        tokio::time::sleep(DOWN_FOR).await;
        self.restart(n).await?;
        self.await_all_running(Duration::from_secs(120)).await
    }

    /// Waits until all three nodes run.
    pub async fn await_all_running(&self, limit: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let running = self.running().await;
            if running == NODES {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("running nodes after {limit:?}: {running:?}"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Brings back every node that does not run: `start_app` where the Erlang node lives,
    /// a start of the node otherwise.
    pub async fn heal(&self) -> Result<(), String> {
        let running = self.running().await;
        for n in NODES.into_iter().filter(|n| !running.contains(n)) {
            if self.start_app(n).await.is_err() {
                self.restart(n).await?;
            }
        }
        self.await_all_running(Duration::from_secs(120)).await
    }
}

/// The longest time between `from` and `to` in which no outcome arrived: from `from` to the
/// first arrival, between two arrivals, and from the last arrival to `to`. `arrivals` in any
/// order.
pub fn longest_gap(
    arrivals: impl Iterator<Item = std::time::Instant>,
    from: std::time::Instant,
    to: std::time::Instant,
) -> Duration {
    let mut times: Vec<std::time::Instant> = arrivals.filter(|t| *t >= from && *t <= to).collect();
    times.sort_unstable();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in times.into_iter().chain(std::iter::once(to)) {
        longest = longest.max(t.duration_since(last));
        last = t;
    }
    longest
}

/// `connection_name` of a connection's client properties as `list_connections --formatter
/// json` prints them: a map, or a list of `[name, type, value]` triples.
fn connection_name(props: &serde_json::Value) -> &str {
    match props {
        serde_json::Value::Object(map) => map
            .get("connection_name")
            .and_then(|v| v.as_str())
            .unwrap_or(""),
        serde_json::Value::Array(items) => items
            .iter()
            .find(|t| t[0] == "connection_name")
            .and_then(|t| t[2].as_str())
            .unwrap_or(""),
        _ => "",
    }
}

/// A harness connection to the first of `urls` that answers, tried in a shuffled order, each
/// within a few seconds: the suite's publisher and event tap survive the loss of any node the
/// way the worker does. Returns the connection and the index of its URL.
pub async fn connect_any(urls: &[String], name: &str) -> Result<(Connection, usize), String> {
    let mut order: Vec<usize> = (0..urls.len()).collect();
    order.shuffle(&mut rand::rng());
    let mut last = String::from("no endpoint given");
    for i in order {
        match tokio::time::timeout(ENDPOINT_TIMEOUT, broker::connect(&urls[i], Some(name))).await {
            Ok(Ok(conn)) => return Ok((conn, i)),
            Ok(Err(e)) => last = format!("endpoint {}: {e}", i + 1),
            Err(_) => last = format!("endpoint {}: timed out", i + 1),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_and_numbers_round_trip() {
        let c = Cluster::new(Path::new("/r"), "ci-rmq", 5701, Path::new("/tmp/x"));
        assert_eq!(c.node_name(2), "ci-rmq2@localhost");
        assert_eq!(c.node_number("ci-rmq2@localhost"), Some(2));
        assert_eq!(c.node_number("rabbit@localhost"), None);
        assert_eq!(c.node_number("ci-rmq4@localhost"), None);
        assert_eq!(c.url(3), "amqp://guest:guest@127.0.0.1:5703/%2f");
        assert_eq!(c.node_of_port(5702), Some(2));
        assert_eq!(c.node_of_port(5672), None);
        assert_eq!(c.node_of_port(5704), None);
    }

    #[test]
    fn the_longest_gap_counts_the_edges_and_ignores_arrivals_outside() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let arrivals = [at(5000), at(100), at(400), at(3400), at(20_000)];
        assert_eq!(
            longest_gap(arrivals.into_iter(), at(0), at(6000)),
            Duration::from_millis(3000)
        );
        assert_eq!(
            longest_gap(std::iter::empty(), at(0), at(6000)),
            Duration::from_millis(6000)
        );
        assert_eq!(
            longest_gap([at(1000)].into_iter(), at(0), at(9000)),
            Duration::from_millis(8000)
        );
    }

    #[test]
    fn connection_names_are_read_in_both_json_forms() {
        let map = serde_json::json!({"connection_name": "case-intake relay", "product": "lapin"});
        let list = serde_json::json!([
            ["product", "longstr", "lapin"],
            ["connection_name", "longstr", "case-intake consumer"]
        ]);
        assert_eq!(connection_name(&map), "case-intake relay");
        assert_eq!(connection_name(&list), "case-intake consumer");
        assert_eq!(connection_name(&serde_json::Value::Null), "");
    }
}
