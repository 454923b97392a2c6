//! Every framed wire message a peer can send: `/suanli/market/1`, `/suanli/ledger/1`,
//! `/suanli/view/1`, `/suanli/tokens/1` requests and responses and the gossip payloads, each
//! decoded with its own cap as the network layer decodes it, then put through the checks the
//! receiver runs before acting on it.
//!
//! Properties: decoding never panics or allocates beyond the cap; a decoded message re-encodes
//! within its cap and decodes back to the same value (the canonical encoding is never longer
//! than an accepted one); the receiver's checks never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use suanli_fuzz::NOW;
use suanli_protocol::checkpoint::SignedCheckpoint;
use suanli_protocol::tokens::{TokensRequest, TokensResponse};
use suanli_protocol::wire::{
    GossipMessage, LedgerRequest, LedgerResponse, MarketRequest, MarketResponse, ViewPage,
    ViewRequest, WireMessage,
};
use suanli_protocol::{ContractDocs, NodeId};

fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let message = T::from_bytes(data).ok()?;
    let bytes = message
        .to_bytes()
        .expect("a decoded message re-encodes within its cap");
    assert!(
        bytes.len() <= data.len(),
        "canonical encoding longer than an accepted one"
    );
    assert_eq!(T::from_bytes(&bytes).as_ref(), Ok(&message));
    Some(message)
}

fn check_docs(docs: &ContractDocs) {
    let _ = docs.contract.verify();
    let _ = docs.receipt.as_ref().map(|receipt| receipt.verify());
    let _ = docs
        .settlement
        .as_ref()
        .map(|settlement| settlement.verify());
    let _ = docs.failure.as_ref().map(|failure| failure.verify());
    let _ = docs.contract_id();
}

fn check_note(note: &str) {
    if let Ok(checkpoint) = SignedCheckpoint::from_note(note) {
        assert_eq!(checkpoint.note(), note);
        assert!(checkpoint.checkpoint().check().is_ok());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(request) = round_trip::<MarketRequest>(data) {
        match &request {
            MarketRequest::Quote(quote) => {
                if let Ok(spec) = quote.decode_spec() {
                    assert!(spec.validate().is_ok());
                    assert_eq!(
                        quote.job_hash(),
                        suanli_protocol::job_hash_from_bytes(&quote.spec)
                    );
                }
            }
            MarketRequest::Propose(proposal) => {
                let _ = proposal.verify();
            }
            MarketRequest::Execute(execute) => {
                let _ = execute.validate();
            }
            MarketRequest::Deliver(delivery) => {
                let _ = delivery.receipt.verify();
                let _ = delivery.settlement.verify();
            }
            MarketRequest::Reconcile(docs) => check_docs(docs),
        }
    }
    if let Some(response) = round_trip::<MarketResponse>(data) {
        match &response {
            MarketResponse::Offer(offer) => {
                let _ = offer.verify();
            }
            MarketResponse::Decline(decline) => {
                let _ = decline.verify();
            }
            MarketResponse::Countersigned(contract) => {
                let _ = contract.verify();
            }
            MarketResponse::Reconciled(docs) => check_docs(docs),
            MarketResponse::Accepted { .. } | MarketResponse::Error(_) => {}
        }
    }
    if let Some(request) = round_trip::<LedgerRequest>(data) {
        let _ = request.validate();
    }
    if let Some(response) = round_trip::<LedgerResponse>(data) {
        match &response {
            LedgerResponse::Checkpoint { note: Some(note) } => check_note(note),
            LedgerResponse::Entries {
                from,
                entries,
                checkpoint,
            } => {
                if let Some(note) = checkpoint {
                    check_note(note);
                }
                let owner = suanli_fuzz::requester();
                let mut chain = suanli_protocol::ledger::ChainVerifier::resume(
                    owner,
                    suanli_protocol::ledger::ChainHead {
                        size: *from,
                        ..suanli_protocol::ledger::ChainHead::EMPTY
                    },
                );
                for raw in entries {
                    if chain.push(raw).is_err() {
                        break;
                    }
                }
            }
            LedgerResponse::Proof(proof) => {
                let _ = suanli_protocol::merkle::verify_consistency(
                    1,
                    5,
                    &proof.prefix_root,
                    &suanli_protocol::hash::Hash32::ZERO,
                    &proof.proof,
                );
            }
            LedgerResponse::Checkpoint { note: None } | LedgerResponse::Error(_) => {}
        }
    }
    if let Some(message) = round_trip::<GossipMessage>(data) {
        match &message {
            GossipMessage::Advert(advert) => {
                if let Ok(advert) = advert.verify() {
                    let _ = advert.validate(NOW);
                }
            }
            GossipMessage::Checkpoint { note } => check_note(note),
            GossipMessage::Equivocation(equivocation) => {
                if let Ok(node) = equivocation.verify() {
                    let first = SignedCheckpoint::from_note(&equivocation.first)
                        .expect("a verified equivocation's notes verify");
                    assert_eq!(first.signer(), node);
                }
            }
        }
    }
    if let Some(request) = round_trip::<ViewRequest>(data) {
        let _: Option<NodeId> = request.after;
    }
    if let Some(page) = round_trip::<ViewPage>(data) {
        for advert in &page.adverts {
            if let Ok(advert) = advert.verify() {
                let _ = advert.validate(NOW);
            }
        }
    }
    if let Some(request) = round_trip::<TokensRequest>(data) {
        match &request {
            TokensRequest::Generate { request, .. } => {
                if request.validate().is_ok() {
                    let _ = request.hash().expect("a valid request hashes");
                }
            }
            TokensRequest::Countersigned(receipt) => {
                let _ = receipt.verify();
            }
            TokensRequest::Stop | TokensRequest::Close { .. } | TokensRequest::Receipt { .. } => {}
        }
    }
    if let Some(response) = round_trip::<TokensResponse>(data) {
        let _ = response.check_bounds();
        if let TokensResponse::Done(receipt) = &response {
            let _ = receipt.verify();
        }
    }
});
