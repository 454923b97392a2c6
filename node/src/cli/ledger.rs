//! `suanli ledger …` and `suanli balances`: read and verify a ledger, through a running node's API
//! or, with `--data-dir`, directly from a stopped node's data. Proofs and raw entries live in
//! `proof.rs`, exports and their verification in `export.rs`.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::json;
use suanli_protocol::NodeId;

use super::export::{ExportArgs, export, verify_export};
use super::output::{self, or_dash};
use super::proof::{self, ProofCommand};
use super::transparency::TransparencyCommand;
use super::{ClientArgs, SilentExit};
use crate::api::types::{Balance, EntriesPage, EntryView, VerifyReport};
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
            let entries = match &source.data_dir {
                Some(dir) => {
                    let data_dir = DataDir::new(dir);
                    let owner = data_dir.load_key()?.node_id();
                    let entries = range_offline(&data_dir.db_path(), owner, from, limit)?;
                    let entries: Vec<EntryView> = entries.iter().map(EntryView::from).collect();
                    if source.client.json {
                        // A stopped node's ledger has no durable head to report: entries only.
                        return output::json(&OfflineEntries { entries: &entries });
                    }
                    entries
                }
                None => {
                    let page: EntriesPage = source
                        .client
                        .client()?
                        .get_json(&format!("/v1/ledger?from={from}&limit={limit}"))
                        .await?;
                    if source.client.json {
                        return output::json(&page);
                    }
                    page.entries
                }
            };
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|entry| {
                    vec![
                        entry.index.to_string(),
                        entry.timestamp_ms.to_string(),
                        entry.kind.name().to_owned(),
                        short(&or_dash(entry.contract_id)),
                        or_dash(entry.cost),
                        or_dash(entry.outcome.as_ref()),
                    ]
                })
                .collect();
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
            let report: VerifyReport = match &source.data_dir {
                Some(dir) => {
                    let data_dir = DataDir::new(dir);
                    let owner = data_dir.load_key()?.node_id();
                    verify_offline(&data_dir.db_path(), owner)?
                }
                None => {
                    source
                        .client
                        .client()?
                        .get_json("/v1/ledger/verify")
                        .await?
                }
            };
            if source.client.json {
                output::json(&report)?;
            } else if report.ok {
                output::line(&format!(
                    "ok: {} entries, head {}",
                    report.entries, report.head
                ))?;
            } else {
                let error = report.error.as_ref();
                output::line(&format!(
                    "FAILED at entry {}: {} ({} entries verified before it)",
                    or_dash(error.map(|error| error.index)),
                    or_dash(error.map(|error| &error.message)),
                    report.entries,
                ))?;
            }
            if report.ok {
                Ok(())
            } else {
                Err(SilentExit(1).into())
            }
        }
    }
}

/// What `ledger show --data-dir --json` prints.
#[derive(Debug, Serialize)]
struct OfflineEntries<'a> {
    entries: &'a [EntryView],
}

fn short(id: &str) -> String {
    id.chars().take(16).collect()
}

pub async fn balances(client: ClientArgs) -> anyhow::Result<()> {
    let balances: Vec<Balance> = client.client()?.get_json("/v1/balances").await?;
    if client.json {
        return output::json(&balances);
    }
    let rows: Vec<Vec<String>> = balances
        .iter()
        .map(|balance| {
            vec![
                balance.node_id.clone(),
                balance.net_micro.to_string(),
                balance.settlements.to_string(),
            ]
        })
        .collect();
    output::table(&["PEER", "NET µcr (+ owed to us)", "SETTLEMENTS"], &rows)
}
