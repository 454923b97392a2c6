//! `GET /metrics`: the node's metrics for Prometheus ([`crate::metrics`]), in the OpenMetrics
//! text format. It needs a token wherever reading balances does (it carries credit per peer).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{ApiError, ApiState};
use crate::clock::now_ms;
use crate::metrics::Scrape;

/// The content type Prometheus asks for and parses.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn metrics(State(state): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let peers = state.network.peers().await?;
    let ledger = state.ledger.stats();
    let storage = state.storage.stats();
    let market = state.market.stats();
    let load = state.market.load();
    let gossip = state.network.gossip_stats();
    let credit = state
        .ledger
        .balances()
        .map_err(|error| ApiError::Internal(error.to_string()))?
        .into_iter()
        .map(|balance| (balance.node_id, balance.net_micro))
        .collect();
    let scrape = Scrape {
        peers: peers.len() as u64,
        connections: peers.iter().map(|peer| u64::from(peer.connections)).sum(),
        mesh_nodes: state.mesh.snapshot(now_ms()).len() as u64,
        ledger_entries: state.ledger.head().size,
        ledger_appended: ledger.appended,
        storage_barriers: storage.barriers,
        storage_shared_barriers: storage.shared_barriers,
        storage_available_bytes: state.storage.available_bytes().unwrap_or_default(),
        jobs_in_flight: market.jobs_in_flight as u64,
        contracts_driven: market.contracts_driven as u64,
        notifications_pending: market.notifications_pending as u64,
        load: (
            u64::from(load.in_use),
            u64::from(load.slots),
            u64::from(load.capacity),
        ),
        gossip_accepted: gossip.accepted,
        gossip_ignored: gossip.ignored,
        gossip_rejected: gossip.rejected,
        gossip_received_bytes: gossip.received_bytes,
        gossip_published: gossip.published,
        gossip_published_bytes: gossip.published_bytes,
        credit,
        sessions_served: state.market.sessions_served() as u64,
    };
    let text = state
        .metrics
        .encode(&scrape)
        .map_err(|_| ApiError::Internal("the metrics could not be encoded".into()))?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text))
}
