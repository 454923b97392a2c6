//! AI tokens: the models a node serves to the mesh ([`serve`]), and every node as an
//! OpenAI-compatible endpoint that routes requests to them ([`route`]), each request metered in a
//! usage receipt both parties sign, under standing contracts (docs/rfcs/006-tokens.md).
//!
//! ```text
//!  HTTP /v1/chat/completions ─▶ Router ─ standing contract? ─no─▶ Market::open_session (one
//!                                  │                               negotiation, RFC 005)
//!                                  └─ /suanli/tokens/1 stream ─▶ Serving (provider) ─▶ candle
//!                                       Generate, Text…, Done(receipt), Countersigned     or upstream
//! ```

pub mod route;
pub mod serve;

use std::path::Path;

use suanli_protocol::Credits;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use route::{Completed, Generating, MeshModel, Replicated, RouteError, Router, RouterParts};
pub use serve::{Offered, Serving, ServingParts};

/// A standing contract (a model session) open at this node, as `GET /v1/sessions` shows it.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct SessionView {
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub contract_id: suanli_protocol::ContractId,
    /// This node's side: it sends requests under it, or serves them.
    pub side: SessionSide,
    /// The other party.
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub peer: suanli_protocol::NodeId,
    pub model: String,
    /// Tokens the contract covers.
    pub budget_tokens: u64,
    /// Tokens of its receipts both parties signed.
    pub used_tokens: u64,
    /// Tokens held by requests in flight (their prompt bound plus `max_tokens`).
    pub reserved_tokens: u64,
    /// Requests in flight under it now.
    pub in_flight: u32,
    /// No longer taking requests: being closed (its settlement is on its way).
    pub closing: bool,
}

/// Which side of a standing contract this node is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SessionSide {
    Requester,
    Provider,
}

use crate::config::ModelConfig;
use crate::inference::{self, InferenceError};
use crate::network::NetworkHandle;

/// Loads every configured model (a file, or an upstream server); the first that fails is the
/// node's start-up error.
pub async fn load_models(models: &[ModelConfig]) -> Result<Vec<Offered>, ModelError> {
    let mut offered = Vec::with_capacity(models.len());
    for config in models {
        let started = std::time::Instant::now();
        let model = if config.is_upstream() {
            inference::upstream::connect(&config.name, &config.source).await
        } else {
            let (name, path) = (config.name.clone(), config.source.clone());
            tokio::task::spawn_blocking(move || inference::candle::load(&name, Path::new(&path)))
                .await
                .map_err(|error| InferenceError::Failed(error.to_string()))
                .and_then(|loaded| loaded)
        }
        .map_err(|source| ModelError {
            name: config.name.clone(),
            from: config.source.clone(),
            error: source,
        })?;
        info!(
            model = %model.name,
            family = %model.family,
            context = model.context,
            quantisation = %model.quantisation,
            sha256 = %model.sha256,
            decode_tokens_per_s = model.decode_tokens_per_s,
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        offered.push(Offered {
            model,
            per_million_prompt: Credits(config.price_per_million_prompt),
            per_million_completion: Credits(config.price_per_million_completion),
        });
    }
    Ok(offered)
}

/// A model that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("model {name} from {from}: {error}")]
pub struct ModelError {
    pub name: String,
    pub from: String,
    pub error: InferenceError,
}

/// Inbound token streams served at once; more are closed at once (the requester fails over).
pub const MAX_INBOUND_STREAMS: usize = 256;
/// Inbound token streams one peer may have open at once, so that one peer cannot take every
/// place (nor the frame buffers of all of them: about 1 MiB each).
pub const MAX_INBOUND_STREAMS_PER_PEER: usize = 32;

/// Open streams per peer, each counted until its [`PeerSlot`] is dropped.
#[derive(Debug, Default)]
struct PeerSlots {
    open: std::sync::Mutex<std::collections::HashMap<suanli_protocol::NodeId, usize>>,
}

impl PeerSlots {
    /// A place for one more stream of `peer`, unless it has [`MAX_INBOUND_STREAMS_PER_PEER`].
    fn take(self: &std::sync::Arc<Self>, peer: suanli_protocol::NodeId) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(peer).or_default();
        if *count >= MAX_INBOUND_STREAMS_PER_PEER {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            slots: self.clone(),
            peer,
        })
    }
}

/// One peer's place for one stream; given back when dropped.
struct PeerSlot {
    slots: std::sync::Arc<PeerSlots>,
    peer: suanli_protocol::NodeId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Accepts inbound token streams and serves each on its own task until `cancel`, at most
/// [`MAX_INBOUND_STREAMS`] at once and [`MAX_INBOUND_STREAMS_PER_PEER`] of one peer.
pub async fn accept_streams(network: NetworkHandle, serving: Serving, cancel: CancellationToken) {
    let mut incoming = match network.accept_token_streams() {
        Ok(incoming) => incoming,
        Err(error) => {
            tracing::error!(%error, "cannot accept token streams");
            return;
        }
    };
    let tasks = tokio_util::task::TaskTracker::new();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND_STREAMS));
    let peers = std::sync::Arc::new(PeerSlots::default());
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            stream = incoming.next() => stream,
        };
        let Some(stream) = stream else { break };
        let Some(slot) = peers.take(stream.peer()) else {
            tracing::warn!(peer = %stream.peer(), "too many token streams from one peer; one refused");
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(peer = %stream.peer(), "too many token streams; one refused");
            continue;
        };
        let serving = serving.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = serving.serve_stream(stream) => {}
                () = cancel.cancelled() => {}
            }
            drop((permit, slot));
        });
    }
    tasks.close();
    tasks.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_cannot_take_more_than_its_share_of_streams() {
        let slots = std::sync::Arc::new(PeerSlots::default());
        let (one, other) = (
            crate::fixtures::requester().node_id(),
            crate::fixtures::provider().node_id(),
        );
        let mut held: Vec<PeerSlot> = (0..MAX_INBOUND_STREAMS_PER_PEER)
            .map(|_| slots.take(one).expect("a place"))
            .collect();
        assert!(slots.take(one).is_none());
        assert!(slots.take(other).is_some());
        held.pop();
        assert!(slots.take(one).is_some());
        drop(held);
        assert!(slots.open.lock().unwrap().is_empty());
    }
}
