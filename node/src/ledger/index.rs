//! The ledger's index: what the market and the API look up by contract, by job and by peer
//! without reading the chain — which entries hold each contract's documents, which contracts are
//! still open, the contracts of each job, and the net balance with each peer.
//!
//! It is derived from the entries alone. The writer updates it in the same commit as the
//! entries it indexes (one atomic batch of the index tree, applied after the entries' batch and
//! before the barrier), together with the size it has indexed up to; at open it is caught up from
//! that size to the head, so an index that a crash left behind the chain is completed, never
//! trusted beyond it. Updating is read-modify-write by the writer alone.
//!
//! Keys of the index tree (`ledger/index`):
//!
//! | key | value |
//! |---|---|
//! | `s` | entries indexed (u64, big-endian) |
//! | `c` ‖ contract id | the seqs of its contract, receipt, settlement and own failure entries |
//! | `o` ‖ contract id | present while the contract is open (a contract, no settlement, no failure) |
//! | `j` ‖ job id ‖ contract id | the contracts of each job |
//! | `b` ‖ peer id | net micro-credits the peer owes this node (i128) and settlements counted (u64) |
//! | `u` ‖ contract id ‖ request seq (u32, big-endian) | the seq of that request's usage receipt (the first one recorded) |

use std::collections::BTreeMap;

use suanli_protocol::ledger::{EntryBody, LedgerEntry};
use suanli_protocol::{ContractDocs, ContractId, JobId, NodeId};

use super::{Balance, LedgerError};
use crate::storage::{RecordTree, WriteBatch};

const SIZE_KEY: &[u8] = b"s";
const CONTRACT: u8 = b'c';
const OPEN: u8 = b'o';
const JOB: u8 = b'j';
const BALANCE: u8 = b'b';
const USAGE: u8 = b'u';

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = vec![prefix];
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

/// Where one contract's documents are in the chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Seqs {
    pub(super) contract: Option<u64>,
    pub(super) receipt: Option<u64>,
    pub(super) settlement: Option<u64>,
    pub(super) failure: Option<u64>,
}

impl Seqs {
    const LEN: usize = 4 * 9;

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(Self::LEN);
        for seq in [self.contract, self.receipt, self.settlement, self.failure] {
            match seq {
                Some(seq) => {
                    bytes.push(1);
                    bytes.extend_from_slice(&seq.to_be_bytes());
                }
                None => bytes.extend_from_slice(&[0; 9]),
            }
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Seqs> {
        if bytes.len() != Self::LEN {
            return None;
        }
        let field = |index: usize| -> Option<Option<u64>> {
            let chunk = bytes.get(index * 9..index * 9 + 9)?;
            match chunk.first()? {
                0 => Some(None),
                1 => Some(Some(u64::from_be_bytes(chunk.get(1..9)?.try_into().ok()?))),
                _ => None,
            }
        };
        Some(Seqs {
            contract: field(0)?,
            receipt: field(1)?,
            settlement: field(2)?,
            failure: field(3)?,
        })
    }

    fn is_open(&self) -> bool {
        self.contract.is_some() && self.settlement.is_none() && self.failure.is_none()
    }
}

fn encode_balance(net: i128, settlements: u64) -> Vec<u8> {
    let mut bytes = net.to_be_bytes().to_vec();
    bytes.extend_from_slice(&settlements.to_be_bytes());
    bytes
}

fn decode_balance(bytes: &[u8]) -> Option<(i128, u64)> {
    let net = i128::from_be_bytes(bytes.get(..16)?.try_into().ok()?);
    let settlements = u64::from_be_bytes(bytes.get(16..24)?.try_into().ok()?);
    Some((net, settlements))
}

/// The index over the ledger of `owner`.
#[derive(Debug, Clone)]
pub(super) struct Index {
    tree: RecordTree,
    owner: NodeId,
}

/// Changes of one commit, read-modify-write over the tree.
#[derive(Debug, Default)]
pub(super) struct Changes {
    contracts: BTreeMap<ContractId, Seqs>,
    jobs: Vec<(JobId, ContractId)>,
    balances: BTreeMap<NodeId, (i128, u64)>,
    usage: BTreeMap<(ContractId, u32), u64>,
    size: u64,
}

impl Index {
    pub(super) fn new(tree: RecordTree, owner: NodeId) -> Index {
        Index { tree, owner }
    }

