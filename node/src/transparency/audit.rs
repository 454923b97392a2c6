//! Cross-auditing a peer's ledger against this node's own: fetch the peer's ledger over
//! `/suanli/ledger/1`, verify it (chain, signatures, Merkle root against the peer's checkpoint,
//! which is witnessed against the one held), and compare every contract the two nodes share.
//!
//! Both parties record the same three co-signed or signed documents of a contract they share:
//! the contract, the provider's receipt and the settlement. For each, the audit compares the
//! whole document including signatures (as a SHA-256 of its encoding). A document present on one
//! side only, or different on the two sides, is a discrepancy naming the contract; so is an entry
//! of the peer's ledger that fails verification. Failure statements and misbehaviour evidence are
//! each side's own statements and are not compared.
//!
//! Memory: one digest per shared document on each side, plus a Merkle frontier; the peer's
//! entries are streamed in pages.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use suanli_protocol::checkpoint::SignedCheckpoint;
use suanli_protocol::codec;
use suanli_protocol::ledger::{ChainHead, ChainVerifier, EntryBody, LedgerEntry, entry_hash};
use suanli_protocol::merkle::Frontier;
use suanli_protocol::negotiation::ContractId;
use suanli_protocol::wire::{LedgerRequest, LedgerResponse, MAX_LEDGER_RANGE};
use suanli_protocol::{Hash32, NodeId};

use super::witness::{Observation, Source, WitnessBook};
use crate::ledger::{LedgerHandle, MAX_RANGE};
use crate::network::NetworkHandle;

/// Most entries fetched from a peer in one audit.
pub const MAX_AUDIT_ENTRIES: u64 = 10_000_000;
/// Most problems listed in a report (the counts stay exact).
pub const MAX_LISTED: usize = 1000;

/// Why an audit could not be made (as opposed to an audit that found problems).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot audit this node's own ledger; use `suanli ledger verify`")]
    SelfAudit,
    #[error("the peer did not answer: {0}")]
    Unreachable(String),
    #[error("the peer answered out of protocol: {0}")]
    Protocol(String),
    #[error("the peer's ledger has more than {MAX_AUDIT_ENTRIES} entries")]
    TooLarge,
    #[error("reading this node's ledger: {0}")]
    Local(String),
}

/// What an audit concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditVerdict {
    /// The peer's ledger verified, matched its checkpoint, and every shared document is the same
    /// on both sides.
    Agree,
    /// Anything else: the report says what.
    Disagree,
}

/// The documents both parties of a contract record, and compare.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    Contract,
    Receipt,
    Settlement,
}

impl DocumentKind {
    const ALL: [DocumentKind; 3] = [
        DocumentKind::Contract,
        DocumentKind::Receipt,
        DocumentKind::Settlement,
    ];
}

/// How a shared document differs between the two ledgers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscrepancyIssue {
    /// Both hold it, with different bytes (a conflict to look at, never to overwrite).
    Differs,
    /// This node holds it, the peer does not.
    MissingOnPeer,
    /// The peer holds it, this node does not.
    MissingHere,
}

/// The peer's checkpoint the audit checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditedCheckpoint {
    pub size: u64,
    pub root: String,
    pub note: String,
    /// How it compares with the checkpoint this node held for the peer.
    pub witness: Observation,
    /// Whether the first `size` fetched entries hash to `root`.
    pub root_matches: bool,
}

/// An entry of the peer's ledger that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChainProblem {
    pub index: u64,
    pub contract_id: Option<String>,
    pub error: String,
}

/// A shared contract whose records differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Discrepancy {
    pub contract_id: String,
    pub kind: DocumentKind,
    pub issue: DiscrepancyIssue,
    /// Index of the entry in this node's ledger.
    pub ours: Option<u64>,
    /// Index of the entry in the peer's ledger.
    pub theirs: Option<u64>,
}

/// The result of auditing one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditReport {
    pub peer: String,
    pub verdict: AuditVerdict,
    pub checkpoint: Option<AuditedCheckpoint>,
    /// Entries fetched from the peer (up to its head, possibly past its checkpoint).
    pub entries: u64,
    pub chain_problems: u64,
    pub chain_problem_list: Vec<ChainProblem>,
    /// Contracts with at least one document on either side.
    pub shared_contracts: u64,
    /// Documents found identical on both sides.
    pub agreements: u64,
    pub discrepancies: u64,
    pub discrepancy_list: Vec<Discrepancy>,
    /// Contracts this node holds that the audit found documents missing for, on either side:
    /// the node sends the peer what it holds of each (`Reconcile`) until it answers, and both
    /// record what they lacked. Filled in by the caller that can reconcile (the market).
    pub repairs_requested: u64,
}

