//! Real signed documents with fixed keys, for tests and benchmarks that need ledger entries
//! without running jobs: one job's contract, receipt and settlement, signed by two fixed keys
//! exactly as the market signs them (`suanli bench`, the criterion benchmarks); loopback ports
//! that stay free while a process restarts on them ([`loopback_ports`]: the `crash` benchmark
//! and integration tests); and the test helpers every module's tests share (a third key, the
//! owner's own statements).
//!
//! Neutral ground: the ledger's, the API's and the CLI's tests and the benchmarks all take their
//! documents from here, so no module reaches into another for them. Never use these keys for a
//! real node: their secrets are in the source.

use suanli_protocol::ledger::EntryBody;
use suanli_protocol::{
    CoSigned, Contract, ContractId, Credits, Hash32, JobId, Keypair, Limits, Outcome, PriceTerms,
    Receipt, Settlement, Signed, Usage,
};

/// A fixed Unix time in ms for the documents (they are never checked against a clock here).
pub const NOW_MS: u64 = 1_700_000_000_000;

/// The requester of every fixture deal.
pub fn requester() -> Keypair {
    Keypair::from_secret_bytes([0x11; 32])
}

/// The provider of every fixture deal (the owner of the benchmark and test ledgers).
pub fn provider() -> Keypair {
    Keypair::from_secret_bytes([0x22; 32])
}

/// Why a fixture document could not be made.
#[derive(Debug, thiserror::Error)]
#[error("fixture document: {0}")]
pub struct DocumentError(String);

fn document_error(error: impl std::fmt::Display) -> DocumentError {
    DocumentError(error.to_string())
}

/// One job's documents as both parties hold them: the co-signed contract, the provider's
/// receipt and the co-signed settlement (5 signatures in all).
#[derive(Debug, Clone)]
pub struct Deal {
    pub contract: CoSigned<Contract>,
    pub receipt: Signed<Receipt>,
    pub settlement: CoSigned<Settlement>,
    cost: Credits,
}

impl Deal {
    /// Job `nonce` that `provider` ran for `requester`, using `fuel`.
    pub fn new(
        nonce: u64,
        requester: &Keypair,
        provider: &Keypair,
        fuel: u64,
    ) -> Result<Deal, DocumentError> {
        let limits = Limits {
            fuel: 10_000_000,
            memory_bytes: 64 << 20,
            wall_time_ms: 5_000,
            output_bytes: 1 << 20,
            tasks: 1,
        };
        let price = PriceTerms::fuel(Credits(100), Credits(1_000));
        let job_id = JobId(Hash32::of(&nonce.to_be_bytes()));
        let contract = Contract {
            job_id,
            job_hash: Hash32::of(b"spec"),
            module_hash: Hash32::of(b"module"),
            stdin_hash: Hash32::of(b""),
            requester: requester.node_id(),
            provider: provider.node_id(),
            offer: Hash32::of(b"offer"),
            price,
            max_cost: price.max_cost(&limits).map_err(document_error)?,
            limits,
            deadline_ms: NOW_MS + 60_000,
            nonce,
            created_at_ms: NOW_MS,
        };
        let proposal = Signed::sign(&contract, requester).map_err(document_error)?;
        let contract_id = ContractId(proposal.digest());
        let (contract, _) = CoSigned::countersign(proposal, provider).map_err(document_error)?;
        let usage = Usage {
            fuel,
            wall_time_ms: 12,
            memory_bytes: 1 << 20,
            output_bytes: 5,
            prompt_tokens: 0,
            completion_tokens: 0,
            cluster: None,
        };
        let cost = price.cost(&usage).map_err(document_error)?;
        let receipt = Signed::sign(
            &Receipt {
                contract_id,
                job_id,
                provider: provider.node_id(),
                requester: requester.node_id(),
                outcome: Outcome::Succeeded {
                    exit_code: 0,
                    output_hash: Hash32::of(b"hello"),
                    output_len: 5,
                },
                usage,
                cost,
                finished_at_ms: NOW_MS + 20,
            },
            provider,
        )
        .map_err(document_error)?;
        let proposed = Signed::sign(
            &Settlement {
                contract_id,
                receipt: receipt.digest(),
                provider: provider.node_id(),
                requester: requester.node_id(),
                cost,
                settled_at_ms: NOW_MS + 21,
            },
            provider,
        )
        .map_err(document_error)?;
        let (settlement, _) = CoSigned::countersign(proposed, requester).map_err(document_error)?;
        Ok(Deal {
            contract,
            receipt,
            settlement,
            cost,
        })
    }

    /// What the requester owes, in micro-credits.
    pub fn cost(&self) -> u64 {
        self.cost.micro()
    }

    /// The three ledger entry bodies, in the order they are recorded.
    pub fn bodies(&self) -> [EntryBody; 3] {
        [
            EntryBody::Contract(self.contract.clone()),
            EntryBody::Receipt(self.receipt.clone()),
            EntryBody::Settlement(self.settlement.clone()),
        ]
    }
}

/// `N` distinct loopback TCP ports for processes that are killed and restarted on the same
/// ports. They are drawn at random below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), so that no port-0 bind or outgoing connection on
/// the machine can take one while its process is down; each is checked free (bound, and held
/// until all are drawn, then released for the caller to bind).
pub fn loopback_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    use std::hash::{BuildHasher, Hasher};
    const LOWEST: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
        .max(LOWEST + 1);
    let span = u64::from(ephemeral_low - LOWEST);
    // A per-call random start (std's hasher keys come from the OS), so concurrent test processes
    // rarely try the same ports; splitmix64 from there.
    let mut state = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let mut tries = 0;
        *port = loop {
            // `span` fits in u16, and so does LOWEST + (a value below it).
            let candidate = LOWEST + (next() % span) as u16;
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", candidate)) {
                held.push(listener);
                break candidate;
            }
            tries += 1;
            if tries > 1_000 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("no free loopback port in {LOWEST}..{ephemeral_low}"),
                ));
            }
        };
    }
    Ok(ports)
}

/// The three entry bodies of job `nonce` that `provider` ran for `requester`.
pub fn deal(
    nonce: u64,
    requester: &Keypair,
    provider: &Keypair,
) -> Result<[EntryBody; 3], DocumentError> {
    Deal::new(nonce, requester, provider, 500_000).map(|deal| deal.bodies())
}

#[cfg(test)]
pub(crate) use tests_only::*;

/// Helpers for unit tests (they panic on failure, which only tests may do).
#[cfg(test)]
mod tests_only {
    use suanli_protocol::ledger::EntryBody;
    use suanli_protocol::negotiation::{AttemptFailure, MisbehaviourKind};
    use suanli_protocol::{
        ContractId, Evidence, FailureRecord, Hash32, JobId, Keypair, NodeId, Signed,
    };

    pub(crate) use super::NOW_MS as NOW;
    use super::{Deal, provider, requester};

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
}
