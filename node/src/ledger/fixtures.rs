//! Signed documents for tests: the benchmark documents ([`crate::bench::documents`]: fixed keys,
//! one job's contract, receipt and settlement), a third key, and the
//! owner's own statements. Shared by the ledger's, the API's and the CLI's tests.

use suanli_protocol::ledger::EntryBody;
use suanli_protocol::negotiation::{AttemptFailure, MisbehaviourKind};
use suanli_protocol::{
    ContractId, Evidence, FailureRecord, Hash32, JobId, Keypair, NodeId, Signed,
};

pub(crate) use crate::bench::documents::{Deal, NOW_MS as NOW, provider, requester};

pub(crate) fn stranger() -> Keypair {
    Keypair::from_secret_bytes([0x33; 32])
}

pub(crate) fn contract_body(nonce: u64) -> EntryBody {
    EntryBody::Contract(
        Deal::new(nonce, &requester(), &provider(), 1)
            .unwrap()
            .contract,
    )
}

pub(crate) fn failure_body(recorder: &Keypair, counterparty: NodeId) -> EntryBody {
    let record = FailureRecord {
        contract_id: ContractId(Hash32::of(b"lost")),
        job_id: JobId(Hash32::of(b"job")),
        recorder: recorder.node_id(),
        counterparty,
        failure: AttemptFailure::DeadlineMissed,
        message: "no receipt before the deadline".into(),
        recorded_at_ms: NOW,
    };
    EntryBody::Failure(Signed::sign(&record, recorder).unwrap())
}

pub(crate) fn evidence_body(reporter: &Keypair, offender: NodeId) -> EntryBody {
    let evidence = Evidence {
        reporter: reporter.node_id(),
        offender,
        kind: MisbehaviourKind::WrongCost,
        message: "cost does not follow the price".into(),
        payload: vec![7; 300],
        observed_at_ms: NOW,
    };
    EntryBody::Misbehaviour(Signed::sign(&evidence, reporter).unwrap())
}
