//! Job routes: submit, status, output, list. Handlers answer with [`JobView`]s built from the
//! market's stored records, never the records themselves.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use suanli_protocol::JobId;

use super::types::{JobListQuery, JobPage, JobQuery, JobView, SubmitRequest, SubmitResponse};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState};
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
    ApiJson(request): ApiJson<SubmitRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let submission = submission(request)?;
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

fn record(state: &ApiState, id: &str) -> Result<JobRecord, ApiError> {
    let job_id = parse_job_id(id)?;
    state
        .market
        .jobs()
        .get(&job_id)
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

/// Longest long-poll.
pub const MAX_WAIT_MS: u64 = 60_000;

pub async fn status(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<JobQuery>,
) -> Result<axum::Json<JobView>, ApiError> {
    let Some(wait_ms) = query.wait_ms else {
        return Ok(axum::Json(JobView::from(record(&state, &id)?)));
    };
    let job_id = parse_job_id(&id)?;
    let waited = state
        .market
        .wait_finished(&job_id, Duration::from_millis(wait_ms.min(MAX_WAIT_MS)))
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    waited
        .map(|record| axum::Json(JobView::from(record)))
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

/// `DELETE /v1/jobs/{id}`: cancels the job; `202` with the job as it was, `409` when it has
/// ended already.
pub async fn cancel(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let job_id = parse_job_id(&id)?;
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
        axum::Json(JobView::from(record(&state, &id)?)),
    ))
}

pub async fn output(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let record = record(&state, &id)?;
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

pub async fn list(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<JobListQuery>,
) -> Result<axum::Json<JobPage>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let after = query.after.as_deref().map(parse_job_id).transpose()?;
    if let Some(after) = &after
        && state
            .market
            .jobs()
            .get(after)
            .map_err(|error| ApiError::Internal(error.to_string()))?
            .is_none()
    {
        return Err(ApiError::NotFound(format!("no job {after} to list after")));
    }
    let jobs = state
        .market
        .jobs()
        .list(after.as_ref(), limit)
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    let next = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|job| job.job_id))
        .flatten();
    Ok(axum::Json(JobPage {
        jobs: jobs.iter().map(JobView::from).collect(),
        next,
    }))
}
