//! What the fuzz targets share: fixed keys, a signer for arbitrary bytes (so a target reaches
//! the checks behind a signature, which random bytes never pass), and real documents built with
//! the protocol's own constructors, from which `examples/seed.rs` writes the seed corpora.
//!
//! The targets never weaken a check to get deeper: a harness-signed document goes through the
//! same `verify` a peer's document goes through, signature included.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;
use suanli_protocol::checkpoint::{Checkpoint, Equivocation, PrefixProof, SignedCheckpoint};
use suanli_protocol::codec;
use suanli_protocol::hash::Hash32;
use suanli_protocol::identity::{Keypair, NodeId};
use suanli_protocol::job::{JobSpec, Limits, Placement};
use suanli_protocol::ledger::{EntryBody, LedgerEntry, entry_hash};
use suanli_protocol::merkle::MerkleTree;
use suanli_protocol::money::{Credits, PriceTerms};
use suanli_protocol::negotiation::{
    AttemptFailure, Contract, ContractId, Decline, DeclineCode, Evidence, FailureRecord,
    MisbehaviourKind, Offer, Outcome, QuoteRequest, Receipt, Settlement, Usage,
};
use suanli_protocol::signed::{CoSigned, Document, Signed, signing_message};
use suanli_protocol::{CapacityAdvert, ExecutorKind, Gpu, Resources};

/// The requester's secret in every sample (and the key the targets sign fuzzed bytes with).
pub const REQUESTER: [u8; 32] = [0x11; 32];
/// The provider's secret in every sample.
pub const PROVIDER: [u8; 32] = [0x22; 32];
/// The clock of every sample and of every target that checks against a clock.
pub const NOW: u64 = 1_700_000_000_000;

thread_local! {
    /// Keys derived from their secrets once: the targets sign with a few fixed keys, and a
    /// derivation (a scalar multiplication) cost as much as the signature itself on every input.
    static KEYS: RefCell<HashMap<[u8; 32], (Keypair, SigningKey)>> = RefCell::new(HashMap::new());
}

/// The key of `secret`, as a node holds it and as raw signing key.
fn keys(secret: [u8; 32]) -> (Keypair, SigningKey) {
    KEYS.with(|keys| {
        keys.borrow_mut()
            .entry(secret)
            .or_insert_with(|| {
                (
                    Keypair::from_secret_bytes(secret),
                    SigningKey::from_bytes(&secret),
                )
            })
            .clone()
    })
}

pub fn keypair(secret: [u8; 32]) -> Keypair {
    keys(secret).0
}

/// Signs `bytes` as a `T` document by the key `secret`, whatever the bytes hold: the `Signed`
/// is decoded from its wire form, exactly as a peer's would be.
pub fn sign_bytes<T: Document>(bytes: &[u8], secret: [u8; 32]) -> Option<Signed<T>> {
    let key = keys(secret).1;
    let signature = key.sign(&signing_message(T::KIND, bytes)).to_bytes();
    let wire = (
        serde_bytes::Bytes::new(bytes),
        keypair(secret).node_id(),
        serde_bytes::Bytes::new(&signature),
    );
    let encoded = codec::encode(&wire).ok()?;
    codec::decode(&encoded, codec::DECODE_LIMIT).ok()
}

/// Countersigns `signed` by the key `secret` without checking anything, as a dishonest or
/// confused peer could.
pub fn countersign_bytes<T: Document>(signed: &Signed<T>, secret: [u8; 32]) -> Option<CoSigned<T>> {
    let key = keys(secret).1;
    let signature = key.sign(&signed.message());
    #[derive(Serialize)]
    struct Wire<'a, T> {
        signed: &'a Signed<T>,
        #[serde(with = "serde_bytes")]
        countersignature: &'a [u8],
    }
    let encoded = codec::encode(&Wire {
        signed,
        countersignature: &signature.to_bytes(),
    })
    .ok()?;
    codec::decode(&encoded, codec::DECODE_LIMIT).ok()
}

/// A C2SP signed note of `text` (which should end in a newline) by the key `secret`, named by
/// its node id, in the form `checkpoint::sign_note` writes.
pub fn sign_note_text(text: &str, secret: [u8; 32]) -> String {
    let key = keys(secret).1;
    let node = keypair(secret).node_id();
    let name = node.to_string();
    let mut blob = suanli_protocol::checkpoint::key_id(&name, &node).to_vec();
    blob.extend_from_slice(&key.sign(text.as_bytes()).to_bytes());
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(blob);
    format!("{text}\n\u{2014} {name} {encoded}\n")
}

