//! Wire messages: the request and response enums of the market protocol (`/suanli/market/1`),
//! the ledger-sync protocol (`/suanli/ledger/1`) and the view-sync protocol (`/suanli/view/1`),
//! and the gossip payloads.
//!
//! Every message is framed by [`crate::codec::encode_framed`] (protocol version byte + bincode)
//! and has a size cap, enforced both when encoding and before decoding.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::advert::{CapacityAdvert, MAX_ADVERT_BYTES};
use crate::checkpoint::{Equivocation, PrefixProof};
use crate::codec::{self, DecodeError, EncodeError};
use crate::job::{MAX_MODULE_BYTES, MAX_OUTPUT_BYTES, MAX_SPEC_BYTES, MAX_STDIN_BYTES};
use crate::negotiation::{
    Contract, ContractDocs, ContractId, Decline, MAX_MESSAGE_BYTES, Offer, QuoteRequest, Receipt,
    Settlement,
};
use crate::signed::{BoundsError, CoSigned, Signed};
#[cfg(test)]
use proptest::strategy::Strategy;

/// The libp2p protocol name of the market (negotiation, job transfer, delivery).
pub const MARKET_PROTOCOL: &str = "/suanli/market/1";
/// The libp2p protocol name of ledger sync.
pub const LEDGER_PROTOCOL: &str = "/suanli/ledger/1";
/// The libp2p protocol name of view sync (a joining node pulls the capacity view).
pub const VIEW_PROTOCOL: &str = "/suanli/view/1";
/// The gossipsub topic of capacity adverts.
pub const ADVERT_TOPIC: &str = "suanli/adverts/2";
/// The gossipsub topic of signed ledger checkpoints and equivocation proofs.
pub const CHECKPOINT_TOPIC: &str = "suanli/checkpoints/2";

/// Cap on a market message: a module, stdin and overhead (16 MiB).
pub const MAX_MARKET_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Cap on a ledger-sync message (16 MiB).
pub const MAX_LEDGER_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Cap on a gossip message: the largest of an advert and an equivocation proof (two checkpoint
/// notes of at most [`MAX_GOSSIPED_NOTE_BYTES`] and a consistency proof).
pub const MAX_GOSSIP_MESSAGE_BYTES: usize = MAX_ADVERT_BYTES + 1024;
/// Cap on a checkpoint note carried in gossip or ledger-sync messages. suanli's own notes are
/// about 250 bytes (one signature line); witnesses may add cosignature lines.
pub const MAX_GOSSIPED_NOTE_BYTES: usize = 2048;
/// Cap on a view-sync message (4 MiB): a page of signed adverts.
pub const MAX_VIEW_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Advert bytes a view page is filled up to; the page stays under its cap with one more advert
/// and the framing.
pub const VIEW_PAGE_BUDGET: usize = MAX_VIEW_MESSAGE_BYTES - 2 * MAX_ADVERT_BYTES;
/// Most entries one ledger range request may ask for.
pub const MAX_LEDGER_RANGE: u32 = 1024;

// An equivocation proof (two notes and a consistency proof) must fit in one gossip message.
const _: () = assert!(
    2 * MAX_GOSSIPED_NOTE_BYTES + crate::merkle::MAX_PROOF_HASHES * 32 + 256
        <= MAX_GOSSIP_MESSAGE_BYTES
);
// The market cap must hold the largest module and stdin together.
const _: () = assert!(
    MAX_SPEC_BYTES + MAX_MODULE_BYTES + MAX_STDIN_BYTES + 64 * 1024 <= MAX_MARKET_MESSAGE_BYTES
);
const _: () = assert!(MAX_OUTPUT_BYTES as usize + 64 * 1024 <= MAX_MARKET_MESSAGE_BYTES);

/// A top-level message with a size cap, framed with the protocol version.
pub trait WireMessage: Serialize + DeserializeOwned {
    const MAX_BYTES: usize;

    /// Encodes the message; refuses to produce more than [`Self::MAX_BYTES`].
    fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let bytes = codec::encode_framed(self)?;
        if bytes.len() > Self::MAX_BYTES {
            return Err(EncodeError::too_large(bytes.len(), Self::MAX_BYTES));
        }
        Ok(bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_framed(bytes, Self::MAX_BYTES)
    }
}

/// `/suanli/view/1` request: the signed adverts held, in node-id order, of the nodes after
/// `after` (from the first when `None`). A node that joins asks one peer for its view, page by
/// page, instead of waiting up to an advert interval for every node's next publication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ViewRequest {
    pub after: Option<crate::NodeId>,
}

