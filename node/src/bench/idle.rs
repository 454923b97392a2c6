//! The `idle` scenario: how much memory a `suanli run` process keeps resident while it does
//! nothing, against the same executable doing nothing at all.
//!
//! Each reading is `/proc/<pid>/status` of a child process once its resident set has settled
//! (unchanged within [`SETTLED_SLACK`] over [`SETTLED_OVER`] of samples; at most
//! [`SETTLE_LIMIT`]): `VmRSS`, split into `RssAnon` (heap, stacks: what the node allocated) and
//! `RssFile` (pages of files mapped in, almost all of them the binary's own code).
//!
//! - Floor: `suanli bench-gossip-floor` waiting for its request on stdin, which never comes: the
//!   same executable with its async runtime and logging started, and nothing else.
//! - A fresh node on its defaults (TCP and QUIC on loopback, port 0), settled after start.
//! - The same node after 100 small jobs (20 with `--quick`) submitted to it through the HTTP
//!   API (it runs them itself: two modules compiled, job records, blobs), settled again.
//! - A node whose ledger already holds 30,000 entries (3,000 with `--quick`; fixture deals
//!   appended through the ledger's own writer before it starts; the node then runs with the
//!   fixture provider's key, as the ledger's owner), settled after start: opening reads every
//!   entry.
//!
//! Every child is killed and reaped when its reading is taken, when the scenario fails, or when
//! the run is interrupted ([`Child`]'s drop). This module must never assert a figure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use suanli_protocol::ledger::EntryBody;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BenchError, Context, Figure, HELLO_WAT};
use crate::api::types::{JobState, JobView, SubmitResponse};
use crate::config::StorageConfig;
use crate::data_dir::{DataDir, RunInfo};
use crate::fixtures::{deal, provider, requester};
use crate::ledger::Store;
use crate::storage::Storage;

const SCENARIO: &str = "idle";
/// A resident set that moved less than this over [`SETTLED_OVER`] has settled.
const SETTLED_SLACK: u64 = 64 * 1024;
const SETTLED_OVER: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Past this the last sample is taken as it is (and a warning says so).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// How long a node may take to write its `run.json` (a large ledger is read at start).
const READY_LIMIT: Duration = Duration::from_secs(120);
const JOB_LIMIT: Duration = Duration::from_secs(30);
/// Concurrent appenders filling the large ledger (group commit).
const APPENDERS: usize = 64;
const FIB_WAT: &str = include_str!("../../../examples/jobs/fib.wat");

fn fail(error: impl std::fmt::Display) -> BenchError {
    BenchError::scenario(SCENARIO, error)
}

/// One reading of a process's memory, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resident {
    /// `VmRSS`.
    pub total: u64,
    /// `RssAnon`.
    pub anon: u64,
    /// `RssFile`.
    pub file: u64,
}

impl Resident {
    /// Reads `/proc/<pid>/status`; `None` once the process is gone (or off Linux).
    pub fn of(pid: u32) -> Option<Resident> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
                .map(|kib| kib * 1024)
        };
        Some(Resident {
            total: field("VmRSS:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
        })
    }
}

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let exe = super::suanli_exe(SCENARIO)?;
    let jobs = context.options.pick(20, 100);
    let entries = context.options.pick(3_000, 30_000);

    let floor = bare_process(&exe).await?;
    info!(?floor, "idle: the bare process");

    let dir = context.workspace.subdir("idle-node")?;
    let mut node = Child::node(&exe, &dir).await?;
    let fresh = node.settled().await?;
    info!(?fresh, "idle: a fresh node");
    run_jobs(&node.api, jobs).await?;
    let after_jobs = node.settled().await?;
    info!(?after_jobs, jobs, "idle: after jobs");
    drop(node);

    let dir = context.workspace.subdir("idle-ledger")?;
    fill_ledger(&dir, entries).await?;
    let mut node = Child::node(&exe, &dir).await?;
    let with_ledger = node.settled().await?;
    info!(?with_ledger, entries, "idle: with a large ledger");
    drop(node);

    let mut figures = Vec::new();
    for (what, reading) in [
        ("fresh node".to_owned(), fresh),
        (format!("after {jobs} jobs"), after_jobs),
        (format!("{entries}-entry ledger"), with_ledger),
    ] {
        figures.extend(figures_of(&what, reading, floor));
    }
    Ok(figures)
}

