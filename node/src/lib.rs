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
//! Modules: [`config`] (TOML → checked config), [`data_dir`] (key, config, peers, run info,
//! published checkpoint), [`capacity`] (detection and adverts), [`mesh`] (capacity view),
//! [`network`] (libp2p), [`market`] (placing and running jobs), [`executor`] (wasmtime),
//! [`storage`] (sled: record trees, blobs, the durability barrier, the free-space reserve),
//! [`ledger`] (the chain, its writer and Merkle tree), [`transparency`] (checkpoints, witnessing,
//! audits), [`api`] (HTTP), [`submission`] (the job body a developer submits and its checks), [`cli`] (the command line), [`bench`](mod@bench) (`suanli bench`); `fixtures`
//! holds signed documents with fixed keys for tests and benchmarks.

pub mod api;
pub mod auth;
pub mod bench;
pub mod capacity;
pub mod cli;
pub mod clock;
pub mod config;
pub mod data_dir;
pub mod executor;
#[doc(hidden)]
pub mod fixtures;
mod http;
pub mod inference;
pub mod ledger;
pub mod market;
pub mod mesh;
pub mod metrics;
pub mod network;
pub mod openai;
pub mod reputation;
mod serde_text;
pub mod slurm;
pub mod storage;
pub mod submission;
pub mod tokens;
pub mod transparency;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use suanli_protocol::NodeId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capacity::{Capacity, Detected, Load};
use crate::config::CheckedConfig;
use crate::data_dir::{DataDir, DataDirError, RunInfo};
use crate::executor::{Executor, ExecutorConfig, ExecutorError};
use crate::ledger::{LedgerError, LedgerHandle, Store};
use crate::market::{Market, MarketParts};
use crate::mesh::MeshView;
use crate::network::{NetworkHandle, NetworkParts, StartError};
use crate::storage::{Storage, StorageError};
use crate::tokens::{Router, RouterParts, Serving};
use crate::transparency::{CheckpointError, Transparency, TransparencyParts};
use suanli_protocol::ExecutorKind;

