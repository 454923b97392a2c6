//! `suanli ledger …` and `suanli balances`: read and verify a ledger, through a running node's API
//! or, with `--data-dir`, directly from a stopped node's data. Proofs and raw entries live in
//! `proof.rs`, exports and their verification in `export.rs`.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use suanli_protocol::NodeId;

use super::client::ApiClient;
use super::export::{ExportArgs, export, verify_export};
use super::output;
use super::proof::{self, ProofCommand};
use super::transparency::TransparencyCommand;
use super::{ClientArgs, SilentExit};
use crate::api::ledger::entry_json;
use crate::data_dir::DataDir;
use crate::ledger::{range_offline, verify_offline};

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Show ledger entries.
    Show {
        /// First entry index.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        source: Source,
    },
    /// Verify the whole ledger: hash chain, sequence, and every signature. With --export, verify
    /// an export instead (jsonl file or tiles directory), without any node or database.
    Verify {
        /// A `suanli ledger export` output: a jsonl file or a tiles directory.
        #[arg(long, value_name = "PATH", conflicts_with = "data_dir")]
        export: Option<std::path::PathBuf>,
        /// With --export: the node whose ledger it must be [default: the one the export names].
        #[arg(long, value_name = "NODE_ID", requires = "export")]
        node: Option<String>,
        #[command(flatten)]
        source: Source,
    },
    #[command(flatten)]
    Transparency(TransparencyCommand),
    /// Merkle proofs: print inclusion or consistency proofs, or verify a saved one offline.
    #[command(subcommand)]
    Proof(ProofCommand),
    /// Print one entry as JSON, or with --raw its exact stored bytes (to stdout).
    Entry {
        index: u64,
        /// Write the exact stored bytes (whose leaf hash is in the tree) instead of JSON.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        source: Source,
    },
    /// Export the ledger as JSON Lines, CSV, or a C2SP tlog-tiles directory.
    Export(ExportArgs),
}

/// Where the ledger is read from.
#[derive(Debug, Args)]
pub struct Source {
    /// Read a stopped node's data dir directly instead of asking a running node.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn execute(command: LedgerCommand) -> anyhow::Result<()> {
    match command {
        LedgerCommand::Transparency(command) => super::transparency::execute(command).await,
        LedgerCommand::Show {
            from,
            limit,
            source,
        } => {
            let page = match &source.data_dir {
                Some(dir) => {
                    let data_dir = DataDir::new(dir);
                    let owner = data_dir.load_key()?.node_id();
                    let entries = range_offline(&data_dir.ledger_path(), owner, from, limit)?;
                    let entries: Vec<_> = entries.iter().map(entry_json).collect();
                    json!({ "entries": entries })
                }
                None => {
                    ApiClient::new(&source.client.api)?
                        .get(&format!("/v1/ledger?from={from}&limit={limit}"))
                        .await?
                }
            };
            if source.client.json {
                return output::json(&page);
            }
            let rows = output::rows(&page["entries"], |entry| {
                vec![
                    output::text(entry, "/index"),
                    output::text(entry, "/timestamp_ms"),
                    output::text(entry, "/kind"),
                    short(&output::text(entry, "/contract_id")),
                    output::text(entry, "/cost"),
                    output::text(entry, "/outcome"),
                ]
            });
            output::table(
                &[
                    "INDEX",
                    "TIME MS",
                    "KIND",
                    "CONTRACT",
                    "COST µcr",
                    "OUTCOME",
                ],
                &rows,
            )
        }
        LedgerCommand::Proof(command) => proof::execute(command).await,
        LedgerCommand::Entry { index, raw, source } => proof::entry(index, raw, source).await,
        LedgerCommand::Export(args) => export(args).await,
        LedgerCommand::Verify {
            export: Some(path),
            node,
            source,
        } => {
            let node = node
                .map(|node| {
                    node.parse::<NodeId>()
                        .map_err(|error| anyhow!("--node {node}: {error}"))
                })
                .transpose()?;
            let verdict = verify_export(&path, node)?;
            if source.client.json {
                output::json(&match &verdict {
                    Ok(summary) => json!({ "ok": true, "summary": summary, "error": null }),
                    Err(reason) => json!({ "ok": false, "summary": null, "error": reason }),
                })?;
            }
            match verdict {
                Ok(summary) if !source.client.json => output::line(&format!("ok: {summary}")),
                Ok(_) => Ok(()),
                Err(reason) => {
                    if !source.client.json {
                        output::line(&format!("FAILED: {reason}"))?;
                    }
                    Err(SilentExit(1).into())
                }
            }
        }
        LedgerCommand::Verify { source, .. } => {
            let report: Value = match &source.data_dir {
                Some(dir) => {
                    let data_dir = DataDir::new(dir);
                    let owner = data_dir.load_key()?.node_id();
                    serde_json::to_value(verify_offline(&data_dir.ledger_path(), owner)?)?
                }
                None => {
                    ApiClient::new(&source.client.api)?
                        .get("/v1/ledger/verify")
                        .await?
                }
            };
            let ok = report["ok"].as_bool().unwrap_or(false);
            if source.client.json {
                output::json(&report)?;
            } else if ok {
                output::line(&format!(
                    "ok: {} entries, head {}",
                    output::text(&report, "/entries"),
                    output::text(&report, "/head")
                ))?;
            } else {
                output::line(&format!(
                    "FAILED at entry {}: {} ({} entries verified before it)",
                    output::text(&report, "/error/index"),
                    output::text(&report, "/error/message"),
                    output::text(&report, "/entries"),
                ))?;
            }
            if ok {
                Ok(())
            } else {
                Err(SilentExit(1).into())
            }
        }
    }
}

fn short(id: &str) -> String {
    id.chars().take(16).collect()
}

pub async fn balances(client: ClientArgs) -> anyhow::Result<()> {
    let balances = ApiClient::new(&client.api)?.get("/v1/balances").await?;
    if client.json {
        return output::json(&balances);
    }
    let rows = output::rows(&balances, |balance| {
        vec![
            output::text(balance, "/node_id"),
            output::text(balance, "/net_micro"),
            output::text(balance, "/settlements"),
        ]
    });
    output::table(&["PEER", "NET µcr (+ owed to us)", "SETTLEMENTS"], &rows)
}