/// Resident, anonymous and file-backed memory of one reading against the floor's, MiB.
fn figures_of(what: &str, reading: Resident, floor: Resident) -> [Figure; 3] {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let floor_metric = |part: &str| format!("{part} of the same binary doing nothing");
    [
        Figure::against(
            SCENARIO,
            format!("{what}, idle: resident (VmRSS)"),
            mib(reading.total),
            "MiB",
            mib(floor.total),
            floor_metric("resident"),
        ),
        Figure::against(
            SCENARIO,
            format!("{what}, idle: anonymous (RssAnon)"),
            mib(reading.anon),
            "MiB",
            mib(floor.anon),
            floor_metric("anonymous"),
        ),
        Figure::against(
            SCENARIO,
            format!("{what}, idle: file-backed, mostly code (RssFile)"),
            mib(reading.file),
            "MiB",
            mib(floor.file),
            floor_metric("file-backed"),
        ),
    ]
}

/// The floor: `suanli bench-gossip-floor` blocked on its stdin, settled.
async fn bare_process(exe: &Path) -> Result<Resident, BenchError> {
    let process = std::process::Command::new(exe)
        .arg("bench-gossip-floor")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| fail(format!("spawn the bare process: {error}")))?;
    let mut bare = Child {
        process,
        api: String::new(),
        log: None,
    };
    bare.settled().await
}

/// A child process, killed and reaped when dropped.
struct Child {
    process: std::process::Child,
    /// The node's API base URL (empty for the bare process).
    api: String,
    /// The node's stderr, for failure messages.
    log: Option<PathBuf>,
}

