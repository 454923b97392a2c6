//! A client of slurmrestd, the Slurm REST daemon: authentication (a token, or JWTs minted from
//! the cluster's key), the API version, and the few calls the node makes, read from JSON
//! tolerantly so that 22.05's v0.0.38 and 23.11+'s v0.0.40–42 shapes both work.
//!
//! The differences handled here: from v0.0.40 the batch script moves inside `job`, the
//! environment is a list of `K=V` strings, numbers that may be unset are
//! `{"set": .., "infinite": .., "number": ..}`, states are lists of flags, and the release is
//! under `meta.slurm` instead of `meta.Slurm`. Every response is read with [`number`] and
//! [`state`], which accept either form.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::clock::now_ms;
use crate::http::{error_chain, read_limited};

/// The largest answer read from slurmrestd (a `/jobs` listing of a busy cluster is large).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Every request's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a minted token is valid, and when it is replaced.
const TOKEN_LIFETIME_SECS: u64 = 600;
const TOKEN_RENEW_AFTER_SECS: u64 = 300;
/// The API versions this client speaks, newest first.
const VERSIONS: [Api; 4] = [Api::V42, Api::V41, Api::V40, Api::V38];

/// A call to slurmrestd failed: it could not be reached, refused the credentials, or answered
/// with errors. The message says which, with Slurm's own words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("slurmrestd: {0}")]
pub struct RestError(pub String);

/// How requests authenticate (`X-SLURM-USER-TOKEN`).
pub enum Auth {
    /// A token from `scontrol token`, used as is.
    Token(String),
    /// The cluster's JWT key (`AuthAltParameters=jwt_key=`): tokens are minted as needed.
    Key(Vec<u8>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Token(_) => "Auth::Token(..)",
            Auth::Key(_) => "Auth::Key(..)",
        })
    }
}

/// A REST API version of slurmrestd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V38,
    V40,
    V41,
    V42,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::V38 => "v0.0.38",
            Api::V40 => "v0.0.40",
            Api::V41 => "v0.0.41",
            Api::V42 => "v0.0.42",
        }
    }

    /// The newest version this client speaks among the OpenAPI description's paths.
    pub fn choose(openapi: &Value) -> Option<Api> {
        let paths = openapi.get("paths")?.as_object()?;
        VERSIONS.into_iter().find(|api| {
            paths.contains_key(&format!("/slurm/{}/job/submit", api.name()))
                && paths.contains_key(&format!("/slurmdb/{}/job/{{job_id}}", api.name()))
        })
    }
}

/// A compute node as `/nodes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    /// Lower-case state flags, e.g. `idle`, `mixed`, `allocated`, `down`, `drain`.
    pub states: Vec<String>,
    pub cpus: u32,
    pub alloc_cpus: u32,
    pub memory_mb: u64,
    pub alloc_memory_mb: u64,
    /// `(model, count)` of each GPU gres, and the counts in use.
    pub gpus: Vec<(String, u32)>,
    pub gpus_used: u32,
    pub partitions: Vec<String>,
}

impl NodeRecord {
    /// Whether the node can take jobs.
    pub fn usable(&self) -> bool {
        const UNUSABLE: [&str; 8] = [
            "down",
            "drain",
            "draining",
            "drained",
            "fail",
            "failing",
            "future",
            "not_responding",
        ];
        !self
            .states
            .iter()
            .any(|state| UNUSABLE.contains(&state.as_str()))
    }
}

/// One record of `/job/{id}`: the job, or one task of a job array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: u64,
    pub name: String,
    /// Upper-case, e.g. `PENDING`, `RUNNING`, `COMPLETED`, `CANCELLED`, `TIMEOUT`.
    pub state: String,
    /// The job array this record belongs to (its first job id), if any.
    pub array_job_id: Option<u64>,
    /// The array task this record is, if any.
    pub array_task_id: Option<u32>,
    /// Tasks of the array not started yet (`array_task_string`, e.g. `2-19%4`).
    pub pending_tasks: String,
}

impl JobRecord {
    pub fn is_final(&self) -> bool {
        is_final_state(&self.state)
    }
}

