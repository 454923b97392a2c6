//! Node configuration: one TOML file mapped onto [`Config`], one sub-struct per subsystem.
//!
//! Every field has a default, so an empty file (or none) is a working configuration. Command-line
//! flags override the file; [`Config::validate`] turns the raw values into checked ones in one
//! place, before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use suanli_protocol::advert::{MAX_TTL_MS, MIN_TTL_MS};
use suanli_protocol::{Credits, ExecutorKind, PriceTerms};

/// The whole configuration of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Peer-to-peer networking.
    pub network: NetworkConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// What this node offers to the mesh.
    pub capacity: CapacityConfig,
    /// Running other nodes' jobs.
    pub provider: ProviderConfig,
    /// Compiling modules: the compile pool and the compiled-module cache.
    pub executor: ExecutorSection,
    /// Placing jobs submitted to this node.
    pub jobs: JobsConfig,
    /// The ledger's signed checkpoints.
    pub ledger: LedgerConfig,
    /// The node's database on disk.
    pub storage: StorageConfig,
    /// AI tokens: the models this node serves, and standing contracts for those it uses.
    pub tokens: TokensConfig,
    /// A Slurm cluster this node fronts (executor `slurm`), through slurmrestd.
    pub slurm: SlurmConfig,
}

/// A Slurm cluster behind this node (`[slurm]`): unset `endpoint` means none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmConfig {
    /// slurmrestd's base URL, e.g. `http://slurm-head:6820`.
    pub endpoint: Option<String>,
    /// The cluster user mesh jobs run as (`X-SLURM-USER-NAME`).
    pub user: String,
    /// Credentials, exactly one: a token (`scontrol token`), a file holding one, or the
    /// cluster's JWT key file, from which the node mints short-lived tokens itself.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub jwt_key_file: Option<PathBuf>,
    /// Where mesh jobs go, and the account they are charged to.
    pub partition: String,
    pub account: Option<String>,
    /// The most CPUs one mesh job holds at once (one per running task; the rest of a job
    /// array waits in the queue).
    pub max_cpus: u32,
    /// The most tasks one job may have.
    pub max_tasks: u32,
    /// A directory every compute node sees at the same path (shared storage); default:
    /// `<data dir>/slurm`, which is enough for a cluster on this machine.
    pub work_dir: Option<PathBuf>,
    /// The `suanli` binary as the compute nodes see it; default: this one.
    pub exec_path: Option<PathBuf>,
    /// Seconds between readings of the cluster's capacity (for adverts).
    pub refresh_secs: u64,
    /// Milliseconds between polls of a running job's state.
    pub poll_interval_ms: u64,
    /// Micro-credits per CPU-second the cluster's accounting reports.
    pub price_per_cpu_second: u64,
    /// Node ids whose plain batch scripts (executor `batch`) this cluster runs as they are,
    /// outside the sandbox. Empty: none (and `batch` is not offered).
    pub batch_requesters: Vec<String>,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            endpoint: None,
            user: "suanli".into(),
            token: None,
            token_file: None,
            jwt_key_file: None,
            partition: String::new(),
            account: None,
            max_cpus: 64,
            max_tasks: suanli_protocol::job::MAX_TASKS,
            work_dir: None,
            exec_path: None,
            refresh_secs: 10,
            poll_interval_ms: 500,
            price_per_cpu_second: 0,
            batch_requesters: Vec::new(),
        }
    }
}

/// A model this node serves (`[[tokens.models]]`, or `suanli run --model NAME=SOURCE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name requests use.
    pub name: String,
    /// A GGUF file, or the base URL of an OpenAI-compatible server (`http://host:port/v1`).
    pub source: String,
    /// Micro-credits per million prompt tokens.
    #[serde(default = "default_prompt_price")]
    pub price_per_million_prompt: u64,
    /// Micro-credits per million completion tokens.
    #[serde(default = "default_completion_price")]
    pub price_per_million_completion: u64,
}

fn default_prompt_price() -> u64 {
    100_000
}

fn default_completion_price() -> u64 {
    200_000
}

impl ModelConfig {
    /// Parses `NAME=SOURCE` (the `--model` flag), at the default prices.
    pub fn parse_flag(flag: &str) -> Result<ModelConfig, ConfigError> {
        let (name, source) = flag
            .split_once('=')
            .filter(|(name, source)| !name.is_empty() && !source.is_empty())
            .ok_or_else(|| {
                invalid(
                    "--model",
                    format!("{flag:?} is not NAME=PATH.gguf or NAME=http://host:port/v1"),
                )
            })?;
        Ok(ModelConfig {
            name: name.to_owned(),
            source: source.to_owned(),
            price_per_million_prompt: default_prompt_price(),
            price_per_million_completion: default_completion_price(),
        })
    }