    pub(super) fn tree(&self) -> &RecordTree {
        &self.tree
    }

    /// Entries indexed so far.
    pub(super) fn size(&self) -> Result<u64, LedgerError> {
        Ok(self
            .tree
            .get(SIZE_KEY)?
            .and_then(|bytes| Some(u64::from_be_bytes(bytes.as_slice().try_into().ok()?)))
            .unwrap_or(0))
    }

    pub(super) fn seqs(&self, id: &ContractId) -> Result<Option<Seqs>, LedgerError> {
        Ok(self
            .tree
            .get(&key(CONTRACT, &[id.0.as_bytes()]))?
            .and_then(|bytes| Seqs::decode(&bytes)))
    }

    /// Starts the changes of a commit whose first entry is `seq`.
    pub(super) fn changes(&self, seq: u64) -> Changes {
        Changes {
            size: seq,
            ..Changes::default()
        }
    }

    /// Indexes entry `seq`.
    pub(super) fn add(
        &self,
        changes: &mut Changes,
        seq: u64,
        body: &EntryBody,
    ) -> Result<(), LedgerError> {
        changes.size = changes.size.max(seq + 1);
        let (id, slot): (ContractId, fn(&mut Seqs) -> &mut Option<u64>) = match body {
            EntryBody::Contract(contract) => {
                let id = ContractId(contract.digest());
                if let Ok(decoded) = contract.decode_unverified() {
                    changes.jobs.push((decoded.job_id, id));
                }
                (id, |seqs| &mut seqs.contract)
            }
            EntryBody::Receipt(receipt) => match receipt.decode_unverified() {
                Ok(receipt) => (receipt.contract_id, |seqs| &mut seqs.receipt),
                Err(_) => return Ok(()),
            },
            EntryBody::Settlement(settled) => match settled.decode_unverified() {
                Ok(settlement) => {
                    if settlement.provider != settlement.requester {
                        let cost = i128::from(settlement.cost.micro());
                        let counted = if settlement.provider == self.owner {
                            Some((settlement.requester, cost))
                        } else if settlement.requester == self.owner {
                            Some((settlement.provider, -cost))
                        } else {
                            None
                        };
                        // A contract settled twice (never done) is counted once.
                        let seen = self.current(changes, &settlement.contract_id)?.settlement;
                        if let (Some((peer, amount)), None) = (counted, seen) {
                            let balance = match changes.balances.get(&peer) {
                                Some(balance) => *balance,
                                None => self.balance(peer)?,
                            };
                            changes
                                .balances
                                .insert(peer, (balance.0 + amount, balance.1 + 1));
                        }
                    }
                    (settlement.contract_id, |seqs| &mut seqs.settlement)
                }
                Err(_) => return Ok(()),
            },
            EntryBody::Failure(failure) => match failure.decode_unverified() {
                Ok(record) => (record.contract_id, |seqs| &mut seqs.failure),
                Err(_) => return Ok(()),
            },
            EntryBody::Usage(usage) => {
                if let Ok(usage) = usage.decode_unverified() {
                    let slot = (usage.contract_id, usage.seq);
                    if !changes.usage.contains_key(&slot)
                        && self.usage_seq(&usage.contract_id, usage.seq)?.is_none()
                    {
                        changes.usage.insert(slot, seq);
                    }
                }
                return Ok(());
            }
            EntryBody::Misbehaviour(_) => return Ok(()),
        };
        let mut seqs = self.current(changes, &id)?;
        let field = slot(&mut seqs);
        if field.is_none() {
            *field = Some(seq);
        }
        changes.contracts.insert(id, seqs);
        Ok(())
    }

    fn current(&self, changes: &Changes, id: &ContractId) -> Result<Seqs, LedgerError> {
        match changes.contracts.get(id) {
            Some(seqs) => Ok(*seqs),
            None => Ok(self.seqs(id)?.unwrap_or_default()),
        }
    }

