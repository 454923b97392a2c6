//! `suanli ledger checkpoint|witnessed|equivocations|audit|verify-equivocation`: checkpoints,
//! witnessing and cross-audits.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;
use suanli_protocol::checkpoint::Equivocation;

use super::client::ApiClient;
use super::output;
use super::{ClientArgs, SilentExit};

/// How long an audit may take (it fetches and verifies the peer's whole ledger).
const AUDIT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Subcommand)]
pub enum TransparencyCommand {
    /// Print the node's latest signed checkpoint (a C2SP signed note).
    Checkpoint {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the latest checkpoint held for every other node.
    Witnessed {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the equivocation proofs the node holds.
    Equivocations {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Audit a peer's ledger against this node's: verify it and compare every shared contract.
    /// Exits 3 when the ledgers disagree.
    Audit {
        /// The peer's node id.
        #[arg(long, value_name = "NODE_ID")]
        peer: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Verify an equivocation proof offline (a JSON file as listed by `equivocations`, either the
    /// whole record or its `proof`). Exits 1 if it proves nothing.
    VerifyEquivocation {
        /// The JSON file.
        file: std::path::PathBuf,
    },
}

pub async fn execute(command: TransparencyCommand) -> anyhow::Result<()> {
    match command {
        TransparencyCommand::Checkpoint { client } => {
            let note = ApiClient::new(&client.api)?
                .get_bytes("/v1/ledger/checkpoint")
                .await?;
            let note = String::from_utf8_lossy(&note);
            output::line(note.trim_end_matches('\n'))
        }
        TransparencyCommand::Witnessed { client } => {
            let list = ApiClient::new(&client.api)?
                .get("/v1/ledger/witnessed")
                .await?;
            if client.json {
                return output::json(&list);
            }
            let rows = output::rows(&list, |held| {
                vec![
                    output::text(held, "/node_id"),
                    output::text(held, "/size"),
                    output::text(held, "/root"),
                ]
            });
            output::table(&["NODE", "SIZE", "ROOT"], &rows)
        }
        TransparencyCommand::Equivocations { client } => {
            let list = ApiClient::new(&client.api)?
                .get("/v1/ledger/equivocations")
                .await?;
            if client.json {
                return output::json(&list);
            }
            let rows = output::rows(&list, |record| {
                let fork = if record["proof"]["fork"].is_null() {
                    "same size, different roots"
                } else {
                    "larger tree does not extend the smaller"
                };
                vec![output::text(record, "/node_id"), fork.to_owned()]
            });
            output::table(&["NODE", "PROOF"], &rows)
        }
        TransparencyCommand::Audit { peer, client } => {
            let report = ApiClient::with_timeout(&client.api, AUDIT_TIMEOUT)?
                .get(&format!("/v1/ledger/audit?peer={peer}"))
                .await?;
            if client.json {
                output::json(&report)?;
            } else {
                print_audit(&report)?;
            }
            if report["verdict"] == "agree" {
                Ok(())
            } else {
                Err(SilentExit(3).into())
            }
        }
        TransparencyCommand::VerifyEquivocation { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let proof = if value.get("proof").is_some() {
                &value["proof"]
            } else {
                &value
            };
            let proof: Equivocation = serde_json::from_value(proof.clone())
                .with_context(|| format!("{} is not an equivocation proof", file.display()))?;
            match proof.verify() {
                Ok(node) => output::line(&format!(
                    "valid: {node} signed two inconsistent checkpoints"
                )),
                Err(error) => {
                    output::line(&format!("INVALID: {error}"))?;
                    Err(SilentExit(1).into())
                }
            }
        }
    }
}

fn print_audit(report: &Value) -> anyhow::Result<()> {
    output::line(&format!(
        "audit of {}: {}",
        output::text(report, "/peer"),
        output::text(report, "/verdict").to_uppercase()
    ))?;
    if report["checkpoint"].is_null() {
        output::line("checkpoint: none published")?;
    } else {
        output::line(&format!(
            "checkpoint: size {}, root {} ({}), witness: {}",
            output::text(report, "/checkpoint/size"),
            output::text(report, "/checkpoint/root"),
            if report["checkpoint"]["root_matches"] == true {
                "entries match"
            } else {
                "ENTRIES DO NOT MATCH"
            },
            output::text(report, "/checkpoint/witness/outcome"),
        ))?;
    }
    output::line(&format!(
        "entries: {} fetched, {} failed verification",
        output::text(report, "/entries"),
        output::text(report, "/chain_problems"),
    ))?;
    output::line(&format!(
        "shared contracts: {}, documents agreeing: {}, discrepancies: {}",
        output::text(report, "/shared_contracts"),
        output::text(report, "/agreements"),
        output::text(report, "/discrepancies"),
    ))?;
    let problems = output::rows(&report["chain_problem_list"], |problem| {
        vec![
            output::text(problem, "/index"),
            output::text(problem, "/contract_id"),
            output::text(problem, "/error"),
        ]
    });
    if !problems.is_empty() {
        output::table(&["PEER ENTRY", "CONTRACT", "VERIFICATION ERROR"], &problems)?;
    }
    let discrepancies = output::rows(&report["discrepancy_list"], |item| {
        vec![
            output::text(item, "/contract_id"),
            output::text(item, "/kind"),
            output::text(item, "/issue"),
            output::text(item, "/ours"),
            output::text(item, "/theirs"),
        ]
    });
    if !discrepancies.is_empty() {
        output::table(
            &["CONTRACT", "DOCUMENT", "ISSUE", "OUR ENTRY", "PEER ENTRY"],
            &discrepancies,
        )?;
    }
    Ok(())
}
