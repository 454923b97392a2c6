//! Ledger routes: entries, verification, balances; and the JSON form of an entry, shared with
//! the CLI's offline commands.

use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use suanli_protocol::ledger::{EntryBody, LedgerEntry, entry_hash};
use suanli_protocol::{ContractId, Outcome};

use super::{ApiError, ApiQuery, ApiState};
use crate::ledger::{Balance, StoredEntry, VerifyFailure, VerifyReport};

/// One ledger entry as JSON: the facts a reader wants, plus the exact stored bytes.
#[derive(Debug, Serialize)]
pub struct EntryJson {
    pub index: u64,
    pub timestamp_ms: u64,
    pub kind: &'static str,
    pub hash: String,
    pub prev_hash: String,
    pub contract_id: Option<String>,
    pub job_id: Option<String>,
    pub requester: Option<String>,
    pub provider: Option<String>,
    /// Micro-credits.
    pub cost: Option<u64>,
    pub outcome: Option<String>,
    pub fuel: Option<u64>,
    pub detail: Option<String>,
    pub raw_base64: String,
}

/// Describes a stored entry. Documents are decoded without re-verifying (verification is
/// `/v1/ledger/verify`); an undecodable entry is shown as such, never hidden.
pub fn entry_json(entry: &StoredEntry) -> EntryJson {
    let mut json = EntryJson {
        index: entry.seq,
        timestamp_ms: 0,
        kind: "undecodable",
        hash: entry_hash(&entry.raw).to_string(),
        prev_hash: String::new(),
        contract_id: None,
        job_id: None,
        requester: None,
        provider: None,
        cost: None,
        outcome: None,
        fuel: None,
        detail: None,
        raw_base64: BASE64.encode(&entry.raw),
    };
    let Ok(decoded) = LedgerEntry::decode(&entry.raw) else {
        return json;
    };
    json.timestamp_ms = decoded.timestamp_ms;
    json.prev_hash = decoded.prev_hash.to_string();
    json.kind = decoded.body.kind();
    match &decoded.body {
        EntryBody::Contract(contract) => {
            json.contract_id = Some(ContractId(contract.digest()).to_string());
            if let Ok(contract) = contract.decode_unverified() {
                json.job_id = Some(contract.job_id.to_string());
                json.requester = Some(contract.requester.to_string());
                json.provider = Some(contract.provider.to_string());
                json.cost = Some(contract.max_cost.micro());
                json.detail = Some(format!(
                    "max cost {}, fuel limit {}",
                    contract.max_cost.micro(),
                    contract.limits.fuel
                ));
            }
        }
        EntryBody::Receipt(receipt) => {
            if let Ok(receipt) = receipt.decode_unverified() {
                json.contract_id = Some(receipt.contract_id.to_string());
                json.job_id = Some(receipt.job_id.to_string());
                json.requester = Some(receipt.requester.to_string());
                json.provider = Some(receipt.provider.to_string());
                json.cost = Some(receipt.cost.micro());
                json.fuel = Some(receipt.usage.fuel);
                json.outcome = Some(match &receipt.outcome {
                    Outcome::Succeeded { exit_code, .. } => format!("succeeded (exit {exit_code})"),
                    Outcome::Failed { reason, .. } => format!("failed: {}", reason.name()),
                });
            }
        }
        EntryBody::Settlement(settlement) => {
            if let Ok(settlement) = settlement.decode_unverified() {
                json.contract_id = Some(settlement.contract_id.to_string());
                json.requester = Some(settlement.requester.to_string());
                json.provider = Some(settlement.provider.to_string());
                json.cost = Some(settlement.cost.micro());
            }
        }
        EntryBody::Failure(failure) => {
            if let Ok(failure) = failure.decode_unverified() {
                json.contract_id = Some(failure.contract_id.to_string());
                json.job_id = Some(failure.job_id.to_string());
                json.outcome = Some(format!("{:?}", failure.failure));
                json.detail = Some(format!(
                    "counterparty {}: {}",
                    failure.counterparty, failure.message
                ));
            }
        }
        EntryBody::Misbehaviour(evidence) => {
            if let Ok(evidence) = evidence.decode_unverified() {
                json.outcome = Some(format!("{:?}", evidence.kind));
                json.detail = Some(format!(
                    "offender {}: {}",
                    evidence.offender, evidence.message
                ));
            }
        }
    }
    json
}

#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    pub from: Option<u64>,
    pub limit: Option<u32>,
}

pub async fn entries(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let from = query.from.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).clamp(1, 1024);
    let ledger = state.ledger.clone();
    // Up to 1024 entries read and encoded: off the async workers.
    let entries = tokio::task::spawn_blocking(move || {
        ledger
            .range(from, limit)
            .map(|entries| entries.iter().map(entry_json).collect::<Vec<EntryJson>>())
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))?
    .map_err(|error| ApiError::Internal(error.to_string()))?;
    let head = state.ledger.head();
    Ok(axum::Json(serde_json::json!({
        "size": head.size,
        "head": head.head.to_string(),
        "entries": entries,
    })))
}

pub async fn verify(State(state): State<ApiState>) -> axum::Json<VerifyReport> {
    let ledger = state.ledger.clone();
    // Verification reads the whole ledger: off the async workers.
    let report = tokio::task::spawn_blocking(move || ledger.verify()).await;
    axum::Json(report.unwrap_or_else(|error| VerifyReport {
        ok: false,
        entries: 0,
        head: String::new(),
        error: Some(VerifyFailure {
            index: 0,
            message: format!("verification did not run: {error}"),
        }),
    }))
}

pub async fn balances(State(state): State<ApiState>) -> Result<axum::Json<Vec<Balance>>, ApiError> {
    state
        .ledger
        .balances()
        .map(axum::Json)
        .map_err(|error| ApiError::Internal(error.to_string()))
}
