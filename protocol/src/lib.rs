//! `suanli-protocol`: everything that crosses a node boundary or lands in a ledger, defined once.
//!
//! This crate owns the wire types, the canonical codec, node identities, signed documents, the
//! contract engine (the requester's and the provider's state machines) and the ledger entry
//! format, together with their pure verification. It performs **no I/O**: no files, no sockets, no clocks (callers pass `now_ms`),
//! no async runtime, no sled, no libp2p networking. The one exception is drawing fresh key material
//! from the operating system's random source in [`Keypair::generate`].
//!
//! Map of the crate:
//! - [`codec`] — the only place that knows the byte encoding (bincode 2, size-limited, no trailing
//!   bytes, protocol version byte on every top-level message).
//! - [`identity`] — [`NodeId`] (an ed25519 public key shown in libp2p `PeerId` form) and [`Keypair`].
//! - [`signed`] — [`Signed`] and [`CoSigned`] documents with per-kind domain separation.
//! - [`money`] — [`Credits`] (integer micro-credits) and [`PriceTerms`].
//! - [`advert`] — capacity adverts gossiped by every node.
//! - [`job`] — job specs, limits, placement and the derived [`JobId`].
//! - [`negotiation`] — quote requests, offers, declines, contracts, receipts, settlements.
//! - [`engine`] — the contract engine: the requester's and the provider's pure state machines,
//!   the checks of every document, reconciliation.
//! - [`replicas`] — replicated jobs: the majority rule and portable evidence that one
//!   provider's signed output disagreed with the majority's.
//! - [`tokens`] — model requests, per-request usage receipts, the `/suanli/tokens/1` frames and
//!   model adverts: what a standing contract (a model session) adds to a contract.
//! - [`wire`] — request/response enums of `/suanli/market/1` and `/suanli/ledger/1` and gossip
//!   payloads, each with its size cap.
//! - [`ledger`] — ledger entries, entry hashing and chain verification.
//! - [`merkle`] — the RFC 6962 Merkle tree over ledger entries, inclusion and consistency proofs
//!   and their verifiers.
//! - [`checkpoint`] — C2SP signed-note checkpoints of a ledger's tree, the witness rule, and
//!   portable equivocation evidence.
//! - [`tiles`] — the C2SP tlog-tiles layout of a ledger's tree (tile paths, hash tiles, entry
//!   bundles) and the root recomputed from tiles.

pub mod advert;
pub mod checkpoint;
pub mod codec;
pub mod engine;
pub mod hash;
pub mod identity;
pub mod job;
pub mod ledger;
pub mod merkle;
pub mod money;
pub mod negotiation;
pub mod replicas;
pub mod signed;
pub mod tiles;
pub mod tokens;
pub mod wire;

#[cfg(test)]
mod fixtures;

pub use advert::{CapacityAdvert, ClusterInfo, ExecutorKind, Gpu, Resources};
pub use codec::{DecodeError, EncodeError, PROTOCOL_VERSION};
pub use hash::Hash32;
pub use identity::{Keypair, NodeId};
pub use job::{JobId, JobSpec, Limits, Placement, job_hash_from_bytes, job_id_from_bytes};
pub use money::{Credits, PriceTerms};
pub use negotiation::{
    Contract, ContractCheckError, ContractDocs, ContractField, ContractId, Decline, DeclineCode,
    Evidence, FailureReason, FailureRecord, Offer, Outcome, QuoteError, QuoteRequest, Receipt,
    Settlement, Usage,
};
pub use signed::{BoundsError, CoSigned, Document, Signed, VerifyError};
