//! In-process nodes for benchmarks: real [`Node`]s on loopback ports chosen by the OS, each in a
//! fresh data dir under the run's [`Workspace`](super::Workspace).

use std::time::{Duration, Instant};

use suanli_protocol::Keypair;

use super::BenchError;
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::{Node, NodeHandle};

/// A config for a loopback node: TCP on port 0 (no QUIC: one transport keeps the figures
/// comparable with the TCP floors), API on port 0, the given advert timing.
pub fn loopback_config(bootstrap: &[String], advert_interval_secs: u64) -> Config {
    let mut config = Config::default();
    config.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    config.network.bootstrap = bootstrap.to_vec();
    config.network.advert_interval_secs = advert_interval_secs;
    config.network.advert_ttl_secs = advert_interval_secs * 3;
    config.api.listen = "127.0.0.1:0".into();
    config
}

/// A node started for a benchmark.
#[derive(Debug)]
pub struct BenchNode {
    pub handle: NodeHandle,
    pub data_dir: DataDir,
}

impl BenchNode {
    /// Starts a node with `config` in `dir` (a fresh directory of the workspace).
    pub async fn start(dir: std::path::PathBuf, config: Config) -> Result<BenchNode, BenchError> {
        let config = config
            .validate()
            .map_err(|error| BenchError::scenario("nodes", error))?;
        let data_dir = DataDir::new(dir);
        let handle = Node::start(data_dir.clone(), config)
            .await
            .map_err(|error| BenchError::scenario("nodes", error))?;
        Ok(BenchNode { handle, data_dir })
    }

    /// The node's TCP address with its id, for other nodes' bootstrap lists.
    pub fn tcp_addr(&self) -> Result<String, BenchError> {
        self.handle
            .p2p_addrs()
            .iter()
            .map(ToString::to_string)
            .find(|addr| addr.contains("/tcp/"))
            .ok_or_else(|| BenchError::scenario("nodes", "node has no TCP address"))
    }

    /// The node's key, read from its data dir (to sign documents as this node).
    pub fn keypair(&self) -> Result<Keypair, BenchError> {
        self.data_dir
            .load_key()
            .map_err(|error| BenchError::scenario("nodes", error))
    }

    /// How many live nodes this node's capacity view holds.
    pub fn mesh_size(&self) -> usize {
        self.handle.mesh.live_count(crate::clock::now_ms())
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.handle.api_addr)
    }

    pub async fn stop(self) {
        self.handle.shutdown().await;
    }
}

/// Waits until every node's view holds `n` nodes; `Err` after `limit`.
pub async fn wait_for_mesh(
    nodes: &[BenchNode],
    n: usize,
    limit: Duration,
) -> Result<Duration, BenchError> {
    let started = Instant::now();
    while !nodes.iter().all(|node| node.mesh_size() >= n) {
        if started.elapsed() > limit {
            let smallest = nodes.iter().map(BenchNode::mesh_size).min().unwrap_or(0);
            return Err(BenchError::scenario(
                "nodes",
                format!(
                    "{n} nodes did not all see each other within {limit:?} (smallest view: {smallest})"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

/// Starts `n` nodes; node 0 bootstraps nobody, node i from node 0 (a small fixed mesh for the
/// job scenarios).
pub async fn start_star(
    workspace: &super::Workspace,
    n: usize,
) -> Result<Vec<BenchNode>, BenchError> {
    let mut nodes: Vec<BenchNode> = Vec::with_capacity(n);
    for index in 0..n {
        let bootstrap = match nodes.first() {
            Some(first) if index > 0 => vec![first.tcp_addr()?],
            _ => Vec::new(),
        };
        let mut config = loopback_config(&bootstrap, 1);
        // Generous slots: the throughput scenario runs many tiny jobs at once.
        config.provider.slots = Some(8);
        config.provider.queue = 256;
        nodes.push(BenchNode::start(workspace.subdir("node")?, config).await?);
    }
    wait_for_mesh(&nodes, n, Duration::from_secs(60)).await?;
    Ok(nodes)
}

/// Stops every node (their data dirs stay until the workspace goes).
pub async fn stop_all(nodes: Vec<BenchNode>) {
    for node in nodes {
        node.stop().await;
    }
}