/// Splits fuzz input into a selector byte and the rest.
pub fn split_selector(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(first, rest)| (*first, rest))
}

// ---------------------------------------------------------------------------------------------
// Real documents, for seeds
// ---------------------------------------------------------------------------------------------

pub fn requester() -> NodeId {
    keypair(REQUESTER).node_id()
}

pub fn provider() -> NodeId {
    keypair(PROVIDER).node_id()
}

pub fn spec() -> JobSpec {
    JobSpec {
        executor: ExecutorKind::Wasm,
        module_hash: Hash32::of(b"(module)"),
        args: vec!["--n".into(), "10".into()],
        env: BTreeMap::from([("MODE".into(), "fast".into())]),
        stdin_hash: Hash32::of(b""),
        limits: Limits {
            fuel: 1_000_000,
            memory_bytes: 64 << 20,
            wall_time_ms: 5_000,
            output_bytes: 1 << 20,
            tasks: 1,
        },
        max_price: Credits(1_000),
        placement: Placement {
            region: Some("eu".into()),
            provider: Some(provider()),
            exclude_self: true,
        },
        replicas: 1,
    }
}

pub fn price() -> PriceTerms {
    PriceTerms::fuel(Credits(100), Credits(10))
}

pub fn quote() -> QuoteRequest {
    QuoteRequest::new(requester(), &spec(), 7, NOW).expect("sample spec encodes")
}

pub fn offer() -> Signed<Offer> {
    let offer = Offer {
        provider: provider(),
        requester: requester(),
        job_id: quote().job_id,
        price: price(),
        max_cost: Credits(10_100),
        valid_until_ms: NOW + 5_000,
        reservation: 1,
    };
    Signed::sign(&offer, &keypair(PROVIDER)).expect("sample offer signs")
}

pub fn decline() -> Signed<Decline> {
    let decline = Decline {
        provider: provider(),
        requester: requester(),
        job_id: quote().job_id,
        contract_id: None,
        code: DeclineCode::PriceTooLow,
        message: "max price 1000 is below 10100".into(),
        declined_at_ms: NOW,
    };
    Signed::sign(&decline, &keypair(PROVIDER)).expect("sample decline signs")
}

pub fn contract() -> Contract {
    let spec = spec();
    Contract {
        job_id: quote().job_id,
        job_hash: quote().job_hash(),
        module_hash: spec.module_hash,
        stdin_hash: spec.stdin_hash,
        requester: requester(),
        provider: provider(),
        offer: offer().digest(),
        price: price(),
        max_cost: Credits(10_100),
        limits: spec.limits,
        deadline_ms: NOW + 60_000,
        nonce: 9,
        created_at_ms: NOW,
    }
}

pub fn proposal() -> Signed<Contract> {
    Signed::sign(&contract(), &keypair(REQUESTER)).expect("sample contract signs")
}

pub fn cosigned_contract() -> CoSigned<Contract> {
    CoSigned::countersign(proposal(), &keypair(PROVIDER))
        .expect("sample contract countersigns")
        .0
}

pub fn contract_id() -> ContractId {
    ContractId(proposal().digest())
}

pub fn receipt() -> Signed<Receipt> {
    let usage = Usage {
        fuel: 500_000,
        wall_time_ms: 12,
        memory_bytes: 1 << 20,
        output_bytes: 5,
        ..Usage::default()
    };
    let receipt = Receipt {
        contract_id: contract_id(),
        job_id: contract().job_id,
        provider: provider(),
        requester: requester(),
        outcome: Outcome::Succeeded {
            exit_code: 0,
            output_hash: Hash32::of(b"hello"),
            output_len: 5,
        },
        usage,
        cost: price().cost(&usage).expect("sample cost"),
        finished_at_ms: NOW + 20,
    };
    Signed::sign(&receipt, &keypair(PROVIDER)).expect("sample receipt signs")
}

pub fn settlement() -> Signed<Settlement> {
    let settlement = Settlement {
        contract_id: contract_id(),
        receipt: receipt().digest(),
        provider: provider(),
        requester: requester(),
        cost: Credits(105),
        settled_at_ms: NOW + 21,
    };
    Signed::sign(&settlement, &keypair(PROVIDER)).expect("sample settlement signs")
}