    /// The writes of `changes`, as one batch.
    pub(super) fn batch(&self, changes: Changes) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for (id, seqs) in &changes.contracts {
            batch.insert(&key(CONTRACT, &[id.0.as_bytes()]), &seqs.encode());
            let open = key(OPEN, &[id.0.as_bytes()]);
            if seqs.is_open() {
                batch.insert(&open, &[]);
            } else {
                batch.remove(&open);
            }
        }
        for (job, id) in &changes.jobs {
            batch.insert(&key(JOB, &[job.0.as_bytes(), id.0.as_bytes()]), &[]);
        }
        for (peer, (net, settlements)) in &changes.balances {
            batch.insert(
                &key(BALANCE, &[peer.as_bytes()]),
                &encode_balance(*net, *settlements),
            );
        }
        for ((id, request), seq) in &changes.usage {
            batch.insert(
                &key(USAGE, &[id.0.as_bytes(), &request.to_be_bytes()]),
                &seq.to_be_bytes(),
            );
        }
        batch.insert(SIZE_KEY, &changes.size.to_be_bytes());
        batch
    }

    /// The entry holding the usage receipt of request `request` of contract `id`.
    pub(super) fn usage_seq(
        &self,
        id: &ContractId,
        request: u32,
    ) -> Result<Option<u64>, LedgerError> {
        Ok(self
            .tree
            .get(&key(USAGE, &[id.0.as_bytes(), &request.to_be_bytes()]))?
            .and_then(|bytes| Some(u64::from_be_bytes(bytes.as_slice().try_into().ok()?))))
    }

    /// The entries holding contract `id`'s usage receipts, in request order.
    pub(super) fn usage_seqs(&self, id: &ContractId) -> Result<Vec<u64>, LedgerError> {
        let prefix = key(USAGE, &[id.0.as_bytes()]);
        let mut seqs = Vec::new();
        for item in self.tree.scan(prefix.clone()..) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            if let Ok(bytes) = <[u8; 8]>::try_from(&value[..]) {
                seqs.push(u64::from_be_bytes(bytes));
            }
        }
        Ok(seqs)
    }

    /// Indexes `entries` (raw, in order from the indexed size) and writes them at once: the
    /// catch-up at open.
    pub(super) fn catch_up<'a>(
        &self,
        entries: impl Iterator<Item = Result<(u64, Vec<u8>), LedgerError>> + 'a,
    ) -> Result<u64, LedgerError> {
        let start = self.size()?;
        let mut changes = self.changes(start);
        let mut count = 0;
        for item in entries {
            let (seq, raw) = item?;
            let entry = LedgerEntry::decode(&raw).map_err(|error| LedgerError::Damaged {
                path: std::path::PathBuf::new(),
                detail: format!("entry {seq} cannot be decoded: {error}"),
            })?;
            self.add(&mut changes, seq, &entry.body)?;
            count += 1;
            // Bounded memory for a long catch-up: write every few thousand entries.
            if changes.contracts.len() + changes.usage.len() >= 4096 {
                let next = changes.size;
                self.tree.apply_batch(self.batch(changes))?;
                changes = self.changes(next);
            }
        }
        self.tree.apply_batch(self.batch(changes))?;
        Ok(count)
    }

    /// Clears the index (it will be rebuilt from the chain).
    pub(super) fn clear(&self) -> Result<(), LedgerError> {
        let keys: Vec<Vec<u8>> = self
            .tree
            .scan::<&[u8], _>(..)
            .map(|item| item.map(|(key, _)| key.to_vec()))
            .collect::<Result<_, _>>()?;
        let mut batch = WriteBatch::default();
        for key in keys {
            batch.remove(&key);
        }
        Ok(self.tree.apply_batch(batch)?)
    }

    /// What `peer` owes this node by its settlements, and how many.
    pub(super) fn balance(&self, peer: NodeId) -> Result<(i128, u64), LedgerError> {
        Ok(self
            .tree
            .get(&key(BALANCE, &[peer.as_bytes()]))?
            .and_then(|bytes| decode_balance(&bytes))
            .unwrap_or((0, 0)))
    }

    pub(super) fn balances(&self) -> Result<Vec<Balance>, LedgerError> {
        let mut balances = Vec::new();
        for item in self.tree.scan([BALANCE]..[BALANCE + 1]) {
            let (key, value) = item?;
            let Some(peer) = key
                .get(1..)
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .and_then(|bytes| NodeId::from_bytes(bytes).ok())
            else {
                continue;
            };
            if let Some((net_micro, settlements)) = decode_balance(&value) {
                balances.push(Balance {
                    node_id: peer.to_string(),
                    net_micro,
                    settlements,
                });
            }
        }
        Ok(balances)
    }

    /// Ids of the contracts under `prefix`‖`parts` keys, in key order.
    fn ids_under(&self, prefix: Vec<u8>, id_at: usize) -> Result<Vec<ContractId>, LedgerError> {
        // Every key that starts with `prefix`, including those whose next byte is 0xff (an end of
        // `prefix ‖ 0xff` would leave out the contracts whose id starts with 0xff).
        let mut ids = Vec::new();
        for item in self.tree.scan(prefix.clone()..) {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            if let Some(bytes) = key.get(id_at..id_at + 32)
                && let Ok(bytes) = <[u8; 32]>::try_from(bytes)
            {
                ids.push(ContractId(suanli_protocol::Hash32(bytes)));
            }
        }
        Ok(ids)
    }

    pub(super) fn open_contracts(&self) -> Result<Vec<ContractId>, LedgerError> {
        self.ids_under(vec![OPEN], 1)
    }

    pub(super) fn contracts_of_job(&self, job: JobId) -> Result<Vec<ContractId>, LedgerError> {
        self.ids_under(key(JOB, &[job.0.as_bytes()]), 33)
    }
}

