//! Job routes: submit, status, output, list. Handlers answer with [`JobView`]s built from the
//! market's stored records, never the records themselves.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use suanli_protocol::JobId;
use tokio::sync::broadcast;

use super::types::{
    EvidencePage, EvidenceQuery, EvidenceView, JobEventView, JobListQuery, JobPage, JobQuery,
    JobView, ReplicaView, SubmitRequest, SubmitResponse,
};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiState, Who};
use crate::auth::Principal;
use crate::auth::spend::QuotaError;
use crate::market::events::Announced;
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

/// `GET /v1/jobs/{id}/events`: the job's steps as server-sent events. The first event is a
/// `snapshot` (the job's [`JobView`] as it stands); then every step as it happens, named as its
/// [`JobEvent`] (`quote`, `offer`, `decline`, `contract`, `running`, `receipt`, `settlement`,
/// `failover`; a replicated job's stream carries its runs' steps, each with the run's `job_id`);
/// the last is `end`, the final [`JobView`], after which the stream closes. A reader that falls
/// behind gets a new `snapshot`; a job already final answers `end` at once. Comments keep the
/// connection alive every 15 s; the stream also ends when the node stops.
pub async fn events(
    State(state): State<ApiState>,
    Who(principal): Who,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribed before the job is read for its snapshot: nothing between the two is missed.
    let live = state.market.job_events().subscribe();
    let finished = state.market.subscribe_finished();
    let first = record(&state, &principal, &id)?;
    let follow = Follow {
        live,
        finished,
        state,
        job_id: first.job_id,
        first: Some(first),
        next_id: 0,
        phase: Phase::Snapshot,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok(event), follow))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One reader of a job's events.
struct Follow {
    state: ApiState,
    job_id: JobId,
    /// The record read when the reader connected: its first snapshot.
    first: Option<JobRecord>,
    live: broadcast::Receiver<Arc<Announced>>,
    finished: broadcast::Receiver<JobId>,
    /// The SSE id of the next event.
    next_id: u64,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Send the job as it stands (at the start, and after falling behind).
    Snapshot,
    Live,
    /// The job was announced final: send the steps still queued, then the `end`.
    Draining,
    Done,
}

impl Follow {
    async fn next(&mut self) -> Option<Event> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Snapshot => return self.snapshot(),
                // Its last steps were announced before it was: send those still queued first.
                Phase::Draining => match self.live.try_recv() {
                    Ok(announced) if announced.concerns(&self.job_id) => {
                        return Some(self.step(&announced));
                    }
                    Ok(_) => continue,
                    Err(_) => {
                        self.phase = Phase::Snapshot;
                        continue;
                    }
                },
                Phase::Live => {}
            }
            tokio::select! {
                announced = self.live.recv() => match announced {
                    Ok(announced) if announced.concerns(&self.job_id) => {
                        return Some(self.step(&announced));
                    }
                    Ok(_) => {}
                    Err(_) => self.phase = Phase::Snapshot,
                },
                finished = self.finished.recv() => match finished {
                    Ok(id) if id != self.job_id => {}
                    // Ours, or announcements were missed.
                    _ => self.phase = Phase::Draining,
                },
                () = self.state.market.stopping().cancelled() => self.phase = Phase::Done,
            }
        }
    }

    /// The job as it stands: `snapshot`, or `end` when it is final (or gone).
    fn snapshot(&mut self) -> Option<Event> {
        let read = match self.first.take() {
            Some(first) => Ok(Some(first)),
            None => self.state.market.jobs().get(&self.job_id),
        };
        let record = match read {
            Ok(Some(record)) => record,
            Ok(None) | Err(_) => {
                self.phase = Phase::Done;
                return None;
            }
        };
        let name = if record.state.is_final() {
            self.phase = Phase::Done;
            "end"
        } else {
            self.phase = Phase::Live;
            "snapshot"
        };
        Some(self.event(name, &view(&self.state, &record)))
    }

    fn step(&mut self, announced: &Announced) -> Event {
        let data = JobEventView {
            job_id: announced.job_id,
            event: announced.event.clone(),
        };
        self.event(announced.event.name(), &data)
    }

    fn event(&mut self, name: &str, data: &impl serde::Serialize) -> Event {
        let id = self.next_id;
        self.next_id += 1;
        let json = serde_json::to_string(data).unwrap_or_else(|error| {
            format!(r#"{{"error":{{"code":"internal","message":"{error}"}}}}"#)
        });
        Event::default().event(name).id(id.to_string()).data(json)
    }
}
