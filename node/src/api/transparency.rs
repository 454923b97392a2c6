//! Checkpoints, witnessing, equivocations and audits over HTTP.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use suanli_protocol::NodeId;

use super::types::{AuditQuery, AuditReport, DiscrepancyIssue, EquivocationRecord, Witnessed};
use super::{ApiError, ApiQuery, ApiState};
use crate::transparency::AuditError;

/// `GET /v1/ledger/checkpoint`: the latest signed checkpoint as a C2SP signed note (text).
pub async fn checkpoint(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let latest = state.transparency.latest().ok_or_else(|| {
        ApiError::NotFound("no checkpoint published yet; the first follows within seconds".into())
    })?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        latest.into_note(),
    ))
}

/// `GET /v1/ledger/witnessed`: the latest checkpoint held for every other node.
pub async fn witnessed(State(state): State<ApiState>) -> axum::Json<Vec<Witnessed>> {
    axum::Json(state.transparency.witnessed())
}

/// `GET /v1/ledger/equivocations`: the equivocation proofs this node holds.
pub async fn equivocations(State(state): State<ApiState>) -> axum::Json<Vec<EquivocationRecord>> {
    axum::Json(state.transparency.equivocations())
}

/// `GET /v1/ledger/audit?peer=NODE_ID`: audits the peer's ledger against this node's.
pub async fn audit(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<axum::Json<AuditReport>, ApiError> {
    let peer: NodeId = query
        .peer
        .parse()
        .map_err(|error| ApiError::BadRequest(format!("peer {:?}: {error}", query.peer)))?;
    match state.transparency.audit(peer).await {
        Ok(mut report) => {
            // Documents missing on either side are exchanged with the peer, so the next audit
            // agrees (a document that *differs* is a conflict to look at, not to overwrite).
            let missing = report
                .discrepancy_list
                .iter()
                .filter(|item| item.issue != DiscrepancyIssue::Differs)
                .filter_map(|item| item.contract_id.parse().ok());
            report.repairs_requested = state.market.reconcile(missing) as u64;
            Ok(axum::Json(report))
        }
        Err(error @ AuditError::SelfAudit) => Err(ApiError::BadRequest(error.to_string())),
        Err(error @ AuditError::Local(_)) => Err(ApiError::Internal(error.to_string())),
        Err(error) => Err(ApiError::PeerFailed(error.to_string())),
    }
}
