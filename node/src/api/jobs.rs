//! Job routes: submit, status, output, list. Handlers answer with [`JobView`]s built from the
//! market's stored records, never the records themselves.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use suanli_protocol::JobId;

use super::types::{
    EvidencePage, EvidenceQuery, EvidenceView, JobListQuery, JobPage, JobQuery, JobView,
    ReplicaView, SubmitRequest, SubmitResponse,
};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState, Who};
use crate::auth::Principal;
use crate::auth::spend::QuotaError;
use crate::market::{CancelError, JobRecord, JobStoreError, SubmitError};
use crate::submission::{Submission, SubmissionError};

fn submission(request: SubmitRequest) -> Result<Submission, ApiError> {
    Submission::from_request(request).map_err(|error| match error {
        SubmissionError::Invalid(message) => ApiError::BadRequest(message),
        SubmissionError::TooLarge(message) => ApiError::TooLarge(message),
    })
}

pub async fn submit(
    State(state): State<ApiState>,
    Who(principal): Who,
    ApiJson(request): ApiJson<SubmitRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let mut submission = submission(request)?;
    submission.api_token = principal.token_id().map(str::to_owned);
    // Held until the job is in the token's index (or refused), so that concurrent submissions
    // cannot overspend the quota together.
    let _reservation = match &principal {
        Principal::Token(record) => match record.quota_micro {
            Some(quota) => Some(
                state
                    .access
                    .spend()
                    .reserve(
                        &record.id,
                        quota,
                        // Every replica runs, and pays, on its own.
                        submission
                            .max_price
                            .micro()
                            .saturating_mul(u64::from(submission.replicas.max(1))),
                    )
                    .map_err(|error| match error {
                        QuotaError::Exhausted { .. } => {
                            ApiError::QuotaExhausted(format!("token {:?}: {error}", record.name))
                        }
                        QuotaError::Store(error) => ApiError::Internal(error.to_string()),
                    })?,
            ),
            None => None,
        },
        _ => None,
    };
    let job_id = state
        .market
        .submit(submission)
        .await
        .map_err(|error| match error {
            SubmitError::Invalid(message) => ApiError::BadRequest(message),
            SubmitError::InvalidModule(message) => ApiError::InvalidModule(message),
            SubmitError::ModuleTooComplex(message) => ApiError::ModuleTooComplex(message),
            SubmitError::CompilerBusy(message) => ApiError::Busy(message),
            SubmitError::Busy => ApiError::Busy(error.to_string()),
            SubmitError::Store(JobStoreError::Storage(error)) => ApiError::from(error),
            SubmitError::Store(error) => ApiError::Internal(error.to_string()),
            SubmitError::NotAccepting(health) => ApiError::not_accepting(health),
            SubmitError::ShuttingDown => ApiError::Unavailable,
        })?;
    Ok((StatusCode::ACCEPTED, axum::Json(SubmitResponse { job_id })))
}

fn parse_job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("not a job id: {text:?} (64 hex digits)")))
}

