//! Signed documents for tests: fixed keys, one job's contract, receipt and settlement, and the
//! owner's own statements. Shared by the ledger's, the API's and the CLI's tests.

use suanli_protocol::ledger::EntryBody;
use suanli_protocol::negotiation::{AttemptFailure, MisbehaviourKind};
use suanli_protocol::{
    CoSigned, Contract, ContractId, Credits, Evidence, FailureRecord, Hash32, JobId, Keypair,
    Limits, NodeId, Outcome, PriceTerms, Receipt, Settlement, Signed, Usage,
};

pub(crate) const NOW: u64 = 1_700_000_000_000;

pub(crate) fn requester() -> Keypair {
    Keypair::from_secret_bytes([0x11; 32])
}

pub(crate) fn provider() -> Keypair {
    Keypair::from_secret_bytes([0x22; 32])
}

pub(crate) fn stranger() -> Keypair {
    Keypair::from_secret_bytes([0x33; 32])
}

/// One job's documents, as both parties hold them.
#[derive(Debug, Clone)]
pub(crate) struct Deal {
    pub(crate) contract: CoSigned<Contract>,
    pub(crate) receipt: Signed<Receipt>,
    pub(crate) settlement: CoSigned<Settlement>,
}

impl Deal {
    /// `provider` ran a job for `requester` that used `fuel`.
    pub(crate) fn new(nonce: u64, requester: &Keypair, provider: &Keypair, fuel: u64) -> Deal {
        let limits = Limits {
            fuel: 10_000_000,
            memory_bytes: 64 << 20,
            wall_time_ms: 5_000,
            output_bytes: 1 << 20,
        };
        let price = PriceTerms {
            base: Credits(100),
            per_million_fuel: Credits(1_000),
        };
        let contract = Contract {
            job_id: JobId(Hash32::of(&nonce.to_be_bytes())),
            job_hash: Hash32::of(b"spec"),
            module_hash: Hash32::of(b"module"),
            stdin_hash: Hash32::of(b""),
            requester: requester.node_id(),
            provider: provider.node_id(),
            offer: Hash32::of(b"offer"),
            price,
            max_cost: price.max_cost(&limits).unwrap(),
            limits,
            deadline_ms: NOW + 60_000,
            nonce,
            created_at_ms: NOW,
        };
        let proposal = Signed::sign(&contract, requester).unwrap();
        let contract_id = ContractId(proposal.digest());
        let (contract, _) = CoSigned::countersign(proposal, provider).unwrap();
        let usage = Usage {
            fuel,
            wall_time_ms: 12,
            memory_bytes: 1 << 20,
            output_bytes: 5,
        };
        let receipt = Signed::sign(
            &Receipt {
                contract_id,
                job_id: JobId(Hash32::of(&nonce.to_be_bytes())),
                provider: provider.node_id(),
                requester: requester.node_id(),
                outcome: Outcome::Succeeded {
                    exit_code: 0,
                    output_hash: Hash32::of(b"hello"),
                    output_len: 5,
                },
                usage,
                cost: price.cost(&usage).unwrap(),
                finished_at_ms: NOW + 20,
            },
            provider,
        )
        .unwrap();
        let proposed = Signed::sign(
            &Settlement {
                contract_id,
                receipt: receipt.digest(),
                provider: provider.node_id(),
                requester: requester.node_id(),
                cost: price.cost(&usage).unwrap(),
                settled_at_ms: NOW + 21,
            },
            provider,
        )
        .unwrap();
        let (settlement, _) = CoSigned::countersign(proposed, requester).unwrap();
        Deal {
            contract,
            receipt,
            settlement,
        }
    }

    pub(crate) fn cost(&self) -> u64 {
        self.settlement.decode_unverified().unwrap().cost.micro()
    }

    pub(crate) fn bodies(&self) -> [EntryBody; 3] {
        [
            EntryBody::Contract(self.contract.clone()),
            EntryBody::Receipt(self.receipt.clone()),
            EntryBody::Settlement(self.settlement.clone()),
        ]
    }
}

pub(crate) fn contract_body(nonce: u64) -> EntryBody {
    EntryBody::Contract(Deal::new(nonce, &requester(), &provider(), 1).contract)
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
