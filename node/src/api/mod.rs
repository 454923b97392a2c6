//! The HTTP API (axum): JSON everywhere, errors as `{"error":{"code","message"}}`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `{"status":"ok"}` |
//! | `GET /v1/node` | this node: id, version, listen addresses, capacity, uptime |
//! | `GET /v1/peers` | connected peers |
//! | `GET /v1/mesh` | every node in the capacity view (this one included) |
//!
//! Handlers only read shared state or ask the network task; they never block it.

mod error;

use std::time::Instant;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use suanli_protocol::{CapacityAdvert, Gpu, NodeId};

pub use error::ApiError;

use crate::capacity::Capacity;
use crate::clock::now_ms;
use crate::mesh::{MeshEntry, MeshView};
use crate::network::{GossipStats, NetworkHandle, PeerInfo};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub node_id: NodeId,
    pub started: Instant,
    pub capacity: Capacity,
    pub mesh: MeshView,
    pub network: NetworkHandle,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/node", get(node))
        .route("/v1/peers", get(peers))
        .route("/v1/mesh", get(mesh))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
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
        capacity: ResourcesJson {
            cpu_cores: capacity.total.cpu_cores,
            memory_bytes: capacity.total.memory_bytes,
            gpus: gpus_json(&capacity.total.gpus),
        },
        executors: capacity.executors.iter().map(|kind| kind.name()).collect(),
        prices: PricesJson {
            base: capacity.prices.base.micro(),
            per_million_fuel: capacity.prices.per_million_fuel.micro(),
        },
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
            free: ResourcesJson {
                cpu_cores: advert.free.cpu_cores,
                memory_bytes: advert.free.memory_bytes,
                gpus: gpus_json(&advert.free.gpus),
            },
            executors: advert.executors.iter().map(|kind| kind.name()).collect(),
            prices: PricesJson {
                base: advert.prices.base.micro(),
                per_million_fuel: advert.prices.per_million_fuel.micro(),
            },
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
