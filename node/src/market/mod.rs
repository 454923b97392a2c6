//! The market: placing jobs submitted to this node (requester side) and running jobs for others
//! (provider side), through signed negotiation documents.
//!
//! ```text
//! API ──submit──▶ Market ──spawns──▶ requester task per job ──MarketRequest──▶ provider (peer or self)
//!                   ▲                                                          │
//! NetworkEvent ─────┘ inbound requests: handled by `handle_request`, answered through the network
//! ```
//!
//! The market owns the contract lifecycles of both sides (`protocol::lifecycle`), the provider's
//! slots and reservations, and the job records. It appends every contract, receipt, settlement
//! and failure to the ledger — durably — before it acknowledges the step to the counterparty.
//! A request addressed to this node itself is dispatched in-process, so a job placed locally goes
//! through exactly the same checks and ledger entries as one placed remotely.
//! It never names libp2p, sled or wasmtime types.

mod jobs;
mod provider;
mod ranking;
mod requester;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use suanli_protocol::ledger::EntryBody;
use suanli_protocol::negotiation::{AttemptFailure, Evidence, FailureRecord, MisbehaviourKind};
use suanli_protocol::wire::{ErrorCode, MarketRequest, MarketResponse, WireError};
use suanli_protocol::{
    ContractId, Credits, ExecutorKind, Hash32, JobId, JobSpec, Keypair, Limits, NodeId, Placement,
    Signed,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use jobs::{Attempt, JobBook, JobError, JobRecord, JobState, JobStoreError, UsageJson};

use crate::capacity::Load;
use crate::clock::now_ms;
use crate::config::{JobsConfig, ProviderConfig};
use crate::executor::Executor;
use crate::ledger::LedgerHandle;
use crate::mesh::MeshView;
use crate::network::{NetworkEvent, NetworkHandle, RequestError};

/// Inbound market requests handled at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 512;
/// Jobs placed at once by this node; more submissions are refused until some finish.
pub const MAX_JOBS_IN_FLIGHT: usize = 4096;

/// Finished-job announcements buffered for slow long-pollers (who then re-read their record).
const FINISHED_QUEUE: usize = 1024;

/// A job as a developer submits it.
#[derive(Debug, Clone)]
pub struct Submission {
    pub module: Vec<u8>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
    pub limits: Limits,
    pub max_price: Credits,
    pub placement: Placement,
}

/// Why a submission was refused before any negotiation.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("invalid module: {0}")]
    InvalidModule(String),
    #[error("storage: {0}")]
    Store(#[from] JobStoreError),
    #[error("{MAX_JOBS_IN_FLIGHT} jobs are being placed already; try again later")]
    Busy,
}

/// Everything the market's tasks share.
struct Inner {
    node_id: NodeId,
    keypair: Keypair,
    network: NetworkHandle,
    mesh: MeshView,
    ledger: LedgerHandle,
    executor: Executor,
    jobs: JobBook,
    jobs_config: JobsConfig,
    provider: provider::Provider,
    /// Contracts this node placed and awaits delivery of: contract → the job task's mailbox.
    awaiting: Mutex<HashMap<ContractId, requester::Awaiting>>,
    /// Settlements answered recently, for repeated deliveries.
    recently_settled: Mutex<requester::RecentlySettled>,
    /// Announces every job that reaches a final state (for long-polling readers).
    finished: tokio::sync::broadcast::Sender<JobId>,
    nonce: AtomicU64,
    /// Jobs submitted here and not final yet.
    in_flight: std::sync::atomic::AtomicUsize,
    cancel: CancellationToken,
}

/// A cloneable handle on the market.
#[derive(Clone)]
pub struct Market {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Market")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

/// What the market needs.
#[derive(Debug)]
pub struct MarketParts {
    pub keypair: Keypair,
    pub network: NetworkHandle,
    pub mesh: MeshView,
    pub ledger: LedgerHandle,
    pub executor: Executor,
    pub provider: ProviderConfig,
    pub jobs: JobsConfig,
    /// Slots when `provider.slots` is unset: the cores offered.
    pub default_slots: u32,
    pub prices: suanli_protocol::PriceTerms,
    pub executors: Vec<ExecutorKind>,
    /// Where the provider publishes its load (read by the network for adverts).
    pub load: watch::Sender<Load>,
    pub cancel: CancellationToken,
}

impl Market {
    /// Builds the market; jobs a restart interrupted are closed as failed.
    pub fn new(parts: MarketParts) -> Market {
        let jobs = JobBook::new(&parts.ledger);
        let provider = provider::Provider::new(
            &parts.provider,
            parts.default_slots,
            parts.prices,
            parts.executors,
            parts.load,
        );
        let market = Market {
            inner: Arc::new(Inner {
                node_id: parts.keypair.node_id(),
                keypair: parts.keypair,
                network: parts.network,
                mesh: parts.mesh,
                ledger: parts.ledger,
                executor: parts.executor,
                jobs,
                jobs_config: parts.jobs,
                provider,
                awaiting: Mutex::new(HashMap::new()),
                recently_settled: Mutex::new(requester::RecentlySettled::default()),
                finished: tokio::sync::broadcast::channel(FINISHED_QUEUE).0,
                nonce: AtomicU64::new(0),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
                cancel: parts.cancel,
            }),
        };
        market.close_interrupted_jobs();
        market
    }

    fn close_interrupted_jobs(&self) {
        let unfinished = match self.inner.jobs.unfinished() {
            Ok(unfinished) => unfinished,
            Err(error) => {
                warn!(%error, "cannot read job records");
                return;
            }
        };
        for (job_id, mut record) in unfinished {
            record.state = JobState::Failed;
            record.error = Some(JobError::new(
                "interrupted",
                "the node restarted while the job was in flight",
            ));
            record.updated_at_ms = now_ms();
            if let Err(error) = self.inner.jobs.save(&job_id, &record) {
                warn!(%job_id, %error, "cannot close interrupted job");
            }
        }
    }

    pub fn jobs(&self) -> &JobBook {
        &self.inner.jobs
    }

    /// The job's record once it is final, or as it stands after `limit`.
    pub async fn wait_finished(
        &self,
        job_id: &JobId,
        limit: std::time::Duration,
    ) -> Result<Option<JobRecord>, JobStoreError> {
        // Subscribe before reading, so a job finishing in between is not missed.
        let mut finished = self.inner.finished.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let record = self.inner.jobs.get(job_id)?;
            if record.as_ref().is_none_or(|record| record.state.is_final()) {
                return Ok(record);
            }
            loop {
                match tokio::time::timeout_at(deadline, finished.recv()).await {
                    Err(_) => return self.inner.jobs.get(job_id),
                    Ok(Ok(id)) if id != *job_id => continue,
                    // Ours, or announcements were missed (lagged): read the record again.
                    Ok(_) => break,
                }
            }
        }
    }

    /// Validates a submission, stores it durably and starts placing it. Returns the job id as
    /// soon as the record is durable, long before the job runs.
    pub async fn submit(&self, submission: Submission) -> Result<JobId, SubmitError> {
        let inner = &self.inner;
        let admitted = inner.in_flight.fetch_add(1, Ordering::AcqRel);
        if admitted >= MAX_JOBS_IN_FLIGHT {
            inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Busy);
        }
        let result = self.admit(submission).await;
        if result.is_err() {
            inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }

    async fn admit(&self, submission: Submission) -> Result<JobId, SubmitError> {
        let inner = &self.inner;
        // Compiling is CPU work: on a blocking thread, not an async worker.
        let module = Arc::new(submission.module);
        inner
            .executor
            .prepare(module.clone())
            .await
            .map_err(|error| SubmitError::InvalidModule(error.to_string()))?;
        if submission.stdin.len() > suanli_protocol::job::MAX_STDIN_BYTES {
            return Err(SubmitError::Invalid(format!(
                "stdin of {} bytes exceeds {} bytes",
                submission.stdin.len(),
                suanli_protocol::job::MAX_STDIN_BYTES
            )));
        }
        let spec = JobSpec {
            executor: ExecutorKind::Wasm,
            module_hash: Hash32::of(&module),
            args: submission.args,
            env: submission.env,
            stdin_hash: Hash32::of(&submission.stdin),
            limits: submission.limits,
            max_price: submission.max_price,
            placement: submission.placement,
            replicas: 1,
        };
        spec.validate()
            .map_err(|error| SubmitError::Invalid(error.to_string()))?;
        let now = now_ms();
        let nonce =
            (u128::from(now) << 64) | u128::from(inner.nonce.fetch_add(1, Ordering::Relaxed));
        let job_id = spec
            .job_id(nonce)
            .map_err(|error| SubmitError::Invalid(error.to_string()))?;
        inner.jobs.put_blob(&module)?;
        inner.jobs.put_blob(&submission.stdin)?;
        let record = JobRecord {
            job_id: job_id.to_string(),
            state: JobState::Queued,
            module_hash: spec.module_hash.to_string(),
            stdin_hash: spec.stdin_hash.to_string(),
            args: spec.args.clone(),
            limits: spec.limits.into(),
            max_price: spec.max_price.micro(),
            provider: None,
            contract_id: None,
            exit_code: None,
            usage: None,
            cost: None,
            output_hash: None,
            error: None,
            attempts: Vec::new(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        inner.jobs.create(&job_id, &record)?;
        // The job id is handed out only once its record and blobs are durable.
        inner.jobs.flush().await?;
        let job = requester::JobTask {
            market: self.clone(),
            job_id,
            spec,
            nonce,
            module,
            stdin: submission.stdin,
            record,
        };
        tokio::spawn(job.run());
        Ok(job_id)
    }

    /// Serves inbound market requests from the network until cancelled, at most
    /// [`MAX_CONCURRENT_REQUESTS`] at once: beyond that the event queue fills and the network
    /// answers "busy" itself. Also purges expired offers every second.
    pub async fn serve(self, mut events: mpsc::Receiver<NetworkEvent>) {
        let cancel = self.inner.cancel.clone();
        let handlers = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
        let mut purge = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = purge.tick() => self.inner.provider.purge(),
                permit = handlers.clone().acquire_owned() => {
                    let Ok(permit) = permit else { break };
                    let event = tokio::select! {
                        _ = cancel.cancelled() => break,
                        event = events.recv() => event,
                    };
                    let Some(NetworkEvent::Market(inbound)) = event else { break };
                    let market = self.clone();
                    tokio::spawn(async move {
                        let response = market.handle_request(inbound.peer, inbound.request).await;
                        if market.inner.network.respond(inbound.id, &response).await.is_err() {
                            debug!("network stopped before the response was sent");
                        }
                        drop(permit);
                    });
                }
            }
        }
    }

    /// Answers one market request from `peer` (authenticated by the transport, or this node).
    pub async fn handle_request(&self, peer: NodeId, request: MarketRequest) -> MarketResponse {
        match request {
            MarketRequest::Quote(quote) => self.handle_quote(peer, quote),
            MarketRequest::Propose(proposal) => self.handle_propose(peer, proposal).await,
            MarketRequest::Execute(execute) => self.handle_execute(peer, execute),
            MarketRequest::Deliver(delivery) => self.handle_deliver(peer, delivery).await,
            MarketRequest::Cancel { contract_id } => self.handle_cancel(peer, contract_id),
        }
    }

    /// Sends a request to `peer`, in-process when the peer is this node.
    async fn send(
        &self,
        peer: NodeId,
        request: MarketRequest,
    ) -> Result<MarketResponse, RequestError> {
        if peer == self.inner.node_id {
            Ok(Box::pin(self.handle_request(peer, request)).await)
        } else {
            self.inner.network.market_request(peer, &request).await
        }
    }

    /// A peer sent a document that does not verify: it proves nothing about anyone, so it is not
    /// evidence; the peer gets a strike at the network level instead.
    async fn penalize(&self, peer: NodeId, reason: String) {
        warn!(%peer, %reason, "invalid document from peer");
        if peer != self.inner.node_id {
            let _ = self.inner.network.penalize(peer, reason).await;
        }
    }

    /// Records a peer's misbehaviour in the ledger, with the offending bytes as evidence. Only
    /// for documents the offender validly signed (so the evidence proves something).
    async fn record_misbehaviour(
        &self,
        offender: NodeId,
        kind: MisbehaviourKind,
        message: String,
        payload: Vec<u8>,
    ) {
        warn!(%offender, ?kind, %message, "peer misbehaved");
        let mut payload = payload;
        payload.truncate(suanli_protocol::negotiation::MAX_EVIDENCE_BYTES);
        let evidence = Evidence {
            reporter: self.inner.node_id,
            offender,
            kind,
            message: truncate(message),
            payload,
            observed_at_ms: now_ms(),
        };
        match Signed::sign(&evidence, &self.inner.keypair) {
            Ok(signed) => {
                if let Err(error) = self
                    .inner
                    .ledger
                    .append(EntryBody::Misbehaviour(signed))
                    .await
                {
                    warn!(%error, "cannot record misbehaviour");
                }
            }
            Err(error) => warn!(%error, "cannot sign evidence"),
        }
    }

    /// Records in the ledger that a contract failed.
    async fn record_failure(
        &self,
        contract_id: ContractId,
        job_id: JobId,
        counterparty: NodeId,
        failure: AttemptFailure,
        message: String,
    ) {
        let record = FailureRecord {
            contract_id,
            job_id,
            recorder: self.inner.node_id,
            counterparty,
            failure,
            message: truncate(message),
            recorded_at_ms: now_ms(),
        };
        match Signed::sign(&record, &self.inner.keypair) {
            Ok(signed) => {
                if let Err(error) = self.inner.ledger.append(EntryBody::Failure(signed)).await {
                    warn!(%error, "cannot record failure");
                }
            }
            Err(error) => warn!(%error, "cannot sign failure record"),
        }
    }
}

/// An error answer.
fn wire_error(code: ErrorCode, message: impl Into<String>) -> MarketResponse {
    MarketResponse::Error(WireError::new(code, message))
}

/// Cuts a message to the protocol's cap on a character boundary.
fn truncate(mut message: String) -> String {
    let max = suanli_protocol::negotiation::MAX_MESSAGE_BYTES;
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}