/// `/suanli/view/1` answer: live adverts as their authors signed them (each is verified by the
/// receiver as if gossiped), in node-id order, filled up to [`VIEW_PAGE_BUDGET`] bytes; `more`
/// when the view holds adverts after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ViewPage {
    pub adverts: Vec<Signed<CapacityAdvert>>,
    pub more: bool,
}

impl WireMessage for ViewRequest {
    const MAX_BYTES: usize = 1024;
}

impl WireMessage for ViewPage {
    const MAX_BYTES: usize = MAX_VIEW_MESSAGE_BYTES;
}

/// Everything a provider needs to run a signed contract: the job spec's bytes exactly as quoted,
/// the module and stdin. Sent once both parties have appended the contract, and again whenever
/// the requester resumes the contract (the provider runs it at most once at a time, and never
/// once it holds a receipt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ExecuteRequest {
    pub contract_id: ContractId,
    /// The job spec's bytes as in the quote request: `job_hash_from_bytes(spec)` must be the
    /// contract's `job_hash`.
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub module: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
}

impl ExecuteRequest {
    /// Checks the declared caps: `spec` at most [`MAX_SPEC_BYTES`], `module` at most
    /// [`MAX_MODULE_BYTES`], `stdin` at most [`MAX_STDIN_BYTES`]. (The message cap alone would let
    /// one of them exceed its own cap.) Checking the bytes against the contract's hashes is the
    /// provider's next step.
    pub fn validate(&self) -> Result<(), BoundsError> {
        BoundsError::check("spec", self.spec.len(), MAX_SPEC_BYTES)?;
        BoundsError::check("module", self.module.len(), MAX_MODULE_BYTES)?;
        BoundsError::check("stdin", self.stdin.len(), MAX_STDIN_BYTES)
    }
}

/// What a provider sends when a run ends: its receipt, its half of the settlement, the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Delivery {
    pub receipt: Signed<Receipt>,
    pub settlement: Signed<Settlement>,
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
}

/// Requests of `/suanli/market/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum MarketRequest {
    /// Requester → provider: price this job. Answer: `Offer` or `Decline`.
    Quote(QuoteRequest),
    /// Requester → provider: the contract, signed by the requester. Answer: `Countersigned` or
    /// `Decline`.
    Propose(Signed<Contract>),
    /// Requester → provider: run it (again, after a restart). Answer: `Accepted` at once, the
    /// result comes as `Deliver`; or `Reconciled` when the provider has ended the contract.
    Execute(ExecuteRequest),
    /// Provider → requester: the run ended. Answer: `Reconciled` with the requester's decision
    /// (a settlement, or its failure record).
    Deliver(Delivery),
    /// Either party → the other: "this is what I hold of this contract". The receiver appends
    /// what it lacks, ends the contract the same way when the sender has ended it, and answers
    /// `Reconciled` with what it holds.
    Reconcile(Box<ContractDocs>),
}

/// Responses of `/suanli/market/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum MarketResponse {
    Offer(Signed<Offer>),
    Decline(Signed<Decline>),
    Countersigned(CoSigned<Contract>),
    Accepted {
        contract_id: ContractId,
    },
    /// What the answering party holds of the contract, after applying the request.
    Reconciled(Box<ContractDocs>),
    Error(WireError),
}

impl WireMessage for MarketRequest {
    const MAX_BYTES: usize = MAX_MARKET_MESSAGE_BYTES;
}

impl WireMessage for MarketResponse {
    const MAX_BYTES: usize = MAX_MARKET_MESSAGE_BYTES;
}

/// Requests of `/suanli/ledger/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum LedgerRequest {
    /// The latest checkpoint the node published. Answer: `Checkpoint`.
    Checkpoint,
    /// Up to `limit` (1 to [`MAX_LEDGER_RANGE`]) raw entries starting at sequence `from`.
    /// Answer: `Entries`.
    Range { from: u64, limit: u32 },
    /// Prove that the node's tree of `size2` entries extends its tree of `size1` entries
    /// (`size1 <= size2`). Answer: `Proof`.
    Prove { size1: u64, size2: u64 },
}

/// A ledger request out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerRequestError {
    #[error("range limit {limit} is outside 1..={MAX_LEDGER_RANGE}")]
    RangeLimit { limit: u32 },
    #[error("proof sizes out of order: {size1} > {size2}")]
    SizesOutOfOrder { size1: u64, size2: u64 },
}

