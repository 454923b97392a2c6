//! Every check a party makes on the other party's documents before it uses them: the
//! countersignature covers the proposal, a decline names the right contract, a receipt stays
//! within the contract's limits and bills by its price terms, a settlement settles that receipt.
//!
//! Each check verifies the signatures it needs and returns the decoded document; a failure says
//! which field broke the contract ([`CheckError`]) and maps to the misbehaviour it proves
//! ([`CheckError::misbehaviour`]) when the offender signed it.

use crate::hash::Hash32;
use crate::identity::NodeId;
use crate::money::Credits;
use crate::negotiation::{
    Contract, ContractId, Decline, FailureReason, FailureRecord, MisbehaviourKind, Outcome,
    Receipt, Settlement, WALL_TIME_GRACE_MS,
};
use crate::signed::{CoSigned, Signed, VerifyError};
use crate::wire::Delivery;

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{document} does not match the contract: {field} differs")]
    Mismatch {
        document: &'static str,
        field: &'static str,
    },
    #[error("usage beyond limits: {0}")]
    UsageBeyondLimits(&'static str),
    #[error("cost {claimed} does not follow the price terms (expected {expected})")]
    WrongCost { claimed: Credits, expected: Credits },
    #[error("cost {cost} is above the contract's max_cost {max}")]
    CostAboveMax { cost: Credits, max: Credits },
    #[error("cost overflows")]
    Overflow,
}

impl CheckError {
    /// The misbehaviour a refused document proves about the party that signed it. A bad
    /// signature proves nothing about anyone (anybody can produce one): it is
    /// [`MisbehaviourKind::BadSignature`], which callers punish at the network level only and
    /// never record as evidence.
    pub fn misbehaviour(&self) -> MisbehaviourKind {
        match self {
            CheckError::Verify(_) => MisbehaviourKind::BadSignature,
            CheckError::UsageBeyondLimits(_) => MisbehaviourKind::UsageBeyondLimits,
            CheckError::WrongCost { .. } | CheckError::CostAboveMax { .. } => {
                MisbehaviourKind::WrongCost
            }
            CheckError::Mismatch { .. } | CheckError::Overflow => {
                MisbehaviourKind::ContractMismatch
            }
        }
    }
}

fn require(document: &'static str, field: &'static str, same: bool) -> Result<(), CheckError> {
    if same {
        Ok(())
    } else {
        Err(CheckError::Mismatch { document, field })
    }
}

/// The provider's countersignature: both signatures verify and it covers exactly `proposal`,
/// which must be this node's own signed proposal. When the first half is that very proposal
/// (bytes, signer and signature), only the countersignature is verified: the other signature is
/// this node's own.
pub fn check_countersigned(
    proposal: &Signed<Contract>,
    cosigned: &CoSigned<Contract>,
) -> Result<Contract, CheckError> {
    if cosigned.first() == proposal {
        return Ok(cosigned.verify_countersignature()?);
    }
    let contract = cosigned.verify()?;
    require(
        "countersigned contract",
        "bytes",
        cosigned.bytes() == proposal.bytes(),
    )?;
    Ok(contract)
}

/// A decline from `provider` of the job `job_id`: of the quote (`contract_id` None) or of that
/// very contract, so a decline cannot be replayed against another contract of the same job.
pub fn check_decline(
    decline: &Signed<Decline>,
    provider: NodeId,
    requester: NodeId,
    job_id: crate::job::JobId,
    contract_id: Option<ContractId>,
) -> Result<Decline, CheckError> {
    let document = decline.verify()?;
    require("decline", "provider", document.provider == provider)?;
    require("decline", "requester", document.requester == requester)?;
    require("decline", "job_id", document.job_id == job_id)?;
    require(
        "decline",
        "contract_id",
        document.contract_id == contract_id,
    )?;
    Ok(document)
}

/// A receipt for contract `id`: signed by its provider, naming this contract, job and parties,
/// within the limits, with checkable claims true (a fuel-exhausted run used all its fuel, a
/// timed-out one its whole time limit) and the cost following the price terms, at most
/// `max_cost`.
pub fn check_receipt(
    contract: &Contract,
    id: ContractId,
    signed: &Signed<Receipt>,
) -> Result<Receipt, CheckError> {
    check_receipt_terms(contract, id, signed.verify()?)
}

