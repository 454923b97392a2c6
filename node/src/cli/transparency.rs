//! `suanli ledger checkpoint|witnessed|equivocations|audit|verify-equivocation`: checkpoints,
//! witnessing and cross-audits.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;

use super::output::{self, label, or_dash};
use super::{ClientArgs, SilentExit};
use crate::api::types::{
    AuditReport, AuditVerdict, Equivocation, EquivocationRecord, Observation, Witnessed,
};

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
            let note = client.client()?.get_bytes("/v1/ledger/checkpoint").await?;
            let note = String::from_utf8_lossy(&note);
            output::line(note.trim_end_matches('\n'))
        }
        TransparencyCommand::Witnessed { client } => {
            let list: Vec<Witnessed> = client.client()?.get_json("/v1/ledger/witnessed").await?;
            if client.json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|held| {
                    vec![
                        held.node_id.clone(),
                        held.size.to_string(),
                        held.root.clone(),
                    ]
                })
                .collect();
            output::table(&["NODE", "SIZE", "ROOT"], &rows)
        }
        TransparencyCommand::Equivocations { client } => {
            let list: Vec<EquivocationRecord> = client
                .client()?
                .get_json("/v1/ledger/equivocations")
                .await?;
            if client.json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|record| {
                    let fork = if record.proof.fork.is_none() {
                        "same size, different roots"
                    } else {
                        "larger tree does not extend the smaller"
                    };
                    vec![record.node_id.clone(), fork.to_owned()]
                })
                .collect();
            output::table(&["NODE", "PROOF"], &rows)
        }
        TransparencyCommand::Audit { peer, client } => {
            let report: AuditReport = client
                .client_with_timeout(AUDIT_TIMEOUT)?
                .get_json(&format!("/v1/ledger/audit?peer={peer}"))
                .await?;
            if client.json {
                output::json(&report)?;
            } else {
                print_audit(&report)?;
            }
            if report.verdict == AuditVerdict::Agree {
                Ok(())
            } else {
                Err(SilentExit(3).into())
            }
        }
        TransparencyCommand::VerifyEquivocation { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let proof = match serde_json::from_str::<EquivocationFile>(&text)
                .with_context(|| format!("{} is not an equivocation proof", file.display()))?
            {
                EquivocationFile::Record(record) => record.proof,
                EquivocationFile::Proof(proof) => proof,
            };
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

/// What `verify-equivocation` reads: an element of `GET /v1/ledger/equivocations`, or its
/// `proof` alone.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EquivocationFile {
    Record(EquivocationRecord),
    Proof(Equivocation),
}

/// The `outcome` of a witness observation, as the API names it.
fn outcome(observation: &Observation) -> &'static str {
    match observation {
        Observation::First => "first",
        Observation::Extended { .. } => "extended",
        Observation::Unchanged => "unchanged",
        Observation::Stale { .. } => "stale",
        Observation::Unproven { .. } => "unproven",
        Observation::Equivocation => "equivocation",
        Observation::Refused { .. } => "refused",
    }
}

fn print_audit(report: &AuditReport) -> anyhow::Result<()> {
    output::line(&format!(
        "audit of {}: {}",
        report.peer,
        label(&report.verdict).to_uppercase()
    ))?;
    match &report.checkpoint {
        None => output::line("checkpoint: none published")?,
        Some(checkpoint) => output::line(&format!(
            "checkpoint: size {}, root {} ({}), witness: {}",
            checkpoint.size,
            checkpoint.root,
            if checkpoint.root_matches {
                "entries match"
            } else {
                "ENTRIES DO NOT MATCH"
            },
            outcome(&checkpoint.witness),
        ))?,
    }
    output::line(&format!(
        "entries: {} fetched, {} failed verification",
        report.entries, report.chain_problems,
    ))?;
    output::line(&format!(
        "shared contracts: {}, documents agreeing: {}, discrepancies: {}",
        report.shared_contracts, report.agreements, report.discrepancies,
    ))?;
    let problems: Vec<Vec<String>> = report
        .chain_problem_list
        .iter()
        .map(|problem| {
            vec![
                problem.index.to_string(),
                or_dash(problem.contract_id.as_ref()),
                problem.error.clone(),
            ]
        })
        .collect();
    if !problems.is_empty() {
        output::table(&["PEER ENTRY", "CONTRACT", "VERIFICATION ERROR"], &problems)?;
    }
    let discrepancies: Vec<Vec<String>> = report
        .discrepancy_list
        .iter()
        .map(|item| {
            vec![
                item.contract_id.clone(),
                label(&item.kind),
                label(&item.issue),
                or_dash(item.ours),
                or_dash(item.theirs),
            ]
        })
        .collect();
    if !discrepancies.is_empty() {
        output::table(
            &["CONTRACT", "DOCUMENT", "ISSUE", "OUR ENTRY", "PEER ENTRY"],
            &discrepancies,
        )?;
        output::line(&format!(
            "repairs requested: {} (documents missing on either side are exchanged with the peer; \
             audit again to see them agree)",
            report.repairs_requested,
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_outcomes_print_as_the_api_names_them() {
        for observation in [
            Observation::First,
            Observation::Extended { from: 1 },
            Observation::Unchanged,
            Observation::Stale { held: 2 },
            Observation::Unproven { reason: "r".into() },
            Observation::Equivocation,
            Observation::Refused { reason: "r".into() },
        ] {
            let json = serde_json::to_value(&observation).unwrap();
            assert_eq!(json["outcome"], outcome(&observation), "{observation:?}");
        }
    }
}
