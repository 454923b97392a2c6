//! The `crash` scenario: a requester and a provider as real `suanli run` processes (this very
//! binary), one of them killed with SIGKILL at seeded-random points while jobs stream through
//! them and restarted on the same data dir and ports after a random pause; then the contract
//! engine's invariants are checked through the HTTP API, as the `crash` integration test does,
//! at a larger count, and the time each recovery took is reported.
//!
//! ```text
//!  clients (CLIENTS tasks) ──POST /v1/jobs, long-poll──▶ requester ◀─libp2p─▶ provider
//!      ▲ permits, round by round                             ▲ SIGKILL, pause, respawn
//!  controller ───────────────────────────────────────────────┘ waits until it recovered
//!  Ledgers: both ledgers read incrementally (GET /v1/ledger?from=): per contract the kinds
//!           of its entries and the timestamps of its first and ending entries
//! ```
//!
//! Phases, on one pair of nodes: warm-up (one job of each kind); the stream without kills
//! (the floors of throughput and drain); restarts with nothing open (the recovery floor);
//! the storm, in rounds of `jobs / kills` jobs with one kill each, the next round's jobs let in
//! only once the restarted node has recovered (so each recovery is measured on its own); the
//! drain; the checks; restarts with nothing open again, on the grown ledgers.
//!
//! Recovery after a restart runs from spawning the process until every contract either node
//! held open at the kill has ended on both sides, or until the node is ready if that is later.
//! "Held open at the kill" and "ended" are read from ledger timestamps (the writer stamps
//! entries as it commits them, just before the barrier): entries stamped at or before the kill
//! that the restarted node still has were durable before it. The survivor's ledger counts too:
//! a contract the provider made durable before answering the requester, the requester killed
//! in between, is on the provider's side only, and may be the slowest to end.
//!
//! API answers are read through the API's own types ([`crate::api::types`]).
//!
//! This module must never leave a child running: each [`NodeProcess`] kills and reaps its child
//! when dropped, which also happens when the run fails or is interrupted (the run's future is
//! dropped before its workspace). It must never touch anything outside its workspace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use suanli_protocol::ledger::{EntryBody, LedgerEntry};
use suanli_protocol::{ContractId, Hash32, JobId, Outcome};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{BenchError, Context, Figure, Samples, ms};
use crate::api::types::{
    AuditReport, Balance, EntriesPage, EntryKind, EntryView, JobPage, JobState, JobView,
    MeshNodeView, SubmitResponse, VerifyReport,
};
use crate::clock::now_ms;
use crate::data_dir::RunInfo;

const SCENARIO: &str = "crash";
/// Concurrent submitters: jobs in flight at once.
const CLIENTS: usize = 16;
/// How long a node may take to write its `run.json` after being spawned.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// How long the contracts a killed node held open may take to end on both sides. A contract
/// ends by its deadline at the latest: the jobs' 5 s wall time plus the 5 s grace below.
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);
/// How long every job and contract may take to end after a stream.
const DRAIN_LIMIT: Duration = Duration::from_secs(150);
/// How long one submission may keep failing (the requester down, or busy) before the run fails.
const SUBMIT_LIMIT: Duration = Duration::from_secs(120);
/// Every job's wall-time limit.
const JOB_TIMEOUT_MS: u64 = 5_000;
/// Short timers, as in the `crash` integration test: a provider is lost after 2 s; contracts
/// end 5 s after their jobs' wall time at the latest. The credit line is not in the way.
const CONFIG: &str = "[jobs]\nprovider_lost_after_secs = 2\ndeadline_grace_secs = 5\n\
                      placement_timeout_secs = 60\n\
                      [provider]\ncredit_limit = 1000000000000\nslots = 2\nmax_fuel = 100000000000\n";
/// Examples of broken invariants quoted in the failure message (all are counted).
const QUOTED: usize = 8;

fn fail(message: impl fmt::Display) -> BenchError {
    BenchError::scenario(SCENARIO, message)
}

/// How a run is sized.
#[derive(Debug, Clone, Copy)]
struct Sizing {
    /// Jobs streamed in each of the two streams (without kills, then the storm).
    jobs: usize,
    kills: usize,
    /// Range of the pause between a kill and the restart, ms.
    pause_ms: (u64, u64),
    /// Restarts of each node with nothing open, for the recovery floor (and again after).
    floor_restarts: usize,
}

impl Sizing {
    fn of(context: &Context) -> Sizing {
        let options = &context.options;
        Sizing {
            jobs: options.pick(100, 1_000),
            kills: options.pick(5, 20),
            pause_ms: options.pick((100, 1_000), (100, 2_500)),
            floor_restarts: options.pick(1, 3),
        }
    }
}

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let sizing = Sizing::of(context);
    let seed = context.options.seed;
    let exe = super::suanli_exe(SCENARIO)?;
    let mut rng = Rng(seed);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(fail)?;
    // Below the ephemeral range: no outgoing connection takes a node's port while it is down.
    let ports = crate::fixtures::loopback_ports::<4>()
        .map_err(|error| fail(format!("loopback ports: {error}")))?;
    let [requester_tcp, requester_api, provider_tcp, provider_api] = ports;
    let mut requester = NodeProcess::new(
        "requester",
        &exe,
        context.workspace.subdir("crash-requester")?,
        requester_tcp,
        requester_api,
    )?;
    requester.start().await?;
    let mut provider = NodeProcess::new(
        "provider",
        &exe,
        context.workspace.subdir("crash-provider")?,
        provider_tcp,
        provider_api,
    )?;
    provider.bootstrap = Some(requester.address());
    provider.start().await?;
    requester.bootstrap = Some(provider.address());
    let mut pair = Pair {
        nodes: [requester, provider],
        ledgers: [Ledger::default(), Ledger::default()],
        http: http.clone(),
    };
    let result = measure(&mut pair, sizing, seed, &mut rng).await;
    pair.stop();
    result.map_err(|error| match error {
        BenchError::Scenario { message, .. } => fail(format!("seed {seed}: {message}")),
        other => other,
    })
}