impl Child {
    /// Starts `suanli run` on data dir `dir` and waits for its `run.json`.
    async fn node(exe: &Path, dir: &Path) -> Result<Child, BenchError> {
        let log_path = dir.join("node.log");
        let log = std::fs::File::create(&log_path).map_err(BenchError::Workspace)?;
        let process = std::process::Command::new(exe)
            .arg("run")
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
            .args(["--api", "127.0.0.1:0"])
            .env_remove("SUANLI_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|error| fail(format!("spawn a node: {error}")))?;
        let mut child = Child {
            process,
            api: String::new(),
            log: Some(log_path),
        };
        let run_info = DataDir::new(dir).run_info_path();
        let pid = child.process.id();
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&run_info)
                && let Ok(info) = serde_json::from_str::<RunInfo>(&text)
                && info.pid == pid
            {
                child.api = format!("http://{}", info.api);
                return Ok(child);
            }
            if let Ok(Some(status)) = child.process.try_wait() {
                return Err(fail(format!(
                    "the node exited while starting ({status}): {}",
                    child.log_tail()
                )));
            }
            if started.elapsed() > READY_LIMIT {
                return Err(fail(format!(
                    "the node was not ready {READY_LIMIT:?} after being spawned: {}",
                    child.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The resident set once it has settled (or after [`SETTLE_LIMIT`]).
    async fn settled(&mut self) -> Result<Resident, BenchError> {
        let pid = self.process.id();
        let started = Instant::now();
        let window = (SETTLED_OVER.as_millis() / SAMPLE_EVERY.as_millis()) as usize;
        let mut samples: Vec<Resident> = Vec::new();
        loop {
            let Some(reading) = Resident::of(pid) else {
                return Err(fail(format!(
                    "process {pid} is gone (or /proc is not readable): {}",
                    self.log_tail()
                )));
            };
            samples.push(reading);
            if samples.len() > window {
                let recent = &samples[samples.len() - window - 1..];
                let low = recent.iter().map(|r| r.total).min().unwrap_or(0);
                let high = recent.iter().map(|r| r.total).max().unwrap_or(0);
                if high - low <= SETTLED_SLACK {
                    return Ok(reading);
                }
            }
            if started.elapsed() > SETTLE_LIMIT {
                warn!(
                    pid,
                    "the resident set did not settle within {SETTLE_LIMIT:?}; taking the last sample"
                );
                return Ok(reading);
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return "(no log)".into();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // SIGKILL: the process exits at once, so the blocking wait is brief, and it writes
        // nothing more into the workspace that is removed next.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Submits `jobs` small jobs (two modules, alternately) one after the other and waits for
/// each to succeed.
async fn run_jobs(api: &str, jobs: usize) -> Result<(), BenchError> {
    let http = reqwest::Client::new();
    for n in 0..jobs {
        let module = if n % 2 == 0 { HELLO_WAT } else { FIB_WAT };
        let submitted: SubmitResponse = http
            .post(format!("{api}/v1/jobs"))
            .json(&json!({ "module_wat": module }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| fail(format!("submit a job: {error}")))?
            .json()
            .await
            .map_err(|error| fail(format!("submit a job: {error}")))?;
        let id = submitted.job_id;
        let started = Instant::now();
        loop {
            let job: JobView = http
                .get(format!("{api}/v1/jobs/{id}?wait_ms=3000"))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|error| fail(format!("follow job {id}: {error}")))?
                .json()
                .await
                .map_err(|error| fail(format!("follow job {id}: {error}")))?;
            if job.state.is_final() {
                if job.state != JobState::Succeeded {
                    return Err(fail(format!("job {id} ended {:?}", job.state)));
                }
                break;
            }
            if started.elapsed() > JOB_LIMIT {
                return Err(fail(format!("job {id} not final after {JOB_LIMIT:?}")));
            }
        }
    }
    Ok(())
}

/// Makes `dir` the data dir of a node whose ledger holds about `entries` entries: the fixture
/// provider's key, and fixture deals (contract, receipt, settlement) appended by 64 appenders
/// through the ledger's writer, so the ledger is exactly what a node writes.
async fn fill_ledger(dir: &Path, entries: usize) -> Result<(), BenchError> {
    let owner = provider();
    write_key(&DataDir::new(dir).key_path(), &owner.secret_bytes())?;
    let path = DataDir::new(dir).db_path();
    let deals = entries.div_ceil(3) as u64;
    let (storage, store, bodies) = tokio::task::spawn_blocking(move || {
        let (requester, provider) = (requester(), provider());
        let bodies = (0..deals)
            .map(|nonce| deal(nonce, &requester, &provider))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        let storage = Storage::open(&path, &StorageConfig::default()).map_err(fail)?;
        let store = Store::open(&storage, provider.node_id()).map_err(fail)?;
        Ok::<_, BenchError>((storage, store, bodies))
    })
    .await
    .map_err(fail)??;
    let cancel = CancellationToken::new();
    let (ledger, task) = store.start(cancel.clone());
    // Each appender takes whole deals, in order, so every contract's entries come in order.
    let mut queues: Vec<Vec<EntryBody>> = vec![Vec::new(); APPENDERS];
    for (n, deal) in bodies.into_iter().enumerate() {
        queues[n % APPENDERS].extend(deal);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for queue in queues {
        let ledger = ledger.clone();
        tasks.spawn(async move {
            for body in queue {
                ledger.append(body).await?;
            }
            Ok::<(), crate::ledger::LedgerError>(())
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined.map_err(fail).and_then(|done| done.map_err(fail)) {
            result = Err(error);
        }
    }
    drop(ledger);
    cancel.cancel();
    let _ = task.await;
    drop(storage);
    result
}

fn write_key(path: &Path, secret: &[u8; 32]) -> Result<(), BenchError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(BenchError::Workspace)?;
    file.write_all(hex::encode(secret).as_bytes())
        .map_err(BenchError::Workspace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_memory_from_proc() {
        let reading = Resident::of(std::process::id()).expect("/proc/<pid>/status is readable");
        assert!(reading.anon > 0 && reading.file > 0, "{reading:?}");
        // VmRSS = RssAnon + RssFile + RssShmem; the test process maps no shared memory of note.
        assert!(reading.total >= reading.anon + reading.file, "{reading:?}");
        assert_eq!(Resident::of(u32::MAX), None);
    }
}
