//! The HTTP API (axum): JSON everywhere, errors as `{"error":{"code","message"}}`.
//!
//! Every request and answer is a type of [`types`] (the route → type table is there): handlers
//! serialize those types and clients — the CLI first — deserialize the same ones, so a field is
//! renamed in one place or not at all. Handlers answer with views built from the node's state
//! (a job's [`types::JobView`] from its stored record), never with stored records themselves.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the web console (HTML; its script and style under `/console/`) |
//! | `GET /healthz` | `{"status":"ok"}` |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text) |
//! | `GET /v1/node` | this node: id, version, listen addresses, capacity, uptime, storage health |
//! | `GET /v1/peers` | connected peers, each with its standing in this node's ledger and why |
//! | `GET /v1/mesh` | every node in the capacity view (this one included) |
//! | `POST /v1/jobs` | submit a job → `202 {"job_id"}` |
//! | `GET /v1/jobs` | jobs submitted here, paged |
//! | `GET /v1/jobs/{id}` | one job: state, provider, contract, usage, cost, attempts |
//! | `GET /v1/jobs/{id}/output` | its raw stdout |
//! | `GET /v1/jobs/{id}/events` | its steps as they happen (server-sent events) |
//! | `GET /v1/evidence` | evidence against providers of replicated jobs whose result differed |
//! | `GET /v1/ledger` | ledger entries (`from`, `limit`) |
//! | `GET /v1/ledger/verify` | full verification of chain and signatures |
//! | `GET /v1/ledger/entry/{index}` | one entry as JSON, or `?raw=1` its stored bytes |
//! | `GET /v1/ledger/proof/inclusion` | inclusion proof (`index`, `size`) |
//! | `GET /v1/ledger/proof/consistency` | consistency proof (`from`, `to`) |
//! | `GET /v1/ledger/checkpoint` | the latest signed checkpoint (C2SP signed note, text) |
//! | `GET /v1/ledger/witnessed` | the checkpoints held for other nodes |
//! | `GET /v1/ledger/equivocations` | equivocation proofs held |
//! | `GET /v1/ledger/audit?peer=` | audit of a peer's ledger against this one |
//! | `GET /v1/balances` | net credits per peer, from settlements |
//! | `GET /v1/tokens` | API tokens and their spending (a token sees only itself) |
//! | `GET /v1/sessions` | standing contracts (model sessions) open here, either side |
//! | `GET /v1/models` | models the mesh offers (OpenAI's shape, with a `suanli` object) |
//! | `POST /v1/chat/completions` | an OpenAI chat completion, streamed (SSE) or not, routed to the mesh |
//! | `POST /v1/completions` | an OpenAI text completion, likewise |
//! | `GET /v1/openapi.json` | this API's OpenAPI 3.1 document, generated from [`types`] ([`openapi`]) |
//!
//! The three OpenAI routes answer errors in OpenAI's shape (`{"error":{"message","type","param",
//! "code"}}`, [`openai`]).
//!
//! Handlers only read shared state or ask the network task and the market; they never block them,
//! and never hand out a stored record as an answer.

mod access;
mod console;
mod error;
mod jobs;
pub mod ledger;
mod metrics;
pub mod openai;
pub mod openapi;
pub mod serve;
mod transparency;
pub mod types;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use suanli_protocol::{CapacityAdvert, NodeId};

pub use console::PATHS as CONSOLE_PATHS;
pub use error::ApiError;
use types::{
    ClusterView, ExecutorName, GpuView, HealthStatus, HealthView, MeshNodeView, ModelView,
    NodeView, PeerInfo, PricesView, ResourcesView, SessionView, StorageState, StorageView,
};

use crate::auth::{Access, Principal};
use crate::capacity::Capacity;
use crate::clock::now_ms;
use crate::ledger::LedgerHandle;
use crate::market::Market;
use crate::mesh::{MeshEntry, MeshView};
use crate::network::NetworkHandle;
use crate::storage::{Health, Storage};
use crate::transparency::Transparency;