/// The documents whose entries `seqs` names, read with `raw_entry`.
pub(super) fn docs_at(
    seqs: &Seqs,
    raw_entry: impl Fn(u64) -> Result<Option<Vec<u8>>, LedgerError>,
) -> Result<Option<ContractDocs>, LedgerError> {
    let body = |seq: Option<u64>| -> Result<Option<EntryBody>, LedgerError> {
        let Some(seq) = seq else { return Ok(None) };
        let Some(raw) = raw_entry(seq)? else {
            return Ok(None);
        };
        let entry = LedgerEntry::decode(&raw).map_err(|error| LedgerError::Damaged {
            path: std::path::PathBuf::new(),
            detail: format!("entry {seq} cannot be decoded: {error}"),
        })?;
        Ok(Some(entry.body))
    };
    let Some(EntryBody::Contract(contract)) = body(seqs.contract)? else {
        return Ok(None);
    };
    let receipt = match body(seqs.receipt)? {
        Some(EntryBody::Receipt(receipt)) => Some(receipt),
        _ => None,
    };
    let settlement = match body(seqs.settlement)? {
        Some(EntryBody::Settlement(settlement)) => Some(settlement),
        _ => None,
    };
    let failure = match body(seqs.failure)? {
        Some(EntryBody::Failure(failure)) => Some(failure),
        _ => None,
    };
    Ok(Some(ContractDocs {
        contract,
        receipt,
        settlement,
        failure,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_round_trip() {
        for seqs in [
            Seqs::default(),
            Seqs {
                contract: Some(0),
                receipt: Some(u64::MAX),
                settlement: None,
                failure: Some(7),
            },
        ] {
            assert_eq!(Seqs::decode(&seqs.encode()), Some(seqs));
        }
        assert_eq!(Seqs::decode(&[2; Seqs::LEN]), None);
        assert_eq!(Seqs::decode(&[0; 3]), None);
    }

    #[test]
    fn contracts_whose_id_starts_with_0xff_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            crate::storage::Storage::open(dir.path(), &crate::config::StorageConfig::default())
                .unwrap();
        let index = Index::new(
            storage.ledger_tree("index-test"),
            crate::fixtures::requester().node_id(),
        );
        let job = JobId(suanli_protocol::Hash32([0xff; 32]));
        let ids = [[0x00; 32], [0x7f; 32], [0xff; 32]]
            .map(|bytes| ContractId(suanli_protocol::Hash32(bytes)));
        for id in &ids {
            index
                .tree
                .insert(&key(OPEN, &[id.0.as_bytes()]), &[])
                .unwrap();
            let of_job = key(JOB, &[job.0.as_bytes(), id.0.as_bytes()]);
            index.tree.insert(&of_job, &[]).unwrap();
        }
        // Keys just past each prefix are not listed.
        index.tree.insert(&[OPEN + 1; 33], &[]).unwrap();
        assert_eq!(index.open_contracts().unwrap(), ids.to_vec());
        assert_eq!(index.contracts_of_job(job).unwrap(), ids.to_vec());
    }

    #[test]
    fn balances_round_trip() {
        assert_eq!(decode_balance(&encode_balance(-5, 9)), Some((-5, 9)));
        assert_eq!(decode_balance(&[1, 2]), None);
    }
}
