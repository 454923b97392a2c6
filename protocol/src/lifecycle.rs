//! The contract lifecycle: an explicit, pure state machine shared by requester and provider.
//!
//! ```text
//!             countersigned        started          delivered (receipt)      settled
//! Proposed ───────────────▶ Signed ───────▶ Running ─────────────────▶ Delivered ───────▶ Settled
//!    │  declined               │ │              │ │                        (a receipt may also
//!    ├────────▶ Declined       │ │ failed       │ │ failed                  arrive before the
//!    │                         │ └──────────────┼─┴──▶ Failed               "started" ack:
//!    │ cancelled / expired     │  cancelled / expired                        Signed ▶ Delivered)
//!    └─────────────────────────┴──────────────────────▶ Cancelled / Expired
//! ```
//!
//! [`ContractLifecycle::apply`] takes the current state and one [`ContractEvent`] and either moves
//! to the next state or returns an error and stays where it was. Every document an event carries is
//! verified and checked against the contract: the right parties signed it, it refers to this
//! contract, the usage stays within the limits, and the cost follows the price terms.
//! No I/O happens here; callers persist and send what the new state calls for.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::Hash32;
use crate::money::Credits;
use crate::negotiation::{
    Contract, ContractId, Decline, FailureReason, Outcome, Receipt, Settlement, WALL_TIME_GRACE_MS,
};
use crate::signed::{CoSigned, Signed, VerifyError};

/// Where a contract is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContractState {
    /// Signed by the requester, awaiting the provider.
    Proposed,
    /// Signed by both; not yet running.
    Signed,
    /// The provider acknowledged execution.
    Running,
    /// A valid receipt arrived.
    Delivered,
    /// Both signed the settlement. Terminal.
    Settled,
    /// The provider declined. Terminal.
    Declined,
    /// The deadline passed before delivery. Terminal.
    Expired,
    /// The contract broke down (peer lost, misbehaviour, not started). Terminal.
    Failed,
    /// The requester cancelled. Terminal.
    Cancelled,
}

impl ContractState {
    pub const ALL: [ContractState; 9] = [
        ContractState::Proposed,
        ContractState::Signed,
        ContractState::Running,
        ContractState::Delivered,
        ContractState::Settled,
        ContractState::Declined,
        ContractState::Expired,
        ContractState::Failed,
        ContractState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ContractState::Settled
                | ContractState::Declined
                | ContractState::Expired
                | ContractState::Failed
                | ContractState::Cancelled
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ContractState::Proposed => "proposed",
            ContractState::Signed => "signed",
            ContractState::Running => "running",
            ContractState::Delivered => "delivered",
            ContractState::Settled => "settled",
            ContractState::Declined => "declined",
            ContractState::Expired => "expired",
            ContractState::Failed => "failed",
            ContractState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for ContractState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that happens to a contract.
#[derive(Debug, Clone, Copy)]
pub enum ContractEvent<'a> {
    Countersigned(&'a CoSigned<Contract>),
    Declined(&'a Signed<Decline>),
    Started,
    Delivered(&'a Signed<Receipt>),
    Settled(&'a CoSigned<Settlement>),
    Failed,
    Cancelled,
    /// The clock reads `now_ms`; expires the contract if its deadline has passed.
    Expire {
        now_ms: u64,
    },
}

impl ContractEvent<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            ContractEvent::Countersigned(_) => "countersigned",
            ContractEvent::Declined(_) => "declined",
            ContractEvent::Started => "started",
            ContractEvent::Delivered(_) => "delivered",
            ContractEvent::Settled(_) => "settled",
            ContractEvent::Failed => "failed",
            ContractEvent::Cancelled => "cancelled",
            ContractEvent::Expire { .. } => "expire",
        }
    }
}

/// Why an event was refused. The lifecycle is unchanged after any error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("event {event} is not allowed in state {state}")]
    InvalidTransition {
        state: ContractState,
        event: &'static str,
    },
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
    #[error("deadline has not passed")]
    NotExpired,
}

/// One contract and where it stands.
#[derive(Debug, Clone)]
pub struct ContractLifecycle {
    id: ContractId,
    contract: Contract,
    proposal: Signed<Contract>,
    state: ContractState,
    receipt: Option<(Hash32, Receipt)>,
}

fn require(document: &'static str, field: &'static str, same: bool) -> Result<(), LifecycleError> {
    if same {
        Ok(())
    } else {
        Err(LifecycleError::Mismatch { document, field })
    }
}

impl ContractLifecycle {
    /// A contract the requester signed: verifies it and starts in [`ContractState::Proposed`].
    pub fn propose(proposal: Signed<Contract>) -> Result<ContractLifecycle, LifecycleError> {
        let contract = proposal.verify()?;
        Ok(ContractLifecycle {
            id: ContractId(proposal.digest()),
            contract,
            proposal,
            state: ContractState::Proposed,
            receipt: None,
        })
    }

    /// A contract both parties signed: starts in [`ContractState::Signed`].
    pub fn signed(contract: &CoSigned<Contract>) -> Result<ContractLifecycle, LifecycleError> {
        let mut lifecycle = ContractLifecycle::propose(contract.first().clone())?;
        lifecycle.apply(ContractEvent::Countersigned(contract))?;
        Ok(lifecycle)
    }