impl AuditReport {
    /// A report with nothing found yet.
    fn new(peer: NodeId) -> AuditReport {
        AuditReport {
            peer: peer.to_string(),
            verdict: AuditVerdict::Agree,
            checkpoint: None,
            entries: 0,
            chain_problems: 0,
            chain_problem_list: Vec::new(),
            shared_contracts: 0,
            agreements: 0,
            discrepancies: 0,
            discrepancy_list: Vec::new(),
            repairs_requested: 0,
        }
    }
}

/// One side's shared documents: contract id → kind → (entry index, document digest).
type Documents = BTreeMap<Hash32, BTreeMap<DocumentKind, (u64, Hash32)>>;

/// The contract a document belongs to, its kind and its two parties (decoded without
/// verification: the caller verifies, or records the failure).
fn shared_document(body: &EntryBody) -> Option<(Hash32, DocumentKind, NodeId, NodeId)> {
    match body {
        EntryBody::Contract(contract) => {
            let decoded = contract.decode_unverified().ok()?;
            Some((
                contract.digest(),
                DocumentKind::Contract,
                decoded.requester,
                decoded.provider,
            ))
        }
        EntryBody::Receipt(receipt) => {
            let decoded = receipt.decode_unverified().ok()?;
            Some((
                decoded.contract_id.0,
                DocumentKind::Receipt,
                decoded.requester,
                decoded.provider,
            ))
        }
        EntryBody::Settlement(settlement) => {
            let decoded = settlement.decode_unverified().ok()?;
            Some((
                decoded.contract_id.0,
                DocumentKind::Settlement,
                decoded.requester,
                decoded.provider,
            ))
        }
        // Usage receipts are not compared yet (a contract holds many; the settlement's receipt
        // carries their digests, and it is compared).
        EntryBody::Failure(_) | EntryBody::Misbehaviour(_) | EntryBody::Usage(_) => None,
    }
}

/// The contract, kind and digest of `entry` if it is a document between `a` and `b`.
fn shared_between(
    entry: &LedgerEntry,
    a: NodeId,
    b: NodeId,
) -> Option<(Hash32, DocumentKind, Hash32)> {
    let (contract, kind, requester, provider) = shared_document(&entry.body)?;
    let between = (requester == a && provider == b) || (requester == b && provider == a);
    if !between {
        return None;
    }
    let digest = codec::encode(&entry.body)
        .map(|bytes| Hash32(Sha256::digest(bytes).into()))
        .unwrap_or(Hash32::ZERO);
    Some((contract, kind, digest))
}

/// Keeps the first document of each kind per contract.
fn insert(
    documents: &mut Documents,
    index: u64,
    (contract, kind, digest): (Hash32, DocumentKind, Hash32),
) {
    documents
        .entry(contract)
        .or_default()
        .entry(kind)
        .or_insert((index, digest));
}

/// Records a peer document of a contract this node has no record of. Counted, not kept: what a
/// peer sends must not grow the auditor's memory beyond its own ledger.
fn peer_only(report: &mut AuditReport, contract: Hash32, kind: DocumentKind, index: u64) {
    if kind == DocumentKind::Contract {
        report.shared_contracts += 1;
    }
    add_discrepancy(
        report,
        Discrepancy {
            contract_id: ContractId(contract).to_string(),
            kind,
            issue: DiscrepancyIssue::MissingHere,
            ours: None,
            theirs: Some(index),
        },
    );
}

fn add_discrepancy(report: &mut AuditReport, discrepancy: Discrepancy) {
    report.discrepancies += 1;
    if report.discrepancy_list.len() < MAX_LISTED {
        report.discrepancy_list.push(discrepancy);
    }
}

pub(super) struct Auditor<'a> {
    pub ledger: &'a LedgerHandle,
    pub network: &'a NetworkHandle,
    pub witness: &'a WitnessBook,
}

