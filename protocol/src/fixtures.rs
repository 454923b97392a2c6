//! Fixed keys and documents for this crate's tests.

use crate::advert::tests::NOW;
use crate::hash::Hash32;
use crate::identity::Keypair;
use crate::job::tests::sample_spec;
use crate::money::{Credits, PriceTerms};
use crate::negotiation::{
    Contract, ContractId, Offer, Outcome, QuoteRequest, Receipt, Settlement, Usage,
};
use crate::signed::{CoSigned, Signed};

pub fn requester() -> Keypair {
    Keypair::from_secret_bytes([0x11; 32])
}

pub fn provider() -> Keypair {
    Keypair::from_secret_bytes([0x22; 32])
}

pub fn stranger() -> Keypair {
    Keypair::from_secret_bytes([0x33; 32])
}

pub fn price() -> PriceTerms {
    PriceTerms::fuel(Credits(100), Credits(10))
}

pub const JOB_NONCE: u128 = 7;

pub fn quote() -> QuoteRequest {
    QuoteRequest::new(requester().node_id(), &sample_spec(), JOB_NONCE, NOW).unwrap()
}

pub fn offer() -> Offer {
    Offer {
        provider: provider().node_id(),
        requester: requester().node_id(),
        job_id: quote().job_id,
        price: price(),
        max_cost: price().max_cost(&sample_spec().limits).unwrap(),
        valid_until_ms: NOW + 5_000,
        reservation: 1,
    }
}

pub fn signed_offer() -> Signed<Offer> {
    Signed::sign(&offer(), &provider()).unwrap()
}

pub fn contract() -> Contract {
    let spec = sample_spec();
    Contract {
        job_id: spec.job_id(JOB_NONCE).unwrap(),
        job_hash: spec.hash().unwrap(),
        module_hash: spec.module_hash,
        stdin_hash: spec.stdin_hash,
        requester: requester().node_id(),
        provider: provider().node_id(),
        offer: signed_offer().digest(),
        price: price(),
        max_cost: price().max_cost(&spec.limits).unwrap(),
        limits: spec.limits,
        deadline_ms: NOW + 60_000,
        nonce: 9,
        created_at_ms: NOW,
    }
}

pub fn proposal() -> Signed<Contract> {
    Signed::sign(&contract(), &requester()).unwrap()
}

pub fn cosigned_contract() -> CoSigned<Contract> {
    CoSigned::countersign(proposal(), &provider()).unwrap().0
}

pub fn contract_id() -> ContractId {
    ContractId(proposal().digest())
}

pub fn receipt() -> Receipt {
    let usage = Usage {
        fuel: 500_000,
        wall_time_ms: 12,
        memory_bytes: 1 << 20,
        output_bytes: 5,
        prompt_tokens: 0,
        completion_tokens: 0,
        cluster: None,
    };
    Receipt {
        contract_id: contract_id(),
        job_id: contract().job_id,
        provider: provider().node_id(),
        requester: requester().node_id(),
        outcome: Outcome::Succeeded {
            exit_code: 0,
            output_hash: Hash32::of(b"hello"),
            output_len: 5,
        },
        usage,
        cost: price().cost(&usage).unwrap(),
        finished_at_ms: NOW + 20,
    }
}

pub fn signed_receipt() -> Signed<Receipt> {
    Signed::sign(&receipt(), &provider()).unwrap()
}

pub fn settlement() -> Settlement {
    Settlement {
        contract_id: contract_id(),
        receipt: signed_receipt().digest(),
        provider: provider().node_id(),
        requester: requester().node_id(),
        cost: receipt().cost,
        settled_at_ms: NOW + 21,
    }
}

pub fn cosigned_settlement() -> CoSigned<Settlement> {
    let proposed = Signed::sign(&settlement(), &provider()).unwrap();
    CoSigned::countersign(proposed, &requester()).unwrap().0
}
