//! Replicated jobs: the majority rule over the runs of one job on several providers, and the
//! portable evidence that one provider's signed output disagreed with the majority's.
//!
//! A replicated WebAssembly job runs the same spec (one job hash) under one contract per
//! provider. The executor is deterministic, so honest providers sign receipts with the same
//! exit code and output hash. [`majority`] decides a group from its votes; a
//! [`ReplicaMismatch`] holds the odd provider's contract and receipt and the majority's, exactly
//! as signed, and [`ReplicaMismatch::verify`] checks it from those documents alone: every
//! signature, that the receipts answer their contracts, that every contract binds the same job
//! hash for the same requester on distinct providers, and that the odd receipt's result differs
//! from the majority's, which agree.
//!
//! What the evidence proves is a disagreement between providers that each signed their result:
//! it cannot prove which side ran the job wrongly (a requester running its own providers could
//! outvote an honest one). Whoever counts it weighs it as a majority's word, not a proof of
//! fraud. Performs no I/O.
//!
//! A replicated *token request* (greedy decoding, `temperature` 0) is served by several
//! providers of one model file under their standing contracts; honest runs of one engine on one
//! model file give the same text. [`TokenMismatch`] is the evidence for it: the request and the
//! usage receipts both parties signed, the odd one's output hash differing from the majority's.

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError};
use crate::hash::Hash32;
use crate::identity::NodeId;
use crate::job::MAX_REPLICAS;
use crate::negotiation::{Contract, ContractId, MAX_DOCUMENT_BYTES, Outcome, Receipt};
use crate::signed::{CoSigned, Signed, VerifyError};
use crate::tokens::{Finish, GenerateRequest, MAX_TOKENS_FRAME_BYTES, UsageReceipt, model_hash};

/// What one replica's run says: how it exited and the hash of its output. Two honest runs of one
/// WebAssembly job give the same vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Vote {
    pub exit_code: i32,
    pub output_hash: Hash32,
}

impl Vote {
    /// The vote of a run that completed; a failed run (trap, fuel, timeout, …) casts none.
    pub fn of(outcome: &Outcome) -> Option<Vote> {
        match outcome {
            Outcome::Succeeded {
                exit_code,
                output_hash,
                ..
            } => Some(Vote {
                exit_code: *exit_code,
                output_hash: *output_hash,
            }),
            Outcome::Failed { .. } => None,
        }
    }
}

/// The vote a strict majority of `replicas` cast, if any: more than half of the replicas asked
/// for (not of the votes cast), so that runs which failed weaken a verdict instead of letting a
/// lone run decide it.
/// Generic over what a vote is: a job's [`Vote`], or a token request's output hash.
pub fn majority<'a, T: PartialEq + Copy + 'a>(
    votes: impl IntoIterator<Item = &'a T>,
    replicas: usize,
) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for vote in votes {
        match counts.iter_mut().find(|(seen, _)| seen == vote) {
            Some((_, count)) => *count += 1,
            None => counts.push((*vote, 1)),
        }
    }
    counts
        .into_iter()
        .find(|(_, count)| count.saturating_mul(2) > replicas)
        .map(|(vote, _)| vote)
}

/// One replica's run as its two parties signed it: the contract (signed by the requester,
/// countersigned by the provider) and the provider's receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRun {
    pub contract: CoSigned<Contract>,
    pub receipt: Signed<Receipt>,
}

/// Evidence that `odd`'s provider signed a result other than the one a majority of the job's
/// replicas signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMismatch {
    pub odd: ReplicaRun,
    /// At least two runs, on distinct providers, that agree.
    pub majority: Vec<ReplicaRun>,
}

/// The most bytes an encoded [`ReplicaMismatch`] may take: a run is a contract with two
/// signatures and a receipt, each at most [`MAX_DOCUMENT_BYTES`], for at most
/// [`MAX_REPLICAS`] runs.
pub const MAX_MISMATCH_BYTES: usize = MAX_REPLICAS as usize * (2 * MAX_DOCUMENT_BYTES + 512);

/// What a verified [`ReplicaMismatch`] establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedMismatch {
    /// The provider whose result differs.
    pub offender: NodeId,
    /// The requester of every contract.
    pub requester: NodeId,
    /// The job hash every contract binds.
    pub job_hash: Hash32,
    pub odd_vote: Vote,
    pub majority_vote: Vote,
    /// The providers of the majority, in the evidence's order.
    pub majority: Vec<NodeId>,
    /// The odd run's contract.
    pub odd_contract: ContractId,
}