    /// Whether the source is an upstream server rather than a file.
    pub fn is_upstream(&self) -> bool {
        self.source.starts_with("http://") || self.source.starts_with("https://")
    }
}

/// AI tokens (`[tokens]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// Models this node serves.
    pub models: Vec<ModelConfig>,
    /// Provider: requests generated at once, over all models (default: cores offered − 1, at
    /// least 1): one thread each.
    pub streams: Option<u32>,
    /// Provider: standing contracts open at once.
    pub max_contracts: u32,
    /// Provider: the largest token budget and the longest time one standing contract may have.
    pub max_budget_tokens: u64,
    pub max_contract_secs: u64,
    /// Requester: the token budget and the time of each standing contract this node signs.
    pub contract_budget_tokens: u64,
    pub contract_secs: u64,
    /// Requester: the most this node pays per million tokens (prompt or completion).
    pub max_price_per_million: u64,
    /// Requester: `max_tokens` of a request that gives none.
    pub default_max_tokens: u32,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            models: Vec::new(),
            streams: None,
            max_contracts: 256,
            max_budget_tokens: 10_000_000,
            max_contract_secs: 3600,
            contract_budget_tokens: 1_000_000,
            contract_secs: 600,
            max_price_per_million: 10_000_000,
            default_max_tokens: 512,
        }
    }
}

/// The node's database on disk (`<data dir>/db`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Bytes that must stay free on the database's filesystem. Below this the node refuses new
    /// work (ledger appends, job submissions, new blobs) and advertises full load, without
    /// writing anything, until free space is back above this plus a quarter; the database never
    /// runs into a full disk (which sled 0.34 does not recover from without a restart). It covers
    /// sled's own growth beyond the data (new log segments, a few MB at a time; the page-table
    /// snapshot written at start, ~1-2 % of the database) and the small records in-flight jobs
    /// keep writing. 0 turns the check off.
    pub min_free_bytes: u64,
    /// Memory the database may keep as its page cache, bytes (sled's `cache_capacity`). Pages
    /// beyond it are dropped, least recently used first, and read back from the files (the
    /// kernel's page cache) when needed. sled evicts lazily (once 64 accesses have queued in one
    /// of its 256 shards), so this bounds what a node accumulates over its life, not what the
    /// ledger's open has just read. sled's own default, 1 GiB, let a node keep its whole ledger
    /// (~0.5 KiB per entry); a cache smaller than the pages in use is read again and again and
    /// fragments the allocator. At least 1 MiB.
    pub cache_capacity_bytes: u64,
}

/// Smallest `storage.cache_capacity_bytes` accepted: sled splits its cache into 256 shards, and
/// one of a few KiB would drop every page as soon as it is read.
pub const MIN_CACHE_CAPACITY_BYTES: u64 = 1024 * 1024;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            min_free_bytes: 256 * 1024 * 1024,
            cache_capacity_bytes: 32 * 1024 * 1024,
        }
    }
}

/// The ledger's signed checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Sign and publish a checkpoint once this many entries were appended since the last one.
    pub checkpoint_every_entries: u64,
    /// ... or once this many seconds passed since the last one, if any entry was appended.
    pub checkpoint_interval_secs: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            checkpoint_every_entries: 256,
            checkpoint_interval_secs: 5,
        }
    }
}