async fn measure(
    pair: &mut Pair,
    sizing: Sizing,
    seed: u64,
    rng: &mut Rng,
) -> Result<Vec<Figure>, BenchError> {
    pair.wait_for_mesh().await?;
    let bodies = Arc::new(job_bodies(&pair.nodes[PROVIDER].id));
    // Warm-up: both nodes compile every module once and the first placement is made.
    for body in bodies.iter() {
        let id = submit(&pair.http, &pair.nodes[REQUESTER].api(), body).await?;
        follow(&pair.http, &pair.nodes[REQUESTER].api(), &id).await?;
    }

    info!(jobs = sizing.jobs, "crash: the stream without kills");
    let calm = Stream::start(pair, bodies.clone(), rng.next());
    calm.permits.add_permits(sizing.jobs);
    let mut calm_clients = calm.clients(CLIENTS);
    calm.wait_accepted(sizing.jobs as u64).await?;
    calm.permits.close();
    let (calm_ended, _) = pair.drain(&mut calm_clients).await?;
    let calm_window = calm.window()?;
    let calm_rate = pair.settled_rate(calm_window);
    let calm_drain = Duration::from_millis(calm_ended.saturating_sub(calm_window.1));

    let restart_floor = pair
        .restarts_with_nothing_open(sizing.floor_restarts)
        .await?;
    pair.wait_for_mesh().await?;

    info!(
        jobs = sizing.jobs,
        kills = sizing.kills,
        seed,
        "crash: the storm"
    );
    let storm = Stream::start(pair, bodies.clone(), rng.next());
    let mut storm_clients = storm.clients(CLIENTS);
    let kills = pair.storm(&storm, sizing, rng).await?;
    storm.permits.close();
    let (storm_ended, jobs_held) = pair.drain(&mut storm_clients).await?;
    // Jobs the requester accepted but whose answer a kill cut off: the client submitted again.
    let unanswered =
        (jobs_held as u64).saturating_sub(bodies.len() as u64 + calm.accepted() + storm.accepted());
    let storm_window = storm.window()?;
    let storm_rate = pair.settled_rate(storm_window);
    let storm_drain = Duration::from_millis(storm_ended.saturating_sub(storm_window.1));

    let mut broken = pair.check(&[&*calm, &*storm]).await;
    if !broken.is_empty() {
        let count = broken.len();
        broken.truncate(QUOTED);
        return Err(fail(format!(
            "{count} invariants broken after {} kills: {}",
            kills.len(),
            broken.join("; ")
        )));
    }
    let restart_after = pair
        .restarts_with_nothing_open(sizing.floor_restarts)
        .await?;

    let recoveries = Samples::new(kills.iter().map(|kill| kill.took).collect());
    let floor = ms(restart_floor.p50());
    let floor_metric = "restart → ready, same data dir, nothing open (p50)";
    let in_storm = pair.contracts_since(storm_window.0);
    let settled = in_storm.iter().filter(|(_, settled)| *settled).count();
    let entries = pair.ledgers.iter().map(|ledger| ledger.next).max();
    let (succeeded, failed) = storm.outcomes();
    let killed = |role: usize| kills.iter().filter(|kill| kill.victim == role).count();
    let mut figures = vec![
        Figure::against(
            SCENARIO,
            "recovery after a restart p50",
            ms(recoveries.p50()),
            "ms",
            floor,
            floor_metric,
        ),
        Figure::against(
            SCENARIO,
            "recovery after a restart max",
            ms(recoveries.max()),
            "ms",
            floor,
            floor_metric,
        ),
    ];
    for (role, name) in [(REQUESTER, "requester"), (PROVIDER, "provider")] {
        let samples = Samples::new(
            kills
                .iter()
                .filter(|kill| kill.victim == role)
                .map(|kill| kill.took)
                .collect(),
        );
        if !samples.is_empty() {
            figures.push(Figure::against(
                SCENARIO,
                format!("recovery after a {name} restart p50"),
                ms(samples.p50()),
                "ms",
                floor,
                floor_metric,
            ));
        }
    }
    figures.extend([
        Figure::against(
            SCENARIO,
            "storm end → every job final, every contract ended on both sides",
            ms(storm_drain),
            "ms",
            ms(calm_drain),
            "the same after the same stream without kills",
        ),
        Figure::against(
            SCENARIO,
            "settled jobs/s during the storm",
            storm_rate,
            "jobs/s",
            calm_rate,
            "the same stream without kills",
        ),
        Figure::plain(
            SCENARIO,
            format!(
                "restart → ready after the storm, ledgers of {} entries (p50)",
                entries.unwrap_or(0)
            ),
            ms(restart_after.p50()),
            "ms",
        ),
        Figure::plain(
            SCENARIO,
            "jobs streamed in the storm",
            storm.accepted() as f64,
            "jobs",
        ),
        Figure::plain(
            SCENARIO,
            "contracts made in the storm",
            in_storm.len() as f64,
            "contracts",
        ),
        Figure::plain(SCENARIO, "contracts settled", settled as f64, "contracts"),
        Figure::plain(
            SCENARIO,
            "contracts ended by a failure",
            (in_storm.len() - settled) as f64,
            "contracts",
        ),
        Figure::plain(
            SCENARIO,
            "submissions accepted whose answer a kill cut off (submitted again)",
            unanswered as f64,
            "jobs",
        ),
        Figure::plain(SCENARIO, "jobs succeeded", succeeded as f64, "jobs"),
        Figure::plain(SCENARIO, "jobs failed", failed as f64, "jobs"),
        Figure::plain(
            SCENARIO,
            "kills of the requester",
            killed(REQUESTER) as f64,
            "kills",
        ),
        Figure::plain(
            SCENARIO,
            "kills of the provider",
            killed(PROVIDER) as f64,
            "kills",
        ),
        Figure::plain(
            SCENARIO,
            "contracts open at the kills (sum)",
            kills.iter().map(|kill| kill.open).sum::<usize>() as f64,
            "contracts",
        ),
    ]);
    Ok(figures)
}

/// The jobs streamed, each pinned to the provider (an unpinned job that finds its only
/// provider unreachable waits out the placement timeout before failing; a pinned one asks again
/// while the provider restarts): mostly short ones, and runs of a few hundred ms that kills
/// often land in the middle of.
fn job_bodies(provider: &str) -> Vec<Value> {
    let limits = json!({ "fuel": 10_000_000_000u64, "timeout_ms": JOB_TIMEOUT_MS });
    let placement = json!({ "provider": provider });
    [super::HELLO_WAT, FIB_WAT, COUNT_WAT]
        .into_iter()
        .map(|module| json!({ "module_wat": module, "limits": limits, "placement": placement }))
        .collect()
}

