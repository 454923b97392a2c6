//! Live events of the jobs this node places: what a job's task does, as it does it, for
//! `GET /v1/jobs/{id}/events` (SSE) and `suanli job submit --wait`.
//!
//! Events are announcements, not records: they are not stored, and a reader that connects late,
//! or falls behind the bounded channel, reads the job's record instead (the API sends it as a
//! `snapshot`). Everything an event says is also in the record once the step is saved, except
//! the quotes and offers of a placement round that is still going on.

use serde::{Deserialize, Serialize};
use suanli_protocol::{ContractId, Hash32, JobId, NodeId};
use tokio::sync::broadcast;

use super::jobs::{AttemptOutcome, AttemptReason, JobState};

/// Announcements buffered for slow readers (who then read the record again).
const QUEUE: usize = 1024;

/// One step of placing a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    /// A placement round ranked these providers (cheapest first); sent when the providers
    /// ranked change.
    Quote { candidates: Vec<Quote> },
    /// A contract was proposed to this provider.
    Offer {
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        provider: NodeId,
    },
    /// The provider declined with a signed reason.
    Decline {
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        provider: NodeId,
        reason: Option<AttemptReason>,
        message: String,
    },
    /// Both parties signed a contract.
    Contract {
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        provider: NodeId,
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        contract_id: ContractId,
    },
    /// The provider holds the contract and the job's payload: the job is its to run.
    Running {
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        provider: NodeId,
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        contract_id: ContractId,
    },
    /// The provider's signed receipt arrived and checked out.
    Receipt {
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        provider: NodeId,
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        contract_id: ContractId,
        exit_code: Option<i32>,
        fuel: u64,
        wall_ms: u64,
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        output_hash: Hash32,
    },
    /// The contract was settled and the job's record is final.
    Settlement {
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        contract_id: ContractId,
        state: JobState,
        /// Micro-credits paid.
        cost: Option<u64>,
    },
    /// An attempt ended without a result (not a decline); the job goes on with another try.
    Failover {
        #[serde(with = "crate::serde_text::display")]
        #[schemars(with = "String")]
        provider: NodeId,
        outcome: AttemptOutcome,
        reason: Option<AttemptReason>,
        message: String,
    },
}

impl JobEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Quote { .. } => "quote",
            JobEvent::Offer { .. } => "offer",
            JobEvent::Decline { .. } => "decline",
            JobEvent::Contract { .. } => "contract",
            JobEvent::Running { .. } => "running",
            JobEvent::Receipt { .. } => "receipt",
            JobEvent::Settlement { .. } => "settlement",
            JobEvent::Failover { .. } => "failover",
        }
    }
}

/// One ranked provider and the most the job would cost there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Quote {
    #[serde(with = "crate::serde_text::display")]
    #[schemars(with = "String")]
    pub provider: NodeId,
    /// Micro-credits.
    pub max_cost: u64,
    pub load_permille: u16,
}

/// An event of job `job_id`; `group` is the replicated job it is a run of, if it is one.
#[derive(Debug, Clone)]
pub struct Announced {
    pub job_id: JobId,
    pub group: Option<JobId>,
    pub event: JobEvent,
}

impl Announced {
    /// Whether a reader of job `id`'s events wants it: the job's own, or one of its runs'.
    pub fn concerns(&self, id: &JobId) -> bool {
        self.job_id == *id || self.group.as_ref() == Some(id)
    }
}

/// The channel every job task announces on; readers subscribe.
#[derive(Debug, Clone)]
pub struct JobEvents {
    sender: broadcast::Sender<std::sync::Arc<Announced>>,
}

impl Default for JobEvents {
    fn default() -> Self {
        JobEvents {
            sender: broadcast::channel(QUEUE).0,
        }
    }
}

impl JobEvents {
    pub fn announce(&self, job_id: JobId, group: Option<JobId>, event: JobEvent) {
        // No reader: nobody to tell.
        let _ = self.sender.send(std::sync::Arc::new(Announced {
            job_id,
            group,
            event,
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<std::sync::Arc<Announced>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_itself_as_its_sse_event_does() {
        let provider = suanli_protocol::Keypair::generate()
            .expect("randomness")
            .node_id();
        for event in [
            JobEvent::Offer { provider },
            JobEvent::Quote {
                candidates: vec![Quote {
                    provider,
                    max_cost: 5,
                    load_permille: 10,
                }],
            },
        ] {
            let json = serde_json::to_value(&event).expect("serializes");
            assert_eq!(json["event"], event.name(), "{json}");
            let back: JobEvent = serde_json::from_value(json).expect("reads back");
            assert_eq!(back, event);
        }
    }
}
