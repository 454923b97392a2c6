//! `suanli ledger …` and `suanli balances`: read and verify a ledger, through a running node's API
//! or, with `--data-dir`, directly from a stopped node's data.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::ApiClient;
use super::output;
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
    /// Verify the whole ledger: hash chain, sequence, and every signature.
    Verify {
        #[command(flatten)]
        source: Source,
    },
    #[command(flatten)]
    Transparency(TransparencyCommand),
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
            let rows: Vec<Vec<String>> = page["entries"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|entry| {
                    vec![
                        output::text(entry, "/index"),
                        output::text(entry, "/timestamp_ms"),
                        output::text(entry, "/kind"),
                        short(&output::text(entry, "/contract_id")),
                        output::text(entry, "/cost"),
                        output::text(entry, "/outcome"),
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
        LedgerCommand::Verify { source } => {
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
    let rows: Vec<Vec<String>> = balances
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|balance| {
            vec![
                output::text(balance, "/node_id"),
                output::text(balance, "/net_micro"),
                output::text(balance, "/settlements"),
            ]
        })
        .collect();
    output::table(&["PEER", "NET µcr (+ owed to us)", "SETTLEMENTS"], &rows)
}