    pub fn id(&self) -> ContractId {
        self.id
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    pub fn state(&self) -> ContractState {
        self.state
    }

    /// The accepted receipt, once delivered.
    pub fn receipt(&self) -> Option<&Receipt> {
        self.receipt.as_ref().map(|(_, receipt)| receipt)
    }

    /// Applies `event`: on success returns the new state, on error changes nothing.
    pub fn apply(&mut self, event: ContractEvent<'_>) -> Result<ContractState, LifecycleError> {
        use ContractState as S;
        let next = match (self.state, event) {
            (S::Proposed, ContractEvent::Countersigned(cosigned)) => {
                cosigned.verify()?;
                require(
                    "countersigned contract",
                    "bytes",
                    cosigned.bytes() == self.proposal.bytes(),
                )?;
                S::Signed
            }
            (S::Proposed, ContractEvent::Declined(decline)) => {
                let decline = decline.verify()?;
                let contract = &self.contract;
                require("decline", "provider", decline.provider == contract.provider)?;
                require(
                    "decline",
                    "requester",
                    decline.requester == contract.requester,
                )?;
                require("decline", "job_id", decline.job_id == contract.job_id)?;
                require(
                    "decline",
                    "contract_id",
                    decline.contract_id == Some(self.id),
                )?;
                S::Declined
            }
            (S::Signed, ContractEvent::Started) => S::Running,
            (S::Signed | S::Running, ContractEvent::Delivered(signed)) => {
                let receipt = signed.verify()?;
                self.check_receipt(&receipt)?;
                self.receipt = Some((signed.digest(), receipt));
                S::Delivered
            }
            (S::Delivered, ContractEvent::Settled(cosigned)) => {
                let settlement = cosigned.verify()?;
                self.check_settlement(&settlement)?;
                S::Settled
            }
            (S::Signed | S::Running, ContractEvent::Failed) => S::Failed,
            (S::Proposed | S::Signed | S::Running, ContractEvent::Cancelled) => S::Cancelled,
            (S::Proposed | S::Signed | S::Running, ContractEvent::Expire { now_ms }) => {
                if now_ms <= self.contract.deadline_ms {
                    return Err(LifecycleError::NotExpired);
                }
                S::Expired
            }
            (state, event) => {
                return Err(LifecycleError::InvalidTransition {
                    state,
                    event: event.name(),
                });
            }
        };
        self.state = next;
        Ok(next)
    }

    fn check_receipt(&self, receipt: &Receipt) -> Result<(), LifecycleError> {
        let contract = &self.contract;
        require("receipt", "contract_id", receipt.contract_id == self.id)?;
        require("receipt", "job_id", receipt.job_id == contract.job_id)?;
        require("receipt", "provider", receipt.provider == contract.provider)?;
        require(
            "receipt",
            "requester",
            receipt.requester == contract.requester,
        )?;
        let (usage, limits) = (&receipt.usage, &contract.limits);
        if usage.fuel > limits.fuel {
            return Err(LifecycleError::UsageBeyondLimits("fuel"));
        }
        if usage.memory_bytes > limits.memory_bytes {
            return Err(LifecycleError::UsageBeyondLimits("memory_bytes"));
        }
        if usage.output_bytes > limits.output_bytes {
            return Err(LifecycleError::UsageBeyondLimits("output_bytes"));
        }
        // Wall time is enforced coarsely (epoch interruption), hence the grace.
        if usage.wall_time_ms > limits.wall_time_ms.saturating_add(WALL_TIME_GRACE_MS) {
            return Err(LifecycleError::UsageBeyondLimits("wall_time_ms"));
        }
        match &receipt.outcome {
            Outcome::Succeeded { output_len, .. } => {
                require("receipt", "output_len", *output_len == usage.output_bytes)?;
            }
            // Claims that can be checked against the contract: a run that ran out of fuel used
            // all of it, and one that timed out ran for its whole time limit. Without these a
            // provider could bill a job's maximum without running it.
            Outcome::Failed {
                reason: FailureReason::FuelExhausted,
                ..
            } => require("receipt", "fuel", usage.fuel == limits.fuel)?,
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
            .map_err(|_| LifecycleError::Overflow)?;
        if receipt.cost != expected {
            return Err(LifecycleError::WrongCost {
                claimed: receipt.cost,
                expected,
            });
        }
        if receipt.cost > contract.max_cost {
            return Err(LifecycleError::CostAboveMax {
                cost: receipt.cost,
                max: contract.max_cost,
            });
        }
        Ok(())
    }

    fn check_settlement(&self, settlement: &Settlement) -> Result<(), LifecycleError> {
        let Some((receipt_digest, receipt)) = &self.receipt else {
            return Err(LifecycleError::InvalidTransition {
                state: self.state,
                event: "settled",
            });
        };
        let contract = &self.contract;
        require(
            "settlement",
            "contract_id",
            settlement.contract_id == self.id,
        )?;
        require(
            "settlement",
            "receipt",
            settlement.receipt == *receipt_digest,
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
        require("settlement", "cost", settlement.cost == receipt.cost)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