/// Why a [`ReplicaMismatch`] proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MismatchError {
    #[error("run {run}: {source}")]
    Verify { run: usize, source: VerifyError },
    #[error("run {run}: the receipt does not answer its contract ({field} differs)")]
    ReceiptMismatch { run: usize, field: &'static str },
    #[error("run {run}: its contract is for another job or requester ({field} differs)")]
    OtherJob { run: usize, field: &'static str },
    #[error("provider {0} appears in more than one run")]
    SameProvider(NodeId),
    #[error("a majority needs at least two runs and at most {max}, got {got}", max = MAX_REPLICAS - 1)]
    MajoritySize { got: usize },
    #[error("run {run}: the run failed, so it casts no vote")]
    NoVote { run: usize },
    #[error("the majority's runs do not agree")]
    MajorityDisagrees,
    #[error("the odd run agrees with the majority")]
    NoMismatch,
    #[error("the request is not greedy (temperature {0} thousandths): its runs may differ")]
    NotGreedy(u32),
    #[error("the model is served by an upstream server, whose runs may differ")]
    Upstream,
    #[error("the request does not encode: {0}")]
    Request(String),
}

impl ReplicaMismatch {
    /// Encodes the evidence canonically (bincode, like every signed document).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let bytes = codec::encode(self)?;
        if bytes.len() > MAX_MISMATCH_BYTES {
            return Err(EncodeError::too_large(bytes.len(), MAX_MISMATCH_BYTES));
        }
        Ok(bytes)
    }

    /// Decodes evidence of at most [`MAX_MISMATCH_BYTES`]; nothing in it is verified yet.
    pub fn decode(bytes: &[u8]) -> Result<ReplicaMismatch, DecodeError> {
        codec::decode(bytes, MAX_MISMATCH_BYTES)
    }

    /// Checks the evidence from its documents alone (run 0 is the odd one, then the majority's
    /// in order): every signature; each receipt answers its contract (contract id, job, both
    /// parties); every contract binds the same job hash, module, stdin and requester; the
    /// providers are distinct; the majority (two runs or more) agree on a completed run's exit
    /// code and output hash, and the odd run completed with another.
    pub fn verify(&self) -> Result<VerifiedMismatch, MismatchError> {
        let size = self.majority.len();
        if !(2..usize::from(MAX_REPLICAS)).contains(&size) {
            return Err(MismatchError::MajoritySize { got: size });
        }
        let runs = std::iter::once(&self.odd).chain(&self.majority);
        let mut checked: Vec<(Contract, Receipt)> = Vec::with_capacity(size + 1);
        for (run, replica) in runs.enumerate() {
            checked.push(check_run(run, replica)?);
        }
        let Some(((odd_contract, odd_receipt), majority)) = checked.split_first() else {
            return Err(MismatchError::MajoritySize { got: 0 });
        };
        let mut providers = vec![odd_contract.provider];
        for (index, (contract, _)) in majority.iter().enumerate() {
            let run = index + 1;
            let other = |field| MismatchError::OtherJob { run, field };
            if contract.job_hash != odd_contract.job_hash {
                return Err(other("job_hash"));
            }
            if contract.module_hash != odd_contract.module_hash {
                return Err(other("module_hash"));
            }
            if contract.stdin_hash != odd_contract.stdin_hash {
                return Err(other("stdin_hash"));
            }
            if contract.requester != odd_contract.requester {
                return Err(other("requester"));
            }
            if providers.contains(&contract.provider) {
                return Err(MismatchError::SameProvider(contract.provider));
            }
            providers.push(contract.provider);
        }
        let odd_vote = Vote::of(&odd_receipt.outcome).ok_or(MismatchError::NoVote { run: 0 })?;
        let mut majority_vote = None;
        for (index, (_, receipt)) in majority.iter().enumerate() {
            let vote =
                Vote::of(&receipt.outcome).ok_or(MismatchError::NoVote { run: index + 1 })?;
            match majority_vote {
                None => majority_vote = Some(vote),
                Some(agreed) if agreed == vote => {}
                Some(_) => return Err(MismatchError::MajorityDisagrees),
            }
        }
        let majority_vote = majority_vote.ok_or(MismatchError::MajoritySize { got: 0 })?;
        if odd_vote == majority_vote {
            return Err(MismatchError::NoMismatch);
        }
        Ok(VerifiedMismatch {
            offender: odd_contract.provider,
            requester: odd_contract.requester,
            job_hash: odd_contract.job_hash,
            odd_vote,
            majority_vote,
            majority: providers.split_off(1),
            odd_contract: ContractId(self.odd.contract.digest()),
        })
    }
}

/// Evidence that `odd`'s provider returned other text than a majority of the providers that
/// served the same greedy request on the same model file: the request and each provider's usage
/// receipt, countersigned by the requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenMismatch {
    pub request: GenerateRequest,
    pub odd: CoSigned<UsageReceipt>,
    /// At least two receipts, from distinct providers, with the same output hash.
    pub majority: Vec<CoSigned<UsageReceipt>>,
}

/// The most bytes an encoded [`TokenMismatch`] may take: a request as its frame carries it and
/// at most [`MAX_REPLICAS`] co-signed receipts.
pub const MAX_TOKEN_MISMATCH_BYTES: usize =
    MAX_TOKENS_FRAME_BYTES + MAX_REPLICAS as usize * (MAX_DOCUMENT_BYTES + 256);