const FIB_WAT: &str = include_str!("../../../examples/jobs/fib.wat");
/// Counts to 300 million (2.7 billion fuel: about 0.3 s here), then prints "done".
const COUNT_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "done\n")
  (func (export "_start") (local $i i64)
    (block $out (loop $again
      (br_if $out (i64.ge_u (local.get $i) (i64.const 300000000)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $again)))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Which body the next job gets: 6 in 10 hello, 3 fib, 1 count.
fn pick_body(rng: &mut Rng) -> usize {
    match rng.next() % 10 {
        0 => 2,
        1..=3 => 1,
        _ => 0,
    }
}

/// A small deterministic generator (splitmix64): the same seed gives the same kill points,
/// victims, pauses and job mix (not the same timings: the processes are real).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (`low` when the range is empty).
    fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next() % (high - low + 1)
    }
}

const REQUESTER: usize = 0;
const PROVIDER: usize = 1;

/// When a node was spawned and how long it took to be ready.
#[derive(Debug, Clone, Copy)]
struct Started {
    /// Wall clock, ms (compared with ledger timestamps).
    spawned_ms: u64,
    ready: Duration,
}

impl Started {
    fn ready_ms(&self) -> u64 {
        self.spawned_ms + self.ready.as_millis() as u64
    }
}

/// One `suanli run` child, restartable on the same data dir and ports. Dropping it kills and
/// reaps the child.
#[derive(Debug)]
struct NodeProcess {
    role: &'static str,
    exe: PathBuf,
    dir: PathBuf,
    tcp_port: u16,
    api_port: u16,
    bootstrap: Option<String>,
    child: Option<std::process::Child>,
    id: String,
}

impl NodeProcess {
    fn new(
        role: &'static str,
        exe: &Path,
        dir: PathBuf,
        tcp_port: u16,
        api_port: u16,
    ) -> Result<NodeProcess, BenchError> {
        std::fs::write(dir.join("config.toml"), CONFIG).map_err(BenchError::Workspace)?;
        Ok(NodeProcess {
            role,
            exe: exe.to_owned(),
            dir,
            tcp_port,
            api_port,
            bootstrap: None,
            child: None,
            id: String::new(),
        })
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn address(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.tcp_port, self.id)
    }