/// How long a stopping node lets HTTP requests in flight finish (a long-poll ends at once).
const API_DRAIN: Duration = Duration::from_secs(2);
/// How long a stopping node waits for the providers of its idle standing contracts to hear that
/// they are closed.
const CLOSE_AT_STOP: Duration = Duration::from_secs(2);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Network(#[from] StartError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("executor: {0}")]
    Executor(#[from] ExecutorError),
    #[error(transparent)]
    Model(#[from] tokens::ModelError),
    #[error(transparent)]
    Cluster(#[from] slurm::ClusterError),
    #[error("API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("API tokens: {0}")]
    Tokens(#[from] auth::StoreError),
    #[error(
        "the API would listen on {0}, which is not loopback, and no API token exists: anyone who \
         reaches it could spend this node's credit. Create one with `suanli token create --name \
         NAME` (or listen on 127.0.0.1 behind a proxy)"
    )]
    OpenApiWithoutTokens(SocketAddr),
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    pub node_id: NodeId,
    pub api_addr: SocketAddr,
    pub listen_addrs: Vec<Multiaddr>,
    pub mesh: MeshView,
    pub network: NetworkHandle,
    pub market: Market,
    pub ledger: LedgerHandle,
    /// The node's database: record trees, blobs, and its health (full disk, failed).
    pub storage: Storage,
    pub transparency: Transparency,
    /// Routes model requests to the mesh (the OpenAI endpoints).
    pub tokens: Router,
    data_dir: DataDir,
    cancel: CancellationToken,
    ledger_cancel: CancellationToken,
    ledger_task: Option<tokio::task::JoinHandle<()>>,
    storage_monitor: Option<tokio::task::JoinHandle<()>>,
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
        // An API open beyond loopback without a token is refused before anything starts.
        let tokens_path = auth::store::tokens_path(&data_dir);
        if !auth::is_loopback(config.api_listen.ip()) {
            let file = auth::store::load(&tokens_path)?;
            let now = clock::now_ms();
            if !file.tokens.iter().any(|token| token.refusal(now).is_none()) {
                return Err(NodeError::OpenApiWithoutTokens(config.api_listen));
            }
        }
        let mut capacity = Capacity::from_config(&config, &Detected::probe());
        // Models load first: one that cannot is a start-up error, before anything listens.
        let offered = tokens::load_models(&config.tokens.models).await?;
        if !offered.is_empty() {
            capacity.executors.push(ExecutorKind::Llm);
            capacity.models = offered.iter().map(tokens::Offered::info).collect();
        }
        if !config.provider.accept_jobs {
            // Advertise no executor (nor cluster), so nobody ranks this node for jobs it would
            // decline.
            capacity.executors.clear();
            capacity.models.clear();
        }
        // So does the cluster: a node configured to front one that it cannot reach does not start.
        let cluster = match &config.slurm {
            Some(slurm) => Some(slurm::Cluster::connect(slurm.clone(), data_dir.root()).await?),
            None => None,
        };
        if cluster.is_none() {
            capacity.executors.retain(|kind| !kind.on_cluster());
        }
        let mesh = MeshView::default();
        let cancel = CancellationToken::new();
        let api_listen = config.api_listen;
        let mut tasks = JoinSet::new();

        let storage = Storage::open(&data_dir.db_path(), &config.storage)?;
        let store = Store::open(&storage, node_id)?;
        let published = transparency::check_published(&data_dir, &store)?;
        // The ledger writer (and the storage's monitor) stop last: they get their own token,
        // cancelled after the others end.
        let ledger_cancel = CancellationToken::new();
        let (ledger, ledger_task) = store.start(ledger_cancel.clone());
        let metrics = metrics::Metrics::default();
        metrics.register_histogram(
            "ledger_append_duration",
            "Time from an append's request to its durable answer",
            ledger.append_seconds(),
        );
        metrics.register_histogram(
            "storage_barrier_duration",
            "Time of a durability barrier (sled flush and the fsyncs)",
            storage.barrier_seconds(),
        );
        let storage_monitor = storage.spawn_monitor(ledger_cancel.clone());
        let executor = Executor::new(ExecutorConfig {
            max_concurrency: config
                .provider
                .slots
                .unwrap_or(capacity.total.cpu_cores)
                .max(1),
            max_memory_bytes: config.provider.max_memory_bytes,
            module_cache_bytes: config.executor.module_cache_bytes,
            compile_threads: config
                .executor
                .compile_threads
                .unwrap_or(capacity.total.cpu_cores / 2)
                .max(1),
            compile_queue: config.executor.compile_queue,
        })?;
        let (load_sender, market_load) = tokio::sync::watch::channel(Load::IDLE);
        // Adverts show full load while the storage refuses work (a full disk, a failed barrier),
        // so nobody ranks this node for jobs it cannot record.
        let (advertised_load, load) = tokio::sync::watch::channel(Load::IDLE);
        tasks.spawn(capacity::advertise_load(
            market_load,
            storage.health(),
            advertised_load,
            cancel.clone(),
        ));
        let cluster_info = match &cluster {
            Some(cluster) if config.provider.accept_jobs => {
                tasks.spawn(cluster.clone().refresh_loop(cancel.clone()));
                cluster.info()
            }
            _ => tokio::sync::watch::channel(None).1,
        };
        let (events_sender, events) = tokio::sync::mpsc::channel(network::EVENT_QUEUE);
        let (ledger_events_sender, ledger_events) =
            tokio::sync::mpsc::channel(network::EVENT_QUEUE);
        let ledger_config = config.ledger.clone();
        let provider_config = config.provider.clone();
        let jobs_config = config.jobs.clone();
        let (prices, executors) = (config.prices, capacity.executors.clone());
        let tokens_config = config.tokens.clone();
        let api_config = config.api.clone();
        let (network, network_task, listen_addrs) = network::start(NetworkParts {
            config,
            keypair: keypair.clone(),
            capacity: capacity.clone(),
            mesh: mesh.clone(),
            data_dir: data_dir.clone(),
            events: events_sender,
            ledger_events: ledger_events_sender,
            load,
            cluster: cluster_info,
            cancel: cancel.clone(),
        })
        .await?;
        tasks.spawn(async move {
            if let Err(error) = network_task.await {
                warn!(%error, "network task failed");
            }
        });
        let transparency = Transparency::start(
            TransparencyParts {
                keypair: keypair.clone(),
                ledger: ledger.clone(),
                storage: storage.clone(),
                network: network.clone(),
                mesh: mesh.clone(),
                data_dir: data_dir.clone(),
                config: ledger_config,
                published,
                events: ledger_events,
                cancel: cancel.clone(),
            },
            &mut tasks,
        );
        let streams = tokens_config
            .streams
            .unwrap_or(capacity.total.cpu_cores.saturating_sub(1))
            .max(1);
        let serving = Serving::new(tokens::ServingParts {
            keypair: keypair.clone(),
            ledger: ledger.clone(),
            models: offered,
            config: tokens_config.clone(),
            streams,
            corrupt_output: provider_config.test_corrupt_output,
            metrics: metrics.clone(),
            cancel: cancel.clone(),
        });
        tasks.spawn(tokens::accept_streams(
            network.clone(),
            serving.clone(),
            cancel.clone(),
        ));
        let reputation = reputation::Reputation::start(
            node_id,
            ledger.clone(),
            Some(transparency.clone()),
            cancel.clone(),
            &mut tasks,
        );
        let market = Market::start(MarketParts {
            keypair: keypair.clone(),
            network: network.clone(),
            mesh: mesh.clone(),
            ledger: ledger.clone(),
            storage: storage.clone(),
            executor,
            cluster,
            serving: serving.clone(),
            provider: provider_config,
            jobs: jobs_config,
            default_slots: capacity.total.cpu_cores,
            prices,
            executors,
            load: load_sender,
            reputation,
            metrics: metrics.clone(),
            cancel: cancel.clone(),
        });
        tasks.spawn(market.clone().serve(events));
        let token_router = Router::start(RouterParts {
            keypair: keypair.clone(),
            network: network.clone(),
            mesh: mesh.clone(),
            ledger: ledger.clone(),
            market: market.clone(),
            serving,
            config: tokens_config,
            metrics: metrics.clone(),
            cancel: cancel.clone(),
        });

        let access = auth::Access::open(
            auth::AccessConfig {
                tokens_path,
                local_without_token: api_config.local_without_token,
                hosts: api_config.hosts.clone(),
                body_timeout: Duration::from_secs(api_config.body_timeout_secs),
            },
            auth::Spend::new(&storage, market.jobs().clone()),
        )?;
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
            market: market.clone(),
            ledger: ledger.clone(),
            storage: storage.clone(),
            transparency: transparency.clone(),
            tokens: token_router.clone(),
            access,
            metrics,
        });
        let limits = api::serve::ServeLimits {
            header_timeout: Duration::from_secs(api_config.header_timeout_secs),
            max_connections: api_config.max_connections as usize,
        };
        tasks.spawn(api::serve::serve(
            listener,
            router,
            limits,
            cancel.clone(),
            API_DRAIN,
        ));
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
            market,
            ledger,
            storage,
            transparency,
            tokens: token_router,
            data_dir,
            cancel,
            ledger_cancel,
            ledger_task: Some(ledger_task),
            storage_monitor: Some(storage_monitor),
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
        // Idle standing contracts are closed first, so their providers deliver and they settle.
        self.tokens.close_all(CLOSE_AT_STOP).await;
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.tokens.stopped().await;
        // Appends in flight finish before the ledger writer stops.
        self.ledger_cancel.cancel();
        if let Some(task) = self.ledger_task.take() {
            let _ = task.await;
        }
        if let Some(task) = self.storage_monitor.take() {
            let _ = task.await;
        }
        self.data_dir.remove_run_info();
        info!(node_id = %self.node_id, "node stopped");
    }
}
