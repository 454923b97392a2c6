//! The market: placing jobs submitted to this node (requester side) and running jobs for others
//! (provider side), as contracts driven by the protocol's contract engine
//! (`suanli_protocol::engine`).
//!
//! ```text
//!  API ──submit──▶ Market ──spawns──▶ job task (one per job: placement, attempts)
//!                    │                     └─ requester driver per attempt ──requests──▶ provider
//!  NetworkEvent ─────┤ inbound: Quote → provider policy (offer / signed decline)
//!                    │          Propose → provider machine + its driver task
//!                    │          Execute / Deliver / Reconcile → the contract's driver (registry)
//!  outbox worker ────┘ tells counterparties of contracts this node ended alone
//! ```
//!
//! The market is a thin shell: what a contract does next is the machine's decision; the market
//! routes requests to each contract's single driver, performs the machine's effects (sends,
//! answers, durable appends, runs), and owns the provider's policy (offers, places, credit) and
//! the job records. Every task it spawns belongs to its tracker and stops with the node's
//! cancellation; nothing it acknowledges is left only in memory, so a restart resumes every
//! contract and job from the ledger and the job records.
//!
//! A request addressed to this node itself is dispatched in-process, so a job placed locally goes
//! through exactly the same machines, checks and ledger entries as one placed remotely (recorded
//! once, by its requester side). It never names libp2p, sled or wasmtime types.

mod contracts;
pub mod events;
pub mod jobs;
mod outbox;
mod placement;
mod provider;
mod ranking;
mod replicas;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use suanli_protocol::engine::requester::{JobTerms, Requester};
use suanli_protocol::engine::{Context, Effect, Held};
use suanli_protocol::ledger::EntryBody;
use suanli_protocol::wire::{ErrorCode, MarketRequest, MarketResponse, WireError};
use suanli_protocol::{
    ContractId, Credits, ExecutorKind, Hash32, JobId, JobSpec, Keypair, NodeId, Placement,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use jobs::{
    Attempt, AttemptOutcome, AttemptReason, EvidenceKind, JobBook, JobError, JobErrorCode,
    JobLimits, JobRecord, JobState, JobStoreError, JobUsage, Mismatch, MismatchRecord,
    ReplicaGroup,
};

use self::contracts::{Driver, Machine, Payload, Registry, Route, Side};
use self::outbox::Outbox;
use self::placement::JobTask;
use self::provider::ProviderSide;
use self::replicas::{GroupShare, GroupTask};
use crate::capacity::Load;
use crate::clock::now_ms;
use crate::config::{JobsConfig, ProviderConfig};
use crate::executor::{Executor, ExecutorError};
use crate::ledger::LedgerHandle;
use crate::mesh::MeshView;
use crate::network::{NetworkEvent, NetworkHandle, RequestError};
use crate::reputation::Reputation;
use crate::storage::{Health, Storage};
use crate::tokens::Serving;
use tokio::sync::broadcast::error::RecvError;

/// Inbound market requests handled at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 512;
/// Jobs placed at once by this node; more submissions are refused until some finish.
pub const MAX_JOBS_IN_FLIGHT: usize = 4096;

/// Finished-job announcements buffered for slow long-pollers (who then re-read their record).
const FINISHED_QUEUE: usize = 1024;

pub use crate::submission::Submission;

/// Why a job could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no such job")]
    NotFound,
    #[error("the job has ended already ({0:?})")]
    Final(JobState),
    #[error("storage: {0}")]
    Store(#[from] JobStoreError),
}

/// Why a submission was refused before any negotiation.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("invalid module: {0}")]
    InvalidModule(String),
    #[error("module too complex: {0}")]
    ModuleTooComplex(String),
    #[error("storage: {0}")]
    Store(#[from] JobStoreError),
    /// The storage takes no new work (disk full, or failed).
    #[error("{}", .0.refusal().unwrap_or_default())]
    NotAccepting(Health),
    #[error("{MAX_JOBS_IN_FLIGHT} jobs are being placed already; try again later")]
    Busy,
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The compile pool is full.
    #[error("{0}")]
    CompilerBusy(String),
}

/// Hears of a job's first contract signed by both parties: its provider and id.
pub(crate) type SignedHook = tokio::sync::oneshot::Sender<(NodeId, ContractId)>;

/// A standing contract signed by both parties ([`Market::open_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedSession {
    pub contract_id: ContractId,
    pub price: suanli_protocol::PriceTerms,
    pub model_sha256: Hash32,
    /// When its time is up (its creation plus its time limit).
    pub expires_at_ms: u64,
}

/// Counters of the market, for the API.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct MarketStats {
    /// Jobs submitted here and not final yet.
    pub jobs_in_flight: usize,
    /// Contracts with a running driver (open ones, and ended ones being asked about).
    pub contracts_driven: usize,
    /// Contracts whose counterparty must still hear how this node ended them.
    pub notifications_pending: usize,
}

