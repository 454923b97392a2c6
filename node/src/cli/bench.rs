//! `suanli bench`: runs the benchmark scenarios of [`crate::bench`] in this process and prints
//! each figure next to its floor — a table by default, one JSON object per line with `--json`.
//! Ctrl-C stops the run and removes its temporary directory.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::{SilentExit, output};
use crate::bench::{self, Figure, Options, Scenario};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all): floor, job-latency, throughput, gossip, ledger,
    /// negotiation.
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
    /// 10,100].
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    pub gossip_nodes: Vec<usize>,
    /// Directory for the run's temporary data dirs (its filesystem is the one whose fsync is
    /// measured) [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub async fn execute(args: BenchArgs) -> anyhow::Result<()> {
    let scenarios = args
        .scenarios
        .iter()
        .map(|name| name.parse::<Scenario>())
        .collect::<Result<Vec<_>, _>>()?;
    let gossip_nodes = if args.gossip_nodes.is_empty() {
        if args.quick { vec![10] } else { vec![10, 100] }
    } else {
        args.gossip_nodes.clone()
    };
    let runs_gossip = scenarios.is_empty() || scenarios.contains(&Scenario::Gossip);
    let options = Options {
        quick: args.quick,
        gossip_nodes,
        dir: args.dir,
    };
    let json = args.json;
    let mut printed = Ok(());
    let each = |figures: &[Figure]| {
        if printed.is_ok() {
            printed = print(figures, json);
        }
    };
    let figures = tokio::select! {
        result = bench::run(&scenarios, options, each) => result.context("bench")?,
        _ = tokio::signal::ctrl_c() => {
            tracing::warn!("interrupted; temporary files removed");
            return Err(SilentExit(130).into());
        }
    };
    printed?;
    if json {
        return Ok(());
    }
    if runs_gossip
        && args.gossip_nodes.is_empty()
        && let Some(reason) = bench::gossip::skip_reason(500)
    {
        output::line("")?;
        output::line(&format!("note: gossip at {reason}"))?;
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
