//! What each API token has spent, and the quota check.
//!
//! A token's spending is derived, never kept as a running total that a crash could leave wrong:
//! - its jobs are found through the job book's per-token index (written with the job's record,
//!   under the same barrier); an ended job counts its cost, an unended one its `max_price` (the
//!   most it can still cost);
//! - its model requests' costs are added to a per-token sum when each request ends;
//! - submissions still being admitted hold a [`Reservation`] of their `max_price`.
//!
//! The cache per token remembers the ended jobs' sum and the unended jobs, so a check reads only
//! the jobs submitted since the last check and the ones still running: never the whole history.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use suanli_protocol::JobId;

use crate::market::{JobBook, JobStoreError};
use crate::storage::{RecordTree, Storage};

/// Index keys read per step of a scan.
const SCAN_BATCH: u32 = 1024;

/// A token's spending, micro-credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SpendView {
    /// Jobs submitted with the token.
    pub jobs: u64,
    /// What its ended jobs cost.
    pub jobs_spent: u64,
    /// The most its unended jobs (and submissions being admitted) can still cost.
    pub reserved: u64,
    /// What its model requests cost.
    pub model_spent: u64,
}

impl SpendView {
    /// Spent and reserved together: what counts against the quota.
    pub fn committed(&self) -> u64 {
        self.jobs_spent
            .saturating_add(self.reserved)
            .saturating_add(self.model_spent)
    }
}

#[derive(Debug, Default)]
struct TokenSpend {
    jobs: u64,
    ended: u64,
    unended: HashMap<JobId, u64>,
    /// The index key to scan from next.
    next_key: Option<Vec<u8>>,
    /// Submissions being admitted.
    pending: u64,
}

/// Spending of every token (see the module docs).
#[derive(Debug, Clone)]
pub struct Spend {
    inner: Arc<SpendInner>,
}

#[derive(Debug)]
struct SpendInner {
    jobs: JobBook,
    model: RecordTree,
    cache: Mutex<HashMap<String, TokenSpend>>,
}

/// A quota check passed: `amount` stays reserved for the token until this is dropped (by then
/// the job is in the index, or was refused).
#[derive(Debug)]
pub struct Reservation {
    spend: Spend,
    token: String,
    amount: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut cache = self
            .spend
            .inner
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = cache.get_mut(&self.token) {
            entry.pending = entry.pending.saturating_sub(self.amount);
        }
    }
}

/// Why work was refused by the quota check.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "the token's quota of {quota} micro-credits is exhausted: {committed} spent or reserved, \
         this request may cost {amount}"
    )]
    Exhausted {
        quota: u64,
        committed: u64,
        amount: u64,
    },
    #[error("job records: {0}")]
    Store(#[from] JobStoreError),
}