/// Largest request body: a base64 module and stdin at their caps, with room for the rest.
pub const MAX_BODY_BYTES: usize = 24 * 1024 * 1024;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub node_id: NodeId,
    pub started: Instant,
    pub capacity: Capacity,
    pub mesh: MeshView,
    pub network: NetworkHandle,
    pub market: Market,
    pub ledger: LedgerHandle,
    pub storage: Storage,
    pub transparency: Transparency,
    pub tokens: crate::tokens::Router,
    pub access: Access,
    pub metrics: crate::metrics::Metrics,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/node", get(node))
        .route("/v1/peers", get(peers))
        .route("/v1/mesh", get(mesh))
        .route("/v1/jobs", get(jobs::list).post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::status).delete(jobs::cancel))
        .route("/v1/jobs/{id}/output", get(jobs::output))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/evidence", get(jobs::evidence))
        .merge(console::routes())
        .merge(ledger::routes())
        .merge(openai::routes())
        .route("/v1/ledger/checkpoint", get(transparency::checkpoint))
        .route("/v1/ledger/witnessed", get(transparency::witnessed))
        .route("/v1/ledger/equivocations", get(transparency::equivocations))
        .route("/v1/ledger/audit", get(transparency::audit))
        .route("/v1/tokens", get(access::tokens))
        .route("/v1/sessions", get(sessions))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Every request, unknown routes included, passes the access guard first.
        .layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            crate::auth::guard::guard,
        ))
        .with_state(state)
}

/// A query string whose rejections are [`ApiError`]s (400 with a JSON body).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// Who is asking, as the access guard ([`crate::auth::guard`]) found; a request no guard saw is
/// refused (500), never served as anyone.
#[derive(Debug, Clone)]
pub struct Who(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Who)
            .ok_or_else(|| ApiError::Internal("no access check ran for this request".into()))
    }
}

/// A path parameter whose rejections (e.g. `/v1/jobs/%FF`, not UTF-8 once decoded) are
/// [`ApiError`]s (400 with a JSON body).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// A JSON body whose rejections (bad JSON, wrong type, too large, too slow) are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                let essence = value.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case("application/json")
                    || (essence.starts_with("application/") && essence.ends_with("+json"))
            });
        if !json {
            return Err(ApiError::BadRequest(
                "expected a JSON body with `Content-Type: application/json`".into(),
            ));
        }
        let body = read_body(request, MAX_BODY_BYTES)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge => {
                    ApiError::TooLarge(format!("request body exceeds {MAX_BODY_BYTES} bytes"))
                }
                BodyError::Timeout(limit) => ApiError::RequestTimeout(format!(
                    "the request body did not arrive within {} s",
                    limit.as_secs()
                )),
                BodyError::Failed(message) => ApiError::BadRequest(message),
            })?;
        Json::<T>::from_bytes(&body)
            .map(|Json(value)| ApiJson(value))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// Longest time a body may take where no guard set a deadline (handler tests).
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    /// It did not arrive before the request's deadline (this long after its head).
    Timeout(std::time::Duration),
    Failed(String),
}