pub fn cosigned_settlement() -> CoSigned<Settlement> {
    CoSigned::countersign(settlement(), &keypair(REQUESTER))
        .expect("sample settlement countersigns")
        .0
}

pub fn failure() -> Signed<FailureRecord> {
    let failure = FailureRecord {
        contract_id: contract_id(),
        job_id: contract().job_id,
        recorder: requester(),
        counterparty: provider(),
        failure: AttemptFailure::DeadlineMissed,
        message: "no delivery before the deadline".into(),
        recorded_at_ms: NOW + 60_001,
    };
    Signed::sign(&failure, &keypair(REQUESTER)).expect("sample failure signs")
}

pub fn evidence() -> Signed<Evidence> {
    let evidence = Evidence {
        reporter: requester(),
        offender: provider(),
        kind: MisbehaviourKind::WrongCost,
        message: "cost 7 is not the cost of the usage".into(),
        payload: receipt().bytes().to_vec(),
        observed_at_ms: NOW + 22,
    };
    Signed::sign(&evidence, &keypair(REQUESTER)).expect("sample evidence signs")
}

pub fn advert() -> Signed<CapacityAdvert> {
    let resources = |cores, gpus| Resources {
        cpu_cores: cores,
        memory_bytes: 64 << 30,
        gpus: vec![Gpu {
            model: "L4".into(),
            memory_bytes: 24 << 30,
            count: gpus,
        }],
    };
    let advert = CapacityAdvert {
        node: provider(),
        seq: 3,
        issued_at_ms: NOW,
        ttl_ms: 60_000,
        region: "eu".into(),
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        total: resources(16, 2),
        free: resources(8, 1),
        executors: vec![ExecutorKind::Wasm, ExecutorKind::Slurm],
        prices: price(),
        load_permille: 500,
        software_version: "0.1.0".into(),
        models: Vec::new(),
        cluster: None,
    };
    Signed::sign(&advert, &keypair(PROVIDER)).expect("sample advert signs")
}

/// The requester's ledger of the sample contract: contract, receipt, settlement.
pub fn ledger() -> Vec<Vec<u8>> {
    let bodies = [
        EntryBody::Contract(cosigned_contract()),
        EntryBody::Receipt(receipt()),
        EntryBody::Settlement(cosigned_settlement()),
        EntryBody::Failure(failure()),
        EntryBody::Misbehaviour(evidence()),
    ];
    let mut raws: Vec<Vec<u8>> = Vec::new();
    for (seq, body) in bodies.into_iter().enumerate() {
        let entry = LedgerEntry {
            seq: seq as u64,
            timestamp_ms: NOW + seq as u64,
            prev_hash: raws
                .last()
                .map(|raw| entry_hash(raw))
                .unwrap_or(Hash32::ZERO),
            body,
        };
        raws.push(entry.encode().expect("sample entry encodes"));
    }
    raws
}

/// The requester's tree over [`ledger`].
pub fn tree() -> MerkleTree {
    let mut tree = MerkleTree::new();
    for raw in ledger() {
        tree.push_entry(&raw);
    }
    tree
}

pub fn checkpoint(size: u64) -> SignedCheckpoint {
    let tree = tree();
    let root = tree.root_at(size).expect("sample size within the tree");
    Checkpoint::new(requester(), size, root)
        .sign(&keypair(REQUESTER))
        .expect("sample checkpoint signs")
}

/// The proof that the tree at `size1` is a prefix of the tree at `size2`.
pub fn prefix_proof(size1: u64, size2: u64) -> PrefixProof {
    let tree = tree();
    PrefixProof {
        prefix_root: tree.root_at(size1).expect("sample size"),
        proof: tree.consistency_proof(size1, size2).expect("sample sizes"),
    }
}

/// A real equivocation: the same size signed with two roots.
pub fn equivocation() -> Equivocation {
    let honest = checkpoint(3);
    let forged = Checkpoint::new(requester(), 3, Hash32::of(b"another tree"))
        .sign(&keypair(REQUESTER))
        .expect("forged checkpoint signs");
    Equivocation {
        first: honest.into_note(),
        second: forged.into_note(),
        fork: None,
    }
}
