//! `suanli bench`: measures this node's hot paths on the machine it runs on, each figure next to
//! the floor it cannot beat, measured in the same run on the same machine.
//!
//! Every scenario but [`crash`] starts its own in-process nodes (through
//! [`Node::start`](crate::Node::start)) on loopback with port 0; [`crash`] spawns `suanli run`
//! child processes (this binary) on fixed loopback ports drawn below the kernel's ephemeral
//! range. All data dirs are under one temporary directory ([`Workspace`]); when the run ends,
//! fails or is interrupted, the child processes are killed and reaped, then the directory is
//! removed. Nothing touches an operator's data dir or a running node.
//!
//! ```text
//!  cli::bench ──Options──▶ run() ──▶ scenario::run(&mut Context) ──▶ Vec<Figure> ──▶ table / JSON
//!                                      │  Context::floors(): measured once per run, on demand
//!                                      ▼
//!                          BenchNode (Node::start, temp data dir) · network::floor (bare libp2p)
//! ```
//!
//! Scenarios: [`floor`] (primitives: signatures, fsync, wasmtime, a libp2p round trip),
//! [`job_latency`], [`throughput`], [`gossip`], [`ledger`], [`negotiation`], [`llm`],
//! [`slurm`](mod@slurm) (needs a Slurm cluster, named in the environment; a full run skips it
//! without one), [`crash`], [`idle`] (the resident memory of idle `suanli run` processes). A
//! figure's `ratio` is always `value / floor`: above 1 for times means slower than the floor,
//! below 1 for rates means short of it.
//!
//! This module must never assert timings (the CI runs it only as a smoke test) and never prints:
//! it returns figures for the CLI to show; progress goes to tracing.

pub mod crash;
pub mod floor;
pub mod gossip;
pub mod idle;
pub mod job_latency;
pub mod ledger;
pub mod llm;
pub mod negotiation;
pub mod nodes;
pub mod slurm;
pub mod throughput;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use tracing::{error, info};

pub use floor::Floors;
pub use nodes::BenchNode;

/// The trivial WASI module every job scenario runs (writes "hello" to stdout).
pub const HELLO_WAT: &str = include_str!("../../../examples/jobs/hello.wat");

/// One measured figure with its floor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    pub scenario: &'static str,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
    /// The floor's value in the same unit, when the figure has one.
    pub floor: Option<f64>,
    /// What the floor is.
    pub floor_metric: Option<String>,
    /// `value / floor`.
    pub ratio: Option<f64>,
}

impl Figure {
    /// A figure without a floor.
    pub fn plain(
        scenario: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Figure {
        Figure {
            scenario,
            metric: metric.into(),
            value,
            unit,
            floor: None,
            floor_metric: None,
            ratio: None,
        }
    }

    /// A figure set against `floor` (same unit).
    pub fn against(
        scenario: &'static str,
        metric: impl Into<String>,
        value: f64,
        unit: &'static str,
        floor: f64,
        floor_metric: impl Into<String>,
    ) -> Figure {
        Figure {
            scenario,
            metric: metric.into(),
            value,
            unit,
            floor: Some(floor),
            floor_metric: Some(floor_metric.into()),
            ratio: (floor > 0.0).then(|| value / floor),
        }
    }
}

/// The scenarios, in the order a full run takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Floor,
    JobLatency,
    Throughput,
    Gossip,
    Ledger,
    Negotiation,
    Llm,
    Slurm,
    Crash,
    Idle,
}

impl Scenario {
    pub const ALL: [Scenario; 10] = [
        Scenario::Floor,
        Scenario::JobLatency,
        Scenario::Throughput,
        Scenario::Gossip,
        Scenario::Ledger,
        Scenario::Negotiation,
        Scenario::Llm,
        Scenario::Slurm,
        Scenario::Crash,
        Scenario::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Floor => "floor",
            Scenario::JobLatency => "job-latency",
            Scenario::Throughput => "throughput",
            Scenario::Gossip => "gossip",
            Scenario::Ledger => "ledger",
            Scenario::Negotiation => "negotiation",
            Scenario::Llm => "llm",
            Scenario::Slurm => "slurm",
            Scenario::Crash => "crash",
            Scenario::Idle => "idle",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown scenario name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown scenario {0:?} (known: floor, job-latency, throughput, gossip, ledger, negotiation, \
     llm, slurm, crash, idle)"
)]
pub struct UnknownScenario(String);

impl FromStr for Scenario {
    type Err = UnknownScenario;

    fn from_str(name: &str) -> Result<Scenario, UnknownScenario> {
        Scenario::ALL
            .into_iter()
            .find(|scenario| scenario.name() == name)
            .ok_or_else(|| UnknownScenario(name.to_owned()))
    }
}

