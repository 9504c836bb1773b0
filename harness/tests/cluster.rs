//! The cluster of `.ci/rabbit-cluster` as the fault suite uses it, on its own node names,
//! ports and folder: three nodes join, a quorum queue gets a replica on each, the node of a
//! named connection and the queue's leader are found, and after `kill -9` of the connection's
//! node the endpoint list still reaches the cluster, the queue gets a leader on a surviving
//! node, and the killed node rejoins. The machine's default node is never addressed.

use std::path::Path;
use std::time::{Duration, Instant};

use case_intake_harness::cluster::{Cluster, connect_any};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

async fn until<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_survives_the_loss_of_the_node_a_client_is_on() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("case-intake-cluster-test-{}", std::process::id()));
    let cluster = Cluster::new(&root, "ci-rmqtest", 5711, &dir);
    cluster.start().await.expect("cluster starts");
    let outcome = exercise(&cluster).await;
    cluster.remove().await.expect("cluster removed");
    assert!(!dir.exists(), "the cluster's folder is removed");
    outcome.expect("cluster behaves");
}

async fn exercise(cluster: &Cluster) -> Result<(), String> {
    if cluster.running().await != vec![1, 2, 3] {
        return Err(format!("running nodes: {:?}", cluster.running().await));
    }
    let urls = cluster.urls();
    let queue = format!("cluster-test-{}", uuid::Uuid::new_v4());
    let name = format!("cluster-test {queue}");
    let (conn, _) = connect_any(&urls, &name).await?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum_args(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let members = cluster.members_of(&queue).await;
    if members != vec![1, 2, 3] {
        return Err(format!(
            "members of a quorum queue in a 3-node cluster: {members:?}"
        ));
    }
    if cluster.leader_of(&queue).await.is_none() {
        return Err("no leader found".into());
    }
    let on = until(Duration::from_secs(30), || async {
        match cluster.nodes_of_connections(&name).await[..] {
            [n] => Some(n),
            _ => None,
        }
    })
    .await
    .ok_or("the connection's node was not found")?;

    cluster.kill(on).await?;
    let running = cluster.running().await;
    if running.contains(&on) || running.len() != 2 {
        return Err(format!("after killing node {on}: running {running:?}"));
    }
    let (again, idx) = connect_any(&urls, &name).await?;
    if idx + 1 == usize::from(on) {
        return Err("connected to the killed node".into());
    }
    let leader = until(Duration::from_secs(60), || async {
        cluster.leader_of(&queue).await.filter(|l| *l != on)
    })
    .await
    .ok_or("no leader on a surviving node")?;
    if !running.contains(&leader) {
        return Err(format!("leader {leader} is not running"));
    }

    cluster.restart(on).await?;
    if cluster.running().await != vec![1, 2, 3] {
        return Err(format!("after restart: {:?}", cluster.running().await));
    }
    let ch = again.create_channel().await.map_err(|e| e.to_string())?;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let _ = again.close(200, "OK".into()).await;
    Ok(())
}