/// What a verified [`TokenMismatch`] establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTokenMismatch {
    pub offender: NodeId,
    pub requester: NodeId,
    /// [`GenerateRequest::hash`] of the request every receipt answers.
    pub request_hash: Hash32,
    /// The model file every provider generated with.
    pub model_sha256: Hash32,
    pub odd_output: Hash32,
    pub majority_output: Hash32,
    /// The providers of the majority, in the evidence's order.
    pub majority: Vec<NodeId>,
    /// The odd receipt's standing contract.
    pub odd_contract: ContractId,
}

impl TokenMismatch {
    /// Encodes the evidence canonically (bincode).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let bytes = codec::encode(self)?;
        if bytes.len() > MAX_TOKEN_MISMATCH_BYTES {
            return Err(EncodeError::too_large(
                bytes.len(),
                MAX_TOKEN_MISMATCH_BYTES,
            ));
        }
        Ok(bytes)
    }

    /// Decodes evidence of at most [`MAX_TOKEN_MISMATCH_BYTES`]; nothing in it is verified yet.
    pub fn decode(bytes: &[u8]) -> Result<TokenMismatch, DecodeError> {
        codec::decode(bytes, MAX_TOKEN_MISMATCH_BYTES)
    }

    /// Checks the evidence from its documents alone (run 0 is the odd receipt, then the
    /// majority's): both signatures of every receipt; the request is greedy, for a model file
    /// (not an upstream server), and every receipt answers it (its hash) for the same requester
    /// and model file, from distinct providers; no run was cancelled; the majority (two or more)
    /// delivered the same text and the odd one other text.
    pub fn verify(&self) -> Result<VerifiedTokenMismatch, MismatchError> {
        let size = self.majority.len();
        if !(2..usize::from(MAX_REPLICAS)).contains(&size) {
            return Err(MismatchError::MajoritySize { got: size });
        }
        if self.request.sampling.temperature_milli != 0 {
            return Err(MismatchError::NotGreedy(
                self.request.sampling.temperature_milli,
            ));
        }
        let request_hash = self
            .request
            .hash()
            .map_err(|error| MismatchError::Request(error.to_string()))?;
        let odd = self
            .odd
            .verify()
            .map_err(|source| MismatchError::Verify { run: 0, source })?;
        if odd.model_sha256 == model_hash(&self.request.model, Hash32::ZERO) {
            return Err(MismatchError::Upstream);
        }
        let mut receipts = Vec::with_capacity(size + 1);
        receipts.push(odd.clone());
        for (index, signed) in self.majority.iter().enumerate() {
            let run = index + 1;
            receipts.push(
                signed
                    .verify()
                    .map_err(|source| MismatchError::Verify { run, source })?,
            );
        }
        let mut providers = Vec::with_capacity(size + 1);
        let mut outputs = Vec::with_capacity(size + 1);
        for (run, receipt) in receipts.into_iter().enumerate() {
            let other = |field| MismatchError::OtherJob { run, field };
            if receipt.request_hash != request_hash {
                return Err(other("request_hash"));
            }
            if receipt.model_sha256 != odd.model_sha256 {
                return Err(other("model_sha256"));
            }
            if receipt.requester != odd.requester {
                return Err(other("requester"));
            }
            if receipt.finish == Finish::Cancelled {
                return Err(MismatchError::NoVote { run });
            }
            if providers.contains(&receipt.provider) {
                return Err(MismatchError::SameProvider(receipt.provider));
            }
            providers.push(receipt.provider);
            outputs.push(receipt.output_hash);
        }
        let (Some(odd_output), Some(majority_output)) = (outputs.first(), outputs.get(1)) else {
            return Err(MismatchError::MajoritySize { got: 0 });
        };
        let majority_output = *majority_output;
        if outputs
            .iter()
            .skip(1)
            .any(|output| *output != majority_output)
        {
            return Err(MismatchError::MajorityDisagrees);
        }
        if *odd_output == majority_output {
            return Err(MismatchError::NoMismatch);
        }
        Ok(VerifiedTokenMismatch {
            offender: odd.provider,
            requester: odd.requester,
            request_hash,
            model_sha256: odd.model_sha256,
            odd_output: *odd_output,
            majority_output,
            majority: providers.split_off(1),
            odd_contract: odd.contract_id,
        })
    }
}

/// Verifies one run's signatures and that its receipt answers its contract.
fn check_run(run: usize, replica: &ReplicaRun) -> Result<(Contract, Receipt), MismatchError> {
    let verify = |source| MismatchError::Verify { run, source };
    let contract = replica.contract.verify().map_err(verify)?;
    let receipt = replica.receipt.verify().map_err(verify)?;
    let differs = |field| MismatchError::ReceiptMismatch { run, field };
    if receipt.contract_id != ContractId(replica.contract.digest()) {
        return Err(differs("contract_id"));
    }
    if receipt.job_id != contract.job_id {
        return Err(differs("job_id"));
    }
    if receipt.provider != contract.provider {
        return Err(differs("provider"));
    }
    if receipt.requester != contract.requester {
        return Err(differs("requester"));
    }
    Ok((contract, receipt))
}

#[cfg(test)]
mod tests;