impl Auditor<'_> {
    pub async fn audit(&self, peer: NodeId) -> Result<AuditReport, AuditError> {
        let me = self.ledger.owner();
        if peer == me {
            return Err(AuditError::SelfAudit);
        }
        let checkpoint = self.fetch_checkpoint(peer).await?;
        let witness = match &checkpoint {
            Some(checkpoint) => Some(
                self.witness
                    .observe(checkpoint.clone(), Source::Direct)
                    .await,
            ),
            None => None,
        };

        let mut report = AuditReport::new(peer);
        // This node's side first: the peer's documents are kept only for contracts found here.
        let ours = self.our_documents(peer).await?;
        let mut theirs = Documents::new();
        let mut note = |report: &mut AuditReport, index: u64, entry: &LedgerEntry| {
            if let Some(document) = shared_between(entry, peer, me) {
                if ours.contains_key(&document.0) {
                    insert(&mut theirs, index, document);
                } else {
                    peer_only(report, document.0, document.1, index);
                }
            }
        };
        let mut verifier = ChainVerifier::new(peer);
        let mut frontier = Frontier::new();
        let mut root_at_checkpoint = None;
        let checkpoint_size = checkpoint.as_ref().map_or(0, SignedCheckpoint::size);
        if checkpoint_size == 0 {
            root_at_checkpoint = Some(frontier.root());
        }
        let mut next = 0u64;
        loop {
            let page = self.fetch_range(peer, next).await?;
            if page.is_empty() {
                break;
            }
            for raw in page {
                let index = next;
                next += 1;
                if next > MAX_AUDIT_ENTRIES {
                    return Err(AuditError::TooLarge);
                }
                frontier.push(entry_hash(&raw));
                if frontier.size() == checkpoint_size {
                    root_at_checkpoint = Some(frontier.root());
                }
                match verifier.push(&raw) {
                    Ok(entry) => note(&mut report, index, &entry),
                    Err(error) => {
                        // Record it, then go on from this entry as the peer has it, so one
                        // altered entry is reported once (and the broken link after it).
                        let decoded = LedgerEntry::decode(&raw).ok();
                        report.chain_problems += 1;
                        if report.chain_problem_list.len() < MAX_LISTED {
                            report.chain_problem_list.push(ChainProblem {
                                index,
                                contract_id: decoded
                                    .as_ref()
                                    .and_then(|entry| shared_document(&entry.body))
                                    .map(|(contract, ..)| ContractId(contract).to_string()),
                                error: error.error.to_string(),
                            });
                        }
                        if let Some(entry) = &decoded {
                            note(&mut report, index, entry);
                        }
                        verifier = ChainVerifier::resume(
                            peer,
                            ChainHead {
                                size: index + 1,
                                head: entry_hash(&raw),
                                timestamp_ms: decoded
                                    .map_or(verifier.head().timestamp_ms, |e| e.timestamp_ms),
                            },
                        );
                    }
                }
            }
        }
        report.entries = next;
        if let (Some(checkpoint), Some(witness)) = (checkpoint, witness) {
            report.checkpoint = Some(AuditedCheckpoint {
                size: checkpoint.size(),
                root: checkpoint.root().to_string(),
                note: checkpoint.note().to_owned(),
                witness,
                root_matches: root_at_checkpoint == Some(checkpoint.root()),
            });
        }

        compare(&mut report, &ours, &theirs);
        let checkpoint_ok = report.checkpoint.as_ref().is_none_or(|checkpoint| {
            checkpoint.root_matches && checkpoint.witness != Observation::Equivocation
        });
        if !checkpoint_ok || report.chain_problems > 0 || report.discrepancies > 0 {
            report.verdict = AuditVerdict::Disagree;
        }
        Ok(report)
    }

    async fn fetch_checkpoint(&self, peer: NodeId) -> Result<Option<SignedCheckpoint>, AuditError> {
        match self
            .network
            .ledger_request(peer, &LedgerRequest::Checkpoint)
            .await
        {
            Ok(LedgerResponse::Checkpoint { note: None }) => Ok(None),
            Ok(LedgerResponse::Checkpoint { note: Some(note) }) => {
                let checkpoint = SignedCheckpoint::from_note(&note)
                    .map_err(|error| AuditError::Protocol(format!("checkpoint: {error}")))?;
                if checkpoint.signer() != peer {
                    return Err(AuditError::Protocol(format!(
                        "the peer sent a checkpoint of {}",
                        checkpoint.signer()
                    )));
                }
                Ok(Some(checkpoint))
            }
            Ok(other) => Err(unexpected(&other)),
            Err(error) => Err(AuditError::Unreachable(error.to_string())),
        }
    }

    async fn fetch_range(&self, peer: NodeId, from: u64) -> Result<Vec<Vec<u8>>, AuditError> {
        let request = LedgerRequest::Range {
            from,
            limit: MAX_LEDGER_RANGE,
        };
        match self.network.ledger_request(peer, &request).await {
            Ok(LedgerResponse::Entries {
                from: answered,
                entries,
                ..
            }) if answered == from => Ok(entries.into_iter().map(|raw| raw.into_vec()).collect()),
            Ok(other) => Err(unexpected(&other)),
            Err(error) => Err(AuditError::Unreachable(error.to_string())),
        }
    }

    /// This node's documents shared with `peer`, read page by page off the async threads.
    async fn our_documents(&self, peer: NodeId) -> Result<Documents, AuditError> {
        let ledger = self.ledger.clone();
        let me = ledger.owner();
        tokio::task::spawn_blocking(move || {
            let mut documents = Documents::new();
            let mut from = 0;
            loop {
                let page = ledger
                    .range(from, MAX_RANGE)
                    .map_err(|error| AuditError::Local(error.to_string()))?;
                let Some(last) = page.last() else { break };
                from = last.seq + 1;
                for stored in &page {
                    if let Some(document) = LedgerEntry::decode(&stored.raw)
                        .ok()
                        .and_then(|entry| shared_between(&entry, me, peer))
                    {
                        insert(&mut documents, stored.seq, document);
                    }
                }
            }
            Ok(documents)
        })
        .await
        .map_err(|error| AuditError::Local(error.to_string()))?
    }
}

