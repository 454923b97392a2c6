//! Real signed documents for the benchmarks that need ledger entries without running jobs: one
//! job's contract, receipt and settlement, signed by two fixed keys exactly as the market signs
//! them.

use suanli_protocol::ledger::EntryBody;
use suanli_protocol::{
    CoSigned, Contract, ContractId, Credits, Hash32, JobId, Keypair, Limits, Outcome, PriceTerms,
    Receipt, Settlement, Signed, Usage,
};

/// A fixed Unix time in ms for the documents (they are never checked against a clock here).
pub const NOW_MS: u64 = 1_700_000_000_000;

/// The requester of every benchmark deal.
pub fn requester() -> Keypair {
    Keypair::from_secret_bytes([0x11; 32])
}

/// The provider of every benchmark deal (the owner of the benchmark ledgers).
pub fn provider() -> Keypair {
    Keypair::from_secret_bytes([0x22; 32])
}

/// Why a benchmark document could not be made.
#[derive(Debug, thiserror::Error)]
#[error("benchmark document: {0}")]
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
        };
        let price = PriceTerms {
            base: Credits(100),
            per_million_fuel: Credits(1_000),
        };
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

/// The three entry bodies of job `nonce` that `provider` ran for `requester`.
pub fn deal(
    nonce: u64,
    requester: &Keypair,
    provider: &Keypair,
) -> Result<[EntryBody; 3], DocumentError> {
    Deal::new(nonce, requester, provider, 500_000).map(|deal| deal.bodies())
}
