//! What the CLI prints: readable tables by default, JSON with `--json`. Everything printed comes
//! from typed API answers ([`crate::api::types`]); nothing here reads JSON by field name.

use std::fmt::Display;
use std::io::Write;

use serde::Serialize;
use serde_json::Value;

use crate::api::types::{GpuView, MeshNodeView, NodeView, PeerInfo};

/// Writes one line to stdout.
pub fn line(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

/// Writes one line to stderr: a note beside the output (which stays alone on stdout).
pub fn note(text: &str) -> anyhow::Result<()> {
    let mut err = std::io::stderr().lock();
    writeln!(err, "{text}")?;
    Ok(())
}

/// Prints `value` as pretty JSON. It goes through a [`Value`], whose keys are sorted, so the
/// output does not depend on the field order of the type that holds it.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let value = serde_json::to_value(value)?;
    line(&serde_json::to_string_pretty(&value)?)
}

/// Prints rows as aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let format_row = |cells: Vec<String>| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(&widths) {
            text.push_str(&format!("{cell:<width$}  "));
        }
        text.trim_end().to_owned()
    };
    line(&format_row(header.iter().map(|h| h.to_string()).collect()))?;
    for row in rows {
        line(&format_row(row.clone()))?;
    }
    Ok(())
}

/// What an optional value prints as in tables and lines: the value, or `-`.
pub fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

/// The wire name of an API enum (`succeeded`, `no_provider`, …): what `--json` shows, so
/// tables and JSON agree.
pub fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// Bytes as GiB with one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn gpus(gpus: &[GpuView]) -> String {
    if gpus.is_empty() {
        return "-".into();
    }
    gpus.iter()
        .map(|gpu| format!("{}x {}", gpu.count, gpu.model))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn status(node: &NodeView, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(node);
    }
    let addrs = node.listen_addrs.join("\n             ");
    line(&format!("node id:     {}", node.node_id))?;
    line(&format!("version:     {}", node.version))?;
    line(&format!("uptime:      {} s", node.uptime_ms / 1000))?;
    line(&format!("region:      {}", node.region))?;
    line(&format!(
        "capacity:    {} cores, {}, GPUs: {}",
        node.capacity.cpu_cores,
        gib(node.capacity.memory_bytes),
        gpus(&node.capacity.gpus)
    ))?;
    line(&format!(
        "prices:      {} µcr/job + {} µcr/M fuel",
        node.prices.base, node.prices.per_million_fuel
    ))?;
    line(&format!("listening:   {addrs}"))?;
    let storage = &node.storage;
    let reason = match &storage.reason {
        Some(reason) => format!(": {reason}"),
        None => String::new(),
    };
    line(&format!(
        "storage:     {}{reason} ({} free, {} kept in reserve)",
        label(&storage.state),
        gib(storage.available_bytes.unwrap_or(0)),
        gib(storage.min_free_bytes)
    ))
}

pub fn peers(peers: &[PeerInfo], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(peers);
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|peer| {
            let standing = peer.standing.as_ref();
            vec![
                peer.node_id.clone(),
                or_dash(peer.agent_version.as_ref()),
                or_dash(peer.addrs.first()),
                or_dash(standing.map(|standing| {
                    let mark = if standing.distrusted {
                        " distrusted"
                    } else {
                        ""
                    };
                    format!("{:.2}{mark}", standing.score)
                })),
                or_dash(standing.map(|standing| standing.counts.settled)),
            ]
        })
        .collect();
    table(&["NODE", "AGENT", "ADDRESS", "STANDING", "SETTLED"], &rows)
}

pub fn mesh(mesh: &[MeshNodeView], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(mesh);
    }
    let rows: Vec<Vec<String>> = mesh
        .iter()
        .map(|node| {
            vec![
                node.node_id.to_string(),
                node.region.clone(),
                node.cpu_cores.to_string(),
                gib(node.memory_bytes),
                gpus(&node.gpus),
                format!("{:.0}%", node.load * 100.0),
                format!("{}+{}/Mf", node.prices.base, node.prices.per_million_fuel),
                format!("{:.1}s", node.age_ms as f64 / 1000.0),
                if node.models.is_empty() {
                    "-".into()
                } else {
                    node.models
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                node.cluster.as_ref().map_or_else(
                    || "-".into(),
                    |cluster| {
                        format!(
                            "{}: {} nodes, {}/{} cores free, {} queued",
                            cluster.scheduler,
                            cluster.nodes,
                            cluster.free.cpu_cores,
                            cluster.total.cpu_cores,
                            cluster.pending_jobs
                        )
                    },
                ),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "REGION",
            "CORES",
            "MEMORY",
            "GPUS",
            "LOAD",
            "PRICE µcr",
            "AGE",
            "MODELS",
            "CLUSTER",
        ],
        &rows,
    )
}
