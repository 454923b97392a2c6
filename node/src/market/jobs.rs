//! Job records: what the API shows about every job submitted to this node, persisted so they
//! survive a restart. Each record has one writer, the task negotiating that job.

use serde::{Deserialize, Serialize};
use suanli_protocol::{Hash32, JobId, Limits};

use crate::ledger::{LedgerError, LedgerHandle, RecordTree};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Negotiating,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

/// A machine-readable reason and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

impl JobError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> JobError {
        JobError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Metered usage as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageJson {
    pub fuel: u64,
    pub wall_ms: u64,
    pub memory_bytes: u64,
    pub output_bytes: u64,
}

impl From<suanli_protocol::Usage> for UsageJson {
    fn from(usage: suanli_protocol::Usage) -> Self {
        UsageJson {
            fuel: usage.fuel,
            wall_ms: usage.wall_time_ms,
            memory_bytes: usage.memory_bytes,
            output_bytes: usage.output_bytes,
        }
    }
}

/// One try at placing the job with one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub provider: String,
    pub contract_id: Option<String>,
    /// `declined`, `unreachable`, `failed`, `succeeded`, `rejected` (the provider broke the
    /// contract), `lost` (the provider went away), `deadline_missed`.
    pub outcome: String,
    /// Decline code or failure reason, when there is one.
    pub reason: Option<String>,
    pub message: String,
    pub at_ms: u64,
}

/// Everything the node knows about one submitted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub state: JobState,
    pub module_hash: String,
    pub stdin_hash: String,
    pub args: Vec<String>,
    pub limits: LimitsJson,
    pub max_price: u64,
    pub provider: Option<String>,
    pub contract_id: Option<String>,
    pub exit_code: Option<i32>,
    pub usage: Option<UsageJson>,
    /// Micro-credits paid.
    pub cost: Option<u64>,
    pub output_hash: Option<String>,
    pub error: Option<JobError>,
    pub attempts: Vec<Attempt>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsJson {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
}

impl From<Limits> for LimitsJson {
    fn from(limits: Limits) -> Self {
        LimitsJson {
            fuel: limits.fuel,
            memory_bytes: limits.memory_bytes,
            timeout_ms: limits.wall_time_ms,
            max_output_bytes: limits.output_bytes,
        }
    }
}

/// A job record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("corrupt job record: {0}")]
    Corrupt(String),
}

/// Most attempts kept in one record (the newest are kept).
pub const MAX_ATTEMPTS_KEPT: usize = 64;

/// Job records and the blobs (modules, stdin, output) they refer to.
#[derive(Debug, Clone)]
pub struct JobBook {
    jobs: RecordTree,
    index: RecordTree,
    blobs: RecordTree,
}

fn index_key(created_at_ms: u64, job_id: &JobId) -> Vec<u8> {
    let mut key = created_at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(job_id.0.as_bytes());
    key
}

impl JobBook {
    pub fn new(ledger: &LedgerHandle) -> JobBook {
        JobBook {
            jobs: ledger.records("jobs"),
            index: ledger.records("jobs_by_time"),
            blobs: ledger.records("blobs"),
        }
    }

    /// Stores a new job's first record and indexes it by submission time.
    pub fn create(&self, job_id: &JobId, record: &JobRecord) -> Result<(), JobStoreError> {
        self.index.insert(
            &index_key(record.created_at_ms, job_id),
            job_id.0.as_bytes(),
        )?;
        self.save(job_id, record)
    }

    /// Replaces a job's record.
    pub fn save(&self, job_id: &JobId, record: &JobRecord) -> Result<(), JobStoreError> {
        let bytes = serde_json::to_vec(record)
            .map_err(|error| JobStoreError::Corrupt(error.to_string()))?;
        Ok(self.jobs.insert(job_id.0.as_bytes(), &bytes)?)
    }

    pub fn get(&self, job_id: &JobId) -> Result<Option<JobRecord>, JobStoreError> {
        match self.jobs.get(job_id.0.as_bytes())? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| JobStoreError::Corrupt(error.to_string())),
            None => Ok(None),
        }
    }

    /// Up to `limit` records in submission order, starting after the job `after`.
    pub fn list(&self, after: Option<&JobId>, limit: u32) -> Result<Vec<JobRecord>, JobStoreError> {
        let start = match after {
            Some(job_id) => match self.get(job_id)? {
                Some(record) => {
                    let mut key = index_key(record.created_at_ms, job_id);
                    key.push(0); // strictly after
                    key
                }
                None => return Ok(Vec::new()),
            },
            None => Vec::new(),
        };
        let mut records = Vec::new();
        for (_, id) in self.index.iter_from(&start, limit)? {
            if let Ok(bytes) = <[u8; 32]>::try_from(id.as_slice())
                && let Some(record) = self.get(&JobId(Hash32(bytes)))?
            {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// Every record not in a final state (used at start-up to close what a restart interrupted).
    pub fn unfinished(&self) -> Result<Vec<(JobId, JobRecord)>, JobStoreError> {
        let mut unfinished = Vec::new();
        let mut start = Vec::new();
        loop {
            let page = self.jobs.iter_from(&start, 256)?;
            let Some((last, _)) = page.last() else { break };
            start = last.clone();
            start.push(0);
            for (key, bytes) in page {
                if let (Ok(id), Ok(record)) = (
                    <[u8; 32]>::try_from(key.as_slice()),
                    serde_json::from_slice::<JobRecord>(&bytes),
                ) && !record.state.is_final()
                {
                    unfinished.push((JobId(Hash32(id)), record));
                }
            }
        }
        Ok(unfinished)
    }

    /// Makes every record and blob written so far durable.
    pub async fn flush(&self) -> Result<(), JobStoreError> {
        self.jobs.flush().await?;
        Ok(())
    }

    pub fn put_blob(&self, bytes: &[u8]) -> Result<Hash32, JobStoreError> {
        let hash = Hash32::of(bytes);
        if self.blobs.get(hash.as_bytes())?.is_none() {
            self.blobs.insert(hash.as_bytes(), bytes)?;
        }
        Ok(hash)
    }

    pub fn blob(&self, hash: &Hash32) -> Result<Option<Vec<u8>>, JobStoreError> {
        Ok(self.blobs.get(hash.as_bytes())?)
    }
}