/// Reads a whole request body of at most `max` bytes before the request's deadline
/// ([`crate::auth::guard::BodyDeadline`]): a client that sends a head and then trickles or
/// withholds its body holds a connection only that long.
pub async fn read_body(request: Request, max: usize) -> Result<axum::body::Bytes, BodyError> {
    let left = crate::auth::guard::body_time_left(&request, DEFAULT_BODY_TIMEOUT);
    let limit = request
        .extensions()
        .get::<crate::auth::guard::BodyDeadline>()
        .map_or(DEFAULT_BODY_TIMEOUT, |_| left);
    let reading = async {
        let request = refuse_announced_too_large(request, max)
            .await
            .map_err(|()| BodyError::TooLarge)?;
        let mut body = request.into_body().into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut body).await {
            let chunk = chunk
                .map_err(|error| BodyError::Failed(format!("reading the request body: {error}")))?;
            if bytes.len() + chunk.len() > max {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(axum::body::Bytes::from(bytes))
    };
    tokio::time::timeout(left, reading)
        .await
        .unwrap_or(Err(BodyError::Timeout(limit)))
}

/// Most of a refused body read (and dropped) so that its sender gets to read the answer.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;
/// Longest time spent reading a refused body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Refuses a request whose `Content-Length` announces more than `max` bytes, without keeping a
/// byte of it. The body is read and dropped (at most [`DRAIN_BYTES`], for at most
/// [`DRAIN_TIME`]) before the refusal is answered: a client still sending when the connection
/// closes gets a broken pipe instead of the answer (seen with reqwest and Python's clients).
pub(crate) async fn refuse_announced_too_large(
    request: Request,
    max: usize,
) -> Result<Request, ()> {
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if announced.is_none_or(|length| length <= max as u64) {
        return Ok(request);
    }
    let drain = async {
        let mut body = request.into_body().into_data_stream();
        let mut read = 0usize;
        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
            read = read.saturating_add(chunk.len());
            if read > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    Err(())
}

async fn healthz() -> Json<HealthView> {
    Json(HealthView {
        status: HealthStatus::Ok,
    })
}

fn storage_view(storage: &Storage) -> StorageView {
    let health = storage.current_health();
    let (state, reason) = match &health {
        Health::Healthy => (StorageState::Healthy, None),
        Health::DiskFull { .. } => (StorageState::DiskFull, None),
        Health::Failed { reason } => (StorageState::Failed, Some(reason.clone())),
    };
    StorageView {
        state,
        accepting: health.is_accepting(),
        available_bytes: storage.available_bytes(),
        min_free_bytes: storage.min_free_bytes(),
        resume_free_bytes: storage.resume_free_bytes(),
        reason,
    }
}

async fn node(State(state): State<ApiState>) -> Result<Json<NodeView>, ApiError> {
    let listen_addrs = state.network.listen_addrs().await?;
    let capacity = &state.capacity;
    Ok(Json(NodeView {
        node_id: state.node_id,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        listen_addrs: listen_addrs.iter().map(ToString::to_string).collect(),
        region: capacity.region.clone(),
        capacity: ResourcesView::from(&capacity.total),
        executors: capacity
            .executors
            .iter()
            .copied()
            .map(ExecutorName::from)
            .collect(),
        prices: PricesView::from(capacity.prices),
        uptime_ms: u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        gossip: state.network.gossip_stats(),
        storage: storage_view(&state.storage),
        market: state.market.stats(),
    }))
}

async fn peers(State(state): State<ApiState>) -> Result<Json<Vec<PeerInfo>>, ApiError> {
    let mut peers = state.network.peers().await?;
    for peer in &mut peers {
        if let Ok(node) = peer.node_id.parse::<suanli_protocol::NodeId>() {
            peer.standing = Some(state.market.reputation().standing(&node));
        }
    }
    Ok(Json(peers))
}

fn mesh_node_view(entry: &MeshEntry, now_ms: u64) -> MeshNodeView {
    let advert: &CapacityAdvert = &entry.advert;
    MeshNodeView {
        node_id: advert.node,
        age_ms: now_ms.saturating_sub(advert.issued_at_ms),
        expires_in_ms: advert.expires_at_ms().saturating_sub(now_ms),
        seq: advert.seq,
        region: advert.region.clone(),
        cpu_cores: advert.total.cpu_cores,
        memory_bytes: advert.total.memory_bytes,
        gpus: advert.total.gpus.iter().map(GpuView::from).collect(),
        free: ResourcesView::from(&advert.free),
        executors: advert
            .executors
            .iter()
            .copied()
            .map(ExecutorName::from)
            .collect(),
        prices: PricesView::from(advert.prices),
        load: f64::from(advert.load_permille) / 1000.0,
        listen_addrs: advert.listen_addrs.clone(),
        version: advert.software_version.clone(),
        models: advert.models.iter().map(ModelView::from).collect(),
        cluster: advert.cluster.as_ref().map(ClusterView::from),
    }
}

async fn sessions(State(state): State<ApiState>) -> Json<Vec<SessionView>> {
    Json(state.tokens.session_views())
}

async fn mesh(State(state): State<ApiState>) -> Json<Vec<MeshNodeView>> {
    let now = now_ms();
    Json(
        state
            .mesh
            .snapshot(now)
            .iter()
            .map(|entry| mesh_node_view(entry, now))
            .collect(),
    )
}
