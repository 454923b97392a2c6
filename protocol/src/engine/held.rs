//! [`Held`]: the documents one party holds of one contract, checked and decoded, and what the
//! other party's documents add to them ([`Held::learn`]).

use super::checks::{self, CheckError};
use crate::identity::NodeId;
use crate::negotiation::{Contract, ContractDocs, ContractId, FailureRecord, Receipt, Settlement};
use crate::signed::{CoSigned, Signed, VerifyError};

/// Where a contract stands for its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Signed by both; no receipt yet.
    Signed,
    /// The provider's receipt is held; no decision yet.
    Delivered,
    /// Settled: final.
    Settled,
    /// Failed by the holder's own record: final.
    Failed,
}

impl Status {
    pub fn is_final(self) -> bool {
        matches!(self, Status::Settled | Status::Failed)
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Signed => "signed",
            Status::Delivered => "delivered",
            Status::Settled => "settled",
            Status::Failed => "failed",
        }
    }
}

/// One contract's documents as its holder has them, each checked (or read back from the
/// holder's own ledger, which checked them before appending) and the contract and receipt
/// decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    id: ContractId,
    contract: Contract,
    docs: ContractDocs,
    receipt: Option<Receipt>,
}

/// What the other party's documents add to the held ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    /// Their receipt, valid, where none is held.
    pub receipt: Option<(Signed<Receipt>, Receipt)>,
    /// Their settlement, valid and of the receipt, where none is held and the holder has not
    /// failed the contract.
    pub settlement: Option<CoSigned<Settlement>>,
    /// Their own failure record, when they ended the contract as failed.
    pub their_failure: Option<FailureRecord>,
    /// What they sent that contradicts the held documents or does not verify; never appended.
    pub conflicts: Vec<String>,
}

impl Learned {
    /// Whether anything is to be appended.
    pub fn adds_documents(&self) -> bool {
        self.receipt.is_some() || self.settlement.is_some()
    }
}

impl Held {
    /// A contract both parties signed, checked now.
    pub fn checked(contract: &CoSigned<Contract>) -> Result<Held, VerifyError> {
        let decoded = contract.verify()?;
        Ok(Held {
            id: ContractId(contract.digest()),
            contract: decoded,
            docs: ContractDocs {
                contract: contract.clone(),
                receipt: None,
                settlement: None,
                failure: None,
            },
            receipt: None,
        })
    }

    /// A contract whose signatures the caller has just checked, decoded.
    pub(crate) fn from_parts(contract: CoSigned<Contract>, decoded: Contract) -> Held {
        Held {
            id: ContractId(contract.digest()),
            contract: decoded,
            docs: ContractDocs {
                contract,
                receipt: None,
                settlement: None,
                failure: None,
            },
            receipt: None,
        }
    }

    /// Documents read back from this node's own ledger, which verified every one before
    /// appending it: decoded, not verified again.
    pub fn from_ledger(docs: ContractDocs) -> Result<Held, VerifyError> {
        let contract = docs.contract.decode_unverified()?;
        let receipt = docs
            .receipt
            .as_ref()
            .map(Signed::decode_unverified)
            .transpose()?;
        Ok(Held {
            id: docs.contract_id(),
            contract,
            docs,
            receipt,
        })
    }