/// [`check_receipt`] without the signature: for a receipt this node signed itself (the
/// provider checks its own before delivering it) or whose signature the caller verified.
pub fn check_receipt_terms(
    contract: &Contract,
    id: ContractId,
    receipt: Receipt,
) -> Result<Receipt, CheckError> {
    require("receipt", "contract_id", receipt.contract_id == id)?;
    require("receipt", "job_id", receipt.job_id == contract.job_id)?;
    require("receipt", "provider", receipt.provider == contract.provider)?;
    require(
        "receipt",
        "requester",
        receipt.requester == contract.requester,
    )?;
    let (usage, limits) = (&receipt.usage, &contract.limits);
    if usage.fuel > limits.total_fuel() {
        return Err(CheckError::UsageBeyondLimits("fuel"));
    }
    // The scheduler's CPU time, which may be priced: one CPU per task for its time limit.
    if usage
        .cluster
        .is_some_and(|cluster| cluster.cpu_ms > limits.max_cpu_ms())
    {
        return Err(CheckError::UsageBeyondLimits("cpu_ms"));
    }
    if usage.memory_bytes > limits.memory_bytes {
        return Err(CheckError::UsageBeyondLimits("memory_bytes"));
    }
    if usage.output_bytes > limits.output_bytes {
        return Err(CheckError::UsageBeyondLimits("output_bytes"));
    }
    // A model session's fuel is its tokens (a WebAssembly run has none).
    let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    if tokens > 0 && usage.fuel != tokens {
        return Err(CheckError::UsageBeyondLimits("tokens"));
    }
    // Wall time is enforced coarsely (epoch interruption), hence the grace.
    if usage.wall_time_ms > limits.wall_time_ms.saturating_add(WALL_TIME_GRACE_MS) {
        return Err(CheckError::UsageBeyondLimits("wall_time_ms"));
    }
    match &receipt.outcome {
        Outcome::Succeeded { output_len, .. } => {
            require("receipt", "output_len", *output_len == usage.output_bytes)?;
        }
        // Claims that can be checked against the contract: a run that ran out of fuel used all
        // of it (one task of many, at least), and one that timed out ran for its whole time limit. Without these a provider
        // could bill a job's maximum without running it.
        Outcome::Failed {
            reason: FailureReason::FuelExhausted,
            ..
        } => require("receipt", "fuel", usage.fuel >= limits.fuel)?,
        Outcome::Failed {
            reason: FailureReason::Timeout,
            ..
        } => require(
            "receipt",
            "wall_time_ms",
            usage.wall_time_ms >= limits.wall_time_ms,
        )?,
        Outcome::Failed { .. } => {}
    }
    let expected = contract
        .price
        .cost(usage)
        .map_err(|_| CheckError::Overflow)?;
    if receipt.cost != expected {
        return Err(CheckError::WrongCost {
            claimed: receipt.cost,
            expected,
        });
    }
    if receipt.cost > contract.max_cost {
        return Err(CheckError::CostAboveMax {
            cost: receipt.cost,
            max: contract.max_cost,
        });
    }
    Ok(receipt)
}

/// A settlement's terms: it settles the receipt whose digest is `receipt_digest`, of contract
/// `id`, between the contract's parties, at the receipt's cost. Signatures are the caller's:
/// the provider's half is checked by [`check_delivery`], both by [`check_settlement`].
pub fn check_settlement_terms(
    contract: &Contract,
    id: ContractId,
    receipt_digest: Hash32,
    receipt: &Receipt,
    settlement: &Settlement,
) -> Result<(), CheckError> {
    require("settlement", "contract_id", settlement.contract_id == id)?;
    require(
        "settlement",
        "receipt",
        settlement.receipt == receipt_digest,
    )?;
    require(
        "settlement",
        "provider",
        settlement.provider == contract.provider,
    )?;
    require(
        "settlement",
        "requester",
        settlement.requester == contract.requester,
    )?;
    require("settlement", "cost", settlement.cost == receipt.cost)
}

/// A settlement both parties signed, of the receipt `receipt`.
pub fn check_settlement(
    contract: &Contract,
    id: ContractId,
    receipt: &Signed<Receipt>,
    settled: &CoSigned<Settlement>,
) -> Result<Settlement, CheckError> {
    check_settlement_of(contract, id, receipt, None, settled)
}

/// [`check_settlement`] for the provider that delivered the settlement half `delivered` (its
/// own signature): when `settled` completes that very half, only the countersignature is
/// verified.
pub fn check_settlement_of(
    contract: &Contract,
    id: ContractId,
    receipt: &Signed<Receipt>,
    delivered: Option<&Signed<Settlement>>,
    settled: &CoSigned<Settlement>,
) -> Result<Settlement, CheckError> {
    let settlement = if delivered.is_some_and(|half| half == settled.first()) {
        settled.verify_countersignature()?
    } else {
        settled.verify()?
    };
    let decoded = receipt.decode_unverified()?;
    check_settlement_terms(contract, id, receipt.digest(), &decoded, &settlement)?;
    Ok(settlement)
}

/// The output delivered with `receipt`: the exact stdout for a successful run, and for a failed
/// one whatever the run wrote, within the output limit.
pub fn check_output(
    contract: &Contract,
    receipt: &Receipt,
    output: &[u8],
) -> Result<(), CheckError> {
    match &receipt.outcome {
        Outcome::Succeeded {
            output_hash,
            output_len,
            ..
        } => require(
            "output",
            "hash",
            Hash32::of(output) == *output_hash && output.len() as u64 == *output_len,
        ),
        Outcome::Failed { .. } => {
            if output.len() as u64 > contract.limits.output_bytes {
                Err(CheckError::UsageBeyondLimits("output_bytes"))
            } else {
                Ok(())
            }
        }
    }
}

/// A party's own statement that it ended contract `id` (what one side learns when the other
/// gave up on it): signed by `recorder`, one of the contract's parties, about this contract and
/// job, naming the other party.
pub fn check_failure(
    failure: &Signed<FailureRecord>,
    id: ContractId,
    contract: &Contract,
    recorder: NodeId,
) -> Result<FailureRecord, CheckError> {
    let record = failure.verify()?;
    require("failure", "contract_id", record.contract_id == id)?;
    require("failure", "job_id", record.job_id == contract.job_id)?;
    require("failure", "recorder", record.recorder == recorder)?;
    let other = if recorder == contract.requester {
        contract.provider
    } else {
        contract.requester
    };
    require("failure", "counterparty", record.counterparty == other)?;
    Ok(record)
}

/// Everything the requester checks of a delivery before it countersigns: the receipt, the output
/// against it, the settlement's terms. Returns the receipt and the provider's settlement (not yet
/// countersigned).
pub fn check_delivery(
    contract: &Contract,
    id: ContractId,
    delivery: &Delivery,
) -> Result<(Receipt, Settlement), CheckError> {
    let receipt = check_receipt(contract, id, &delivery.receipt)?;
    check_output(contract, &receipt, &delivery.output)?;
    let settlement = delivery.settlement.verify()?;
    check_settlement_terms(
        contract,
        id,
        delivery.receipt.digest(),
        &receipt,
        &settlement,
    )?;
    Ok((receipt, settlement))
}
