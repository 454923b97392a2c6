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
    // Three intervals, within the protocol's bound.
    config.network.advert_ttl_secs =
        (advert_interval_secs * 3).min(suanli_protocol::advert::MAX_TTL_MS / 1000);
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

/// A network-only node: the node's real network task (view sync, advert validation, capacity
/// view, peer manager, gossip) without executor, ledger or market, so that a thousand fit in
/// one process (over the memory transport). Requests other nodes send it are answered "busy".
#[derive(Debug)]
pub struct NetNode {
    pub network: crate::network::NetworkHandle,
    pub mesh: crate::mesh::MeshView,
    pub node_id: suanli_protocol::NodeId,
    pub keypair: Keypair,
    pub addr: String,
    cancel: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _load: tokio::sync::watch::Sender<crate::capacity::Load>,
    _cluster: tokio::sync::watch::Sender<Option<suanli_protocol::ClusterInfo>>,
}

impl NetNode {
    /// Starts a network-only node with `config` (its listen addresses decide the transport) in
    /// `dir`, advertising what `detected` describes.
    pub async fn start(
        dir: std::path::PathBuf,
        config: Config,
        detected: &crate::capacity::Detected,
    ) -> Result<NetNode, BenchError> {
        let fail = |error: &dyn std::fmt::Display| BenchError::scenario("nodes", error);
        let config = config.validate().map_err(|error| fail(&error))?;
        let data_dir = DataDir::new(dir);
        let keypair = data_dir.load_or_init().map_err(|error| fail(&error))?;
        let capacity = crate::capacity::Capacity::from_config(&config, detected);
        let mesh = crate::mesh::MeshView::default();
        let cancel = tokio_util::sync::CancellationToken::new();
        // Dropped receivers: the network answers such requests "busy" and drops such events.
        let (events, _) = tokio::sync::mpsc::channel(1);
        let (ledger_events, _) = tokio::sync::mpsc::channel(1);
        let (load_sender, load) = tokio::sync::watch::channel(crate::capacity::Load::IDLE);
        let (cluster_sender, cluster) = tokio::sync::watch::channel(None);
        let (network, task, listen_addrs) = crate::network::start(crate::network::NetworkParts {
            config,
            keypair: keypair.clone(),
            capacity,
            mesh: mesh.clone(),
            data_dir,
            events,
            ledger_events,
            load,
            cluster,
            cancel: cancel.clone(),
        })
        .await
        .map_err(|error| fail(&error))?;
        let node_id = keypair.node_id();
        let addr = listen_addrs
            .first()
            .map(|addr| format!("{addr}/p2p/{}", node_id.to_peer_id()))
            .ok_or_else(|| fail(&"no listen address"))?;
        Ok(NetNode {
            network,
            mesh,
            node_id,
            keypair,
            addr,
            cancel,
            task,
            _load: load_sender,
            _cluster: cluster_sender,
        })
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}
