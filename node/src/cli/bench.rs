//! `suanli bench`: runs the benchmark scenarios of [`crate::bench`] in this process and prints
//! each figure next to its floor — a table by default, one JSON object per line with `--json`.
//! Ctrl-C or SIGTERM stops the run, kills the node processes it started and removes its
//! temporary directory.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use super::{SilentExit, output};
use crate::bench::{self, Figure, Options, Scenario};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all): floor, job-latency, throughput, gossip, ledger,
    /// negotiation, llm, slurm (needs a cluster: the environment `scripts/slurm-cluster.sh env`
    /// prints; skipped without one), crash, idle.
    #[arg(value_name = "SCENARIO")]
    pub scenarios: Vec<String>,
    /// Small sample counts: finishes in well under a minute on 2 cores.
    #[arg(long)]
    pub quick: bool,
    /// One JSON object per figure per line: scenario, metric, value, unit, floor, floor_metric,
    /// ratio.
    #[arg(long)]
    pub json: bool,
    /// Mesh sizes for the gossip scenario, comma-separated [default: 10 with --quick, else
    /// 10,100,1000; above 100, network-only nodes over the memory transport].
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub gossip_nodes: Vec<usize>,
    /// Directory for the run's temporary data dirs (its filesystem is the one whose fsync is
    /// measured) [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Seed of the crash scenario's kill points, victims, pauses and job mix (a failing storm
    /// names its seed).
    #[arg(long, value_name = "N", default_value_t = 7)]
    pub seed: u64,
    /// GGUF model of the llm scenario [default: where scripts/fetch-model.sh puts it].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
}

pub async fn execute(args: BenchArgs) -> anyhow::Result<()> {
    let scenarios = args
        .scenarios
        .iter()
        .map(|name| name.parse::<Scenario>())
        .collect::<Result<Vec<_>, _>>()?;
    let gossip_nodes = if args.gossip_nodes.is_empty() {
        if args.quick {
            vec![10]
        } else {
            vec![10, 100, 1000]
        }
    } else {
        args.gossip_nodes.clone()
    };
    let runs_gossip = scenarios.is_empty() || scenarios.contains(&Scenario::Gossip);
    let options_sizes = gossip_nodes.clone();
    let options = Options {
        quick: args.quick,
        gossip_nodes,
        dir: args.dir,
        seed: args.seed,
        model: args.model,
    };
    let json = args.json;
    let mut printed = Ok(());
    let each = |figures: &[Figure]| {
        if printed.is_ok() {
            printed = print(figures, json);
        }
    };
    // Both listeners are installed before the run is first polled: a signal that arrives after
    // it spawned a node process must not take the default action (exit at once, leaving the
    // child running).
    let mut interrupt = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    // Either signal drops the run's future: its node processes are killed and reaped, then its
    // temporary directory is removed.
    let figures = tokio::select! {
        result = bench::run(&scenarios, options, each) => result.context("bench")?,
        _ = interrupt.recv() => {
            tracing::warn!("interrupted; node processes stopped, temporary files removed");
            return Err(SilentExit(130).into());
        }
        _ = terminate.recv() => {
            tracing::warn!("terminated; node processes stopped, temporary files removed");
            return Err(SilentExit(143).into());
        }
    };
    printed?;
    if json {
        return Ok(());
    }
    if runs_gossip {
        for reason in options_sizes
            .iter()
            .filter_map(|n| bench::gossip::skip_reason(*n))
        {
            output::line("")?;
            output::line(&format!("note: gossip at {reason}"))?;
        }
    }
    let targets = bench::targets(&figures);
    if !targets.is_empty() {
        output::line("")?;
        let rows: Vec<Vec<String>> = targets.into_iter().map(Vec::from).collect();
        output::table(&["target", "measured", "verdict"], &rows)?;
    }
    Ok(())
}

fn print(figures: &[Figure], json: bool) -> anyhow::Result<()> {
    if json {
        for line in bench::json_lines(figures) {
            output::line(&line)?;
        }
        return Ok(());
    }
    output::table(
        &[
            "scenario",
            "metric",
            "value",
            "unit",
            "floor",
            "floor metric",
            "ratio",
        ],
        &bench::table_rows(figures),
    )?;
    output::line("")
}

/// `suanli bench-gossip-floor`: see [`bench::gossip::floor_child`].
pub async fn gossip_floor_child() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut request = String::new();
    tokio::io::stdin()
        .read_to_string(&mut request)
        .await
        .context("read the request")?;
    let answer = bench::gossip::floor_child(&request).await?;
    output::line(&answer)
}