/// The job's record, if the principal may see it (another token's job is "no job", as is one
/// that does not exist: a token learns nothing of others' jobs).
fn record(state: &ApiState, principal: &Principal, id: &str) -> Result<JobRecord, ApiError> {
    let job_id = parse_job_id(id)?;
    state
        .market
        .jobs()
        .get(&job_id)
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .filter(|record| principal.may_see(record.api_token.as_deref()))
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

/// Longest long-poll.
pub const MAX_WAIT_MS: u64 = 60_000;

pub async fn status(
    State(state): State<ApiState>,
    Who(principal): Who,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<JobQuery>,
) -> Result<axum::Json<JobView>, ApiError> {
    let record = record(&state, &principal, &id)?;
    let Some(wait_ms) = query.wait_ms else {
        return Ok(axum::Json(view(&state, &record)));
    };
    let job_id = record.job_id;
    let waited = state
        .market
        .wait_finished(&job_id, Duration::from_millis(wait_ms.min(MAX_WAIT_MS)))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    waited
        .map(|record| axum::Json(view(&state, &record)))
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

/// `DELETE /v1/jobs/{id}`: cancels the job; `202` with the job as it was, `409` when it has
/// ended already.
pub async fn cancel(
    State(state): State<ApiState>,
    Who(principal): Who,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let job_id = record(&state, &principal, &id)?.job_id;
    state
        .market
        .cancel_job(&job_id)
        .await
        .map_err(|error| match error {
            CancelError::NotFound => ApiError::NotFound(format!("no job {id}")),
            CancelError::Final(_) => ApiError::Conflict(format!("job {id}: {error}")),
            CancelError::Store(JobStoreError::Storage(error)) => ApiError::from(error),
            CancelError::Store(error) => ApiError::Internal(error.to_string()),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(view(&state, &record(&state, &principal, &id)?)),
    ))
}

pub async fn output(
    State(state): State<ApiState>,
    Who(principal): Who,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let record = record(&state, &principal, &id)?;
    let Some(hash) = record.output_hash else {
        return Err(ApiError::NotFound(format!(
            "job {id} has no output yet (state: {:?})",
            record.state
        )));
    };
    let bytes = state
        .market
        .jobs()
        .blobs()
        .get(&hash)
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("output of job {id} is not stored")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

/// `GET /v1/jobs`: the operator's view lists every job, a token's only its own.
pub async fn list(
    State(state): State<ApiState>,
    Who(principal): Who,
    ApiQuery(query): ApiQuery<JobListQuery>,
) -> Result<axum::Json<JobPage>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let after = match query.after.as_deref() {
        Some(id) => Some(
            record(&state, &principal, id)
                .map_err(|_| ApiError::NotFound(format!("no job {id} to list after")))?
                .job_id,
        ),
        None => None,
    };
    let book = state.market.jobs();
    let jobs = match principal.token_id() {
        Some(token) => book.list_for_token(token, after.as_ref(), limit),
        None => book.list(after.as_ref(), limit),
    }
    .map_err(|error| ApiError::Internal(error.to_string()))?;
    let next = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|job| job.job_id))
        .flatten();
    Ok(axum::Json(JobPage {
        jobs: jobs.iter().map(|record| view(&state, record)).collect(),
        next,
    }))
}

/// A job's view; a replicated job's with its runs and the evidence its verdict stored.
fn view(state: &ApiState, record: &JobRecord) -> JobView {
    let mut view = JobView::from(record);
    if let (Some(replicas), Some(group)) = (view.replicas.as_mut(), record.replicas.as_ref()) {
        let book = state.market.jobs();
        replicas.runs = group
            .children
            .iter()
            .filter_map(|child| book.get(child).ok().flatten())
            .map(|child| ReplicaView::from(&child))
            .collect();
        replicas.evidence = book
            .mismatches_of(&record.job_id)
            .unwrap_or_default()
            .iter()
            .map(EvidenceView::from)
            .collect();
    }
    view
}

/// `GET /v1/evidence`: evidence against providers of replicated jobs, by job; a token sees
/// only its own jobs'.
pub async fn evidence(
    State(state): State<ApiState>,
    Who(principal): Who,
    ApiQuery(query): ApiQuery<EvidenceQuery>,
) -> Result<axum::Json<EvidencePage>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let after = query
        .after
        .as_deref()
        .map(|text| {
            hex::decode(text)
                .ok()
                .filter(|key| key.len() == 64)
                .ok_or_else(|| ApiError::BadRequest(format!("after: not a page key: {text:?}")))
        })
        .transpose()?;
    let book = state.market.jobs();
    let records = book
        .mismatch_records(after.as_deref(), limit)
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    let next = (records.len() == limit as usize)
        .then(|| records.last().map(|(key, _)| hex::encode(key)))
        .flatten();
    let evidence = records
        .iter()
        .filter(|(_, record)| {
            matches!(principal, Principal::Operator)
                || book
                    .get(&record.group)
                    .ok()
                    .flatten()
                    .is_some_and(|group| principal.may_see(group.api_token.as_deref()))
        })
        .map(|(_, record)| EvidenceView::from(record))
        .collect();
    Ok(axum::Json(EvidencePage { evidence, next }))
}