impl LedgerRequest {
    /// Checks the request's bounds: a `Range` limit must be between 1 and [`MAX_LEDGER_RANGE`],
    /// a `Prove` must go from the smaller size to the larger. A server answers a request that
    /// fails with `ErrorCode::BadRequest` instead of clamping.
    pub fn validate(&self) -> Result<(), LedgerRequestError> {
        match *self {
            LedgerRequest::Checkpoint => Ok(()),
            LedgerRequest::Range { limit, .. } => {
                if (1..=MAX_LEDGER_RANGE).contains(&limit) {
                    Ok(())
                } else {
                    Err(LedgerRequestError::RangeLimit { limit })
                }
            }
            LedgerRequest::Prove { size1, size2 } => {
                if size1 <= size2 {
                    Ok(())
                } else {
                    Err(LedgerRequestError::SizesOutOfOrder { size1, size2 })
                }
            }
        }
    }
}

/// Responses of `/suanli/ledger/1`. Checkpoints travel as their signed-note text; the receiver
/// verifies them ([`crate::checkpoint::SignedCheckpoint::from_note`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum LedgerResponse {
    /// The latest published checkpoint (`None` before the first one).
    Checkpoint {
        note: Option<String>,
    },
    /// Raw encoded entries, exactly as stored and hashed, and the latest published checkpoint.
    Entries {
        from: u64,
        #[cfg_attr(
            test,
            proptest(
                strategy = "proptest::collection::vec(proptest::arbitrary::any::<Vec<u8>>().prop_map(serde_bytes::ByteBuf::from), 0..4)"
            )
        )]
        entries: Vec<serde_bytes::ByteBuf>,
        checkpoint: Option<String>,
    },
    /// The answer to `Prove`.
    Proof(PrefixProof),
    Error(WireError),
}

impl WireMessage for LedgerRequest {
    const MAX_BYTES: usize = 64;
}

impl WireMessage for LedgerResponse {
    const MAX_BYTES: usize = MAX_LEDGER_MESSAGE_BYTES;
}

/// Payloads of the gossip topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum GossipMessage {
    /// On [`ADVERT_TOPIC`], signed by the advertised node.
    Advert(Signed<CapacityAdvert>),
    /// On [`CHECKPOINT_TOPIC`], signed by the node whose ledger it commits to: a signed
    /// checkpoint note of at most [`MAX_GOSSIPED_NOTE_BYTES`].
    Checkpoint { note: String },
    /// On [`CHECKPOINT_TOPIC`], published by any witness: proof that a node signed two
    /// inconsistent checkpoints.
    Equivocation(Equivocation),
}

impl WireMessage for GossipMessage {
    const MAX_BYTES: usize = MAX_GOSSIP_MESSAGE_BYTES;
}

/// Machine-readable class of a protocol-level error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ErrorCode {
    BadRequest,
    NotFound,
    Forbidden,
    TooLarge,
    Unavailable,
    Internal,
    /// A model request's prompt and `max_tokens` do not fit the model's context.
    ContextLength,
}