    /// Spawns the node and waits for its `run.json` (written once its API listens). The previous
    /// process must have been killed: two nodes on one data dir and ports are a bug of the run.
    async fn start(&mut self) -> Result<Started, BenchError> {
        if self.child.is_some() {
            return Err(fail(format!(
                "start the {}: its previous process was not killed",
                self.role
            )));
        }
        let run_info = self.dir.join("run.json");
        // A killed node leaves its run.json behind; the pid below tells the new one apart too.
        let _ = std::fs::remove_file(&run_info);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .map_err(BenchError::Workspace)?;
        let mut command = std::process::Command::new(&self.exe);
        command
            .arg("run")
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(format!("/ip4/127.0.0.1/tcp/{}", self.tcp_port))
            .arg("--api")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .env_remove("SUANLI_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(bootstrap) = &self.bootstrap {
            command.arg("--bootstrap").arg(bootstrap);
        }
        let spawned_ms = now_ms();
        let spawned = Instant::now();
        let child = command
            .spawn()
            .map_err(|error| fail(format!("spawn the {}: {error}", self.role)))?;
        let pid = child.id();
        self.child = Some(child);
        loop {
            if let Ok(text) = std::fs::read_to_string(&run_info)
                && let Ok(info) = serde_json::from_str::<RunInfo>(&text)
                && info.pid == pid
            {
                let ready = spawned.elapsed();
                self.id = info.node_id;
                return Ok(Started { spawned_ms, ready });
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(fail(format!(
                    "the {} exited while starting ({status}); its log ends: {}",
                    self.role,
                    self.log_tail()
                )));
            }
            if spawned.elapsed() > READY_LIMIT {
                return Err(fail(format!(
                    "the {} was not ready {READY_LIMIT:?} after being spawned; its log ends: {}",
                    self.role,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills the node with SIGKILL and reaps it. A node that already exited by itself is a
    /// failure of the run.
    fn kill(&mut self) -> Result<(), BenchError> {
        let Some(mut child) = self.child.take() else {
            return Err(fail(format!("the {} is not running", self.role)));
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!(
                "the {} exited by itself ({status}); its log ends: {}",
                self.role,
                self.log_tail()
            )));
        }
        // std's `kill` is SIGKILL: the process exits at once, so the blocking wait is brief.
        child.kill().map_err(fail)?;
        child.wait().map_err(fail)?;
        Ok(())
    }

    /// The last warnings and errors of the node's log (its stderr), for failure messages.
    fn log_tail(&self) -> String {
        let mut tail = Vec::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.join("node.log")) {
            let length = file.metadata().map_or(0, |meta| meta.len());
            let _ = file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)));
            let _ = file.read_to_end(&mut tail);
        }
        let tail = String::from_utf8_lossy(&tail);
        let lines: Vec<&str> = tail
            .lines()
            .rev()
            .filter(|line| {
                line.contains("WARN") || line.contains("ERROR") || line.starts_with("error:")
            })
            .take(4)
            .collect();
        if lines.is_empty() {
            return "(no warnings)".into();
        }
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Both nodes' last warnings, for failure messages.
    fn logs(nodes: &[NodeProcess]) -> String {
        nodes
            .iter()
            .map(|node| format!("the {}'s log: {}", node.role, node.log_tail()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // A SIGKILLed process exits at once; reaping it here (blocking, briefly) makes sure
            // it writes nothing more into the workspace that is removed next.
            let _ = child.wait();
        }
    }
}

/// What one ledger holds of one contract.
#[derive(Debug, Default, Clone)]
struct Held {
    /// Entry kind → how many entries of that kind.
    kinds: BTreeMap<&'static str, u32>,
    /// Timestamp of its first entry.
    first_ms: u64,
    /// Timestamp of its first settlement or failure.
    ended_ms: Option<u64>,
    /// The job it is for (named by its contract, receipt and failure entries).
    job: Option<JobId>,
    /// The output hash its first receipt names, if that receipt is of a successful run.
    receipt_output: Option<Hash32>,
}

impl Held {
    fn ended(&self) -> bool {
        self.kinds.contains_key("settlement") != self.kinds.contains_key("failure")
    }

    fn settled(&self) -> bool {
        self.kinds.contains_key("settlement")
    }

    fn ended_by(&self, at_ms: u64) -> bool {
        self.ended_ms.is_some_and(|ended| ended <= at_ms)
    }
}

/// The output hash a receipt entry names, read from its stored bytes (the entry view does not
/// show it); `None` for a failed run or bytes that do not decode.
fn receipt_output(entry: &EntryView) -> Option<Hash32> {
    let raw = BASE64.decode(&entry.raw_base64).ok()?;
    let EntryBody::Receipt(receipt) = LedgerEntry::decode(&raw).ok()?.body else {
        return None;
    };
    match receipt.decode_unverified().ok()?.outcome {
        Outcome::Succeeded { output_hash, .. } => Some(output_hash),
        Outcome::Failed { .. } => None,
    }
}

/// One node's ledger as read so far through its API (it only serves durable entries, and only
/// grows).
#[derive(Debug, Default)]
struct Ledger {
    /// Entries read.
    next: u64,
    /// The hash of the last entry read (`None` before the first).
    last_hash: Option<Hash32>,
    contracts: HashMap<ContractId, Held>,
    /// Broken expectations (an entry lost or replaced).
    broken: Vec<String>,
}

impl Ledger {
    /// Reads the entries appended since the last call.
    async fn refresh(&mut self, http: &reqwest::Client, api: &str) -> Result<(), String> {
        const PAGE: usize = 1024;
        loop {
            let page: EntriesPage = get(
                http,
                &format!("{api}/v1/ledger?from={}&limit={PAGE}", self.next),
            )
            .await?;
            if page.size < self.next {
                self.broken.push(format!(
                    "{api}'s ledger shrank from {} to {} entries",
                    self.next, page.size
                ));
                self.next = page.size;
            }
            for entry in &page.entries {
                if entry.index != self.next {
                    return Err(format!(
                        "{api} served entry {} where {} was expected",
                        entry.index, self.next
                    ));
                }
                if let Some(last) = self.last_hash
                    && entry.prev_hash != last.to_string()
                {
                    self.broken.push(format!(
                        "{api}'s entry {} does not follow the entry served before it",
                        entry.index
                    ));
                }
                self.last_hash = Some(entry.hash);
                self.next += 1;
                self.record(entry);
            }
            // The page's entries are read before its head: when they reach its size, the last
            // one read must be its head. A tail rewritten in place (the same size, other
            // entries) shows only here. Reported once: the rewritten head is followed from now.
            if page.size == self.next
                && let Some(last) = self.last_hash
                && page.head != last
            {
                self.broken.push(format!(
                    "{api}'s head at {} entries is {}, not the entry {last} served before",
                    page.size, page.head
                ));
                self.last_hash = Some(page.head);
            }
            if page.entries.len() < PAGE {
                return Ok(());
            }
        }
    }

    /// Adds one entry to what the ledger holds of its contract.
    fn record(&mut self, entry: &EntryView) {
        let Some(contract) = entry.contract_id else {
            return;
        };
        let held = self.contracts.entry(contract).or_insert_with(|| Held {
            first_ms: entry.timestamp_ms,
            ..Held::default()
        });
        *held.kinds.entry(entry.kind.name()).or_default() += 1;
        if let Some(job) = entry.job_id {
            held.job.get_or_insert(job);
        }
        match entry.kind {
            EntryKind::Receipt if held.receipt_output.is_none() => {
                held.receipt_output = receipt_output(entry);
            }
            EntryKind::Settlement | EntryKind::Failure if held.ended_ms.is_none() => {
                held.ended_ms = Some(entry.timestamp_ms);
            }
            _ => {}
        }
    }

    /// The contracts this ledger held open at `at_ms`: begun by then and not ended by then.
    fn open_at(&self, at_ms: u64) -> impl Iterator<Item = ContractId> + '_ {
        self.contracts
            .iter()
            .filter(move |(_, held)| held.first_ms <= at_ms && !held.ended_by(at_ms))
            .map(|(id, _)| *id)
    }

    /// The contracts settled for each job.
    fn settled_by_job(&self) -> HashMap<JobId, Vec<(ContractId, &Held)>> {
        let mut settled: HashMap<JobId, Vec<(ContractId, &Held)>> = HashMap::new();
        for (id, held) in &self.contracts {
            if let (true, Some(job)) = (held.settled(), held.job) {
                settled.entry(job).or_default().push((*id, held));
            }
        }
        settled
    }
}

/// One kill and what followed.
#[derive(Debug)]
struct Kill {
    victim: usize,
    /// Contracts either side held open at the kill.
    open: usize,
    /// Spawn → every one of them ended on both sides (or ready, if later).
    took: Duration,
}

/// The two nodes and what the run read of their ledgers.
#[derive(Debug)]
struct Pair {
    nodes: [NodeProcess; 2],
    ledgers: [Ledger; 2],
    http: reqwest::Client,
}

impl Pair {
    async fn wait_for_mesh(&self) -> Result<(), BenchError> {
        let started = Instant::now();
        let provider = &self.nodes[PROVIDER].id;
        let url = format!("{}/v1/mesh", self.nodes[REQUESTER].api());
        loop {
            if let Ok(mesh) = get::<Vec<MeshNodeView>>(&self.http, &url).await
                && mesh
                    .iter()
                    .any(|node| node.node_id.to_string() == *provider)
            {
                return Ok(());
            }
            if started.elapsed() > READY_LIMIT {
                return Err(fail(format!(
                    "the requester did not see the provider's advert within {READY_LIMIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads what both ledgers appended since the last call; a node that does not answer is
    /// read next time.
    async fn refresh(&mut self) {
        for side in [REQUESTER, PROVIDER] {
            let api = self.nodes[side].api();
            if let Err(error) = self.ledgers[side].refresh(&self.http, &api).await {
                warn!(%error, role = self.nodes[side].role, "crash: ledger not read");
            }
        }
    }

    /// When `contract` has ended on both sides: the later of its two endings.
    fn ended_on_both(&self, contract: &ContractId) -> Option<u64> {
        let [requester, provider] = &self.ledgers;
        let (ours, theirs) = (
            requester.contracts.get(contract)?,
            provider.contracts.get(contract)?,
        );
        if !(ours.ended() && theirs.ended()) {
            return None;
        }
        Some(ours.ended_ms?.max(theirs.ended_ms?))
    }

    /// Every contract either ledger holds, and whether it ended on both sides.
    fn all_contracts(&self) -> BTreeMap<ContractId, Option<u64>> {
        self.ledgers
            .iter()
            .flat_map(|ledger| ledger.contracts.keys())
            .map(|id| (*id, self.ended_on_both(id)))
            .collect()
    }

    /// Contracts whose first entry (on either side) is at or after `from_ms`, each with whether
    /// it settled (on the requester's side).
    fn contracts_since(&self, from_ms: u64) -> Vec<(ContractId, bool)> {
        let mut first: BTreeMap<ContractId, u64> = BTreeMap::new();
        for ledger in &self.ledgers {
            for (id, held) in &ledger.contracts {
                let at = first.entry(*id).or_insert(held.first_ms);
                *at = (*at).min(held.first_ms);
            }
        }
        first
            .into_iter()
            .filter(|(_, at)| *at >= from_ms)
            .map(|(id, _)| {
                let settled = self.ledgers[REQUESTER]
                    .contracts
                    .get(&id)
                    .is_some_and(Held::settled);
                (id, settled)
            })
            .collect()
    }

    /// Settlements the requester recorded within `(from, to)` (ms), per second.
    fn settled_rate(&self, (from, to): (u64, u64)) -> f64 {
        let settled = self.ledgers[REQUESTER]
            .contracts
            .values()
            .filter(|held| held.settled())
            .filter(|held| held.ended_ms.is_some_and(|at| at >= from && at <= to))
            .count();
        settled as f64 / (to.saturating_sub(from).max(1) as f64 / 1e3)
    }

    /// Kills the node `victim`, restarts it after `pause` and waits until it recovered.
    async fn kill_and_recover(
        &mut self,
        victim: usize,
        pause: Duration,
    ) -> Result<Kill, BenchError> {
        self.nodes[victim].kill()?;
        // Taken once the process is reaped: everything it made durable is stamped before this.
        let killed_ms = now_ms();
        tokio::time::sleep(pause).await;
        let started = self.nodes[victim].start().await?;
        // Both ledgers as they were at the kill: what each holds that is stamped by then. The
        // survivor's too: a contract the provider made durable before answering Countersigned,
        // the requester killed in between, is on the provider's side only (and ends at its
        // deadline at the latest).
        for side in [REQUESTER, PROVIDER] {
            let api = self.nodes[side].api();
            self.ledgers[side]
                .refresh(&self.http, &api)
                .await
                .map_err(|error| {
                    fail(format!(
                        "read the {}'s ledger after the restart: {error}",
                        self.nodes[side].role
                    ))
                })?;
        }
        let open: BTreeSet<ContractId> = self
            .ledgers
            .iter()
            .flat_map(|ledger| ledger.open_at(killed_ms))
            .collect();
        let deadline = Instant::now() + RECOVERY_LIMIT;
        let mut last_end = 0;
        let mut pending: Vec<ContractId> = open.iter().copied().collect();
        loop {
            pending.retain(|id| match self.ended_on_both(id) {
                Some(at) => {
                    last_end = last_end.max(at);
                    false
                }
                None => true,
            });
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "{} of the {} contracts open at the {}'s kill still open on one side \
                     {RECOVERY_LIMIT:?} after its restart: {}; {}",
                    pending.len(),
                    open.len(),
                    self.nodes[victim].role,
                    self.describe(&pending),
                    NodeProcess::logs(&self.nodes)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.refresh().await;
        }
        let took = last_end
            .max(started.ready_ms())
            .saturating_sub(started.spawned_ms);
        info!(
            victim = self.nodes[victim].role,
            open = open.len(),
            ready_ms = started.ready.as_millis() as u64,
            recovered_ms = took,
            "crash: recovered"
        );
        Ok(Kill {
            victim,
            open: open.len(),
            took: Duration::from_millis(took),
        })
    }

    /// What each side holds of some contracts, for a failure message.
    fn describe(&self, ids: &[ContractId]) -> String {
        ids.iter()
            .take(QUOTED)
            .map(|id| {
                let side = |ledger: &Ledger| {
                    ledger
                        .contracts
                        .get(id)
                        .map_or("nothing".to_owned(), |held| format!("{:?}", held.kinds))
                };
                format!(
                    "{id} (requester {}, provider {})",
                    side(&self.ledgers[REQUESTER]),
                    side(&self.ledgers[PROVIDER])
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The storm: `sizing.kills` rounds of `jobs / kills` jobs each; in each round one node is
    /// killed after a random number of the round's jobs were accepted.
    async fn storm(
        &mut self,
        stream: &Stream,
        sizing: Sizing,
        rng: &mut Rng,
    ) -> Result<Vec<Kill>, BenchError> {
        let (jobs, rounds) = (sizing.jobs as u64, sizing.kills.max(1) as u64);
        let mut kills: Vec<Kill> = Vec::with_capacity(sizing.kills);
        for round in 0..rounds {
            let (first, end) = (jobs * round / rounds, jobs * (round + 1) / rounds);
            stream.permits.add_permits((end - first) as usize);
            let kill_after = rng.between(first + 1, end.saturating_sub(1));
            stream.wait_accepted(kill_after).await?;
            // Not always right after a submission: into a run, a receipt, a settlement.
            tokio::time::sleep(Duration::from_millis(rng.between(0, 300))).await;
            let mut victim = (rng.next() % 2) as usize;
            // Both sides die at least once.
            if round + 1 == rounds && kills.iter().all(|kill| kill.victim == victim) {
                victim = 1 - victim;
            }
            let pause = Duration::from_millis(rng.between(sizing.pause_ms.0, sizing.pause_ms.1));
            kills.push(self.kill_and_recover(victim, pause).await?);
            stream.wait_accepted(end).await?;
        }
        Ok(kills)
    }

    /// Waits until the stream's clients are done, every job on the requester is final and every
    /// contract has ended on both sides; returns when that happened (ms: the latest ending or
    /// job update) and how many jobs the requester holds.
    async fn drain(&mut self, clients: &mut JoinSet<()>) -> Result<(u64, usize), BenchError> {
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            while let Some(joined) = clients.try_join_next() {
                joined.map_err(fail)?;
            }
            self.refresh().await;
            let contracts = self.all_contracts();
            let open: Vec<ContractId> = contracts
                .iter()
                .filter(|(_, ended)| ended.is_none())
                .map(|(id, _)| *id)
                .collect();
            // What still blocks the drain, for the message if it never ends. The jobs are listed
            // only once clients and contracts are done.
            let blocking = if !clients.is_empty() {
                format!("{} clients still following jobs", clients.len())
            } else if !open.is_empty() {
                format!(
                    "{} contracts not ended on both sides: {}",
                    open.len(),
                    self.describe(&open)
                )
            } else {
                match list_jobs(&self.http, &self.nodes[REQUESTER].api()).await {
                    Err(error) => format!("the requester's jobs not listed: {error}"),
                    Ok(jobs) if jobs.is_empty() => "the requester lists no jobs".to_owned(),
                    Ok(jobs) => {
                        let unfinished: Vec<String> = jobs
                            .iter()
                            .filter(|job| !job.state.is_final())
                            .map(|job| job.job_id.to_string())
                            .collect();
                        if unfinished.is_empty() {
                            let last_update = jobs.iter().map(|job| job.updated_at_ms).max();
                            let last_end = contracts.values().filter_map(|ended| *ended).max();
                            return Ok((
                                last_end.unwrap_or(0).max(last_update.unwrap_or(0)),
                                jobs.len(),
                            ));
                        }
                        format!(
                            "{} jobs not final: {:?}",
                            unfinished.len(),
                            &unfinished[..unfinished.len().min(QUOTED)]
                        )
                    }
                }
            };
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "{DRAIN_LIMIT:?} after the stream: {blocking}; {}",
                    NodeProcess::logs(&self.nodes)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Restarts each node `rounds` times with nothing open (SIGKILL, then at once); how long each
    /// took to be ready.
    async fn restarts_with_nothing_open(&mut self, rounds: usize) -> Result<Samples, BenchError> {
        let mut samples = Vec::with_capacity(rounds * 2);
        for _ in 0..rounds {
            for side in [REQUESTER, PROVIDER] {
                self.nodes[side].kill()?;
                samples.push(self.nodes[side].start().await?.ready);
            }
        }
        Ok(Samples::new(samples))
    }

    /// The invariants of the `crash` integration test; returns what is broken.
    async fn check(&mut self, streams: &[&Stream]) -> Vec<String> {
        let mut broken = Vec::new();
        self.refresh().await;
        for ledger in &self.ledgers {
            broken.extend(ledger.broken.iter().cloned());
        }
        for stream in streams {
            broken.extend(stream.broken.lock().map(|b| b.clone()).unwrap_or_default());
        }
        // Every contract ended exactly once on each side, the same way, with the same receipt.
        let [requester, provider] = &self.ledgers;
        let ids: BTreeSet<&ContractId> = requester
            .contracts
            .keys()
            .chain(provider.contracts.keys())
            .collect();
        if ids.is_empty() {
            broken.push("no contract was made".into());
        }
        for id in ids {
            let (Some(ours), Some(theirs)) =
                (requester.contracts.get(id), provider.contracts.get(id))
            else {
                broken.push(format!(
                    "{id} is on one side only: {}",
                    self.describe(std::slice::from_ref(id))
                ));
                continue;
            };
            for (role, held) in [("requester", ours), ("provider", theirs)] {
                if held.kinds.values().any(|count| *count != 1) {
                    broken.push(format!(
                        "{id} recorded twice by the {role}: {:?}",
                        held.kinds
                    ));
                }
                if !held.ended() {
                    broken.push(format!(
                        "{id} not ended exactly once by the {role}: {:?}",
                        held.kinds
                    ));
                }
            }
            if ours.settled() != theirs.settled() {
                broken.push(format!(
                    "{id} ended differently: requester {:?}, provider {:?}",
                    ours.kinds, theirs.kinds
                ));
            }
            if ours.kinds.contains_key("receipt") != theirs.kinds.contains_key("receipt") {
                broken.push(format!(
                    "{id}: a receipt on one side only: requester {:?}, provider {:?}",
                    ours.kinds, theirs.kinds
                ));
            }
        }
        // A job is settled at most once.
        let settled = [
            ("requester", requester.settled_by_job()),
            ("provider", provider.settled_by_job()),
        ];
        for (role, by_job) in &settled {
            for (job, contracts) in by_job {
                if contracts.len() > 1 {
                    let ids: Vec<String> = contracts.iter().map(|(id, _)| id.to_string()).collect();
                    broken.push(format!(
                        "job {job} settled {} times in the {role}'s ledger: {ids:?}",
                        contracts.len()
                    ));
                }
            }
        }
        let http = self.http.clone();
        let api = self.nodes[REQUESTER].api();
        // A job that succeeded was paid for exactly once on each side, and the receipt paid for
        // names the output the requester serves.
        match list_jobs(&http, &api).await {
            Ok(jobs) => {
                for job in jobs.iter().filter(|job| job.state == JobState::Succeeded) {
                    let id = job.job_id;
                    for (role, by_job) in &settled {
                        let contracts = by_job.get(&id).map_or(&[][..], Vec::as_slice);
                        let [(contract, held)] = contracts else {
                            broken.push(format!(
                                "{id} succeeded with {} settled contracts in the {role}'s ledger",
                                contracts.len()
                            ));
                            continue;
                        };
                        if job.contract_id != Some(*contract) {
                            broken.push(format!(
                                "{id} succeeded under contract {:?}; the {role} settled {contract}",
                                job.contract_id
                            ));
                        }
                        if job.output_hash.is_none() || held.receipt_output != job.output_hash {
                            broken.push(format!(
                                "{id}'s output hash is {:?}; the receipt the {role} settled names \
                                 {:?}",
                                job.output_hash, held.receipt_output
                            ));
                        }
                    }
                }
            }
            Err(error) => broken.push(format!("the requester's jobs: {error}")),
        }
        let slow = Duration::from_secs(300);
        // Both ledgers verify.
        for node in &self.nodes {
            let url = format!("{}/v1/ledger/verify", node.api());
            match get_slow::<VerifyReport>(&http, &url, slow).await {
                Ok(report) if report.ok => {}
                Ok(report) => broken.push(format!(
                    "the {}'s ledger does not verify: {:?}",
                    node.role, report.error
                )),
                Err(error) => broken.push(format!("verify the {}'s ledger: {error}", node.role)),
            }
        }
        // Balances equal and opposite.
        let [requester, provider] = &self.nodes;
        let owed_to_provider = balance(&http, &provider.api(), &requester.id).await;
        let owed_by_requester = balance(&http, &requester.api(), &provider.id).await;
        match (owed_to_provider, owed_by_requester) {
            (Ok(to), Ok(by)) if to != -by => broken.push(format!(
                "balances differ: the provider is owed {to}, the requester's side says {by}"
            )),
            (Ok(to), Ok(_)) if to <= 0 => broken.push(format!("no job was paid (balance {to})")),
            (Ok(_), Ok(_)) => {}
            (Err(error), _) | (_, Err(error)) => broken.push(format!("balances: {error}")),
        }
        // Audits both ways find nothing missing.
        for (auditor, peer) in [(requester, provider), (provider, requester)] {
            let url = format!("{}/v1/ledger/audit?peer={}", auditor.api(), peer.id);
            match get_slow::<AuditReport>(&http, &url, slow).await {
                Ok(report) if report.discrepancies == 0 => {}
                Ok(report) => broken.push(format!(
                    "the {}'s audit of the {}: {} discrepancies ({:?})",
                    auditor.role,
                    peer.role,
                    report.discrepancies,
                    report
                        .discrepancy_list
                        .iter()
                        .take(QUOTED)
                        .collect::<Vec<_>>()
                )),
                Err(error) => broken.push(format!("the {}'s audit: {error}", auditor.role)),
            }
        }
        // Every job seen succeeded still is, with the same output.
        for stream in streams {
            let seen: Vec<(JobId, Vec<u8>)> = stream
                .succeeded
                .lock()
                .map(|seen| seen.clone())
                .unwrap_or_default();
            for (id, output) in seen {
                match get::<JobView>(&http, &format!("{api}/v1/jobs/{id}")).await {
                    Ok(job) if job.state != JobState::Succeeded => {
                        broken.push(format!("{id} was seen succeeded, now {:?}", job.state));
                    }
                    Ok(job) if job.output_hash != Some(Hash32::of(&output)) => broken.push(
                        format!("{id}'s output hash is not the hash of the output seen"),
                    ),
                    Ok(_) => {}
                    Err(error) => broken.push(format!("{id} was seen succeeded, now: {error}")),
                }
                match get_bytes(&http, &format!("{api}/v1/jobs/{id}/output")).await {
                    Ok(now) if now == output => {}
                    Ok(_) => broken.push(format!("{id}'s output changed")),
                    Err(error) => broken.push(format!("{id}'s output: {error}")),
                }
            }
        }
        broken
    }

    /// Stops both nodes (SIGKILL: nothing is open any more, and a clean stop is not measured).
    fn stop(&mut self) {
        for node in &mut self.nodes {
            if node.child.is_some() {
                let _ = node.kill();
            }
        }
    }
}

/// Jobs streamed by concurrent clients, as many as permits are added.
#[derive(Debug)]
struct Stream {
    http: reqwest::Client,
    api: String,
    bodies: Arc<Vec<Value>>,
    mix: Mutex<Rng>,
    /// One per job still to submit; closed when the stream ends.
    permits: Semaphore,
    accepted: watch::Sender<u64>,
    /// Clients still running.
    live: AtomicU64,
    first_accepted_ms: AtomicU64,
    last_accepted_ms: AtomicU64,
    /// Jobs seen `succeeded`, with the output they had then.
    succeeded: Mutex<Vec<(JobId, Vec<u8>)>>,
    failed: AtomicU64,
    broken: Mutex<Vec<String>>,
}

impl Stream {
    fn start(pair: &Pair, bodies: Arc<Vec<Value>>, seed: u64) -> Arc<Stream> {
        Arc::new(Stream {
            http: pair.http.clone(),
            api: pair.nodes[REQUESTER].api(),
            bodies,
            mix: Mutex::new(Rng(seed)),
            permits: Semaphore::new(0),
            accepted: watch::Sender::new(0),
            live: AtomicU64::new(0),
            first_accepted_ms: AtomicU64::new(0),
            last_accepted_ms: AtomicU64::new(0),
            succeeded: Mutex::new(Vec::new()),
            failed: AtomicU64::new(0),
            broken: Mutex::new(Vec::new()),
        })
    }

    fn clients(self: &Arc<Stream>, count: usize) -> JoinSet<()> {
        let mut clients = JoinSet::new();
        for _ in 0..count {
            let stream = self.clone();
            stream.live.fetch_add(1, Ordering::Relaxed);
            clients.spawn(async move {
                if let Err(error) = stream.client().await {
                    stream.break_with(error.to_string());
                }
                stream.live.fetch_sub(1, Ordering::Relaxed);
                // Wakes `wait_accepted`, which gives up once no client is left.
                stream.accepted.send_modify(|_| {});
            });
        }
        clients
    }

    /// One client: takes a permit, submits a job until the requester accepts it, follows it
    /// until it is final; again, until the permits are closed.
    async fn client(&self) -> Result<(), BenchError> {
        while let Ok(permit) = self.permits.acquire().await {
            permit.forget();
            let body = {
                let mut mix = self.mix.lock().map_err(|_| fail("job mix poisoned"))?;
                pick_body(&mut mix)
            };
            let Some(body) = self.bodies.get(body) else {
                continue;
            };
            let id = submit(&self.http, &self.api, body).await?;
            let at = now_ms();
            let _ = self.first_accepted_ms.compare_exchange(
                0,
                at,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.last_accepted_ms.fetch_max(at, Ordering::Relaxed);
            self.accepted.send_modify(|accepted| *accepted += 1);
            let job = follow(&self.http, &self.api, &id).await?;
            if job.state == JobState::Succeeded {
                let output = loop {
                    match get_bytes(&self.http, &format!("{}/v1/jobs/{id}/output", self.api)).await
                    {
                        Ok(output) => break output,
                        Err(Fetch::Down(_)) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(error) => {
                            return Err(fail(format!("the output of succeeded job {id}: {error}")));
                        }
                    }
                };
                if let Ok(mut succeeded) = self.succeeded.lock() {
                    succeeded.push((id, output));
                }
            } else {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn break_with(&self, what: String) {
        if let Ok(mut broken) = self.broken.lock() {
            broken.push(what);
        }
    }

    /// Waits until `count` jobs were accepted. A stream that stopped (every client gone, each
    /// with what it ran into) fails.
    async fn wait_accepted(&self, count: u64) -> Result<(), BenchError> {
        let mut accepted = self.accepted.subscribe();
        // The value seen is copied out: the watch's borrow must not be held past the wait.
        let waited = tokio::time::timeout(SUBMIT_LIMIT + DRAIN_LIMIT, async {
            accepted
                .wait_for(|accepted| *accepted >= count || self.live.load(Ordering::Relaxed) == 0)
                .await
                .map(|seen| *seen)
        })
        .await;
        match waited {
            Ok(Ok(accepted)) if accepted >= count => Ok(()),
            _ => Err(fail(format!(
                "the stream stopped at {} of {count} jobs: {:?}",
                self.accepted(),
                self.broken.lock().map(|b| b.clone()).unwrap_or_default()
            ))),
        }
    }

    fn accepted(&self) -> u64 {
        *self.accepted.borrow()
    }

    /// First and last acceptance (ms).
    fn window(&self) -> Result<(u64, u64), BenchError> {
        let first = self.first_accepted_ms.load(Ordering::Relaxed);
        let last = self.last_accepted_ms.load(Ordering::Relaxed);
        if first == 0 {
            return Err(fail("no job was accepted"));
        }
        Ok((first, last))
    }

    /// (succeeded, failed) jobs of the stream.
    fn outcomes(&self) -> (usize, u64) {
        let succeeded = self.succeeded.lock().map_or(0, |seen| seen.len());
        (succeeded, self.failed.load(Ordering::Relaxed))
    }
}

/// Why a read failed.
#[derive(Debug)]
enum Fetch {
    /// No answer: the node is down (killed) or restarting.
    Down(String),
    Status(StatusCode, String),
    /// An answer that is not the API type expected.
    Malformed(String),
}

impl fmt::Display for Fetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fetch::Down(error) => write!(f, "no answer: {error}"),
            Fetch::Status(status, body) => write!(f, "{status}: {body}"),
            Fetch::Malformed(error) => write!(f, "malformed answer: {error}"),
        }
    }
}

async fn fetch(request: reqwest::RequestBuilder) -> Result<reqwest::Response, Fetch> {
    let response = request
        .send()
        .await
        .map_err(|error| Fetch::Down(error.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(Fetch::Status(status, body.chars().take(300).collect()))
}

async fn get_json<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T, Fetch> {
    // A body cut off by a kill is no answer; a whole body of the wrong shape is a bug.
    let body = fetch(request)
        .await?
        .bytes()
        .await
        .map_err(|error| Fetch::Down(error.to_string()))?;
    serde_json::from_slice(&body).map_err(|error| Fetch::Malformed(error.to_string()))
}

async fn get<T: DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T, String> {
    get_json(http.get(url))
        .await
        .map_err(|error| error.to_string())
}

async fn get_slow<T: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
) -> Result<T, String> {
    get_json(http.get(url).timeout(limit))
        .await
        .map_err(|error| error.to_string())
}

async fn get_bytes(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, Fetch> {
    let response = fetch(http.get(url)).await?;
    response
        .bytes()
        .await
        .map(|bytes| bytes.to_vec())
        .map_err(|error| Fetch::Down(error.to_string()))
}

/// Submits `body` until the requester accepts it (it may be down, restarting or busy); returns
/// the job id.
async fn submit(http: &reqwest::Client, api: &str, body: &Value) -> Result<JobId, BenchError> {
    let started = Instant::now();
    loop {
        let answer = get_json::<SubmitResponse>(http.post(format!("{api}/v1/jobs")).json(body));
        let last = match answer.await {
            Ok(answer) => return Ok(answer.job_id),
            Err(Fetch::Status(status, body)) if status.is_client_error() => {
                return Err(fail(format!("submission refused: {status}: {body}")));
            }
            Err(error @ Fetch::Malformed(_)) => {
                return Err(fail(format!("submission answered: {error}")));
            }
            // Down, restarting, or busy (5xx): again shortly. A submission whose answer was lost
            // with a kill may have been accepted: the job then runs without being followed here,
            // and is checked with every other at the end.
            Err(error) => error,
        };
        if started.elapsed() > SUBMIT_LIMIT {
            return Err(fail(format!(
                "no submission accepted for {SUBMIT_LIMIT:?}: {last}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Long-polls job `id` until it is final; the requester may be down for a while.
async fn follow(http: &reqwest::Client, api: &str, id: &JobId) -> Result<JobView, BenchError> {
    let started = Instant::now();
    loop {
        match get_json::<JobView>(http.get(format!("{api}/v1/jobs/{id}?wait_ms=3000"))).await {
            Ok(job) if job.state.is_final() => return Ok(job),
            Ok(_) => {}
            Err(Fetch::Down(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(error) => return Err(fail(format!("accepted job {id}: {error}"))),
        }
        if started.elapsed() > SUBMIT_LIMIT + DRAIN_LIMIT {
            return Err(fail(format!(
                "job {id} not final after {:?}",
                started.elapsed()
            )));
        }
    }
}

/// Every job the requester holds.
async fn list_jobs(http: &reqwest::Client, api: &str) -> Result<Vec<JobView>, String> {
    let mut jobs = Vec::new();
    let mut after: Option<JobId> = None;
    loop {
        let url = match &after {
            Some(after) => format!("{api}/v1/jobs?limit=1000&after={after}"),
            None => format!("{api}/v1/jobs?limit=1000"),
        };
        let page: JobPage = get(http, &url).await?;
        jobs.extend(page.jobs);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(jobs),
        }
    }
}

/// What `peer` owes the node at `api` according to its ledger, micro-credits.
async fn balance(http: &reqwest::Client, api: &str, peer: &str) -> Result<i128, String> {
    let balances: Vec<Balance> = get(http, &format!("{api}/v1/balances")).await?;
    Ok(balances
        .iter()
        .find(|balance| balance.node_id == peer)
        .map_or(0, |balance| balance.net_micro))
}
