//! The serving side of `/suanli/ledger/1`: this node's latest checkpoint, ranges of its raw
//! entries (with that checkpoint attached), and consistency proofs between two of its tree sizes.

use std::sync::Arc;

use suanli_protocol::checkpoint::SignedCheckpoint;
use suanli_protocol::wire::{
    ErrorCode, LedgerRequest, LedgerResponse, MAX_LEDGER_MESSAGE_BYTES, WireError,
};
use tokio::sync::{Semaphore, watch};
use tracing::debug;

use crate::ledger::{LedgerError, LedgerHandle};
use crate::network::{InboundRequest, NetworkHandle};

/// Most ledger requests served at once; more wait for a permit (the network answers "busy" once
/// its own queue is full).
pub const MAX_CONCURRENT: usize = 8;
/// Room left in a range answer for framing and the checkpoint note.
const ANSWER_HEADROOM: usize = 64 * 1024;
/// Entries read from the ledger at a time while filling a range answer.
const PAGE: u32 = 128;

#[derive(Clone)]
pub(super) struct Server {
    pub ledger: LedgerHandle,
    pub network: NetworkHandle,
    pub latest: watch::Receiver<Option<SignedCheckpoint>>,
    pub permits: Arc<Semaphore>,
}

impl Server {
    /// Answers one request in its own task, at most [`MAX_CONCURRENT`] at a time.
    pub fn spawn(&self, inbound: InboundRequest<LedgerRequest>) {
        let server = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = server.permits.clone().acquire_owned().await else {
                return;
            };
            let response = server.answer(&inbound.request).await;
            debug!(peer = %inbound.peer, request = ?inbound.request, "ledger request answered");
            let _ = server.network.respond_ledger(inbound.id, &response).await;
        });
    }

    fn latest_note(&self) -> Option<String> {
        self.latest
            .borrow()
            .as_ref()
            .map(|latest| latest.note().to_owned())
    }

    async fn answer(&self, request: &LedgerRequest) -> LedgerResponse {
        if let Err(error) = request.validate() {
            return error_answer(ErrorCode::BadRequest, error.to_string());
        }
        match *request {
            LedgerRequest::Checkpoint => LedgerResponse::Checkpoint {
                note: self.latest_note(),
            },
            LedgerRequest::Range { from, limit } => {
                let ledger = self.ledger.clone();
                let read = tokio::task::spawn_blocking(move || read_range(&ledger, from, limit));
                match read.await {
                    Ok(Ok(entries)) => LedgerResponse::Entries {
                        from,
                        entries,
                        checkpoint: self.latest_note(),
                    },
                    Ok(Err(error)) => error_answer(ErrorCode::Internal, error.to_string()),
                    Err(error) => error_answer(ErrorCode::Internal, error.to_string()),
                }
            }
            LedgerRequest::Prove { size1, size2 } => match self.ledger.prefix_proof(size1, size2) {
                Ok(proof) => LedgerResponse::Proof(proof),
                Err(error) => error_answer(ErrorCode::NotFound, error.to_string()),
            },
        }
    }
}

/// Up to `limit` raw entries from `from`, stopping before the answer would outgrow the message
/// cap (entries are ~1 KiB, at most 96 KiB; the requester asks again from where the answer ends).
/// Read in pages, so at most one page more than the answer is ever held.
fn read_range(
    ledger: &LedgerHandle,
    from: u64,
    limit: u32,
) -> Result<Vec<serde_bytes::ByteBuf>, LedgerError> {
    let budget = MAX_LEDGER_MESSAGE_BYTES - ANSWER_HEADROOM;
    let mut entries = Vec::new();
    let mut bytes = 0;
    while entries.len() < limit as usize {
        let want = (limit as usize - entries.len()).min(PAGE as usize) as u32;
        let page = ledger.range(from + entries.len() as u64, want)?;
        let full = page.len() == want as usize;
        for entry in page {
            bytes += entry.raw.len() + 8;
            if bytes > budget {
                return Ok(entries);
            }
            entries.push(serde_bytes::ByteBuf::from(entry.raw));
        }
        if !full {
            break;
        }
    }
    Ok(entries)
}

fn error_answer(code: ErrorCode, message: String) -> LedgerResponse {
    LedgerResponse::Error(WireError::new(code, message))
}