/// Running other nodes' jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Accept jobs from the mesh (and from this node) at all.
    pub accept_jobs: bool,
    /// Jobs run at once; default: the cores offered.
    pub slots: Option<u32>,
    /// Jobs accepted beyond the running ones, waiting for a slot.
    pub queue: u32,
    /// Largest fuel budget accepted per job.
    pub max_fuel: u64,
    /// Largest memory limit accepted per job, bytes.
    pub max_memory_bytes: u64,
    /// Longest wall-time limit accepted per job, milliseconds.
    pub max_wall_time_ms: u64,
    /// Largest output accepted per job, bytes.
    pub max_output_bytes: u64,
    /// Seconds an offer (and the slot it holds) stays valid.
    pub offer_validity_secs: u64,
    /// The credit line of a requester, micro-credits: what it may owe this node (by the
    /// ledger's settlements) plus the most its open contracts and offers can cost. Beyond it
    /// quotes are declined with the signed reason `credit_limit`.
    pub credit_limit: u64,
    /// Credit lines of particular requesters, by node id, micro-credits (they are never
    /// treated as new).
    pub credit_limits: BTreeMap<String, u64>,
    /// A requester with fewer contracts settled with this node is new: its credit line is
    /// `new_peer_credit_limit` (shared by every new requester connecting from the same IP
    /// address) and its jobs may cost at most `new_peer_max_job_cost`.
    pub history_settlements: u64,
    pub new_peer_credit_limit: u64,
    pub new_peer_max_job_cost: u64,
    /// TEST ONLY: sign for an output other than the one each run wrote (a WebAssembly run's
    /// every byte flipped, a model's text with its ASCII letters' case swapped), to play a
    /// dishonest provider in the replica tests. It cannot be set
    /// from a config file or flag (it is never read from or written to TOML), only by code that
    /// builds a `Config` itself, such as the integration tests' in-process nodes.
    #[doc(hidden)]
    #[serde(skip)]
    pub test_corrupt_output: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            accept_jobs: true,
            slots: None,
            queue: 64,
            max_fuel: 10_000_000_000,
            max_memory_bytes: 256 * 1024 * 1024,
            max_wall_time_ms: 60_000,
            max_output_bytes: suanli_protocol::job::MAX_OUTPUT_BYTES,
            offer_validity_secs: 10,
            credit_limit: 1_000_000_000,
            credit_limits: BTreeMap::new(),
            history_settlements: 3,
            new_peer_credit_limit: 10_000_000,
            new_peer_max_job_cost: 5_000_000,
            test_corrupt_output: false,
        }
    }
}

/// Compiling modules, for submissions and for runs alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorSection {
    /// Compiled code the module cache may hold, bytes (and at most 64 modules).
    pub module_cache_bytes: u64,
    /// Modules compiled at once; default: half the cores offered, at least 1.
    pub compile_threads: Option<u32>,
    /// Submissions waiting for a compile beyond the running ones; more are answered "busy".
    pub compile_queue: u32,
}

impl Default for ExecutorSection {
    fn default() -> Self {
        ExecutorSection {
            module_cache_bytes: 128 * 1024 * 1024,
            compile_threads: None,
            compile_queue: 16,
        }
    }
}

/// Placing jobs submitted to this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Seconds to keep looking for a provider before the job fails with the reasons collected.
    pub placement_timeout_secs: u64,
    /// Seconds added to a job's wall-time limit for transfer and queueing before its contract's
    /// deadline.
    pub deadline_grace_secs: u64,
    /// Seconds a provider running a job may stay disconnected before this node gives the
    /// contract up (it fails it, tells the provider when it is back, and tries another).
    pub provider_lost_after_secs: u64,
    /// The share (0 to 1) of submitted WebAssembly jobs checked after they succeed: run again on
    /// another provider at this node's cost, and on a different result a third time, the odd
    /// provider then recorded with evidence (docs/rfcs/010-replicas.md, "Spot checks").
    pub spot_check_fraction: f64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            placement_timeout_secs: 60,
            deadline_grace_secs: 30,
            provider_lost_after_secs: 5,
            spot_check_fraction: 0.0,
        }
    }
}

impl JobsConfig {
    pub fn provider_lost_after(&self) -> Duration {
        Duration::from_secs(self.provider_lost_after_secs)
    }
}

/// Peer-to-peer networking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Multiaddrs to listen on (TCP and QUIC). Port 0 picks a free port.
    pub listen: Vec<String>,
    /// Multiaddrs of peers to join through, ideally ending in `/p2p/<node id>`.
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Seconds between re-publications of this node's capacity advert.
    pub advert_interval_secs: u64,
    /// Seconds an advert stays valid after it is issued.
    pub advert_ttl_secs: u64,
    /// Most connections established at once, inbound and outbound together (a hard limit: one
    /// more is refused). A few are kept for connections the node dials itself.
    pub max_connections: u32,
    /// Most connections to one peer.
    pub max_connections_per_peer: u32,
    /// Peers the node keeps: below it, it dials discovered and remembered peers; above it, it
    /// lets go of the least useful ones (never those in its gossip mesh, serving a request or
    /// party to a running contract). Below `max_connections`.
    pub target_peers: u32,
    /// Seconds an idle connection stays open.
    pub idle_connection_timeout_secs: u64,
    /// Seconds between two pings on every connection. A lost peer is also re-dialled at least
    /// this often during the first minutes after it was lost.
    pub ping_interval_secs: u64,
    /// Seconds a ping may go unanswered. A connection that answered no ping for
    /// `ping_interval_secs + ping_timeout_secs` is closed as dead, and its peer leaves the peer
    /// list; QUIC's idle timeout is set to the same bound.
    pub ping_timeout_secs: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/7071".into(),
                "/ip4/0.0.0.0/udp/7071/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            advert_interval_secs: 10,
            advert_ttl_secs: 30,
            max_connections: 50,
            max_connections_per_peer: 2,
            target_peers: 25,
            idle_connection_timeout_secs: 300,
            ping_interval_secs: 5,
            ping_timeout_secs: 10,
        }
    }
}