impl Spend {
    pub fn new(storage: &Storage, jobs: JobBook) -> Spend {
        Spend {
            inner: Arc::new(SpendInner {
                jobs,
                model: storage.records("api_token_model_spend"),
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The token's spending now.
    pub fn view(&self, token: &str) -> Result<SpendView, JobStoreError> {
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.entry(token.to_owned()).or_default();
        self.catch_up(token, entry)?;
        Ok(SpendView {
            jobs: entry.jobs,
            jobs_spent: entry.ended,
            reserved: entry
                .unended
                .values()
                .fold(entry.pending, |sum, price| sum.saturating_add(*price)),
            model_spent: self.model_spent(token)?,
        })
    }

    /// Reserves `amount` for the token if its committed spending plus `amount` stays within
    /// `quota` (and, for an `amount` of 0, stays below it).
    pub fn reserve(&self, token: &str, quota: u64, amount: u64) -> Result<Reservation, QuotaError> {
        let model_spent = self.model_spent(token)?;
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.entry(token.to_owned()).or_default();
        self.catch_up(token, entry)?;
        let committed = entry
            .unended
            .values()
            .fold(entry.ended.saturating_add(entry.pending), |sum, price| {
                sum.saturating_add(*price)
            })
            .saturating_add(model_spent);
        // Zero-cost checks (a model request, whose cost is known at its end) pass only while
        // some of the quota is left.
        if committed >= quota || committed.saturating_add(amount) > quota {
            return Err(QuotaError::Exhausted {
                quota,
                committed,
                amount,
            });
        }
        entry.pending = entry.pending.saturating_add(amount);
        Ok(Reservation {
            spend: self.clone(),
            token: token.to_owned(),
            amount,
        })
    }

    /// Adds what one of the token's model requests cost.
    pub fn add_model_cost(&self, token: &str, cost: u64) -> Result<(), JobStoreError> {
        // One writer per token at a time is not guaranteed (two requests may end together):
        // the read-modify-write runs under the cache lock.
        let _cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        let spent = self.model_spent(token)?.saturating_add(cost);
        self.inner
            .model
            .insert(token.as_bytes(), &spent.to_be_bytes())
            .map_err(JobStoreError::from)
    }

    fn model_spent(&self, token: &str) -> Result<u64, JobStoreError> {
        Ok(self
            .inner
            .model
            .get(token.as_bytes())?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Reads the token's jobs submitted since the last call, and re-reads its unended ones.
    fn catch_up(&self, token: &str, entry: &mut TokenSpend) -> Result<(), JobStoreError> {
        let jobs = &self.inner.jobs;
        loop {
            let batch = jobs.token_index(token, entry.next_key.as_deref(), SCAN_BATCH)?;
            let full = batch.len() == SCAN_BATCH as usize;
            for (key, job_id) in batch {
                entry.next_key = Some(key);
                let Some(record) = jobs.get(&job_id)? else {
                    continue; // an index entry whose record was never written (a crash)
                };
                entry.jobs += 1;
                if record.state.is_final() {
                    entry.ended = entry.ended.saturating_add(record.cost.unwrap_or(0));
                } else {
                    entry.unended.insert(job_id, record.max_price);
                }
            }
            if !full {
                break;
            }
        }
        let mut ended = Vec::new();
        for job_id in entry.unended.keys() {
            match jobs.get(job_id)? {
                Some(record) if record.state.is_final() => {
                    ended.push((*job_id, record.cost.unwrap_or(0)));
                }
                Some(_) => {}
                None => ended.push((*job_id, 0)),
            }
        }
        for (job_id, cost) in ended {
            entry.unended.remove(&job_id);
            entry.ended = entry.ended.saturating_add(cost);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn model_costs_add_up_durably_and_a_spent_quota_refuses_even_free_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let storage = Storage::open(&path, &Default::default()).unwrap();
            let spend = Spend::new(&storage, JobBook::new(&storage));
            let held = spend.reserve("t", 100, 60).unwrap();
            assert_eq!(spend.view("t").unwrap().reserved, 60);
            // Reserved work counts until it is dropped.
            assert!(spend.reserve("t", 100, 50).is_err());
            drop(held);
            spend.add_model_cost("t", 70).unwrap();
            spend.add_model_cost("t", 30).unwrap();
            spend.add_model_cost("other", 5).unwrap();
            assert_eq!(spend.view("t").unwrap().model_spent, 100);
            storage.sync().await.unwrap();
        }
        let storage = Storage::open(&path, &Default::default()).unwrap();
        let spend = Spend::new(&storage, JobBook::new(&storage));
        assert_eq!(
            spend.view("t").unwrap(),
            SpendView {
                model_spent: 100,
                ..SpendView::default()
            }
        );
        assert!(matches!(
            spend.reserve("t", 100, 0),
            Err(QuotaError::Exhausted { committed: 100, .. })
        ));
        assert!(spend.reserve("t", 101, 0).is_ok());
        assert!(spend.reserve("other", 5, 0).is_err());
    }
}
