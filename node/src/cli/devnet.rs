//! `suanli devnet --nodes N`: a local mesh in one command. N `suanli run` processes of this very
//! binary on loopback, their data dirs (`node-1`, `node-2`, …) and logs (`node-N/node.log`) under
//! one folder, every port chosen by the system, the first node the others' bootstrap and,
//! optionally, the server of a model. It prints each node's console URL and runs until SIGINT or
//! SIGTERM, which it passes on to every node (each stops as `suanli run` does: work in flight is
//! recorded); a node that exits on its own stops the devnet with its reason.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use tokio::process::{Child, Command};

use super::output;
use crate::data_dir::RunInfo;

/// How long a node may take to be ready (its `run.json` written once its API listens).
const READY_LIMIT: Duration = Duration::from_secs(120);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// The folder of the nodes' data dirs and logs; kept, and reused by the next run with the
    /// same folder (the nodes keep their identities and ledgers) [default: a new temporary
    /// folder, removed when the devnet stops].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// A model the first node serves to the mesh: NAME=PATH.gguf (the built-in engine) or
    /// NAME=http://host:port/v1 (an OpenAI-compatible server).
    #[arg(long, value_name = "NAME=SOURCE")]
    pub model: Option<String>,
}

/// One node of the devnet.
#[derive(Debug)]
struct DevNode {
    number: u16,
    dir: PathBuf,
    child: Child,
    info: RunInfo,
}

pub async fn run(args: DevnetArgs) -> anyhow::Result<()> {
    if let Some(model) = &args.model {
        crate::config::ModelConfig::parse_flag(model)?;
    }
    // A temporary folder is removed when this is dropped, after the nodes stopped.
    let (root, _temporary) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temporary = tempfile::Builder::new()
                .prefix("suanli-devnet-")
                .tempdir()
                .context("create the devnet's folder")?;
            (temporary.path().to_owned(), Some(temporary))
        }
    };
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let exe = std::env::current_exe().context("find the suanli binary")?;
    let mut nodes: Vec<DevNode> = Vec::new();
    // Whatever happens, the nodes started are stopped below.
    let outcome = match start_all(&exe, &root, &args, &mut nodes).await {
        Ok(()) => match print_nodes(&root, &nodes) {
            Ok(()) => watch(&mut nodes).await,
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    };
    stop_all(&mut nodes).await;
    outcome
}

/// Starts the nodes one after the other, the first one's address the others' bootstrap.
async fn start_all(
    exe: &Path,
    root: &Path,
    args: &DevnetArgs,
    nodes: &mut Vec<DevNode>,
) -> anyhow::Result<()> {
    let mut bootstrap: Option<String> = None;
    for number in 1..=args.nodes {
        let dir = root.join(format!("node-{number}"));
        let mut extra = Vec::new();
        if let Some(address) = &bootstrap {
            extra.extend(["--bootstrap".to_owned(), address.clone()]);
        }
        if let (1, Some(model)) = (number, &args.model) {
            extra.extend(["--model".to_owned(), model.clone()]);
        }
        let node = start(exe, number, dir, &extra).await?;
        if bootstrap.is_none() {
            bootstrap = Some(p2p_address(&node.info)?);
        }
        nodes.push(node);
    }
    Ok(())
}

async fn start(exe: &Path, number: u16, dir: PathBuf, extra: &[String]) -> anyhow::Result<DevNode> {
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let run_info = dir.join("run.json");
    // A node killed before left its run.json behind; the pid tells the new one apart too.
    let _ = std::fs::remove_file(&run_info);
    let log_path = dir.join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let mut child = Command::new(exe)
        .arg("run")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .args(extra)
        .env_remove("SUANLI_API")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start node {number}"))?;
    let pid = child.id().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + READY_LIMIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&run_info)
            && let Ok(info) = serde_json::from_str::<RunInfo>(&text)
            && info.pid == pid
        {
            return Ok(DevNode {
                number,
                dir,
                child,
                info,
            });
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "node {number} exited while starting ({status}); see {}",
                log_path.display()
            );
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "node {number} was not ready after {READY_LIMIT:?}; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node's TCP address with its id: what the others bootstrap from.
fn p2p_address(info: &RunInfo) -> anyhow::Result<String> {
    let tcp = info
        .listen_addrs
        .iter()
        .find(|address| address.contains("/tcp/"))
        .ok_or_else(|| anyhow!("the first node listens on no TCP address"))?;
    Ok(format!("{tcp}/p2p/{}", info.node_id))
}

fn print_nodes(root: &Path, nodes: &[DevNode]) -> anyhow::Result<()> {
    output::line(&format!(
        "devnet: {} nodes under {} (each node's log: node-N/node.log)",
        nodes.len(),
        root.display()
    ))?;
    for node in nodes {
        output::line(&format!(
            "node {} {} http://{}/",
            node.number, node.info.node_id, node.info.api
        ))?;
    }
    output::line("Ctrl-C stops the devnet.")
}

/// Runs until SIGINT or SIGTERM (`Ok`), or until a node exits on its own (its reason).
async fn watch(nodes: &mut [DevNode]) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    let exited = futures::future::select_all(nodes.iter_mut().map(|node| {
        Box::pin(async move {
            let status = node.child.wait().await;
            (node.number, node.dir.join("node.log"), status)
        })
    }));
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("wait for SIGINT"),
        _ = terminate.recv() => Ok(()),
        ((number, log, status), _, _) = exited => {
            let status = status.map_or_else(|error| error.to_string(), |status| status.to_string());
            Err(anyhow!("node {number} exited ({status}); see {}", log.display()))
        }
    }
}

/// Sends SIGTERM to every node still running and waits for each to stop ([`STOP_LIMIT`], then
/// SIGKILL).
async fn stop_all(nodes: &mut [DevNode]) {
    for node in nodes.iter() {
        if let Some(pid) = node
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    futures::future::join_all(nodes.iter_mut().map(|node| async move {
        if tokio::time::timeout(STOP_LIMIT, node.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                node = node.number,
                "did not stop {STOP_LIMIT:?} after SIGTERM; killed"
            );
            let _ = node.child.kill().await;
        }
    }))
    .await;
}