/// Everything the market's tasks share.
struct Inner {
    node_id: NodeId,
    keypair: Keypair,
    network: NetworkHandle,
    mesh: MeshView,
    ledger: LedgerHandle,
    storage: Storage,
    executor: Executor,
    cluster: Option<crate::slurm::Cluster>,
    /// The models this node serves and the standing contracts running on them.
    serving: Serving,
    jobs: JobBook,
    /// Cancelled when the submitter cancels the job, by job, while its task runs.
    job_cancels: Mutex<HashMap<JobId, CancellationToken>>,
    jobs_config: JobsConfig,
    provider: ProviderSide,
    registry: Registry,
    outbox: Outbox,
    /// Announces every job that reaches a final state (for long-polling readers).
    finished: tokio::sync::broadcast::Sender<JobId>,
    /// Announces every step of placing a job (for live readers).
    events: events::JobEvents,
    metrics: crate::metrics::Metrics,
    nonce: AtomicU64,
    /// Jobs submitted here and not final yet.
    in_flight: AtomicUsize,
    reputation: Reputation,
    cancel: CancellationToken,
    /// Every task the market spawns: job tasks, contract drivers, the outbox worker.
    tasks: TaskTracker,
    /// Test only: this provider returns a different output than its runs wrote
    /// (`ProviderConfig::test_corrupt_output`).
    corrupt_output: bool,
}

impl Inner {
    /// Why work should be refused because of storage, if it should.
    fn storage_refusal(&self) -> Option<String> {
        self.storage.current_health().refusal()
    }
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
    pub storage: Storage,
    pub executor: Executor,
    /// The cluster this node fronts (executor `slurm`), if any.
    pub cluster: Option<crate::slurm::Cluster>,
    pub serving: Serving,
    pub provider: ProviderConfig,
    pub jobs: JobsConfig,
    /// Slots when `provider.slots` is unset: the cores offered.
    pub default_slots: u32,
    pub prices: suanli_protocol::PriceTerms,
    pub executors: Vec<ExecutorKind>,
    /// Where the provider publishes its load (read by the network for adverts).
    pub load: watch::Sender<Load>,
    /// Peers' standings: placement skips distrusted providers, admission gives new and
    /// distrusted requesters little or no credit.
    pub reputation: Reputation,
    /// Where jobs ending are counted.
    pub metrics: crate::metrics::Metrics,
    pub cancel: CancellationToken,
}

impl Market {
    /// Builds the market and resumes, from the ledger and the job records, every contract and
    /// job a stop or a crash interrupted.
    pub fn start(parts: MarketParts) -> Market {
        let provider = ProviderSide::new(
            &parts.provider,
            parts.default_slots,
            parts.prices,
            parts.executors,
            parts.cluster.as_ref(),
            parts.load,
        );
        let market = Market {
            inner: Arc::new(Inner {
                node_id: parts.keypair.node_id(),
                keypair: parts.keypair,
                network: parts.network,
                mesh: parts.mesh,
                jobs: JobBook::new(&parts.storage),
                job_cancels: Mutex::new(HashMap::new()),
                outbox: Outbox::new(&parts.storage),
                ledger: parts.ledger,
                storage: parts.storage,
                executor: parts.executor,
                cluster: parts.cluster,
                serving: parts.serving,
                jobs_config: parts.jobs,
                provider,
                registry: Registry::default(),
                finished: tokio::sync::broadcast::channel(FINISHED_QUEUE).0,
                events: events::JobEvents::default(),
                metrics: parts.metrics,
                nonce: AtomicU64::new(now_ms()),
                in_flight: AtomicUsize::new(0),
                reputation: parts.reputation,
                cancel: parts.cancel,
                tasks: TaskTracker::new(),
                corrupt_output: parts.provider.test_corrupt_output,
            }),
        };
        // The standings count the mismatches stored before this start.
        match market.inner.jobs.mismatches() {
            Ok(found) => {
                for mismatch in found {
                    market
                        .inner
                        .reputation
                        .record_mismatch(mismatch.provider, mismatch.group);
                }
            }
            Err(error) => warn!(%error, "cannot read the stored replica mismatches"),
        }
        market.recover();
        let worker = market.clone();
        market.inner.tasks.spawn(worker.run_outbox());
        market
    }