/// The HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// `HOST:PORT` the API listens on. An address other than loopback needs API tokens
    /// (`suanli token create`): the node does not start without one.
    pub listen: String,
    /// Whether a request over loopback without a token acts as the operator (every route, every
    /// job). Off: loopback needs tokens too.
    pub local_without_token: bool,
    /// Host names a request's `Host` header may name besides IP literals and `localhost` (the
    /// names the node is reached by, e.g. behind a proxy).
    pub hosts: Vec<String>,
    /// Seconds a client may take to send a request's head, and its body.
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:7070".into(),
            local_without_token: true,
            hosts: Vec::new(),
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            max_connections: 1024,
        }
    }
}

/// What this node offers. Unset figures are detected; set ones override (or cap) detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityConfig {
    /// Region label shown to the mesh, e.g. `eu-west`.
    pub region: String,
    /// CPU cores offered; default: all detected cores.
    pub cpu_cores: Option<u32>,
    /// Memory offered, bytes; default: detected total memory.
    pub memory_bytes: Option<u64>,
    /// GPUs offered; default: detected through `nvidia-smi` (none when it is absent).
    /// An empty list offers no GPU.
    pub gpus: Option<Vec<GpuConfig>>,
    /// Executors this node accepts jobs for.
    pub executors: Vec<String>,
    /// Flat fee per job, micro-credits.
    pub price_base: u64,
    /// Price per million units of fuel, micro-credits.
    pub price_per_million_fuel: u64,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        CapacityConfig {
            region: "default".into(),
            cpu_cores: None,
            memory_bytes: None,
            gpus: None,
            executors: vec!["wasm".into()],
            price_base: 100,
            price_per_million_fuel: 10,
        }
    }
}