/// Whether a job state is one a job never leaves.
pub fn is_final_state(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "OUT_OF_MEMORY"
            | "PREEMPTED"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "REVOKED"
            | "SPECIAL_EXIT"
    )
}

/// What the accounting database holds for a finished job (all tasks of an array together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accounting {
    /// Unix seconds: the first start and the last end.
    pub start: u64,
    pub end: u64,
    /// CPUs allocated, summed over the tasks.
    pub cpus: u32,
    /// User + system CPU time of every step, summed, microseconds.
    pub cpu_us: u64,
    /// The largest resident memory of any step, bytes.
    pub peak_memory_bytes: u64,
}

/// A batch job to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub name: String,
    pub script: String,
    pub work_dir: String,
    pub stdout: String,
    pub environment: Vec<(String, String)>,
    pub partition: String,
    pub account: Option<String>,
    pub cpus_per_task: u32,
    pub memory_per_node_mb: u64,
    pub time_limit_minutes: u64,
    /// `0-19%4`: a job array of 20 tasks, at most 4 running at once.
    pub array: Option<String>,
    /// Generic resources, e.g. `gpu:1`.
    pub gres: Option<String>,
}

/// A slurmrestd endpoint and the credentials to use it.
pub struct Client {
    http: reqwest::Client,
    base: String,
    user: String,
    auth: Auth,
    api: Api,
    release: String,
    /// A minted token and when it was minted (Unix seconds).
    minted: Mutex<Option<(String, u64)>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("api", &self.api)
            .field("release", &self.release)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects: reads the OpenAPI description to choose the API version, and the release from
    /// a first call. Fails with a one-line reason when slurmrestd is unreachable, refuses the
    /// credentials or speaks no version this client knows.
    pub async fn connect(base: &str, user: &str, auth: Auth) -> Result<Client, RestError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|error| RestError(error_chain(&error)))?;
        let mut client = Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            user: user.to_owned(),
            auth,
            api: Api::V38,
            release: String::new(),
            minted: Mutex::new(None),
        };
        let openapi = client.get_raw("/openapi/v3").await?;
        client.api = Api::choose(&openapi).ok_or_else(|| {
            RestError(format!(
                "{} serves none of the REST versions this node speaks ({})",
                client.base,
                VERSIONS.map(Api::name).join(", ")
            ))
        })?;
        let ping = client.get(&client.slurm("ping")).await?;
        client.release = release(&ping).unwrap_or_else(|| "unknown".into());
        Ok(client)
    }

    pub fn api(&self) -> Api {
        self.api
    }

    /// The Slurm release, e.g. `22.05.8`.
    pub fn release(&self) -> &str {
        &self.release
    }

    fn slurm(&self, path: &str) -> String {
        format!("/slurm/{}/{path}", self.api.name())
    }

    fn slurmdb(&self, path: &str) -> String {
        format!("/slurmdb/{}/{path}", self.api.name())
    }

    /// Every compute node.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, RestError> {
        let answer = self.get(&self.slurm("nodes")).await?;
        Ok(array(&answer, "nodes").iter().map(node_record).collect())
    }

    /// The names of the partitions that are up.
    pub async fn partitions_up(&self) -> Result<Vec<String>, RestError> {
        let answer = self.get(&self.slurm("partitions")).await?;
        Ok(array(&answer, "partitions")
            .iter()
            .filter(|partition| {
                let state = partition
                    .get("state")
                    .or_else(|| partition.pointer("/partition/state"));
                state.is_none_or(|state| {
                    self::state(state).is_none_or(|state| state.eq_ignore_ascii_case("up"))
                })
            })
            .filter_map(|partition| text(partition, "name"))
            .collect())
    }

    /// Every job the controller knows (pending, running and recently ended).
    pub async fn jobs(&self) -> Result<Vec<JobRecord>, RestError> {
        let answer = self.get(&self.slurm("jobs")).await?;
        Ok(array(&answer, "jobs").iter().map(job_record).collect())
    }

    /// The records of job `id` (one per task of an array, plus one for its tasks not started);
    /// `None` when the controller does not know it (never submitted, or purged).
    pub async fn job(&self, id: u64) -> Result<Option<Vec<JobRecord>>, RestError> {
        let path = self.slurm(&format!("job/{id}"));
        let (status, answer) = self.request(reqwest::Method::GET, &path, None).await?;
        if unknown_job(&answer) {
            return Ok(None);
        }
        check(status, &answer)?;
        Ok(Some(
            array(&answer, "jobs").iter().map(job_record).collect(),
        ))
    }

    /// Submits a batch job; its id.
    pub async fn submit(&self, job: &Submission) -> Result<u64, RestError> {
        let body = submission_body(self.api, job);
        let path = self.slurm("job/submit");
        let (status, answer) = self
            .request(reqwest::Method::POST, &path, Some(body))
            .await?;
        let id = answer.get("job_id").and_then(number);
        if let Err(error) = check(status, &answer) {
            // Some refusals still create a job (held): never leave one behind.
            if let Some(id) = id {
                let _ = self.cancel(id).await;
            }
            return Err(error);
        }
        id.ok_or_else(|| RestError("the submission answer has no job id".into()))
    }

    /// Cancels job `id` (every task of an array). A job already gone is not an error.
    pub async fn cancel(&self, id: u64) -> Result<(), RestError> {
        let path = self.slurm(&format!("job/{id}"));
        let (status, answer) = self.request(reqwest::Method::DELETE, &path, None).await?;
        if unknown_job(&answer) || already_ended(&answer) {
            return Ok(());
        }
        check(status, &answer)
    }

    /// The accounting of job `id` once every task of it has ended and has its steps recorded;
    /// `None` until then.
    pub async fn accounting(&self, id: u64, tasks: u32) -> Result<Option<Accounting>, RestError> {
        let path = self.slurmdb(&format!("job/{id}"));
        let (status, answer) = self.request(reqwest::Method::GET, &path, None).await?;
        if unknown_job(&answer) {
            return Ok(None);
        }
        check(status, &answer)?;
        Ok(accounting(&answer, tasks))
    }

    /// The id of a job named `name` that the accounting recorded in the last 3 hours (the job
    /// array's id for a task of one); `None` when there is none. For a job the controller has
    /// forgotten already (a few minutes after it ended).
    pub async fn accounted_job_named(&self, name: &str) -> Result<Option<u64>, RestError> {
        let path = self.slurmdb(&format!("jobs?job_name={name}&submit_time=now-3hours"));
        let (status, answer) = self.request(reqwest::Method::GET, &path, None).await?;
        if nothing_found(&answer) {
            return Ok(None);
        }
        check(status, &answer)?;
        Ok(array(&answer, "jobs").first().map(accounted_job_id))
    }

    async fn get(&self, path: &str) -> Result<Value, RestError> {
        let (status, answer) = self.request(reqwest::Method::GET, path, None).await?;
        check(status, &answer)?;
        Ok(answer)
    }

    /// A GET whose answer has no Slurm `errors` list to check (the OpenAPI description).
    async fn get_raw(&self, path: &str) -> Result<Value, RestError> {
        let (status, answer) = self.request(reqwest::Method::GET, path, None).await?;
        if !status.is_success() {
            return Err(RestError(format!(
                "GET {path}: HTTP {status}{}",
                auth_hint(status)
            )));
        }
        Ok(answer)
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(reqwest::StatusCode, Value), RestError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("X-SLURM-USER-NAME", &self.user)
            .header("X-SLURM-USER-TOKEN", self.token()?);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|error| RestError(format!("{method} {url}: {}", error_chain(&error))))?;
        let status = response.status();
        let bytes = read_limited(&mut response, MAX_BODY_BYTES)
            .await
            .map_err(|error| RestError(format!("{method} {url}: {error}")))?;
        debug!(%method, %path, %status, bytes = bytes.len(), "slurmrestd");
        let answer = serde_json::from_slice(&bytes).map_err(|_| {
            RestError(format!(
                "{method} {path}: HTTP {status}, not JSON{}",
                auth_hint(status)
            ))
        })?;
        Ok((status, answer))
    }

    /// The token for the next request: the configured one, or a minted one renewed every few
    /// minutes.
    fn token(&self) -> Result<String, RestError> {
        let key = match &self.auth {
            Auth::Token(token) => return Ok(token.clone()),
            Auth::Key(key) => key,
        };
        let now = now_ms() / 1000;
        let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, at)) = minted.as_ref()
            && now.saturating_sub(*at) < TOKEN_RENEW_AFTER_SECS
        {
            return Ok(token.clone());
        }
        let token = mint_jwt(key, &self.user, now, TOKEN_LIFETIME_SECS);
        *minted = Some((token.clone(), now));
        Ok(token)
    }
}