fn unexpected(answer: &LedgerResponse) -> AuditError {
    match answer {
        LedgerResponse::Error(error) => {
            AuditError::Protocol(format!("{:?}: {}", error.code, error.message))
        }
        _ => AuditError::Protocol("an answer of the wrong kind".into()),
    }
}

/// Compares the two sides contract by contract, kind by kind. `theirs` holds only contracts
/// found in `ours` (see [`peer_only`] for the others).
fn compare(report: &mut AuditReport, ours: &Documents, theirs: &Documents) {
    report.shared_contracts += ours.len() as u64;
    let empty = BTreeMap::new();
    for (contract, mine) in ours {
        let other = theirs.get(contract).unwrap_or(&empty);
        for kind in DocumentKind::ALL {
            let issue = match (mine.get(&kind), other.get(&kind)) {
                (None, None) => continue,
                (Some((_, a)), Some((_, b))) if a == b => {
                    report.agreements += 1;
                    continue;
                }
                (Some(_), Some(_)) => DiscrepancyIssue::Differs,
                (Some(_), None) => DiscrepancyIssue::MissingOnPeer,
                (None, Some(_)) => DiscrepancyIssue::MissingHere,
            };
            add_discrepancy(
                report,
                Discrepancy {
                    contract_id: ContractId(*contract).to_string(),
                    kind,
                    issue,
                    ours: mine.get(&kind).map(|(index, _)| *index),
                    theirs: other.get(&kind).map(|(index, _)| *index),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DocumentKind::{Contract, Receipt, Settlement};

    fn report() -> AuditReport {
        AuditReport::new(suanli_protocol::Keypair::generate().expect("key").node_id())
    }

    /// contract, kind, issue, ours, theirs
    type Row = (
        String,
        DocumentKind,
        DiscrepancyIssue,
        Option<u64>,
        Option<u64>,
    );

    fn hash(byte: u8) -> Hash32 {
        Hash32([byte; 32])
    }

    fn documents(items: &[(u8, DocumentKind, u64, u8)]) -> Documents {
        let mut documents = Documents::new();
        for &(contract, kind, index, digest) in items {
            documents
                .entry(hash(contract))
                .or_default()
                .insert(kind, (index, hash(digest)));
        }
        documents
    }

    #[test]
    fn every_kind_of_disagreement_names_its_contract_and_entries() {
        let ours = documents(&[
            (1, Contract, 0, 10),
            (1, Receipt, 1, 11),
            (1, Settlement, 2, 12),
            (2, Contract, 3, 20),
            (2, Settlement, 4, 21),
            (3, Contract, 5, 30),
        ]);
        let theirs = documents(&[
            (1, Contract, 7, 10),
            (1, Receipt, 8, 11),
            (1, Settlement, 9, 12),
            (2, Contract, 10, 20),
            (2, Settlement, 11, 99),
        ]);
        let mut report = report();
        compare(&mut report, &ours, &theirs);
        peer_only(&mut report, hash(4), Contract, 12);
        assert_eq!(report.shared_contracts, 4);
        assert_eq!(report.agreements, 4);
        assert_eq!(report.discrepancies, 3);
        let found: Vec<Row> = report
            .discrepancy_list
            .iter()
            .map(|item| {
                (
                    item.contract_id.clone(),
                    item.kind,
                    item.issue,
                    item.ours,
                    item.theirs,
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    ContractId(hash(2)).to_string(),
                    Settlement,
                    DiscrepancyIssue::Differs,
                    Some(4),
                    Some(11)
                ),
                (
                    ContractId(hash(3)).to_string(),
                    Contract,
                    DiscrepancyIssue::MissingOnPeer,
                    Some(5),
                    None
                ),
                (
                    ContractId(hash(4)).to_string(),
                    Contract,
                    DiscrepancyIssue::MissingHere,
                    None,
                    Some(12)
                ),
            ]
        );
    }

    #[test]
    fn identical_sides_agree() {
        let side = documents(&[(1, Contract, 0, 10), (1, Settlement, 1, 11)]);
        let mut report = report();
        compare(&mut report, &side, &side);
        assert_eq!((report.agreements, report.discrepancies), (2, 0));
    }
}