/// One kind of GPU offered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    pub model: String,
    pub memory_bytes: u64,
    pub count: u32,
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Longest ping interval or timeout accepted: beyond it a dead peer would stay listed for hours.
const MAX_PING_SECS: u64 = 3600;

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// A validated configuration, ready to start a node from.
#[derive(Debug, Clone)]
pub struct CheckedConfig {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub advert_interval: Duration,
    pub advert_ttl: Duration,
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub target_peers: u32,
    pub idle_connection_timeout: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub api_listen: SocketAddr,
    /// `[api]` as given (listen parsed into `api_listen`).
    pub api: ApiConfig,
    pub capacity: CapacityConfig,
    pub executors: Vec<ExecutorKind>,
    pub prices: PriceTerms,
    pub provider: ProviderConfig,
    pub executor: ExecutorSection,
    pub jobs: JobsConfig,
    pub ledger: LedgerConfig,
    pub storage: StorageConfig,
    pub tokens: TokensConfig,
    /// The cluster this node fronts, checked (`None`: none).
    pub slurm: Option<SlurmConfig>,
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks every value and converts it to the type the node uses.
    pub fn validate(&self) -> Result<CheckedConfig, ConfigError> {
        let parse_addrs = |key, addrs: &[String]| -> Result<Vec<Multiaddr>, ConfigError> {
            addrs
                .iter()
                .map(|addr| {
                    addr.parse()
                        .map_err(|error| invalid(key, format!("{addr:?}: {error}")))
                })
                .collect()
        };
        if self.storage.cache_capacity_bytes < MIN_CACHE_CAPACITY_BYTES {
            return Err(invalid(
                "storage.cache_capacity_bytes",
                format!("must be at least {MIN_CACHE_CAPACITY_BYTES} (1 MiB)"),
            ));
        }
        let network = &self.network;
        let listen = parse_addrs("network.listen", &network.listen)?;
        if listen.is_empty() {
            return Err(invalid("network.listen", "at least one address is needed"));
        }
        let bootstrap = parse_addrs("network.bootstrap", &network.bootstrap)?;
        let ttl_ms = network.advert_ttl_secs.saturating_mul(1000);
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(invalid(
                "network.advert_ttl_secs",
                format!(
                    "must be {}..={} seconds",
                    MIN_TTL_MS / 1000,
                    MAX_TTL_MS / 1000
                ),
            ));
        }
        if network.advert_interval_secs == 0
            || network.advert_interval_secs >= network.advert_ttl_secs
        {
            return Err(invalid(
                "network.advert_interval_secs",
                "must be at least 1 and below advert_ttl_secs, or adverts expire between re-publications",
            ));
        }
        if network.max_connections == 0 || network.max_connections_per_peer == 0 {
            return Err(invalid("network.max_connections", "must be at least 1"));
        }
        if network.target_peers == 0 || network.target_peers >= network.max_connections {
            return Err(invalid(
                "network.target_peers",
                "must be at least 1 and below max_connections",
            ));
        }
        for (key, secs) in [
            ("network.ping_interval_secs", network.ping_interval_secs),
            ("network.ping_timeout_secs", network.ping_timeout_secs),
        ] {
            if !(1..=MAX_PING_SECS).contains(&secs) {
                return Err(invalid(key, format!("must be 1..={MAX_PING_SECS} seconds")));
            }
        }
        let api_listen =
            self.api.listen.parse().map_err(|error| {
                invalid("api.listen", format!("{:?}: {error}", self.api.listen))
            })?;
        let api = &self.api;
        for (key, secs) in [
            ("api.header_timeout_secs", api.header_timeout_secs),
            ("api.body_timeout_secs", api.body_timeout_secs),
        ] {
            if !(1..=3600).contains(&secs) {
                return Err(invalid(key, "must be 1..=3600 seconds"));
            }
        }
        if !(1..=65_536).contains(&api.max_connections) {
            return Err(invalid("api.max_connections", "must be 1..=65536"));
        }
        if let Some(host) = api.hosts.iter().find(|host| {
            host.is_empty() || host.contains(|c: char| c == ':' || c == '/' || c.is_whitespace())
        }) {
            return Err(invalid(
                "api.hosts",
                format!("{host:?}: a host name, without port or scheme"),
            ));
        }
        let provider = &self.provider;
        if provider.test_corrupt_output {
            tracing::warn!(
                "provider.test_corrupt_output is set: this node signs for outputs its runs did \
                 not write (tests only)"
            );
        }
        if provider.slots == Some(0) {
            return Err(invalid("provider.slots", "must be at least 1"));
        }
        if provider.max_memory_bytes > suanli_protocol::job::MAX_MEMORY_BYTES
            || provider.max_output_bytes > suanli_protocol::job::MAX_OUTPUT_BYTES
            || provider.max_wall_time_ms > suanli_protocol::job::MAX_WALL_TIME_MS
        {
            return Err(invalid(
                "provider.max_*",
                "above the protocol's hard limits (4 GiB memory, 4 MiB output, 1 h wall time)",
            ));
        }
        if self
            .executor
            .compile_threads
            .is_some_and(|threads| threads == 0 || threads > crate::executor::MAX_COMPILE_THREADS)
        {
            return Err(invalid(
                "executor.compile_threads",
                format!(
                    "must be between 1 and {}",
                    crate::executor::MAX_COMPILE_THREADS
                ),
            ));
        }
        for node in provider.credit_limits.keys() {
            node.parse::<suanli_protocol::NodeId>().map_err(|error| {
                invalid(
                    "provider.credit_limits",
                    format!("{node:?} is not a node id: {error}"),
                )
            })?;
        }
        if self.jobs.provider_lost_after_secs == 0 {
            return Err(invalid(
                "jobs.provider_lost_after_secs",
                "must be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.jobs.spot_check_fraction) {
            return Err(invalid(
                "jobs.spot_check_fraction",
                "must be between 0 and 1 (the share of jobs checked)",
            ));
        }
        if self.ledger.checkpoint_every_entries == 0 || self.ledger.checkpoint_interval_secs == 0 {
            return Err(invalid("ledger.checkpoint_*", "must be at least 1"));
        }
        if provider.offer_validity_secs == 0 || self.jobs.placement_timeout_secs == 0 {
            return Err(invalid(
                "provider.offer_validity_secs / jobs.placement_timeout_secs",
                "must be at least 1",
            ));
        }
        self.check_tokens()?;
        let slurm = self.check_slurm()?;
        let capacity = &self.capacity;
        if capacity.region.len() > suanli_protocol::job::MAX_REGION_BYTES {
            return Err(invalid("capacity.region", "at most 64 bytes"));
        }
        let mut executors = capacity
            .executors
            .iter()
            .map(|name| match name.as_str() {
                "wasm" => Ok(ExecutorKind::Wasm),
                other => Err(invalid(
                    "capacity.executors",
                    format!("unknown executor {other:?} (known: wasm; slurm comes with [slurm])"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(slurm) = &slurm {
            executors.push(ExecutorKind::Slurm);
            if !slurm.batch_requesters.is_empty() {
                executors.push(ExecutorKind::Batch);
            }
        }
        let per_cpu_second = Credits(slurm.as_ref().map_or(0, |slurm| slurm.price_per_cpu_second));
        Ok(CheckedConfig {
            listen,
            bootstrap,
            mdns: network.mdns,
            advert_interval: Duration::from_secs(network.advert_interval_secs),
            advert_ttl: Duration::from_secs(network.advert_ttl_secs),
            max_connections: network.max_connections,
            max_connections_per_peer: network.max_connections_per_peer,
            target_peers: network.target_peers,
            idle_connection_timeout: Duration::from_secs(network.idle_connection_timeout_secs),
            ping_interval: Duration::from_secs(network.ping_interval_secs),
            ping_timeout: Duration::from_secs(network.ping_timeout_secs),
            api_listen,
            api: self.api.clone(),
            capacity: capacity.clone(),
            executors,
            prices: PriceTerms {
                per_cpu_second,
                ..PriceTerms::fuel(
                    Credits(capacity.price_base),
                    Credits(capacity.price_per_million_fuel),
                )
            },
            provider: self.provider.clone(),
            executor: self.executor.clone(),
            jobs: self.jobs.clone(),
            ledger: self.ledger.clone(),
            storage: self.storage.clone(),
            tokens: self.tokens.clone(),
            slurm,
        })
    }

    fn check_slurm(&self) -> Result<Option<SlurmConfig>, ConfigError> {
        let slurm = &self.slurm;
        let Some(endpoint) = &slurm.endpoint else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(endpoint)
            .map_err(|error| invalid("slurm.endpoint", format!("{endpoint:?}: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                "slurm.endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        let credentials = [
            slurm.token.is_some(),
            slurm.token_file.is_some(),
            slurm.jwt_key_file.is_some(),
        ];
        if credentials.iter().filter(|given| **given).count() != 1 {
            return Err(invalid(
                "slurm.token / slurm.token_file / slurm.jwt_key_file",
                "give exactly one",
            ));
        }
        if slurm.user.is_empty() || slurm.partition.is_empty() {
            return Err(invalid("slurm.user / slurm.partition", "must be given"));
        }
        if slurm.max_cpus == 0 || slurm.refresh_secs == 0 || slurm.poll_interval_ms < 50 {
            return Err(invalid(
                "slurm.max_cpus / slurm.refresh_secs / slurm.poll_interval_ms",
                "max_cpus and refresh_secs at least 1, poll_interval_ms at least 50",
            ));
        }
        let max_tasks = suanli_protocol::job::MAX_TASKS;
        if !(1..=max_tasks).contains(&slurm.max_tasks) {
            return Err(invalid(
                "slurm.max_tasks",
                format!("must be 1..={max_tasks}"),
            ));
        }
        if let Some(bad) = slurm
            .batch_requesters
            .iter()
            .find(|id| id.parse::<suanli_protocol::NodeId>().is_err())
        {
            return Err(invalid(
                "slurm.batch_requesters",
                format!("{bad:?} is not a node id"),
            ));
        }
        Ok(Some(slurm.clone()))
    }

    fn check_tokens(&self) -> Result<(), ConfigError> {
        let tokens = &self.tokens;
        let mut names = std::collections::BTreeSet::new();
        if tokens.models.len() > suanli_protocol::tokens::MAX_MODELS {
            return Err(invalid(
                "tokens.models",
                format!("at most {} models", suanli_protocol::tokens::MAX_MODELS),
            ));
        }
        for model in &tokens.models {
            let name_ok = !model.name.is_empty()
                && model.name.len() <= suanli_protocol::tokens::MAX_MODEL_NAME_BYTES
                && model
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
            if !name_ok {
                return Err(invalid(
                    "tokens.models",
                    format!(
                        "model name {:?}: 1 to 64 letters, digits or -_.:/",
                        model.name
                    ),
                ));
            }
            if !names.insert(model.name.as_str()) {
                return Err(invalid(
                    "tokens.models",
                    format!("model {:?} is given twice", model.name),
                ));
            }
        }
        if tokens.streams == Some(0) || tokens.max_contracts == 0 {
            return Err(invalid(
                "tokens.streams / tokens.max_contracts",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("tokens.max_budget_tokens", tokens.max_budget_tokens),
            (
                "tokens.contract_budget_tokens",
                tokens.contract_budget_tokens,
            ),
            (
                "tokens.default_max_tokens",
                u64::from(tokens.default_max_tokens),
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        let max_secs = suanli_protocol::job::MAX_WALL_TIME_MS / 1000;
        for (key, secs) in [
            ("tokens.max_contract_secs", tokens.max_contract_secs),
            ("tokens.contract_secs", tokens.contract_secs),
        ] {
            if !(10..=max_secs).contains(&secs) {
                return Err(invalid(key, format!("must be 10..={max_secs} seconds")));
            }
        }
        Ok(())
    }
}

/// The commented `config.toml` that `suanli init` writes. Every key shows its default.
pub const CONFIG_TEMPLATE: &str = r#"# suanli node configuration. Every key is optional; the values shown are the defaults.
# Command-line flags of `suanli run` override this file.

[network]
# Multiaddrs to listen on. Port 0 picks a free port (the node logs the ones it got).
listen = ["/ip4/0.0.0.0/tcp/7071", "/ip4/0.0.0.0/udp/7071/quic-v1"]
# Peers to join the mesh through, e.g. "/ip4/203.0.113.7/tcp/7071/p2p/12D3KooW...".
bootstrap = []
# Find peers on the local network with mDNS.
mdns = false
# Seconds between re-publications of this node's capacity advert, and how long one stays valid.
advert_interval_secs = 10
advert_ttl_secs = 30
# Peers kept: below target_peers the node dials more, above it the least useful go
# (never gossip-mesh peers, peers serving a request, or parties to a running contract).
# max_connections is a hard limit on connections, inbound and outbound together.
target_peers = 25
max_connections = 50
max_connections_per_peer = 2
idle_connection_timeout_secs = 300
# Every connection is pinged this often; one that answered no ping for
# ping_interval_secs + ping_timeout_secs (15 s) is closed and its peer leaves `suanli peers`.
# A lost peer is re-dialled at least every ping_interval_secs for its first 5 minutes away.
ping_interval_secs = 5
ping_timeout_secs = 10

[api]
# HTTP API address. Any address but loopback needs API tokens (`suanli token create`): the node
# refuses to start without one.
listen = "127.0.0.1:7070"
# A loopback request without a token acts as the operator (all routes, all jobs). false: tokens
# are needed on loopback too.
local_without_token = true
# Names the API is reached by (checked against the Host header), besides IP literals and
# localhost: e.g. ["node1.example.org"].
hosts = []
# Seconds a client may take to send a request's head, and its body; connections served at once.
header_timeout_secs = 10
body_timeout_secs = 30
max_connections = 1024

[capacity]
# Region label shown to the mesh.
region = "default"
# Unset figures are detected. Uncomment to override or cap them.
# cpu_cores = 8
# memory_bytes = 17179869184
# gpus = [{ model = "H100", memory_bytes = 85899345920, count = 8 }]   # [] offers none
executors = ["wasm"]
# Prices in micro-credits (1 credit = 1,000,000): a flat fee per job plus a rate per million fuel.
price_base = 100
price_per_million_fuel = 10

[provider]
# Run jobs for the mesh (and for this node).
accept_jobs = true
# Jobs run at once (default: the cores offered), and jobs accepted to wait for a slot.
# slots = 8
queue = 64
# The largest job accepted.
max_fuel = 10000000000
max_memory_bytes = 268435456
max_wall_time_ms = 60000
max_output_bytes = 4194304
# Seconds an offer (and the slot it holds) stays valid.
offer_validity_secs = 10
# A requester's credit line, micro-credits (1,000 credits): what it may owe this node plus the most
# its open contracts can cost. Beyond it, quotes are declined with the reason credit_limit.
credit_limit = 1000000000
# A requester with fewer than history_settlements contracts settled here is new: its credit line
# is new_peer_credit_limit (10 credits), shared by every new requester connecting from the same IP
# address, and each of its jobs may cost at most new_peer_max_job_cost (5 credits). Requesters this
# node's ledger shows to be dishonest get no credit.
history_settlements = 3
new_peer_credit_limit = 10000000
new_peer_max_job_cost = 5000000

[provider.credit_limits]
# Credit lines of particular requesters, by node id:
# "12D3KooW..." = 50000000000

[executor]
# Compiled code kept in the module cache, bytes (at most 64 modules besides).
module_cache_bytes = 134217728
# Modules compiled at once (default: half the cores offered, at least 1).
# compile_threads = 1
# Submissions waiting for a compile; more are answered "busy" (HTTP 503).
compile_queue = 16

[jobs]
# Seconds to keep looking for a provider before a job fails with the reasons collected.
placement_timeout_secs = 60
# Seconds added to a job's time limit for transfer and queueing before its contract's deadline.
deadline_grace_secs = 30
# Seconds a provider running a job may stay disconnected before the contract is given up (failed,
# the provider told when it is back) and the job tries another provider.
provider_lost_after_secs = 5
# The share (0 to 1) of WebAssembly jobs checked after they succeed: run again on another provider
# at this node's cost, a third time when the two disagree, and the odd provider recorded with
# evidence that lowers its standing. 0.05 checks one job in twenty.
spot_check_fraction = 0.0

[ledger]
# Sign and publish a ledger checkpoint after this many new entries...
checkpoint_every_entries = 256
# ...or after this many seconds, whichever comes first (only when entries were added).
checkpoint_interval_secs = 5

[tokens]
# Requests generated at once over all models, one thread each (default: cores offered - 1, at least 1).
# streams = 1
# Standing contracts this node serves at once, and the largest budget and longest time of one.
max_contracts = 256
max_budget_tokens = 10000000
max_contract_secs = 3600
# Standing contracts this node signs to use others' models: tokens and seconds each runs for, and
# the most it pays per million tokens.
contract_budget_tokens = 1000000
contract_secs = 600
max_price_per_million = 10000000
# max_tokens of a request that gives none.
default_max_tokens = 512
# Models this node serves to the mesh: a GGUF file run by the built-in engine, or an
# OpenAI-compatible server the data center runs already (vLLM, SGLang, llama.cpp, Ollama).
# `suanli run --model NAME=SOURCE` adds one at the default prices. Prices in micro-credits.
# [[tokens.models]]
# name = "smollm2-135m"
# source = "/var/lib/suanli/models/SmolLM2-135M-Instruct.Q4_1.gguf"  # or "http://10.0.0.5:8000/v1"
# price_per_million_prompt = 100000
# price_per_million_completion = 200000

[slurm]
# A Slurm cluster this node fronts: mesh jobs of executor "slurm" run on its compute nodes as
# `suanli exec` (the same sandbox and limits), a job of many tasks as one job array, metered by
# the cluster's accounting. Needs slurmrestd with JWT auth and slurmdbd. See docs/operations.md.
# endpoint = "http://slurm-head:6820"
user = "suanli"
# Exactly one of: token = "...", token_file = "/etc/suanli/slurm.token",
# jwt_key_file = "/etc/slurm/jwt_hs256.key" (tokens are then minted by the node).
# partition = "mesh"
# account = "mesh"
# The most CPUs one mesh job holds at once (one per running task), and tasks per job.
max_cpus = 64
max_tasks = 1000
# Shared by every compute node at the same path (default: <data dir>/slurm).
# work_dir = "/shared/suanli"
# The suanli binary as compute nodes see it (default: this one).
# exec_path = "/usr/local/bin/suanli"
refresh_secs = 10
poll_interval_ms = 500
# Micro-credits per CPU-second of the cluster's accounting (on top of the fuel price).
price_per_cpu_second = 0
# Node ids whose plain batch scripts (executor "batch") run on the cluster as they are, outside
# the sandbox: only peers you trust with your account. Empty: "batch" is not offered.
batch_requesters = []

[storage]
# Bytes kept free on the filesystem of <data dir>/db (256 MiB). Below this the node refuses new
# work and advertises full load until free space is back above this plus a quarter. 0: no check.
min_free_bytes = 268435456
# Memory the database keeps as its page cache, bytes (32 MiB); older pages are read back from
# disk (through the kernel's page cache). At least 1 MiB.
cache_capacity_bytes = 33554432
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_to_the_defaults() {
        let parsed: Config = toml::from_str(CONFIG_TEMPLATE).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("[network]\nlisten_on = []").is_err());
        let mut config = Config::default();
        config.network.listen = vec!["not an addr".into()];
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("network.listen")
        );
        let mut config = Config::default();
        config.network.advert_interval_secs = 40;
        assert!(config.validate().is_err());
        for (interval, timeout) in [(0, 10), (5, 0), (5, 3601)] {
            let mut config = Config::default();
            config.network.ping_interval_secs = interval;
            config.network.ping_timeout_secs = timeout;
            assert!(
                config
                    .validate()
                    .unwrap_err()
                    .to_string()
                    .contains("network.ping_")
            );
        }
        let mut config = Config::default();
        config.executor.compile_threads = Some(0);
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("executor.compile_threads")
        );
        // sled panics on a cache of fewer than 256 bytes; a tiny one is refused here first.
        let mut config = Config::default();
        config.storage.cache_capacity_bytes = 255;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("storage.cache_capacity_bytes")
        );
        config.storage.cache_capacity_bytes = MIN_CACHE_CAPACITY_BYTES;
        config.validate().unwrap();
        let mut config = Config::default();
        config.capacity.executors = vec!["docker".into()];
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("docker")
        );
    }
}
