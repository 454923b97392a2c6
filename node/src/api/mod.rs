//! The HTTP API (axum): JSON everywhere, errors as `{"error":{"code","message"}}`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `{"status":"ok"}` |
//! | `GET /v1/node` | this node: id, version, listen addresses, capacity, uptime |
//! | `GET /v1/peers` | connected peers |
//! | `GET /v1/mesh` | every node in the capacity view (this one included) |
//! | `POST /v1/jobs` | submit a job → `202 {"job_id"}` |
//! | `GET /v1/jobs` | jobs submitted here, paged |
//! | `GET /v1/jobs/{id}` | one job: state, provider, contract, usage, cost, attempts |
//! | `GET /v1/jobs/{id}/output` | its raw stdout |
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
//!
//! Handlers only read shared state or ask the network task and the market; they never block them.

mod error;
mod jobs;
pub mod ledger;
mod transparency;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use suanli_protocol::{CapacityAdvert, Gpu, NodeId, PriceTerms, Resources};

pub use error::ApiError;

use crate::capacity::Capacity;
use crate::clock::now_ms;
use crate::ledger::LedgerHandle;
use crate::market::Market;
use crate::mesh::{MeshEntry, MeshView};
use crate::network::{GossipStats, NetworkHandle, PeerInfo};
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
    pub transparency: Transparency,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/node", get(node))
        .route("/v1/peers", get(peers))
        .route("/v1/mesh", get(mesh))
        .route("/v1/jobs", get(jobs::list).post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::status))
        .route("/v1/jobs/{id}/output", get(jobs::output))
        .merge(ledger::routes())
        .route("/v1/ledger/checkpoint", get(transparency::checkpoint))
        .route("/v1/ledger/witnessed", get(transparency::witnessed))
        .route("/v1/ledger/equivocations", get(transparency::equivocations))
        .route("/v1/ledger/audit", get(transparency::audit))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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

/// A JSON body whose rejections (bad JSON, wrong type, too large) are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge(format!(
                    "request body exceeds {MAX_BODY_BYTES} bytes"
                )))
            }
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Resources as JSON.
#[derive(Debug, Serialize)]
pub struct ResourcesJson {
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<GpuJson>,
}

#[derive(Debug, Serialize)]
pub struct GpuJson {
    pub model: String,
    pub memory_bytes: u64,
    pub count: u32,
}

fn gpus_json(gpus: &[Gpu]) -> Vec<GpuJson> {
    gpus.iter()
        .map(|gpu| GpuJson {
            model: gpu.model.clone(),
            memory_bytes: gpu.memory_bytes,
            count: gpu.count,
        })
        .collect()
}

impl From<&Resources> for ResourcesJson {
    fn from(resources: &Resources) -> Self {
        ResourcesJson {
            cpu_cores: resources.cpu_cores,
            memory_bytes: resources.memory_bytes,
            gpus: gpus_json(&resources.gpus),
        }
    }
}

impl From<PriceTerms> for PricesJson {
    fn from(prices: PriceTerms) -> Self {
        PricesJson {
            base: prices.base.micro(),
            per_million_fuel: prices.per_million_fuel.micro(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PricesJson {
    /// Micro-credits per job.
    pub base: u64,
    /// Micro-credits per million fuel.
    pub per_million_fuel: u64,
}

#[derive(Debug, Serialize)]
struct NodeJson {
    node_id: String,
    version: &'static str,
    listen_addrs: Vec<String>,
    region: String,
    capacity: ResourcesJson,
    executors: Vec<&'static str>,
    prices: PricesJson,
    uptime_ms: u64,
    /// Received adverts by verdict.
    gossip: GossipStats,
}

async fn node(State(state): State<ApiState>) -> Result<Json<NodeJson>, ApiError> {
    let listen_addrs = state.network.listen_addrs().await?;
    let capacity = &state.capacity;
    Ok(Json(NodeJson {
        node_id: state.node_id.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        listen_addrs: listen_addrs.iter().map(ToString::to_string).collect(),
        region: capacity.region.clone(),
        capacity: ResourcesJson::from(&capacity.total),
        executors: capacity.executors.iter().map(|kind| kind.name()).collect(),
        prices: PricesJson::from(capacity.prices),
        uptime_ms: u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        gossip: state.network.gossip_stats(),
    }))
}

async fn peers(State(state): State<ApiState>) -> Result<Json<Vec<PeerInfo>>, ApiError> {
    Ok(Json(state.network.peers().await?))
}

/// One node of the capacity view.
#[derive(Debug, Serialize)]
pub struct MeshNodeJson {
    pub node_id: String,
    /// Milliseconds since the advert was issued (by the sender's clock).
    pub age_ms: u64,
    /// Milliseconds until the advert expires.
    pub expires_in_ms: u64,
    pub seq: u64,
    pub region: String,
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<GpuJson>,
    pub free: ResourcesJson,
    pub executors: Vec<&'static str>,
    pub prices: PricesJson,
    /// Share of capacity in use, 0.0–1.0.
    pub load: f64,
    pub listen_addrs: Vec<String>,
    pub version: String,
}

impl MeshNodeJson {
    fn new(entry: &MeshEntry, now_ms: u64) -> MeshNodeJson {
        let advert: &CapacityAdvert = &entry.advert;
        MeshNodeJson {
            node_id: advert.node.to_string(),
            age_ms: now_ms.saturating_sub(advert.issued_at_ms),
            expires_in_ms: advert.expires_at_ms().saturating_sub(now_ms),
            seq: advert.seq,
            region: advert.region.clone(),
            cpu_cores: advert.total.cpu_cores,
            memory_bytes: advert.total.memory_bytes,
            gpus: gpus_json(&advert.total.gpus),
            free: ResourcesJson::from(&advert.free),
            executors: advert.executors.iter().map(|kind| kind.name()).collect(),
            prices: PricesJson::from(advert.prices),
            load: f64::from(advert.load_permille) / 1000.0,
            listen_addrs: advert.listen_addrs.clone(),
            version: advert.software_version.clone(),
        }
    }
}

async fn mesh(State(state): State<ApiState>) -> Json<Vec<MeshNodeJson>> {
    let now = now_ms();
    Json(
        state
            .mesh
            .snapshot(now)
            .iter()
            .map(|entry| MeshNodeJson::new(entry, now))
            .collect(),
    )
}