/// How a run is sized.
#[derive(Debug, Clone)]
pub struct Options {
    /// Small sample counts: well under a minute on 2 cores.
    pub quick: bool,
    /// Mesh sizes for the gossip scenario (default: 10 with `quick`, else 10 and 100).
    pub gossip_nodes: Vec<usize>,
    /// Where the temporary directory goes (its filesystem is the one whose fsync is measured).
    pub dir: Option<PathBuf>,
    /// Seeds the `crash` scenario's kill points, victims, pauses and job mix.
    pub seed: u64,
    /// The GGUF model of the `llm` scenario (default: where `scripts/fetch-model.sh` puts it).
    pub model: Option<PathBuf>,
}

impl Options {
    /// `full` when not quick, else `quick`.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("temporary directory: {0}")]
    Workspace(#[source] std::io::Error),
    #[error("scenarios failed: {0}")]
    Failed(String),
    #[error("{scenario}: {message}")]
    Scenario {
        scenario: &'static str,
        message: String,
    },
}

impl BenchError {
    pub fn scenario(scenario: &'static str, message: impl fmt::Display) -> BenchError {
        BenchError::Scenario {
            scenario,
            message: message.to_string(),
        }
    }
}

/// The run's temporary directory: every data dir and scratch file lives under it, and it is
/// removed (recursively) when dropped, which also happens when the run's future is dropped on
/// Ctrl-C.
#[derive(Debug)]
pub struct Workspace {
    root: tempfile::TempDir,
    next: std::sync::atomic::AtomicU64,
}

impl Workspace {
    pub fn new(base: Option<&Path>) -> Result<Workspace, BenchError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("suanli-bench-");
        let root = match base {
            Some(base) => builder.tempdir_in(base),
            None => builder.tempdir(),
        }
        .map_err(BenchError::Workspace)?;
        Ok(Workspace {
            root,
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// A fresh, empty subdirectory named after `what`.
    pub fn subdir(&self, what: &str) -> Result<PathBuf, BenchError> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.root.path().join(format!("{what}-{n}"));
        std::fs::create_dir_all(&path).map_err(BenchError::Workspace)?;
        Ok(path)
    }
}

/// What every scenario gets: the options, the workspace, and the floors (measured once).
#[derive(Debug)]
pub struct Context {
    pub options: Options,
    pub workspace: Workspace,
    floors: Option<Floors>,
}

impl Context {
    pub fn new(options: Options) -> Result<Context, BenchError> {
        let workspace = Workspace::new(options.dir.as_deref())?;
        Ok(Context {
            options,
            workspace,
            floors: None,
        })
    }

    /// The floors of this run, measured on first use. The disk's fsync latency swings by an
    /// order of magnitude with other load, so the fsync floor is measured again each time
    /// (a fraction of a second), right before the scenario that sets figures against it.
    pub async fn floors(&mut self) -> Result<Floors, BenchError> {
        if let Some(floors) = &mut self.floors {
            floors.measure_fsync(&self.options, &self.workspace).await?;
            return Ok(floors.clone());
        }
        let floors = Floors::measure(&self.options, &self.workspace).await?;
        self.floors = Some(floors.clone());
        Ok(floors)
    }
}

/// Runs `scenarios` (all when empty) in order and returns every figure. `each` sees each
/// scenario's figures as soon as they exist (so a long run prints as it goes).
pub async fn run(
    scenarios: &[Scenario],
    options: Options,
    mut each: impl FnMut(&[Figure]),
) -> Result<Vec<Figure>, BenchError> {
    let mut chosen: Vec<Scenario> = if scenarios.is_empty() {
        let mut all = Scenario::ALL.to_vec();
        if !slurm::configured() {
            info!("no Slurm cluster in the environment (SUANLI_SLURMRESTD): skipping slurm");
            all.retain(|scenario| *scenario != Scenario::Slurm);
        }
        all
    } else {
        scenarios.to_vec()
    };
    chosen.sort();
    chosen.dedup();
    let mut context = Context::new(options)?;
    info!(dir = %context.workspace.path().display(), quick = context.options.quick, "bench starts");
    let mut all = Vec::new();
    let mut failed = Vec::new();
    for scenario in chosen {
        info!(%scenario, "scenario starts");
        let started = std::time::Instant::now();
        let figures = match scenario {
            Scenario::Floor => floor::run(&mut context).await,
            Scenario::JobLatency => job_latency::run(&mut context).await,
            Scenario::Throughput => throughput::run(&mut context).await,
            Scenario::Gossip => gossip::run(&mut context).await,
            Scenario::Ledger => ledger::run(&mut context).await,
            Scenario::Negotiation => negotiation::run(&mut context).await,
            Scenario::Llm => llm::run(&mut context).await,
            Scenario::Slurm => slurm::run(&mut context).await,
            Scenario::Crash => crash::run(&mut context).await,
            Scenario::Idle => idle::run(&mut context).await,
        };
        match figures {
            Ok(figures) => {
                info!(%scenario, secs = started.elapsed().as_secs_f64(), "scenario done");
                each(&figures);
                all.extend(figures);
            }
            // The other scenarios still run; the run as a whole fails at the end.
            Err(error) => {
                error!(%scenario, %error, "scenario failed");
                failed.push(error.to_string());
            }
        }
    }
    if failed.is_empty() {
        Ok(all)
    } else {
        Err(BenchError::Failed(failed.join("; ")))
    }
}

/// Sorted samples and their percentiles.
#[derive(Debug, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Samples {
        samples.sort();
        Samples(samples)
    }

