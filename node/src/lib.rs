//! `suanli-node`: the suanli node as a library ([`Node::start`]) and the `suanli` command.
//!
//! A node is a handful of tasks under one [`CancellationToken`]:
//!
//! ```text
//!            HTTP clients (CLI, developers, dashboards)
//!                          │
//!                     api (axum) ──reads──▶ MeshView ◀──writes── network task (owns Swarm)
//!                          │                                        ▲
//!                          └──────────── NetworkHandle ─Command────┘
//! ```
//!
//! Modules: [`config`] (TOML → checked config), [`data_dir`] (key, config, peers, run info),
//! [`capacity`] (detection and adverts), [`mesh`] (capacity view), [`network`] (libp2p),
//! [`api`] (HTTP), [`cli`] (the command line).

pub mod api;
pub mod capacity;
pub mod cli;
pub mod clock;
pub mod config;
pub mod data_dir;
pub mod mesh;
pub mod network;

use std::net::SocketAddr;
use std::time::Instant;

use libp2p::Multiaddr;
use suanli_protocol::NodeId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capacity::{Capacity, Detected};
use crate::config::CheckedConfig;
use crate::data_dir::{DataDir, DataDirError, RunInfo};
use crate::mesh::MeshView;
use crate::network::{NetworkHandle, NetworkParts, StartError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Network(#[from] StartError),
    #[error("API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    pub node_id: NodeId,
    pub api_addr: SocketAddr,
    pub listen_addrs: Vec<Multiaddr>,
    pub mesh: MeshView,
    pub network: NetworkHandle,
    data_dir: DataDir,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

/// Starts nodes.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Starts a node on `data_dir` (initialised if new) with `config`. Returns once the network
    /// listeners and the API are bound.
    pub async fn start(data_dir: DataDir, config: CheckedConfig) -> Result<NodeHandle, NodeError> {
        let keypair = data_dir.load_or_init()?;
        let node_id = keypair.node_id();
        let capacity = Capacity::from_config(&config, &Detected::probe());
        let mesh = MeshView::default();
        let cancel = CancellationToken::new();
        let api_listen = config.api_listen;
        let (network, network_task, listen_addrs) = network::start(NetworkParts {
            config,
            keypair,
            capacity: capacity.clone(),
            mesh: mesh.clone(),
            data_dir: data_dir.clone(),
            cancel: cancel.clone(),
        })
        .await?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            if let Err(error) = network_task.await {
                warn!(%error, "network task failed");
            }
        });

        let listener = tokio::net::TcpListener::bind(api_listen)
            .await
            .map_err(|source| NodeError::Api {
                addr: api_listen,
                source,
            })?;
        let api_addr = listener.local_addr().map_err(|source| NodeError::Api {
            addr: api_listen,
            source,
        })?;
        let router = api::router(api::ApiState {
            node_id,
            started: Instant::now(),
            capacity,
            mesh: mesh.clone(),
            network: network.clone(),
        });
        let api_cancel = cancel.clone();
        tasks.spawn(async move {
            let shutdown = async move { api_cancel.cancelled().await };
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                warn!(%error, "API server failed");
            }
        });
        info!(%node_id, api = %api_addr, "node started");
        let run_info = RunInfo {
            node_id: node_id.to_string(),
            api: api_addr.to_string(),
            listen_addrs: listen_addrs.iter().map(ToString::to_string).collect(),
            pid: std::process::id(),
        };
        if let Err(error) = data_dir.save_run_info(&run_info) {
            warn!(%error, "could not write run.json");
        }
        Ok(NodeHandle {
            node_id,
            api_addr,
            listen_addrs,
            mesh,
            network,
            data_dir,
            cancel,
            tasks,
        })
    }
}

impl NodeHandle {
    /// This node's dialable addresses with its id, for other nodes' bootstrap lists.
    pub fn p2p_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs
            .iter()
            .map(|addr| {
                addr.clone()
                    .with(libp2p::multiaddr::Protocol::P2p(self.node_id.to_peer_id()))
            })
            .collect()
    }

    /// Stops every task and waits for them (the network saves its peers on the way out).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.data_dir.remove_run_info();
        info!(node_id = %self.node_id, "node stopped");
    }

    /// A token that stops the node when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}