    pub fn id(&self) -> ContractId {
        self.id
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    pub fn docs(&self) -> ContractDocs {
        self.docs.clone()
    }

    pub fn receipt(&self) -> Option<&Receipt> {
        self.receipt.as_ref()
    }

    pub fn signed_receipt(&self) -> Option<&Signed<Receipt>> {
        self.docs.receipt.as_ref()
    }

    pub fn settlement(&self) -> Option<&CoSigned<Settlement>> {
        self.docs.settlement.as_ref()
    }

    pub fn failure(&self) -> Option<&Signed<FailureRecord>> {
        self.docs.failure.as_ref()
    }

    pub fn status(&self) -> Status {
        if self.docs.settlement.is_some() {
            Status::Settled
        } else if self.docs.failure.is_some() {
            Status::Failed
        } else if self.docs.receipt.is_some() {
            Status::Delivered
        } else {
            Status::Signed
        }
    }

    /// The other party of the contract, seen from `me`.
    pub fn counterparty(&self, me: NodeId) -> NodeId {
        if self.contract.requester == me {
            self.contract.provider
        } else {
            self.contract.requester
        }
    }

    /// This holding with a receipt (already checked) added.
    pub fn with_receipt(mut self, signed: Signed<Receipt>, receipt: Receipt) -> Held {
        self.docs.receipt = Some(signed);
        self.receipt = Some(receipt);
        self
    }

    /// This holding with a settlement (already checked) added.
    pub fn with_settlement(mut self, settlement: CoSigned<Settlement>) -> Held {
        self.docs.settlement = Some(settlement);
        self
    }

    /// This holding with the holder's own failure record added.
    pub fn with_failure(mut self, failure: Signed<FailureRecord>) -> Held {
        self.docs.failure = Some(failure);
        self
    }

    /// This holding with what was learned added (receipt first, then settlement).
    pub fn with_learned(mut self, learned: &Learned) -> Held {
        if let Some((signed, receipt)) = &learned.receipt {
            self = self.with_receipt(signed.clone(), receipt.clone());
        }
        if let Some(settlement) = &learned.settlement {
            self = self.with_settlement(settlement.clone());
        }
        self
    }

    /// What `theirs`, held by `counterparty`, adds to this holding. The contract itself must be
    /// the same (else an error: the sender is confused or lying). Documents that do not check out
    /// or contradict held ones are listed as conflicts and never taken; a valid settlement is not
    /// taken when this holder has failed the contract (the requester decides once: two
    /// different endings of one contract are a conflict to report, not to record).
    pub fn learn(
        &self,
        theirs: &ContractDocs,
        counterparty: NodeId,
    ) -> Result<Learned, CheckError> {
        self.learn_delivered(theirs, counterparty, None)
    }

    /// [`learn`](Self::learn) for a provider that delivered the settlement half `delivered`:
    /// a settlement completing that very half has only its countersignature verified (the half
    /// is this node's own signature).
    pub(crate) fn learn_delivered(
        &self,
        theirs: &ContractDocs,
        counterparty: NodeId,
        delivered: Option<&Signed<Settlement>>,
    ) -> Result<Learned, CheckError> {
        if theirs.contract.bytes() != self.docs.contract.bytes() {
            return Err(CheckError::Mismatch {
                document: "contract",
                field: "bytes",
            });
        }
        let mut learned = Learned::default();
        match (&self.docs.receipt, &theirs.receipt) {
            (None, Some(signed)) => match checks::check_receipt(&self.contract, self.id, signed) {
                Ok(receipt) => learned.receipt = Some((signed.clone(), receipt)),
                Err(error) => learned.conflicts.push(format!("receipt: {error}")),
            },
            (Some(ours), Some(signed)) if ours != signed => {
                learned
                    .conflicts
                    .push("a receipt different from the one held".into());
            }
            _ => {}
        }
        let receipt = self
            .docs
            .receipt
            .as_ref()
            .or(learned.receipt.as_ref().map(|(signed, _)| signed));
        match (&self.docs.settlement, &theirs.settlement, receipt) {
            (None, Some(_), _) if self.docs.failure.is_some() => learned
                .conflicts
                .push("a settlement of a contract this node failed".into()),
            (None, Some(settled), Some(receipt)) => {
                match checks::check_settlement_of(
                    &self.contract,
                    self.id,
                    receipt,
                    delivered,
                    settled,
                ) {
                    Ok(_) => learned.settlement = Some(settled.clone()),
                    Err(error) => learned.conflicts.push(format!("settlement: {error}")),
                }
            }
            (None, Some(_), None) => learned
                .conflicts
                .push("a settlement without a valid receipt".into()),
            (Some(ours), Some(settled), _) if ours != settled => learned
                .conflicts
                .push("a settlement different from the one held".into()),
            _ => {}
        }
        if let Some(failure) = &theirs.failure {
            match checks::check_failure(failure, self.id, self.contract(), counterparty) {
                Ok(record) => learned.their_failure = Some(record),
                Err(error) => learned.conflicts.push(format!("failure record: {error}")),
            }
        }
        Ok(learned)
    }
}