    /// The `p`-quantile (nearest rank), zero when empty.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0
            .get(index.min(self.0.len() - 1))
            .copied()
            .unwrap_or_default()
    }

    pub fn p50(&self) -> Duration {
        self.percentile(0.5)
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Milliseconds of a duration, as a float.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Microseconds of a duration, as a float.
pub fn us(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// This process's resident set, from `/proc/self/status` (0 where unavailable).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The figures as one JSON object per line.
pub fn json_lines(figures: &[Figure]) -> Vec<String> {
    figures
        .iter()
        .map(|figure| serde_json::to_string(figure).unwrap_or_else(|_| "{}".into()))
        .collect()
}

/// A number with a sensible number of significant digits for a table.
pub fn format_number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        format!("{value:.0}")
    } else if magnitude >= 100.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// Table rows: scenario, metric, value, unit, floor, floor metric, ratio.
pub fn table_rows(figures: &[Figure]) -> Vec<Vec<String>> {
    figures
        .iter()
        .map(|figure| {
            vec![
                figure.scenario.to_owned(),
                figure.metric.clone(),
                format_number(figure.value),
                figure.unit.to_owned(),
                figure.floor.map_or("-".into(), format_number),
                figure.floor_metric.clone().unwrap_or_else(|| "-".into()),
                figure
                    .ratio
                    .map_or("-".into(), |ratio| format!("{ratio:.2}×")),
            ]
        })
        .collect()
}

/// The issue's targets, checked against the figures of a run: (target, measured, verdict).
pub fn targets(figures: &[Figure]) -> Vec<[String; 3]> {
    let find = |scenario: &str, metric: &str| {
        figures
            .iter()
            .find(|f| f.scenario == scenario && f.metric == metric)
    };
    let mut rows = Vec::new();
    if let Some(p50) = find("job-latency", "submit→result p50") {
        rows.push(verdict(
            "job latency p50 ≤ 3 ms",
            p50.value,
            3.0,
            "ms",
            false,
        ));
    }
    if let Some(rate) = find("throughput", "settled jobs/s (fsync floor)") {
        rows.push(verdict(
            "≥ 1,000 settled jobs/s on three nodes",
            rate.value,
            1000.0,
            "jobs/s",
            true,
        ));
    }
    for n in [100, 1000] {
        let what = format!("gossip spread p50 ≤ 1.5× bare gossipsub at {n} nodes");
        if let Some(spread) = find("gossip", &format!("{n} nodes: spread p50")) {
            rows.push(match spread.ratio {
                Some(ratio) => verdict(&what, ratio, 1.5, "×", false),
                None => [what, "-".into(), "no floor".into()],
            });
        }
        if let Some(held) = find(
            "gossip",
            &format!("{n} nodes: most connections held by a node"),
        ) && let Some(max) = held.floor
        {
            rows.push(verdict(
                &format!("connections per node ≤ the maximum at {n} nodes"),
                held.value,
                max,
                "connections",
                false,
            ));
        }
    }
    if let Some(converged) = find("gossip", "100 nodes: last start → all views full") {
        rows.push(verdict(
            "100 full nodes converge ≤ 5 s after the last start",
            converged.value,
            5.0,
            "s",
            false,
        ));
    }
    if let Some(rate) = find("ledger", "entries verified/s, batched, one core") {
        rows.push(verdict(
            "ledger verification ≥ 40k entries/s per core",
            rate.value,
            40_000.0,
            "entries/s",
            true,
        ));
    }
    if let Some(idle) = find("idle", "fresh node, idle: resident (VmRSS)") {
        rows.push(verdict(
            "idle node ≤ 20 MiB resident",
            idle.value,
            20.0,
            "MiB",
            false,
        ));
    }
    rows
}

fn verdict(what: &str, value: f64, target: f64, unit: &str, higher_is_better: bool) -> [String; 3] {
    let met = if higher_is_better {
        value >= target
    } else {
        value <= target
    };
    let how_far = if met {
        "met".to_owned()
    } else if higher_is_better {
        format!("missed: {:.0}% of target", 100.0 * value / target)
    } else {
        format!("missed: {:.2}× the target", value / target)
    };
    [
        what.to_owned(),
        format!("{} {unit}", format_number(value)),
        how_far,
    ]
}

/// The running binary, which must be `suanli`: `scenario` starts `suanli` processes.
fn suanli_exe(scenario: &'static str) -> Result<std::path::PathBuf, BenchError> {
    let fail = |message: String| BenchError::scenario(scenario, message);
    let exe = std::env::current_exe().map_err(|error| fail(error.to_string()))?;
    if exe
        .file_stem()
        .is_none_or(|stem| stem.to_string_lossy() != "suanli")
    {
        return Err(fail(format!(
            "not running as the suanli binary ({}): the scenario starts `suanli` processes",
            exe.display()
        )));
    }
    Ok(exe)
}