    /// Starts a driver for every open contract this node provides, a task for every unfinished
    /// job (which resumes its own contracts), and ends the open contracts of jobs that are gone.
    fn recover(&self) {
        let inner = &self.inner;
        let me = inner.node_id;
        let open = match inner.ledger.open_contracts() {
            Ok(open) => open,
            Err(error) => {
                warn!(%error, "cannot read the open contracts; none resumed");
                Vec::new()
            }
        };
        let (unfinished, unreadable) = match inner.jobs.unfinished() {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "cannot read the job records; no job resumed");
                (Vec::new(), Vec::new())
            }
        };
        for key in unreadable {
            warn!(key = %hex::encode(key), "unreadable job record skipped");
        }
        let mut resumed_jobs = HashSet::new();
        // Replicated jobs: each unfinished group's task, and a share of claimed providers its
        // children's tasks use, seeded from the ledger before any of them places anything.
        let mut shares: HashMap<JobId, (Arc<GroupShare>, &[JobId])> = HashMap::new();
        for record in &unfinished {
            if let Some(group) = &record.replicas {
                let share = Arc::new(GroupShare::from_ledger(self, &group.children));
                shares.insert(record.job_id, (share.clone(), &group.children));
                inner.in_flight.fetch_add(1, Ordering::AcqRel);
                inner.tasks.spawn(
                    GroupTask {
                        market: self.clone(),
                        record: record.clone(),
                        share,
                    }
                    .run(),
                );
            }
        }
        for record in &unfinished {
            if record.replicas.is_some() {
                continue;
            }
            let job_id = record.job_id;
            let share = match record.group {
                Some(group) => match shares.get(&group) {
                    Some((share, children)) if children.contains(&job_id) => Some(share.clone()),
                    _ => {
                        // Its group was never stored, or stored without it (a crash before the
                        // submission was acknowledged or before a spot check's run was added),
                        // or has ended: nobody waits for this run.
                        self.close_unresumable(record.clone());
                        continue;
                    }
                },
                None => None,
            };
            match self.job_task(record.clone()) {
                Some(mut task) => {
                    task.group = share;
                    resumed_jobs.insert(job_id);
                    inner.in_flight.fetch_add(1, Ordering::AcqRel);
                    inner.tasks.spawn(task.run());
                }
                None => self.close_unresumable(record.clone()),
            }
        }
        let ctx = Context {
            keypair: &inner.keypair,
            now_ms: now_ms(),
        };
        let (mut providing, mut orphans) = (0, 0);
        for docs in open {
            let held = match Held::from_ledger(docs) {
                Ok(held) => held,
                Err(error) => {
                    warn!(%error, "an open contract in the ledger does not decode");
                    continue;
                }
            };
            let id = held.id();
            let route = Route::held_by(me, id, held.contract());
            let machine = if route.side == Side::Requester {
                if resumed_jobs.contains(&held.contract().job_id) {
                    continue; // its job task resumes it
                }
                orphans += 1;
                let (machine, effects) = Requester::resume(&ctx, held, None);
                (Machine::Requester(Box::new(machine)), effects, None)
            } else {
                providing += 1;
                let output = inner.jobs.output(&id).ok().flatten();
                let (machine, effects) =
                    suanli_protocol::engine::provider::Provider::resume(&ctx, held, output);
                (Machine::Provider(Box::new(machine)), effects, None)
            };
            let Some(inbox) = inner.registry.register(route) else {
                continue;
            };
            let driver = Driver::new(self.clone(), machine, None);
            inner.tasks.spawn(async move {
                driver.run_registered(route, inbox).await;
            });
        }
        info!(
            jobs = resumed_jobs.len(),
            provider_contracts = providing,
            orphaned_contracts = orphans,
            "market resumed"
        );
    }

    /// The task that places (or resumes) a job from its record; `None` when the record lacks
    /// what placing needs (a record from before job specs were kept).
    fn job_task(&self, record: JobRecord) -> Option<JobTask> {
        let blobs = self.inner.jobs.blobs();
        let spec_bytes = blobs.get(&record.spec_hash?).ok()??;
        let spec = JobSpec::decode(&spec_bytes).ok()?;
        // A model session sends no module: its provider holds the model.
        let module = match spec.executor {
            ExecutorKind::Llm => Vec::new(),
            ExecutorKind::Wasm | ExecutorKind::Slurm | ExecutorKind::Batch => {
                blobs.get(&record.module_hash).ok()??
            }
        };
        let stdin = blobs.get(&record.stdin_hash).ok()??;
        let terms = JobTerms {
            job_id: record.job_id,
            spec,
            nonce: record.nonce?,
            deadline_grace_ms: self
                .inner
                .jobs_config
                .deadline_grace_secs
                .saturating_mul(1000),
        };
        Some(JobTask {
            market: self.clone(),
            cancel: self.job_cancel_token(record.job_id),
            record,
            terms,
            payload: Arc::new(Payload {
                spec: spec_bytes,
                module: Arc::new(module),
                stdin: Arc::new(stdin),
            }),
            signed: None,
            group: None,
        })
    }

    /// The token a job's task hears of its cancellation by, registered for
    /// [`Market::cancel_job`]; already cancelled if the submitter cancelled it before.
    fn job_cancel_token(&self, job_id: JobId) -> CancellationToken {
        let token = CancellationToken::new();
        if self.inner.jobs.cancel_requested(&job_id) {
            token.cancel();
        }
        self.inner
            .job_cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job_id, token.clone());
        token
    }

    /// Forgets a job's cancellation token (its task has ended).
    pub(super) fn job_task_ended(&self, job_id: &JobId) {
        self.inner
            .job_cancels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_id);
    }

    /// Cancels a job its submitter no longer wants: recorded durably first (a restart does not
    /// run it again), then its task stops placing it, and a contract it has is failed as
    /// `cancelled` on both sides (the provider stops the run). A contract that settled first
    /// still ends the job with its result.
    pub async fn cancel_job(&self, job_id: &JobId) -> Result<JobState, CancelError> {
        let record = self.inner.jobs.get(job_id)?.ok_or(CancelError::NotFound)?;
        if record.state.is_final() {
            return Err(CancelError::Final(record.state));
        }
        // A replicated job is cancelled through its runs; it ends when they have. A spot check
        // stops its own runs, not the job it checks.
        let children = record
            .replicas
            .as_ref()
            .map(|group| {
                let checked = usize::from(group.spot_check);
                group.children.get(checked..).unwrap_or_default().to_vec()
            })
            .unwrap_or_default();
        for job_id in children.iter().chain(std::iter::once(job_id)) {
            self.inner.jobs.request_cancel(job_id).await?;
            if let Some(token) = self
                .inner
                .job_cancels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(job_id)
            {
                token.cancel();
            }
        }
        info!(%job_id, "job cancelled by its submitter");
        Ok(record.state)
    }

    fn close_unresumable(&self, mut record: JobRecord) {
        record.state = JobState::Failed;
        record.error = Some(JobError::new(
            JobErrorCode::Interrupted,
            "the node restarted while the job was in flight, and its record cannot be resumed",
        ));
        record.updated_at_ms = now_ms();
        if let Err(error) = self.inner.jobs.save(&record) {
            warn!(job_id = %record.job_id, %error, "cannot close an unresumable job");
        }
    }

    /// Peers' standings, from this node's ledger.
    pub fn reputation(&self) -> &Reputation {
        &self.inner.reputation
    }

    pub fn jobs(&self) -> &JobBook {
        &self.inner.jobs
    }

    /// Sends the counterparty of each of `ids` this node holds what it holds (`Reconcile`),
    /// until it answers; both then record the documents they lacked. Returns how many were
    /// noted (contracts this node does not hold cannot be sent).
    pub fn reconcile(&self, ids: impl IntoIterator<Item = ContractId>) -> usize {
        let inner = &self.inner;
        let mut noted = 0;
        for id in ids {
            let held = matches!(inner.ledger.contract_docs(id), Ok(Some(_)));
            if held && inner.outbox.note(id).is_ok() {
                noted += 1;
            }
        }
        if noted > 0 {
            inner.outbox.wake();
        }
        noted
    }

    /// The live events of the jobs placed here ([`events`]).
    pub fn job_events(&self) -> &events::JobEvents {
        &self.inner.events
    }

    /// The provider's places as it last published them (offers and contracts, slots, queue).
    pub fn load(&self) -> Load {
        self.inner.provider.load()
    }

    /// Standing contracts (model sessions) this node serves now.
    pub fn sessions_served(&self) -> usize {
        self.inner.serving.running()
    }

    /// Hears of every job that reaches a final state, once its record says so.
    pub fn subscribe_finished(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.inner.finished.subscribe()
    }

    /// Cancelled when the node stops.
    pub fn stopping(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    pub fn stats(&self) -> MarketStats {
        MarketStats {
            jobs_in_flight: self.inner.in_flight.load(Ordering::Acquire),
            contracts_driven: self.inner.registry.len(),
            notifications_pending: self.inner.outbox.len(),
        }
    }

    /// The job's record once it is final, or as it stands after `limit`.
    pub async fn wait_finished(
        &self,
        job_id: &JobId,
        limit: Duration,
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
                // A stopping node answers at once: no reader holds its shutdown up.
                let announced = tokio::select! {
                    announced = tokio::time::timeout_at(deadline, finished.recv()) => announced,
                    () = self.inner.cancel.cancelled() => return self.inner.jobs.get(job_id),
                };
                match announced {
                    Err(_) | Ok(Err(RecvError::Closed)) => return self.inner.jobs.get(job_id),
                    Ok(Ok(id)) if id != *job_id => continue,
                    // Ours, or announcements were missed: read the record again.
                    Ok(Ok(_) | Err(RecvError::Lagged(_))) => break,
                }
            }
        }
    }

    /// Validates a submission, stores it durably and starts placing it. Returns the job id as
    /// soon as the record is durable, long before the job runs.
    pub async fn submit(&self, submission: Submission) -> Result<JobId, SubmitError> {
        self.in_flight(self.admit(submission)).await
    }

    /// Runs `submitting` as a new job's admission: refused while the node stops or its storage
    /// takes no work, or with [`MAX_JOBS_IN_FLIGHT`] jobs placed already; the job counts as in
    /// flight from here (its task ends that), unless `submitting` fails.
    async fn in_flight(
        &self,
        submitting: impl std::future::Future<Output = Result<JobId, SubmitError>>,
    ) -> Result<JobId, SubmitError> {
        let inner = &self.inner;
        if inner.cancel.is_cancelled() {
            return Err(SubmitError::ShuttingDown);
        }
        let health = inner.storage.current_health();
        if !health.is_accepting() {
            return Err(SubmitError::NotAccepting(health));
        }
        if inner.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_JOBS_IN_FLIGHT {
            inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Busy);
        }
        let result = submitting.await;
        if result.is_err() {
            inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }

    async fn admit(&self, submission: Submission) -> Result<JobId, SubmitError> {
        if submission.stdin.len() > suanli_protocol::job::MAX_STDIN_BYTES {
            return Err(SubmitError::Invalid(format!(
                "stdin of {} bytes exceeds {} bytes",
                submission.stdin.len(),
                suanli_protocol::job::MAX_STDIN_BYTES
            )));
        }
        let replicas = submission.replicas;
        if replicas == 0 || replicas > suanli_protocol::job::MAX_REPLICAS {
            return Err(SubmitError::Invalid(format!(
                "replicas must be between 1 and {}, got {replicas}",
                suanli_protocol::job::MAX_REPLICAS
            )));
        }
        if replicas > 1 {
            // Only a deterministic executor gives honest replicas the same output.
            if submission.executor != ExecutorKind::Wasm {
                return Err(SubmitError::Invalid(format!(
                    "replicas > 1 needs executor wasm (its runs are deterministic), not {:?}",
                    submission.executor
                )));
            }
            if submission.placement.provider.is_some() {
                return Err(SubmitError::Invalid(
                    "replicas > 1 run on distinct providers: placement.provider cannot pin one"
                        .into(),
                ));
            }
        }
        let spec = submission.spec();
        let module = Arc::new(submission.module);
        if submission.executor == ExecutorKind::Batch {
            // A batch script: a cluster's shell runs it; nothing is compiled or metered here.
            crate::slurm::check_script(&module).map_err(SubmitError::InvalidModule)?;
        } else {
            self.check_module(&module, submission.limits.fuel).await?;
        }
        if replicas > 1 {
            return self
                .store_group(
                    spec,
                    module,
                    Arc::new(submission.stdin),
                    replicas,
                    submission.api_token,
                )
                .await;
        }
        self.store_job(
            spec,
            module,
            Arc::new(submission.stdin),
            None,
            submission.api_token,
        )
        .await
    }

    /// Whether `module` may run as a WebAssembly job with a fuel budget of `fuel`: it compiles
    /// (on the executor's bounded compile pool) and the budget covers its compile charge.
    async fn check_module(&self, module: &Arc<Vec<u8>>, fuel: u64) -> Result<(), SubmitError> {
        self.inner
            .executor
            .prepare(module.clone())
            .await
            .map_err(|error| match error {
                ExecutorError::ModuleTooComplex(message) => SubmitError::ModuleTooComplex(message),
                ExecutorError::Busy(_) => SubmitError::CompilerBusy(error.to_string()),
                other => SubmitError::InvalidModule(other.to_string()),
            })?;
        // Every run is charged for compiling the module: a budget that does not cover it could
        // only ever end fuel-exhausted, paid for nothing.
        let compile_fuel = suanli_protocol::job::compile_fuel(module.len());
        if fuel <= compile_fuel {
            return Err(SubmitError::Invalid(format!(
                "a fuel budget of {fuel} does not cover compiling this {}-byte module \
                 ({compile_fuel} fuel): raise limits.fuel",
                module.len()
            )));
        }
        Ok(())
    }

    /// Stores a job durably and starts placing it; `signed` hears of its first signed contract.
    async fn store_job(
        &self,
        spec: JobSpec,
        module: Arc<Vec<u8>>,
        stdin: Arc<Vec<u8>>,
        signed: Option<SignedHook>,
        api_token: Option<String>,
    ) -> Result<JobId, SubmitError> {
        let inner = &self.inner;
        spec.validate()
            .map_err(|error| SubmitError::Invalid(error.to_string()))?;
        let spec_bytes = spec
            .encode()
            .map_err(|error| SubmitError::Invalid(error.to_string()))?;
        let now = now_ms();
        let nonce = self.next_nonce(now);
        let job_id = suanli_protocol::job_id_from_bytes(&spec_bytes, nonce);
        let blobs = inner.jobs.blobs();
        let stored = blobs
            .put(&module)
            .and_then(|_| blobs.put(&stdin))
            .and_then(|_| blobs.put(&spec_bytes));
        let spec_hash = stored.map_err(|error| SubmitError::Store(error.into()))?;
        let mut record = JobRecord::queued(
            job_id,
            &spec,
            spec_hash,
            nonce,
            spec.max_price.micro(),
            now,
            api_token,
        );
        // A sampled job gets a spot check: a group whose first run is this job, stored with it.
        let check = (signed.is_none() && self.spot_checks(&spec)).then(|| {
            let nonce = self.next_nonce(now);
            let id = suanli_protocol::job_id_from_bytes(&spec_bytes, nonce);
            // This node's own work: no token pays it; a check and a tie-break at most.
            let mut group = JobRecord::queued(
                id,
                &spec,
                spec_hash,
                nonce,
                spec.max_price.micro().saturating_mul(2),
                now,
                None,
            );
            group.replicas = Some(replicas::spot_check_of(job_id));
            group
        });
        record.group = check.as_ref().map(|group| group.job_id);
        inner.jobs.create(&record)?;
        if let Some(group) = &check {
            // Its group after the job: a group record implies its runs' records.
            inner.jobs.create_unlisted(group)?;
        }
        let share = check.as_ref().map(|_| Arc::new(GroupShare::default()));
        let cancel = self.job_cancel_token(job_id);
        let task = JobTask {
            market: self.clone(),
            cancel: cancel.clone(),
            record,
            terms: JobTerms {
                job_id,
                spec,
                nonce,
                deadline_grace_ms: inner.jobs_config.deadline_grace_secs.saturating_mul(1000),
            },
            payload: Arc::new(Payload {
                spec: spec_bytes,
                module,
                stdin,
            }),
            signed,
            group: share.clone(),
        };
        // Placing starts while the record and blobs are made durable (one barrier fewer on the
        // job's path); the job id is handed out only once they are. Nothing placing records can
        // outlive a lost record: a barrier covers every write made before it, so the one that
        // makes its contract durable makes the record durable too.
        inner.tasks.spawn(task.run());
        if let Err(error) = inner.storage.sync().await {
            cancel.cancel();
            return Err(JobStoreError::from(error).into());
        }
        if let (Some(record), Some(share)) = (check, share) {
            info!(%job_id, check = %record.job_id, "job sampled for a spot check");
            inner.in_flight.fetch_add(1, Ordering::AcqRel);
            inner.tasks.spawn(
                GroupTask {
                    market: self.clone(),
                    record,
                    share,
                }
                .run(),
            );
        }
        Ok(job_id)
    }

    /// A fresh nonce for a job id: the time, and a counter that differs within a millisecond.
    fn next_nonce(&self, now: u64) -> u128 {
        (u128::from(now) << 64) | u128::from(self.inner.nonce.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether a job of `spec` is sampled for a spot check (`jobs.spot_check_fraction`): only
    /// WebAssembly jobs, whose honest runs agree, and not those pinned to one provider (its
    /// check runs elsewhere under the same spec).
    fn spot_checks(&self, spec: &JobSpec) -> bool {
        let fraction = self.inner.jobs_config.spot_check_fraction;
        if fraction <= 0.0
            || spec.executor != ExecutorKind::Wasm
            || spec.replicas > 1
            || spec.placement.provider.is_some()
        {
            return false;
        }
        let mut random = [0u8; 8];
        if getrandom::fill(&mut random).is_err() {
            return false;
        }
        // 53 random bits as a number in [0, 1).
        let sample = (u64::from_le_bytes(random) >> 11) as f64 / (1u64 << 53) as f64;
        sample < fraction
    }

    /// Adds one run to the spot check `group` (a new run of the checked job's spec, on a
    /// provider none of its runs holds), stores it and then the group, durably, and starts
    /// placing it. `Ok(false)`: the run cannot be made (its spec is unreadable), nothing stored.
    async fn add_check_run(
        &self,
        group: &mut JobRecord,
        share: &Arc<GroupShare>,
    ) -> Result<bool, JobStoreError> {
        let inner = &self.inner;
        let (Some(spec_hash), Some(checks)) = (group.spec_hash, group.replicas.as_ref()) else {
            return Ok(false);
        };
        let Some(spec_bytes) = inner.jobs.blobs().get(&spec_hash)? else {
            return Ok(false);
        };
        let Ok(spec) = JobSpec::decode(&spec_bytes) else {
            return Ok(false);
        };
        let now = now_ms();
        let nonce = self.next_nonce(now);
        let job_id = suanli_protocol::job_id_from_bytes(&spec_bytes, nonce);
        let mut record = JobRecord::queued(
            job_id,
            &spec,
            spec_hash,
            nonce,
            spec.max_price.micro(),
            now,
            None,
        );
        record.group = Some(group.job_id);
        let Some(mut task) = self.job_task(record.clone()) else {
            return Ok(false);
        };
        task.group = Some(share.clone());
        let mut grown = group.clone();
        let mut children = checks.children.clone();
        children.push(job_id);
        if let Some(checks) = grown.replicas.as_mut() {
            checks.children = children;
        }
        grown.updated_at_ms = now;
        // The run first: a group record implies its runs' records.
        inner.jobs.create_unlisted(&record)?;
        inner.jobs.save(&grown)?;
        inner.storage.sync().await.map_err(JobStoreError::from)?;
        *group = grown;
        info!(check = %group.job_id, run = %job_id, "spot check run added");
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        inner.tasks.spawn(task.run());
        Ok(true)
    }

    /// Stores a replicated job durably, its group record and one child job per replica (each
    /// an ordinary job of `spec`, with its own nonce, id and contract), then starts placing the
    /// children and the task that decides the group. Returns the group's id, once all of it is
    /// durable.
    async fn store_group(
        &self,
        spec: JobSpec,
        module: Arc<Vec<u8>>,
        stdin: Arc<Vec<u8>>,
        replicas: u8,
        api_token: Option<String>,
    ) -> Result<JobId, SubmitError> {
        let inner = &self.inner;
        spec.validate()
            .map_err(|error| SubmitError::Invalid(error.to_string()))?;
        let spec_bytes = spec
            .encode()
            .map_err(|error| SubmitError::Invalid(error.to_string()))?;
        let blobs = inner.jobs.blobs();
        let stored = blobs
            .put(&module)
            .and_then(|_| blobs.put(&stdin))
            .and_then(|_| blobs.put(&spec_bytes));
        let spec_hash = stored.map_err(|error| SubmitError::Store(error.into()))?;
        let now = now_ms();
        let next_nonce = || self.next_nonce(now);
        let record_of = |job_id, nonce, max_price| {
            JobRecord::queued(
                job_id,
                &spec,
                spec_hash,
                nonce,
                max_price,
                now,
                api_token.clone(),
            )
        };
        let group_nonce = next_nonce();
        let group_id = suanli_protocol::job_id_from_bytes(&spec_bytes, group_nonce);
        let mut children = Vec::with_capacity(usize::from(replicas));
        for _ in 0..replicas {
            let nonce = next_nonce();
            let job_id = suanli_protocol::job_id_from_bytes(&spec_bytes, nonce);
            let mut record = record_of(job_id, nonce, spec.max_price.micro());
            record.group = Some(group_id);
            children.push(record);
        }
        // The group is listed (and counted against a token's quota) for what all its runs can
        // cost together; its runs are reached through it.
        let mut group = record_of(
            group_id,
            group_nonce,
            spec.max_price.micro().saturating_mul(u64::from(replicas)),
        );
        group.replicas = Some(replicas::group_of(
            children.iter().map(|child| child.job_id).collect(),
        ));
        for child in &children {
            inner.jobs.create_unlisted(child)?;
        }
        // The group last: a group record implies its children's.
        inner.jobs.create(&group)?;
        inner.storage.sync().await.map_err(JobStoreError::from)?;
        let share = Arc::new(GroupShare::default());
        let payload = Arc::new(Payload {
            spec: spec_bytes,
            module,
            stdin,
        });
        for record in children {
            let job_id = record.job_id;
            let nonce = record.nonce.unwrap_or_default();
            let task = JobTask {
                market: self.clone(),
                cancel: self.job_cancel_token(job_id),
                record,
                terms: JobTerms {
                    job_id,
                    spec: spec.clone(),
                    nonce,
                    deadline_grace_ms: inner.jobs_config.deadline_grace_secs.saturating_mul(1000),
                },
                payload: payload.clone(),
                signed: None,
                group: Some(share.clone()),
            };
            inner.in_flight.fetch_add(1, Ordering::AcqRel);
            inner.tasks.spawn(task.run());
        }
        info!(group = %group_id, replicas, "replicated job submitted");
        // The submission's own count of in-flight work is the group task's.
        inner.tasks.spawn(
            GroupTask {
                market: self.clone(),
                record: group,
                share,
            }
            .run(),
        );
        Ok(group_id)
    }

    /// Negotiates a standing contract for `model` with `provider` (a model session: one job whose
    /// run is the session, RFC 006) and waits up to `wait` for it to be signed by both. The job
    /// goes on placing in the background when the wait is over; its contract then waits unused
    /// until its time is up.
    pub async fn open_session(
        &self,
        model: &suanli_protocol::tokens::ModelInfo,
        provider: NodeId,
        budget_tokens: u64,
        secs: u64,
        max_price: Credits,
        wait: Duration,
    ) -> Result<SignedSession, String> {
        let inner = &self.inner;
        let placement = Placement {
            region: None,
            provider: Some(provider),
            exclude_self: false,
        };
        let spec =
            suanli_protocol::tokens::session_spec(model, budget_tokens, secs, max_price, placement);
        let (signed_tx, signed_rx) = tokio::sync::oneshot::channel();
        // A session sends no module (its provider holds the model) and no stdin.
        let stored = self.store_job(
            spec,
            Arc::new(Vec::new()),
            Arc::new(Vec::new()),
            Some(signed_tx),
            None,
        );
        let job_id = self
            .in_flight(stored)
            .await
            .map_err(|error| error.to_string())?;
        let signed = tokio::select! {
            signed = signed_rx => signed.ok(),
            () = tokio::time::sleep(wait) => None,
            () = inner.cancel.cancelled() => None,
        };
        let Some((_, contract_id)) = signed else {
            // Why it ended, when it did.
            let reason = inner
                .jobs
                .get(&job_id)
                .ok()
                .flatten()
                .and_then(|record| record.error.map(|error| error.message))
                .unwrap_or_else(|| "no contract was signed in time".into());
            return Err(reason);
        };
        let contract = inner
            .ledger
            .contract_docs(contract_id)
            .map_err(|error| error.to_string())?
            .ok_or("the contract is not in the ledger")?
            .contract
            .decode_unverified()
            .map_err(|error| error.to_string())?;
        Ok(SignedSession {
            contract_id,
            price: contract.price,
            model_sha256: contract.module_hash,
            expires_at_ms: contract
                .created_at_ms
                .saturating_add(contract.limits.wall_time_ms),
        })
    }

    /// The open standing contracts this node holds as requester, with their providers.
    pub fn open_sessions(&self) -> Vec<(ContractId, NodeId)> {
        let inner = &self.inner;
        let Ok(open) = inner.ledger.open_contracts() else {
            return Vec::new();
        };
        open.into_iter()
            .filter_map(|docs| {
                let id = docs.contract_id();
                let contract = docs.contract.decode_unverified().ok()?;
                (contract.requester == inner.node_id && self.is_session_job(&contract.job_id))
                    .then_some((id, contract.provider))
            })
            .collect()
    }

    /// Whether job `job_id`, submitted here, is a model session.
    fn is_session_job(&self, job_id: &JobId) -> bool {
        let blobs = self.inner.jobs.blobs();
        self.inner
            .jobs
            .get(job_id)
            .ok()
            .flatten()
            .and_then(|record| record.spec_hash)
            .and_then(|hash| blobs.get(&hash).ok().flatten())
            .and_then(|bytes| JobSpec::decode(&bytes).ok())
            .is_some_and(|spec| spec.executor == ExecutorKind::Llm)
    }

    /// The claims of a model session's receipt that only this node's usage receipts can check:
    /// its output lists usage receipts this node countersigned, each once, and its token totals
    /// are theirs. (The provider may leave out receipts it lacks; it cannot add any.)
    fn check_session_delivery(
        &self,
        receipt: &suanli_protocol::Receipt,
        output: &[u8],
    ) -> Result<(), String> {
        if receipt.requester != self.inner.node_id || !self.is_session_job(&receipt.job_id) {
            return Ok(());
        }
        let mine: std::collections::HashMap<Hash32, suanli_protocol::tokens::UsageReceipt> = self
            .inner
            .ledger
            .usage_receipts(receipt.contract_id)
            .map_err(|error| format!("cannot read this node's usage receipts: {error}"))?
            .into_iter()
            .filter_map(|r| Some((r.digest(), r.decode_unverified().ok()?)))
            .collect();
        if !output.len().is_multiple_of(32) {
            return Err("a session's output is a list of receipt digests".into());
        }
        let (mut prompt, mut completion) = (0u64, 0u64);
        let mut seen = HashSet::new();
        for digest in output.chunks_exact(32) {
            let digest = Hash32(<[u8; 32]>::try_from(digest).map_err(|_| "digest")?);
            let usage = mine
                .get(&digest)
                .ok_or_else(|| format!("receipt {digest} was never countersigned here"))?;
            if !seen.insert(digest) {
                return Err(format!("receipt {digest} is listed twice"));
            }
            prompt += u64::from(usage.prompt_tokens);
            completion += u64::from(usage.completion_tokens);
        }
        if receipt.usage.prompt_tokens != prompt || receipt.usage.completion_tokens != completion {
            return Err(format!(
                "the receipt bills {} + {} tokens; its listed requests used {prompt} + {completion}",
                receipt.usage.prompt_tokens, receipt.usage.completion_tokens
            ));
        }
        Ok(())
    }

    /// A peer sent something that does not check (token streams).
    pub async fn penalize_peer(&self, peer: NodeId, reason: String) {
        self.penalize(peer, reason).await;
    }

    /// Serves inbound market requests from the network until cancelled, at most
    /// [`MAX_CONCURRENT_REQUESTS`] at once: beyond that the event queue fills and the network
    /// answers "busy" itself. Also purges expired offers every second. On cancellation it waits
    /// for every task of the market to stop (each stops at once; contracts resume at the next
    /// start).
    pub async fn serve(self, mut events: mpsc::Receiver<NetworkEvent>) {
        let cancel = self.inner.cancel.clone();
        let handlers = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
        let mut purge = tokio::time::interval(Duration::from_secs(1));
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
                    self.inner.tasks.spawn(async move {
                        let response = market
                            .handle_request(inbound.peer, inbound.ip, inbound.request)
                            .await;
                        if market.inner.network.respond(inbound.id, &response).await.is_err() {
                            debug!("network stopped before the response was sent");
                        }
                        drop(permit);
                    });
                }
            }
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        debug!("market stopped");
    }

    /// Answers one market request from `peer` (authenticated by the transport, or this node),
    /// whose connection came from `ip`.
    pub async fn handle_request(
        &self,
        peer: NodeId,
        ip: Option<std::net::IpAddr>,
        request: MarketRequest,
    ) -> MarketResponse {
        match request {
            MarketRequest::Quote(quote) => self.handle_quote(peer, ip, quote),
            MarketRequest::Propose(proposal) => self.handle_propose(peer, proposal).await,
            MarketRequest::Execute(execute) => {
                let route = Route::provider(execute.contract_id);
                self.ask_contract(route, peer, MarketRequest::Execute(execute))
                    .await
            }
            MarketRequest::Deliver(delivery) => match delivery.receipt.decode_unverified() {
                Ok(receipt) => {
                    if let Err(message) = self.check_session_delivery(&receipt, &delivery.output) {
                        self.penalize(peer, format!("delivery: {message}")).await;
                        return MarketResponse::Error(WireError::new(
                            ErrorCode::BadRequest,
                            message,
                        ));
                    }
                    let route = Route::requester(receipt.contract_id);
                    self.ask_contract(route, peer, MarketRequest::Deliver(delivery))
                        .await
                }
                Err(error) => {
                    self.penalize(peer, format!("delivery: {error}")).await;
                    MarketResponse::Error(WireError::new(ErrorCode::BadRequest, error.to_string()))
                }
            },
            MarketRequest::Reconcile(docs) => {
                let id = docs.contract_id();
                let route = match docs.contract.decode_unverified() {
                    Ok(contract) => Route::held_by(self.inner.node_id, id, &contract),
                    // Not a contract: the provider side's driver refuses it like any other.
                    Err(_) => Route::provider(id),
                };
                self.ask_contract(route, peer, MarketRequest::Reconcile(docs))
                    .await
            }
        }
    }

    /// Sends a request to `peer`, in-process when the peer is this node.
    async fn send(
        &self,
        peer: NodeId,
        request: MarketRequest,
    ) -> Result<MarketResponse, RequestError> {
        if peer == self.inner.node_id {
            Ok(Box::pin(self.handle_request(peer, None, request)).await)
        } else {
            self.inner.network.market_request(peer, &request).await
        }
    }

    /// A peer sent something that does not verify: it proves nothing about anyone, so it is not
    /// evidence; the peer gets a strike at the network level instead.
    /// What the effects of a machine that was not made come to: `peer` penalized if they say
    /// so, and the answer they carry.
    async fn answer_refused(&self, peer: NodeId, effects: Vec<Effect>) -> Option<MarketResponse> {
        let mut answer = None;
        for effect in effects {
            match effect {
                Effect::Penalize(reason) => self.penalize(peer, reason).await,
                Effect::Respond(response) => answer = answer.or(Some(response)),
                _ => {}
            }
        }
        answer
    }

    async fn penalize(&self, peer: NodeId, reason: String) {
        warn!(%peer, %reason, "invalid document from peer");
        if peer != self.inner.node_id {
            let _ = self.inner.network.penalize(peer, reason).await;
        }
    }
}

/// The contract an entry belongs to.
fn entry_contract(entry: &EntryBody) -> Option<ContractId> {
    match entry {
        EntryBody::Contract(contract) => Some(ContractId(contract.digest())),
        EntryBody::Receipt(receipt) => receipt.decode_unverified().ok().map(|r| r.contract_id),
        EntryBody::Settlement(settlement) => {
            settlement.decode_unverified().ok().map(|s| s.contract_id)
        }
        EntryBody::Failure(failure) => failure.decode_unverified().ok().map(|f| f.contract_id),
        EntryBody::Usage(usage) => usage.decode_unverified().ok().map(|u| u.contract_id),
        EntryBody::Misbehaviour(_) => None,
    }
}