/// An HS256 JWT for Slurm's `auth/jwt`: `{"iat", "exp", "sun": user}` signed with the key.
pub fn mint_jwt(key: &[u8], user: &str, now_secs: u64, lifetime_secs: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({"iat": now_secs, "exp": now_secs + lifetime_secs, "sun": user});
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(hmac_sha256(key, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// HMAC-SHA-256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn auth_hint(status: reqwest::StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => " (the user or token was refused)",
        _ => "",
    }
}

/// A number, or a v0.0.40+ `{"set": true, "number": N}` (`None` when unset or infinite).
pub fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number.as_u64(),
        Value::Object(object) => {
            let set = object.get("set").and_then(Value::as_bool).unwrap_or(true);
            let infinite = object
                .get("infinite")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            (set && !infinite)
                .then(|| object.get("number").and_then(Value::as_u64))
                .flatten()
        }
        _ => None,
    }
}

/// A state: a string, or the first flag of a v0.0.40+ list.
pub fn state(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Array(flags) => flags.first().and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn states(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => text
            .split('+')
            .map(|flag| flag.to_ascii_lowercase())
            .collect(),
        Some(Value::Array(flags)) => flags
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .collect(),
        _ => Vec::new(),
    }
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn field(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(number).unwrap_or(0)
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn release(answer: &Value) -> Option<String> {
    let meta = answer.get("meta")?;
    let slurm = meta.get("Slurm").or_else(|| meta.get("slurm"))?;
    slurm
        .get("release")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Slurm's own error messages, or the HTTP status when it gave none.
fn check(status: reqwest::StatusCode, answer: &Value) -> Result<(), RestError> {
    let errors: Vec<String> = array(answer, "errors").iter().map(error_text).collect();
    if !errors.is_empty() {
        return Err(RestError(errors.join("; ")));
    }
    if !status.is_success() {
        return Err(RestError(format!("HTTP {status}{}", auth_hint(status))));
    }
    Ok(())
}

fn error_text(error: &Value) -> String {
    let main = text(error, "error").unwrap_or_else(|| "error".into());
    match text(error, "description") {
        Some(description) if !description.is_empty() => format!("{main}: {description}"),
        _ => main,
    }
}

/// Whether one of Slurm's errors in `answer` has the error number `number` (`error_number`, or
/// `error_code` in some answers).
fn has_error(answer: &Value, number: u64) -> bool {
    array(answer, "errors").iter().any(|error| {
        error
            .get("error_number")
            .or_else(|| error.get("error_code"))
            .and_then(Value::as_u64)
            == Some(number)
    })
}

/// Slurm's "Invalid job id specified" (2017).
fn unknown_job(answer: &Value) -> bool {
    has_error(answer, 2017)
        || array(answer, "errors")
            .iter()
            .any(|error| text(error, "error").is_some_and(|text| text.contains("Invalid job id")))
}

/// The accounting's "Nothing found with query" (9003): an empty answer, not an error.
fn nothing_found(answer: &Value) -> bool {
    has_error(answer, 9003)
}

/// "Job/step already completing or completed" (2021) on a cancel.
fn already_ended(answer: &Value) -> bool {
    has_error(answer, 2021)
}

/// A job's id in the accounting, or its array's for a task of one.
fn accounted_job_id(job: &Value) -> u64 {
    match job.pointer("/array/job_id").and_then(number) {
        Some(array) if array != 0 => array,
        _ => field(job, "job_id"),
    }
}

fn node_record(node: &Value) -> NodeRecord {
    let (gpus, gpus_used) = gres_gpus(
        node.get("gres").and_then(Value::as_str).unwrap_or(""),
        node.get("gres_used").and_then(Value::as_str).unwrap_or(""),
    );
    NodeRecord {
        name: text(node, "name").unwrap_or_default(),
        states: states(node.get("state")),
        cpus: u32::try_from(field(node, "cpus")).unwrap_or(u32::MAX),
        alloc_cpus: u32::try_from(field(node, "alloc_cpus")).unwrap_or(u32::MAX),
        memory_mb: field(node, "real_memory"),
        alloc_memory_mb: field(node, "alloc_memory"),
        gpus,
        gpus_used,
        partitions: array(node, "partitions")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
    }
}

/// GPUs in a gres string such as `gpu:a100:4(S:0-1),gpu:t4:2` and how many of them are used
/// (`gpu:a100:1(IDX:0)`).
pub fn gres_gpus(gres: &str, used: &str) -> (Vec<(String, u32)>, u32) {
    let gpus = |text: &str| -> Vec<(String, u32)> {
        text.split(',')
            .filter_map(|item| {
                let item = item.split('(').next()?.trim();
                let mut parts = item.split(':');
                if parts.next()? != "gpu" {
                    return None;
                }
                let rest: Vec<&str> = parts.collect();
                match rest.as_slice() {
                    [count] => Some(("gpu".to_owned(), count.parse().ok()?)),
                    [model, count] => Some(((*model).to_owned(), count.parse().ok()?)),
                    _ => None,
                }
            })
            .collect()
    };
    let used_count = gpus(used).iter().map(|(_, count)| count).sum();
    (gpus(gres), used_count)
}

fn job_record(job: &Value) -> JobRecord {
    let array_job = field(job, "array_job_id");
    JobRecord {
        job_id: field(job, "job_id"),
        name: text(job, "name").unwrap_or_default(),
        state: job
            .get("job_state")
            .and_then(state)
            .unwrap_or_default()
            .to_ascii_uppercase(),
        array_job_id: (array_job != 0).then_some(array_job),
        array_task_id: (array_job != 0)
            .then(|| job.get("array_task_id").and_then(number))
            .flatten()
            .and_then(|id| u32::try_from(id).ok()),
        pending_tasks: text(job, "array_task_string").unwrap_or_default(),
    }
}

/// The accounting of every task together, once each has ended and has a step with its CPU
/// time (`tasks` records for an array of `tasks`).
fn accounting(answer: &Value, tasks: u32) -> Option<Accounting> {
    let jobs = array(answer, "jobs");
    if jobs.len() < usize::try_from(tasks).ok()? {
        return None;
    }
    let mut total = Accounting {
        start: u64::MAX,
        ..Accounting::default()
    };
    for job in jobs {
        let state = job.pointer("/state/current").and_then(state)?;
        let end = job.pointer("/time/end").and_then(number).unwrap_or(0);
        let steps = array(job, "steps");
        if !is_final_state(&state.to_ascii_uppercase()) || end == 0 {
            return None;
        }
        let start = job.pointer("/time/start").and_then(number).unwrap_or(0);
        // A job that never started (cancelled while pending) has no steps and used nothing.
        if start != 0 && steps.is_empty() {
            return None;
        }
        if start != 0 {
            total.start = total.start.min(start);
        }
        total.end = total.end.max(end);
        let cpus = tres(job.pointer("/tres/allocated"), "cpu");
        total.cpus = total
            .cpus
            .saturating_add(u32::try_from(cpus).unwrap_or(u32::MAX));
        for step in steps {
            let seconds_us = |path: &str| {
                step.pointer(path).map_or(0, |time| {
                    field(time, "seconds")
                        .saturating_mul(1_000_000)
                        .saturating_add(field(time, "microseconds"))
                })
            };
            total.cpu_us = total
                .cpu_us
                .saturating_add(seconds_us("/time/user"))
                .saturating_add(seconds_us("/time/system"));
            let memory = tres(step.pointer("/tres/requested/max"), "mem");
            total.peak_memory_bytes = total.peak_memory_bytes.max(memory);
        }
    }
    if total.start == u64::MAX {
        total.start = total.end;
    }
    Some(total)
}

/// The count of TRES `kind` in a list of `{"type": .., "count": ..}`.
fn tres(list: Option<&Value>, kind: &str) -> u64 {
    list.and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .find(|item| item.get("type").and_then(Value::as_str) == Some(kind))
        })
        .and_then(|item| item.get("count"))
        .and_then(number)
        .unwrap_or(0)
}

/// The JSON of a submission in `api`'s shape.
fn submission_body(api: Api, job: &Submission) -> Value {
    let set = |number: u64| json!({"set": true, "infinite": false, "number": number});
    let mut body = json!({
        "name": job.name,
        "current_working_directory": job.work_dir,
        "standard_output": job.stdout,
        "partition": job.partition,
        "cpus_per_task": job.cpus_per_task,
    });
    let object = body.as_object_mut().expect("an object");
    if let Some(account) = &job.account {
        object.insert("account".into(), json!(account));
    }
    if let Some(array) = &job.array {
        object.insert("array".into(), json!(array));
    }
    if let Some(gres) = &job.gres {
        let key = if api == Api::V38 {
            "gres"
        } else {
            "tres_per_node"
        };
        let value = if api == Api::V38 {
            gres.clone()
        } else {
            format!("gres/{gres}")
        };
        object.insert(key.into(), json!(value));
    }
    match api {
        Api::V38 => {
            let environment: serde_json::Map<String, Value> = job
                .environment
                .iter()
                .map(|(key, value)| (key.clone(), json!(value)))
                .collect();
            object.insert("environment".into(), Value::Object(environment));
            object.insert("time_limit".into(), json!(job.time_limit_minutes));
            object.insert("memory_per_node".into(), json!(job.memory_per_node_mb));
            json!({"job": body, "script": job.script})
        }
        Api::V40 | Api::V41 | Api::V42 => {
            let environment: Vec<String> = job
                .environment
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            object.insert("environment".into(), json!(environment));
            object.insert("time_limit".into(), set(job.time_limit_minutes));
            object.insert("memory_per_node".into(), set(job.memory_per_node_mb));
            object.insert("script".into(), json!(job.script));
            json!({ "job": body })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn minted_tokens_carry_the_user_and_lifetime() {
        let token = mint_jwt(b"key", "nobody", 1_000, 600);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).expect("claims");
        assert_eq!(claims, json!({"iat": 1_000, "exp": 1_600, "sun": "nobody"}));
        let signature = hmac_sha256(b"key", format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap(), signature);
    }

    #[test]
    fn numbers_and_states_in_both_shapes() {
        assert_eq!(number(&json!(7)), Some(7));
        assert_eq!(
            number(&json!({"set": true, "infinite": false, "number": 7})),
            Some(7)
        );
        assert_eq!(number(&json!({"set": false, "number": 7})), None);
        assert_eq!(
            number(&json!({"set": true, "infinite": true, "number": 0})),
            None
        );
        assert_eq!(state(&json!("RUNNING")), Some("RUNNING".into()));
        assert_eq!(
            state(&json!(["RUNNING", "REQUEUED"])),
            Some("RUNNING".into())
        );
        assert_eq!(states(Some(&json!("idle+drain"))), ["idle", "drain"]);
        assert_eq!(states(Some(&json!(["IDLE", "DRAIN"]))), ["idle", "drain"]);
    }

    #[test]
    fn chooses_the_newest_version_served() {
        let paths = |versions: &[&str]| {
            let mut paths = serde_json::Map::new();
            for version in versions {
                paths.insert(format!("/slurm/{version}/job/submit"), json!({}));
                paths.insert(format!("/slurmdb/{version}/job/{{job_id}}"), json!({}));
            }
            json!({ "paths": paths })
        };
        assert_eq!(
            Api::choose(&paths(&["v0.0.36", "v0.0.37", "v0.0.38"])),
            Some(Api::V38)
        );
        assert_eq!(
            Api::choose(&paths(&["v0.0.39", "v0.0.40", "v0.0.41"])),
            Some(Api::V41)
        );
        assert_eq!(Api::choose(&paths(&["v0.0.37"])), None);
        assert_eq!(Api::choose(&json!({})), None);
    }

    #[test]
    fn gres_gives_gpu_models_and_counts() {
        let (gpus, used) = gres_gpus("gpu:a100:4(S:0-1),gpu:t4:2,shard:8", "gpu:a100:1(IDX:0)");
        assert_eq!(gpus, [("a100".into(), 4), ("t4".into(), 2)]);
        assert_eq!(used, 1);
        assert_eq!(gres_gpus("gpu:2", ""), (vec![("gpu".into(), 2)], 0));
        assert_eq!(gres_gpus("", "").0, []);
    }

    fn sample(name: &str) -> Value {
        let path = format!("{}/testdata/slurm/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect("json")
    }

    #[test]
    fn reads_v0_0_38_answers_of_a_real_cluster() {
        let nodes: Vec<NodeRecord> = array(&sample("nodes.json"), "nodes")
            .iter()
            .map(node_record)
            .collect();
        assert_eq!(nodes.len(), 2);
        assert_eq!((nodes[0].cpus, nodes[0].memory_mb), (2, 2000));
        assert_eq!(nodes[0].partitions, ["mesh"]);
        assert!(nodes.iter().all(NodeRecord::usable));
        let array_job: Vec<JobRecord> = array(&sample("job-array-master.json"), "jobs")
            .iter()
            .map(job_record)
            .collect();
        assert!(array_job.iter().any(|job| !job.pending_tasks.is_empty()));
        assert!(array_job.iter().any(|job| job.array_task_id == Some(0)));
        // Every task names the array: what a re-attach by name must use.
        assert!(array_job.iter().all(|job| job.array_job_id == Some(3)));
        let single = accounting(&sample("dbjob.json"), 1).expect("accounting");
        assert_eq!(single.cpus, 1);
        assert!(single.cpu_us > 0 && single.peak_memory_bytes > 0);
        assert!(single.end >= single.start && single.start > 0);
        assert_eq!(accounted_job_id(&sample("dbjob.json")["jobs"][0]), 2);
        // Every task of an array names the array, whichever record comes first.
        for job in array(&sample("dbjob-array.json"), "jobs") {
            assert_eq!(accounted_job_id(job), 3);
        }
        let tasks = accounting(&sample("dbjob-array.json"), 4).expect("accounting");
        assert_eq!(tasks.cpus, 4);
        assert_eq!(accounting(&sample("dbjob-array.json"), 5), None);
    }

    #[test]
    fn submissions_in_each_shape() {
        let job = Submission {
            name: "suanli-x".into(),
            script: "#!/bin/sh\ntrue\n".into(),
            work_dir: "/tmp".into(),
            stdout: "/tmp/out".into(),
            environment: vec![("PATH".into(), "/bin".into())],
            partition: "mesh".into(),
            account: Some("mesh".into()),
            cpus_per_task: 1,
            memory_per_node_mb: 300,
            time_limit_minutes: 2,
            array: Some("0-19%4".into()),
            gres: None,
        };
        let old = submission_body(Api::V38, &job);
        assert_eq!(old["script"], json!("#!/bin/sh\ntrue\n"));
        assert_eq!(old["job"]["environment"], json!({"PATH": "/bin"}));
        assert_eq!(old["job"]["time_limit"], json!(2));
        assert_eq!(old["job"]["array"], json!("0-19%4"));
        let new = submission_body(Api::V41, &job);
        assert_eq!(new["job"]["script"], json!("#!/bin/sh\ntrue\n"));
        assert_eq!(new["job"]["environment"], json!(["PATH=/bin"]));
        assert_eq!(new["job"]["time_limit"]["number"], json!(2));
        assert!(new.get("script").is_none());
    }
}
