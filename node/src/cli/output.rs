//! What the CLI prints: readable tables by default, JSON with `--json`.

use std::io::Write;

use serde_json::Value;

/// Writes one line to stdout.
pub fn line(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

pub fn json(value: &Value) -> anyhow::Result<()> {
    line(&serde_json::to_string_pretty(value)?)
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

/// One table row per element of the JSON array `list` (none if it is not an array).
pub fn rows(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(row)
        .collect()
}

pub fn text(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn number(value: &Value, pointer: &str) -> u64 {
    value.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// Bytes as GiB with one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn gpus(value: &Value, pointer: &str) -> String {
    let Some(gpus) = value.pointer(pointer).and_then(Value::as_array) else {
        return "-".into();
    };
    if gpus.is_empty() {
        return "-".into();
    }
    gpus.iter()
        .map(|gpu| format!("{}x {}", number(gpu, "/count"), text(gpu, "/model")))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn status(node: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(node);
    }
    let addrs = node
        .pointer("/listen_addrs")
        .and_then(Value::as_array)
        .map(|addrs| {
            addrs
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n             ")
        })
        .unwrap_or_default();
    line(&format!("node id:     {}", text(node, "/node_id")))?;
    line(&format!("version:     {}", text(node, "/version")))?;
    line(&format!(
        "uptime:      {} s",
        number(node, "/uptime_ms") / 1000
    ))?;
    line(&format!("region:      {}", text(node, "/region")))?;
    line(&format!(
        "capacity:    {} cores, {}, GPUs: {}",
        number(node, "/capacity/cpu_cores"),
        gib(number(node, "/capacity/memory_bytes")),
        gpus(node, "/capacity/gpus")
    ))?;
    line(&format!(
        "prices:      {} µcr/job + {} µcr/M fuel",
        number(node, "/prices/base"),
        number(node, "/prices/per_million_fuel")
    ))?;
    line(&format!("listening:   {addrs}"))
}

pub fn peers(peers: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(peers);
    }
    let rows = rows(peers, |peer| {
        vec![
            text(peer, "/node_id"),
            text(peer, "/agent_version"),
            peer.pointer("/addrs")
                .and_then(Value::as_array)
                .and_then(|addrs| addrs.first())
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned(),
        ]
    });
    table(&["NODE", "AGENT", "ADDRESS"], &rows)
}

pub fn mesh(mesh: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(mesh);
    }
    let rows = rows(mesh, |node| {
        vec![
            text(node, "/node_id"),
            text(node, "/region"),
            number(node, "/cpu_cores").to_string(),
            gib(number(node, "/memory_bytes")),
            gpus(node, "/gpus"),
            format!(
                "{:.0}%",
                node.pointer("/load").and_then(Value::as_f64).unwrap_or(0.0) * 100.0
            ),
            format!(
                "{}+{}/Mf",
                number(node, "/prices/base"),
                number(node, "/prices/per_million_fuel")
            ),
            format!("{:.1}s", number(node, "/age_ms") as f64 / 1000.0),
        ]
    });
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
        ],
        &rows,
    )
}