/// An error answer: a code and a message of at most [`MAX_MESSAGE_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    /// An error with `message` cut to [`MAX_MESSAGE_BYTES`] on a character boundary.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        WireError { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use proptest::prelude::*;

    fn round_trip<T: WireMessage + PartialEq + std::fmt::Debug>(message: &T) {
        let bytes = message.to_bytes().unwrap();
        assert_eq!(&T::from_bytes(&bytes).unwrap(), message);
    }

    fn never_panics<T: WireMessage>(bytes: &[u8]) {
        let _ = T::from_bytes(bytes);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn market_requests_round_trip(message in any::<MarketRequest>()) { round_trip(&message) }

        #[test]
        fn market_responses_round_trip(message in any::<MarketResponse>()) { round_trip(&message) }

        #[test]
        fn ledger_requests_round_trip(message in any::<LedgerRequest>()) { round_trip(&message) }

        #[test]
        fn ledger_responses_round_trip(message in any::<LedgerResponse>()) { round_trip(&message) }

        #[test]
        fn gossip_round_trips(message in any::<GossipMessage>()) { round_trip(&message) }

        #[test]
        fn view_messages_round_trip(request in any::<ViewRequest>(), page in any::<ViewPage>()) {
            round_trip(&request);
            round_trip(&page);
        }

        #[test]
        fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            never_panics::<MarketRequest>(&bytes);
            never_panics::<MarketResponse>(&bytes);
            never_panics::<LedgerRequest>(&bytes);
            never_panics::<LedgerResponse>(&bytes);
            never_panics::<GossipMessage>(&bytes);
            never_panics::<ViewPage>(&bytes);
            // And behind a valid version byte, so the payload decoders are reached.
            bytes.insert(0, codec::PROTOCOL_VERSION);
            never_panics::<MarketRequest>(&bytes);
            never_panics::<MarketResponse>(&bytes);
            never_panics::<LedgerRequest>(&bytes);
            never_panics::<LedgerResponse>(&bytes);
            never_panics::<GossipMessage>(&bytes);
            never_panics::<ViewPage>(&bytes);
        }

        #[test]
        fn truncations_are_errors(message in any::<MarketResponse>(), cut in any::<prop::sample::Index>()) {
            let bytes = message.to_bytes().unwrap();
            let cut = cut.index(bytes.len());
            prop_assert!(MarketResponse::from_bytes(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn real_documents_round_trip() {
        round_trip(&MarketResponse::Countersigned(fixtures::cosigned_contract()));
        round_trip(&MarketResponse::Reconciled(Box::new(ContractDocs {
            contract: fixtures::cosigned_contract(),
            receipt: Some(fixtures::signed_receipt()),
            settlement: Some(fixtures::cosigned_settlement()),
            failure: None,
        })));
        round_trip(&MarketRequest::Deliver(Delivery {
            receipt: fixtures::signed_receipt(),
            settlement: fixtures::cosigned_settlement().first().clone(),
            output: b"hello".to_vec(),
        }));
    }

    #[test]
    fn caps_are_enforced_both_ways() {
        let huge = MarketRequest::Execute(ExecuteRequest {
            contract_id: fixtures::contract_id(),
            spec: vec![],
            module: vec![0; MAX_MARKET_MESSAGE_BYTES],
            stdin: vec![],
        });
        assert!(huge.to_bytes().is_err());
        let oversized = vec![codec::PROTOCOL_VERSION; MAX_GOSSIP_MESSAGE_BYTES + 1];
        assert!(matches!(
            GossipMessage::from_bytes(&oversized),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn execute_request_caps_module_and_stdin() {
        let request = |module: usize, stdin: usize| ExecuteRequest {
            contract_id: fixtures::contract_id(),
            spec: vec![],
            module: vec![0; module],
            stdin: vec![0; stdin],
        };
        assert_eq!(
            request(MAX_MODULE_BYTES, MAX_STDIN_BYTES).validate(),
            Ok(())
        );
        // Both fit in one market message, yet break their own caps.
        let big_module = request(MAX_MODULE_BYTES + 1, 0);
        let encoded = MarketRequest::Execute(big_module.clone())
            .to_bytes()
            .unwrap();
        assert!(encoded.len() <= MAX_MARKET_MESSAGE_BYTES);
        assert_eq!(
            big_module.validate(),
            Err(BoundsError {
                field: "module",
                len: MAX_MODULE_BYTES + 1,
                max: MAX_MODULE_BYTES
            })
        );
        assert_eq!(
            request(0, MAX_STDIN_BYTES + 1).validate(),
            Err(BoundsError {
                field: "stdin",
                len: MAX_STDIN_BYTES + 1,
                max: MAX_STDIN_BYTES
            })
        );
    }

    #[test]
    fn ledger_range_limit_is_checked() {
        assert_eq!(LedgerRequest::Checkpoint.validate(), Ok(()));
        for limit in [1, 10, MAX_LEDGER_RANGE] {
            assert_eq!(LedgerRequest::Range { from: 0, limit }.validate(), Ok(()));
        }
        for limit in [0, MAX_LEDGER_RANGE + 1, u32::MAX] {
            let request = LedgerRequest::Range { from: 5, limit };
            // It still decodes: the bound is checked by `validate`, not by the codec.
            assert_eq!(
                LedgerRequest::from_bytes(&request.to_bytes().unwrap()),
                Ok(request.clone())
            );
            assert_eq!(
                request.validate(),
                Err(LedgerRequestError::RangeLimit { limit })
            );
        }
        assert_eq!(
            LedgerRequest::Prove { size1: 3, size2: 3 }.validate(),
            Ok(())
        );
        assert_eq!(
            LedgerRequest::Prove { size1: 4, size2: 3 }.validate(),
            Err(LedgerRequestError::SizesOutOfOrder { size1: 4, size2: 3 })
        );
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut bytes = LedgerRequest::Checkpoint.to_bytes().unwrap();
        bytes[0] = 2;
        assert_eq!(
            LedgerRequest::from_bytes(&bytes),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
    }

    #[test]
    fn error_messages_are_capped() {
        let error = WireError::new(ErrorCode::Internal, "é".repeat(MAX_MESSAGE_BYTES));
        assert!(error.message.len() <= MAX_MESSAGE_BYTES);
    }
}
