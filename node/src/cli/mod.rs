//! The `suanli` command line. `init`, `id` and `run` work on a data dir; every other command is a
//! client of a running node's HTTP API and never touches its data (a few ledger commands read a
//! *stopped* node's data dir with `--data-dir`).
//!
//! API answers are deserialized into the types of [`crate::api::types`], the same types the
//! handlers serialize, and tables are made from their typed fields; `--json` prints the typed
//! answer back, keys sorted as before the types existed.

mod access;
mod bench;
mod client;
mod devnet;
mod export;
mod jobs;
mod ledger;
mod output;
mod proof;
mod sse;
mod tokens;
mod transparency;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::Node;
use crate::api::types::{MeshNodeView, NodeView, PeerInfo};
use crate::config::Config;
use crate::data_dir::DataDir;

pub use client::ApiClient;

/// suanli (算力): a peer-to-peer compute-sharing node.
#[derive(Debug, Parser)]
#[command(name = "suanli", version)]
pub struct Cli {
    /// How log lines (stderr) are written: `text` for people, `json` (one object per line) for
    /// log collectors. Their level comes from `RUST_LOG` (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    Text,
    /// One JSON object per line: timestamp, level, target, fields, spans.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data dir with a new node key and a commented config.toml; print the node id.
    Init {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// Replace an existing key (the node gets a new identity).
        #[arg(long)]
        force: bool,
    },
    /// Print the node id of a data dir.
    Id {
        #[command(flatten)]
        data_dir: DataDirArg,
    },
    /// Run the node until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Show the running node: id, version, addresses, capacity, uptime.
    Status(ClientArgs),
    /// List the peers the running node is connected to.
    Peers(ClientArgs),
    /// List every node in the running node's capacity view of the mesh.
    Mesh(ClientArgs),
    /// List the models the mesh offers (any node answers for all of them).
    Models(ClientArgs),
    /// Chat with a model of the mesh through the node's OpenAI-compatible API.
    Chat(tokens::ChatArgs),
    /// Submit and follow jobs.
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// Read and verify the ledger.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Net credits per peer, derived from settlements.
    Balances(ClientArgs),
    /// Create, list and revoke the API tokens of this data dir.
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Run a local mesh of N nodes on loopback and print their console URLs; Ctrl-C stops it.
    Devnet(devnet::DevnetArgs),
    /// Measure this machine: in-process nodes on loopback, each figure next to its floor.
    Bench(bench::BenchArgs),
    /// Internal to `suanli bench`: the bare-gossipsub floor in a process of its own (request
    /// as JSON on stdin, answer as JSON on stdout).
    #[command(hide = true)]
    BenchGossipFloor,
    /// Run one task of a mesh job on a cluster's compute node (what a Slurm batch script of a
    /// node fronting the cluster runs): reads DIR/job.bin, writes DIR/task-N.out.
    #[command(hide = true)]
    Exec {
        dir: PathBuf,
        /// The task (default: $SLURM_ARRAY_TASK_ID, else 0).
        #[arg(long)]
        task: Option<u32>,
    },
}

/// Ends the command with this exit code; its reason was already printed.
#[derive(Debug, thiserror::Error)]
#[error("exit code {0}")]
pub struct SilentExit(pub u8);

#[derive(Debug, Args)]
pub struct DataDirArg {
    /// Data directory [default: $SUANLI_HOME, else the platform data dir + /suanli].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Config file [default: <data dir>/config.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen multiaddr; replaces the configured ones (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// HTTP API address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub api: Option<String>,
    /// Bootstrap peer multiaddr; added to the configured ones (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network with mDNS.
    #[arg(long)]
    pub mdns: bool,
    /// Serve a model to the mesh: NAME=PATH.gguf (the built-in engine) or
    /// NAME=http://host:port/v1 (an OpenAI-compatible server); repeatable. Replaces a configured
    /// model of the same name.
    #[arg(long, value_name = "NAME=SOURCE")]
    pub model: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// URL of the node's HTTP API.
    #[arg(long, env = "SUANLI_API", default_value = "http://127.0.0.1:7070")]
    pub api: String,
    /// API token, sent as `Authorization: Bearer` (not needed over loopback unless the node's
    /// `api.local_without_token` is off).
    #[arg(long, env = "SUANLI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    /// A client of the node's API with these arguments.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        self.client_with_timeout(ApiClient::TIMEOUT)
    }

    /// A client for streamed answers ([`ApiClient::connect_streaming`]).
    pub fn streaming_client(&self) -> anyhow::Result<ApiClient> {
        ApiClient::connect_streaming(&self.api, self.token.as_deref())
    }

    /// The same, for requests that may take up to `timeout`.
    pub fn client_with_timeout(&self, timeout: std::time::Duration) -> anyhow::Result<ApiClient> {
        ApiClient::connect(&self.api, self.token.as_deref(), timeout)
    }
}

/// Runs a parsed command. Output goes to stdout; errors are returned to `main`.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { data_dir, force } => {
            let data_dir = DataDir::resolve(data_dir.data_dir)?;
            let key = data_dir.init(force)?;
            output::line(&key.node_id().to_string())?;
            tracing::info!(path = %data_dir.root().display(), "initialised data dir");
            Ok(())
        }
        Command::Id { data_dir } => {
            let data_dir = DataDir::resolve(data_dir.data_dir)?;
            let key = data_dir.load_key()?;
            output::line(&key.node_id().to_string())
        }
        Command::Run(args) => run(args).await,
        Command::Status(args) => {
            let node: NodeView = args.client()?.get_json("/v1/node").await?;
            output::status(&node, args.json)
        }
        Command::Peers(args) => {
            let peers: Vec<PeerInfo> = args.client()?.get_json("/v1/peers").await?;
            output::peers(&peers, args.json)
        }
        Command::Mesh(args) => {
            let mesh: Vec<MeshNodeView> = args.client()?.get_json("/v1/mesh").await?;
            output::mesh(&mesh, args.json)
        }
        Command::Job(command) => jobs::execute(command).await,
        Command::Ledger(command) => ledger::execute(command).await,
        Command::Balances(args) => ledger::balances(args).await,
        Command::Token(command) => access::execute(command).await,
        Command::Models(args) => tokens::models(args).await,
        Command::Chat(args) => tokens::chat(args).await,
        Command::Devnet(args) => devnet::run(args).await,
        Command::Bench(args) => bench::execute(args).await,
        Command::BenchGossipFloor => bench::gossip_floor_child().await,
        Command::Exec { dir, task } => {
            // Its own runtime: the executor's blocking calls, one job, nothing else.
            tokio::task::spawn_blocking(move || crate::slurm::exec::run(&dir, task))
                .await?
                .map_err(anyhow::Error::msg)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let data_dir = DataDir::resolve(args.data_dir.data_dir)?;
    let config_path = args.config.or_else(|| {
        let default = data_dir.config_path();
        default.exists().then_some(default)
    });
    let mut config = match &config_path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        config.network.listen = args.listen;
    }
    config.network.bootstrap.extend(args.bootstrap);
    if let Some(api) = args.api {
        config.api.listen = api;
    }
    config.network.mdns |= args.mdns;
    for flag in &args.model {
        let model = crate::config::ModelConfig::parse_flag(flag)?;
        config.tokens.models.retain(|m| m.name != model.name);
        config.tokens.models.push(model);
    }
    let checked = config.validate()?;
    let node = Node::start(data_dir, checked).await.context("start node")?;
    output::line(&format!(
        "node {} API http://{}",
        node.node_id, node.api_addr
    ))?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("install SIGTERM handler")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("wait for SIGINT")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    Ok(())
}
