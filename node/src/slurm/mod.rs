//! A data center's Slurm cluster behind this node (executor `slurm`), through slurmrestd.
//!
//! ```text
//!  contract driver ──run(order)──▶ Cluster ──job.bin──▶ work_dir/<contract>/ ◀── suanli exec
//!                                     │                     ▲  (task-N.out)     (compute nodes)
//!                                     ├─ POST job/submit ───┼──▶ slurmrestd ──▶ slurmctld
//!                                     ├─ GET job/{id} (poll until every task ended)
//!                                     ├─ GET slurmdb job/{id} (CPU time, memory, elapsed)
//!                                     └─ DELETE job/{id} (contract cancelled, deadline passed)
//!  refresh loop: GET nodes, partitions, jobs ──▶ watch<ClusterInfo> ──▶ adverts
//! ```
//!
//! A mesh job never runs unsandboxed on the cluster: each task is `suanli exec` ([`exec`]),
//! the WebAssembly executor in a one-job mode, under the contract's limits. A job of `tasks > 1`
//! is one job array, at most `max_cpus` tasks running at once.
//!
//! Crash safety: the job file is written before the submission and the Slurm job id right
//! after it, both atomically, in the contract's directory. A contract that runs again (the node
//! restarted, the requester sent `Execute` again) finds the id and re-attaches to the job, running
//! or ended, instead of submitting it twice; a node that crashed between submitting and
//! recording the id finds the job by its name (`suanli-<contract id>`). A node that stops leaves
//! its Slurm jobs running for the next start; a contract that is cancelled or misses its
//! deadline cancels its Slurm job. Directories are removed once no contract can run again.
//!
//! Metering: fuel, memory and output come from the tasks' own outcomes (deterministic, like
//! every other provider); CPU time, allocated CPUs, peak memory and elapsed time from the
//! cluster's accounting (slurmdbd), or, if it has no record within [`ACCOUNTING_WAIT`], from
//! the tasks' own CPU time; peak memory is the larger of the accounting's samples and the
//! tasks' own `VmHWM` (a task shorter than the sampling interval has no sample). CPU time billed
//! never exceeds what the requester can check ([`Limits::max_cpu_ms`]).

pub mod batch;
pub mod exec;
pub mod rest;

pub use batch::check_script;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use suanli_protocol::negotiation::{ClusterUsage, MAX_MESSAGE_BYTES};
use suanli_protocol::{
    ClusterInfo, ContractId, ExecutorKind, FailureReason, Hash32, JobSpec, Limits, NodeId, Outcome,
    Resources, Usage,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use self::exec::{ExecJob, SLURM_ID_FILE, TaskOutcome};
use self::rest::{Auth, Client, NodeRecord, RestError, Submission};
use crate::config::SlurmConfig;
use suanli_protocol::engine::RunReport;

/// How long a finished job's accounting record is waited for before the tasks' own CPU time
/// is billed instead.
pub const ACCOUNTING_WAIT: Duration = Duration::from_secs(20);
/// Memory a task's process needs besides its job's linear memory (runtime, compiled code).
const EXEC_OVERHEAD_MB: u64 = 128;
/// Minutes a task may run beyond its wall-time limit before Slurm kills it (start-up, compile).
const TIME_LIMIT_SLACK_MINUTES: u64 = 2;
/// How long a contract's directory is kept: beyond the longest job and deadline slack, no
/// contract can run again.
const KEEP_DIRS: Duration = Duration::from_secs(3 * 60 * 60);
/// Submitting is tried again after 1, 2, 4 and 8 s before the run fails.
const SUBMIT_BACKOFF_LIMIT: Duration = Duration::from_secs(8);
/// The PATH a task's batch script gets.
const TASK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Why the cluster could not be used at start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("slurm: {0}")]
    Rest(#[from] RestError),
    #[error("slurm: {0}")]
    Setup(String),
}

/// The cluster this node fronts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    config: SlurmConfig,
    work_dir: PathBuf,
    exec_path: PathBuf,
    /// The uid and gid the job user has here, when this node runs as root and can hand it the
    /// job directories.
    owner: Option<(u32, u32)>,
    info: watch::Sender<Option<ClusterInfo>>,
    /// Cancellations of Slurm jobs whose contracts ended, finishing in the background.
    cancels: TaskTracker,
}

impl Cluster {
    /// Connects to slurmrestd, checks the partition, and reads the cluster's capacity once;
    /// `data_dir` holds the default work directory.
    pub async fn connect(config: SlurmConfig, data_dir: &Path) -> Result<Cluster, ClusterError> {
        let endpoint = config.endpoint.clone().unwrap_or_default();
        let auth = credentials(&config)?;
        let client = Client::connect(&endpoint, &config.user, auth).await?;
        let partitions = client.partitions_up().await?;
        if !partitions.contains(&config.partition) {
            return Err(ClusterError::Setup(format!(
                "partition {:?} is not up on the cluster (up: {})",
                config.partition,
                partitions.join(", ")
            )));
        }
        let work_dir = config
            .work_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("slurm"));
        std::fs::create_dir_all(&work_dir)
            .map_err(|error| ClusterError::Setup(format!("{}: {error}", work_dir.display())))?;
        let exec_path = match &config.exec_path {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .map_err(|error| ClusterError::Setup(format!("this binary's path: {error}")))?,
        };
        let owner = job_owner(&config.user);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&work_dir, Some(uid), Some(gid))
                .map_err(|error| ClusterError::Setup(format!("{}: {error}", work_dir.display())))?;
        }
        let (info, _) = watch::channel(None);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                client,
                config,
                work_dir,
                exec_path,
                owner,
                info,
                cancels: TaskTracker::new(),
            }),
        };
        cluster.refresh().await?;
        let info = cluster.inner.info.borrow().clone();
        info!(
            endpoint = %endpoint,
            api = cluster.inner.client.api().name(),
            release = cluster.inner.client.release(),
            nodes = info.as_ref().map_or(0, |info| info.nodes),
            cpus = info.as_ref().map_or(0, |info| info.total.cpu_cores),
            "fronting a Slurm cluster"
        );
        Ok(cluster)
    }

    /// The cluster's capacity as last read; changes as the refresh loop reads it again.
    pub fn info(&self) -> watch::Receiver<Option<ClusterInfo>> {
        self.inner.info.subscribe()
    }

    /// The most tasks a job may have here.
    pub fn max_tasks(&self) -> u32 {
        self.inner.config.max_tasks
    }

    /// Reads the cluster's capacity every `refresh_secs` and removes directories no contract
    /// can use any more, until `cancel`; then waits for Slurm cancellations in flight.
    pub async fn refresh_loop(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.inner.config.refresh_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.refresh().await {
                warn!(%error, "cannot read the cluster's capacity");
            }
            let work_dir = self.inner.work_dir.clone();
            let _ = tokio::task::spawn_blocking(move || remove_old_dirs(&work_dir)).await;
        }
        self.inner.cancels.close();
        self.inner.cancels.wait().await;
    }

    async fn refresh(&self) -> Result<(), RestError> {
        let client = &self.inner.client;
        let (nodes, partitions, jobs) =
            tokio::try_join!(client.nodes(), client.partitions_up(), client.jobs())?;
        let info = cluster_info(
            &self.inner.config,
            client.release(),
            &nodes,
            partitions,
            &jobs,
        );
        self.inner.info.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&info);
            *current = Some(info);
            changed
        });
        Ok(())
    }

    /// Runs a contract's job on the cluster, or re-attaches to its Slurm job if it was
    /// submitted before. `stop` ends the run: the Slurm job is cancelled, unless `node_stopping`
    /// says the whole node is stopping (then it keeps running for the next start).
    pub async fn run(
        &self,
        contract_id: ContractId,
        spec: &JobSpec,
        module: Vec<u8>,
        stdin: Vec<u8>,
        stop: CancellationToken,
        node_stopping: CancellationToken,
    ) -> RunReport {
        let (limits, kind) = (spec.limits, spec.executor);
        let dir = self.inner.work_dir.join(contract_id.0.to_hex());
        let job = ExecJob {
            module,
            args: spec.args.clone(),
            env: spec.env.clone(),
            stdin,
            limits,
        };
        // slurmrestd may be restarting: a few tries, a second apart and more, before giving up.
        let mut backoff = Duration::from_secs(1);
        let slurm_id = loop {
            match self.submit_once(contract_id, &dir, &job, kind).await {
                Ok(id) => break id,
                Err(message) if backoff > SUBMIT_BACKOFF_LIMIT => {
                    warn!(%contract_id, %message, "cannot run the job on the cluster");
                    return failed(FailureReason::Trap, &message, limits);
                }
                Err(message) => {
                    warn!(%contract_id, %message, "cannot submit the job to the cluster; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => {
                            return failed(FailureReason::Cancelled, "the contract ended the run", limits);
                        }
                        _ = tokio::time::sleep(backoff) => backoff *= 2,
                    }
                }
            }
        };
        // From here the Slurm job is cancelled if this run is stopped or dropped, unless the
        // node itself is stopping.
        let guard = CancelOnDrop {
            cluster: self.clone(),
            slurm_id,
            node_stopping,
            armed: true,
        };
        let poll = Duration::from_millis(self.inner.config.poll_interval_ms);
        let final_state = tokio::select! {
            state = self.wait_for_end(slurm_id, limits.tasks, poll) => state,
            _ = stop.cancelled() => {
                drop(guard);
                return failed(FailureReason::Cancelled, "the contract ended the run", limits);
            }
        };
        guard.disarm();
        debug!(%contract_id, slurm_id, state = %final_state, "Slurm job ended");
        let accounting = self.accounting(slurm_id, limits.tasks).await;
        if kind == ExecutorKind::Batch {
            let tasks = batch::read_tasks(&dir, &limits);
            return batch::combine(slurm_id, &limits, &final_state, tasks, accounting);
        }
        let tasks = (0..limits.tasks)
            .map(|task| exec::read_task(&dir, task))
            .collect::<Vec<_>>();
        combine(slurm_id, &limits, &final_state, tasks, accounting)
    }

    /// The Slurm job of this contract: the one recorded or found by name, else a new one.
    async fn submit_once(
        &self,
        contract_id: ContractId,
        dir: &Path,
        job: &ExecJob,
        kind: ExecutorKind,
    ) -> Result<u64, String> {
        let name = job_name(contract_id);
        let id_file = dir.join(SLURM_ID_FILE);
        if let Ok(text) = std::fs::read_to_string(&id_file)
            && let Ok(id) = text.trim().parse::<u64>()
        {
            info!(%contract_id, slurm_id = id, "re-attaching to the contract's Slurm job");
            return Ok(id);
        }
        let job_file = dir.join(exec::JOB_FILE);
        if job_file.exists() {
            // Written before a submission whose id was never recorded: was it submitted?
            let jobs = self
                .inner
                .client
                .jobs()
                .await
                .map_err(|error| error.to_string())?;
            // A task of an array names the array's id, which is the one to follow. A job that
            // ended a few minutes ago is only in the accounting any more.
            let listed = jobs
                .iter()
                .find(|record| record.name == name)
                .map(|found| found.array_job_id.unwrap_or(found.job_id));
            let found = match listed {
                Some(id) => Some(id),
                None => self
                    .inner
                    .client
                    .accounted_job_named(&name)
                    .await
                    .map_err(|error| error.to_string())?,
            };
            if let Some(id) = found {
                exec::write_bytes_atomic(&id_file, id.to_string().as_bytes())?;
                info!(%contract_id, slurm_id = id, "found the contract's Slurm job by name");
                return Ok(id);
            }
        } else {
            self.write_job(dir, job, kind)?;
        }
        let submission = self.submission(&name, dir, job, kind);
        let id = self
            .inner
            .client
            .submit(&submission)
            .await
            .map_err(|error| error.to_string())?;
        exec::write_bytes_atomic(&id_file, id.to_string().as_bytes())?;
        info!(%contract_id, slurm_id = id, tasks = job.limits.tasks, "submitted to Slurm");
        Ok(id)
    }

    /// Creates a job directory the job user can write to, with the job's files in it
    /// (`job.bin` last: it marks a job that may have been submitted).
    pub fn write_job(&self, dir: &Path, job: &ExecJob, kind: ExecutorKind) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        if let Some((uid, gid)) = self.inner.owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .map_err(|error| format!("{}: {error}", dir.display()))?;
        }
        if kind == ExecutorKind::Batch {
            batch::write_files(dir, job)?;
        }
        exec::write_atomic(&dir.join(exec::JOB_FILE), job)
    }

    /// The node ids whose batch scripts this cluster runs (executor `batch`).
    pub fn batch_requesters(&self) -> Vec<NodeId> {
        self.inner
            .config
            .batch_requesters
            .iter()
            .filter_map(|id| id.parse().ok())
            .collect()
    }

    /// The slurmrestd client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The work directory (shared with the compute nodes).
    pub fn work_dir(&self) -> &Path {
        &self.inner.work_dir
    }

    /// The Slurm job that runs the tasks of the job in `dir`: `suanli exec DIR` (executor
    /// `slurm`), or the job's own script (`batch`, with the job's environment).
    pub fn submission(
        &self,
        name: &str,
        dir: &Path,
        job: &ExecJob,
        kind: ExecutorKind,
    ) -> Submission {
        let (config, limits) = (&self.inner.config, &job.limits);
        let quote =
            |path: &Path| format!("'{}'", path.display().to_string().replace('\'', r"'\''"));
        let mut environment = vec![
            ("PATH".into(), TASK_PATH.into()),
            ("RAYON_NUM_THREADS".into(), "1".into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        let script = if kind == ExecutorKind::Batch {
            environment.extend(
                job.env
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone())),
            );
            batch::wrapper(dir, job)
        } else {
            format!(
                "#!/bin/sh\nexec {} exec {}\n",
                quote(&self.inner.exec_path),
                quote(dir)
            )
        };
        let memory_mb = limits.memory_bytes.div_ceil(1024 * 1024) + EXEC_OVERHEAD_MB;
        let minutes = limits.wall_time_ms.div_ceil(60_000) + TIME_LIMIT_SLACK_MINUTES;
        let array = (limits.tasks > 1).then(|| {
            format!(
                "0-{}%{}",
                limits.tasks - 1,
                config.max_cpus.min(limits.tasks)
            )
        });
        Submission {
            name: name.to_owned(),
            script,
            work_dir: dir.display().to_string(),
            stdout: dir.join("slurm-%A_%a.txt").display().to_string(),
            environment,
            partition: config.partition.clone(),
            account: config.account.clone(),
            cpus_per_task: 1,
            memory_per_node_mb: memory_mb,
            time_limit_minutes: minutes,
            array,
            gres: None,
        }
    }

    /// Polls until every task of the job has ended; the final state (of the first task that
    /// did not complete, else `COMPLETED`). A job the controller no longer knows (purged a few
    /// minutes after it ended) has ended if the accounting says so: slurmrestd answers "unknown
    /// job" for a refused token too.
    async fn wait_for_end(&self, slurm_id: u64, tasks: u32, poll: Duration) -> String {
        loop {
            match self.inner.client.job(slurm_id).await {
                Ok(None) => match self.inner.client.accounting(slurm_id, tasks).await {
                    Ok(Some(_)) => return "ENDED".into(),
                    Ok(None) | Err(_) => {
                        warn!(slurm_id, "the controller does not know the job; retrying");
                    }
                },
                Ok(Some(records)) => {
                    let ended = !records.is_empty()
                        && records
                            .iter()
                            .all(|record| record.is_final() && record.pending_tasks.is_empty());
                    if ended {
                        return records
                            .iter()
                            .find(|record| record.state != "COMPLETED")
                            .map_or_else(|| "COMPLETED".into(), |record| record.state.clone());
                    }
                }
                Err(error) => debug!(slurm_id, %error, "cannot read the job's state; retrying"),
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The job's accounting, polled like the job's state and waited for up to
    /// [`ACCOUNTING_WAIT`].
    async fn accounting(&self, slurm_id: u64, tasks: u32) -> Option<rest::Accounting> {
        let deadline = tokio::time::Instant::now() + ACCOUNTING_WAIT;
        loop {
            match self.inner.client.accounting(slurm_id, tasks).await {
                Ok(Some(accounting)) => return Some(accounting),
                Ok(None) => {}
                Err(error) => debug!(slurm_id, %error, "cannot read the job's accounting"),
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    slurm_id,
                    "no accounting record for the job; billing the tasks' own CPU time"
                );
                return None;
            }
            tokio::time::sleep(Duration::from_millis(self.inner.config.poll_interval_ms)).await;
        }
    }
}

/// Cancels a Slurm job when its run is stopped or dropped (the contract ended, the deadline
/// passed), unless disarmed or the node itself is stopping.
struct CancelOnDrop {
    cluster: Cluster,
    slurm_id: u64,
    node_stopping: CancellationToken,
    armed: bool,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.node_stopping.is_cancelled() {
            info!(
                slurm_id = self.slurm_id,
                "node stopping: the Slurm job keeps running for the next start"
            );
            return;
        }
        let cluster = self.cluster.clone();
        let slurm_id = self.slurm_id;
        self.cluster.inner.cancels.spawn(async move {
            match cluster.inner.client.cancel(slurm_id).await {
                Ok(()) => info!(slurm_id, "cancelled the Slurm job: its contract ended"),
                Err(error) => warn!(slurm_id, %error, "cannot cancel the Slurm job"),
            }
        });
    }
}

/// The Slurm job name of a contract's run: `suanli-<contract id>`.
pub fn job_name(contract_id: ContractId) -> String {
    format!("suanli-{}", contract_id.0.to_hex())
}

fn credentials(config: &SlurmConfig) -> Result<Auth, ClusterError> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|error| ClusterError::Setup(format!("{}: {error}", path.display())))
    };
    if let Some(token) = &config.token {
        return Ok(Auth::Token(token.clone()));
    }
    if let Some(path) = &config.token_file {
        let text = String::from_utf8(read(path)?)
            .map_err(|_| ClusterError::Setup(format!("{}: not text", path.display())))?;
        return Ok(Auth::Token(text.trim().to_owned()));
    }
    match &config.jwt_key_file {
        Some(path) => Ok(Auth::Key(read(path)?)),
        None => Err(ClusterError::Setup("no credentials".into())),
    }
}

/// The job user's uid and gid from `/etc/passwd`, when this node runs as root (and so can, and
/// must, hand it the job directories).
fn job_owner(user: &str) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").ok()?.uid();
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&user))
            .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
            .flatten()
    })
}

/// Removes contract directories older than [`KEEP_DIRS`].
fn remove_old_dirs(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > KEEP_DIRS);
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()));
        if old
            && ours
            && let Err(error) = std::fs::remove_dir_all(entry.path())
        {
            warn!(path = %entry.path().display(), %error, "cannot remove an old job directory");
        }
    }
}

/// The advert's view of the cluster: the nodes of the mesh's partition that can take jobs.
fn cluster_info(
    config: &SlurmConfig,
    release: &str,
    nodes: &[NodeRecord],
    partitions: Vec<String>,
    jobs: &[rest::JobRecord],
) -> ClusterInfo {
    let ours: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|node| node.partitions.contains(&config.partition) && node.usable())
        .collect();
    let gpus = |used: bool| {
        let mut kinds: Vec<suanli_protocol::Gpu> = Vec::new();
        for node in &ours {
            let mut in_use = if used { node.gpus_used } else { 0 };
            for (model, count) in &node.gpus {
                let free = count.saturating_sub(in_use);
                in_use = in_use.saturating_sub(*count);
                match kinds.iter_mut().find(|gpu| &gpu.model == model) {
                    Some(gpu) => gpu.count += free,
                    None => kinds.push(suanli_protocol::Gpu {
                        model: model.clone(),
                        memory_bytes: 0,
                        count: free,
                    }),
                }
            }
        }
        kinds.truncate(suanli_protocol::advert::MAX_GPU_KINDS);
        kinds
    };
    let mib = |mb: u64| mb.saturating_mul(1024 * 1024);
    let total = Resources {
        cpu_cores: ours.iter().map(|node| node.cpus).sum(),
        memory_bytes: mib(ours.iter().map(|node| node.memory_mb).sum()),
        gpus: gpus(false),
    };
    let free = Resources {
        cpu_cores: ours
            .iter()
            .map(|node| node.cpus.saturating_sub(node.alloc_cpus))
            .sum(),
        memory_bytes: mib(ours
            .iter()
            .map(|node| node.memory_mb.saturating_sub(node.alloc_memory_mb))
            .sum()),
        gpus: gpus(true),
    };
    let mesh_limit = Resources {
        cpu_cores: config.max_cpus.min(total.cpu_cores),
        memory_bytes: total.memory_bytes,
        gpus: Vec::new(),
    };
    let count = |state: &str| {
        u32::try_from(jobs.iter().filter(|job| job.state == state).count()).unwrap_or(u32::MAX)
    };
    let mut partitions = partitions;
    partitions.retain(|partition| partition == &config.partition);
    ClusterInfo {
        scheduler: format!("slurm {release}"),
        nodes: u32::try_from(ours.len()).unwrap_or(u32::MAX),
        total,
        free,
        mesh_limit,
        partitions,
        pending_jobs: count("PENDING"),
        running_jobs: count("RUNNING"),
    }
}

/// A run that failed before the cluster ran anything.
fn failed(reason: FailureReason, message: &str, limits: Limits) -> RunReport {
    failure_report(reason, message, &limits, Usage::default())
}

/// A failed run's report, its message bounded and its checkable claims true of the whole run:
/// a fuel-exhausted run used (at least) a task's whole budget, a timed-out one a task's whole
/// time limit.
fn failure_report(
    reason: FailureReason,
    message: &str,
    limits: &Limits,
    mut usage: Usage,
) -> RunReport {
    let mut message = message.to_owned();
    if message.len() > MAX_MESSAGE_BYTES {
        message.truncate(message.floor_char_boundary(MAX_MESSAGE_BYTES));
    }
    if reason == FailureReason::FuelExhausted {
        usage.fuel = usage.fuel.max(limits.fuel);
    }
    if reason == FailureReason::Timeout {
        usage.wall_time_ms = usage.wall_time_ms.max(limits.wall_time_ms);
    }
    usage.output_bytes = 0;
    RunReport {
        outcome: Outcome::Failed { reason, message },
        usage,
        output: Vec::new(),
    }
}

/// What the receipt says the cluster spent: the accounting's figures, or without a record the
/// tasks' own CPU time; peak memory the larger of the accounting's samples and the tasks' own
/// (a task shorter than the sampling interval has no sample). CPU time never beyond what the
/// requester can check.
fn cluster_usage(
    slurm_id: u64,
    limits: &Limits,
    accounting: Option<rest::Accounting>,
    own_cpu_us: u64,
    own_peak_rss: u64,
) -> ClusterUsage {
    let cpu_us = accounting.map_or(own_cpu_us, |accounting| accounting.cpu_us);
    ClusterUsage {
        job_id: slurm_id,
        elapsed_ms: accounting.map_or(0, |accounting| {
            accounting
                .end
                .saturating_sub(accounting.start)
                .saturating_mul(1000)
        }),
        cpus: accounting.map_or(limits.tasks, |accounting| accounting.cpus),
        cpu_ms: (cpu_us / 1000).min(limits.max_cpu_ms()),
        peak_memory_bytes: accounting
            .map_or(0, |accounting| accounting.peak_memory_bytes)
            .max(own_peak_rss),
    }
}

/// One run's report from its tasks' outcomes (in task order) and the cluster's accounting.
///
/// Succeeded when every task did, with their outputs concatenated in task order (within
/// `limits.output_bytes` together) and the first non-zero exit code; otherwise the first failed
/// task's failure, named. Fuel adds up; wall time and memory are the largest of any task.
fn combine(
    slurm_id: u64,
    limits: &Limits,
    final_state: &str,
    tasks: Vec<Result<TaskOutcome, String>>,
    accounting: Option<rest::Accounting>,
) -> RunReport {
    let mut usage = Usage::default();
    let mut output = Vec::new();
    let mut failure: Option<(FailureReason, String)> = None;
    let mut exit_code = 0;
    let mut own_cpu_us = 0u64;
    let mut own_peak_rss = 0u64;
    for (index, task) in tasks.into_iter().enumerate() {
        let task = match task {
            Ok(task) => task,
            Err(error) => {
                failure.get_or_insert((
                    FailureReason::Trap,
                    format!("task {index} left no outcome (Slurm: {final_state}): {error}"),
                ));
                continue;
            }
        };
        usage.fuel = usage.fuel.saturating_add(task.usage.fuel.min(limits.fuel));
        usage.wall_time_ms = usage.wall_time_ms.max(task.usage.wall_time_ms);
        usage.memory_bytes = usage.memory_bytes.max(task.usage.memory_bytes);
        own_cpu_us = own_cpu_us.saturating_add(task.cpu_us);
        own_peak_rss = own_peak_rss.max(task.peak_rss_bytes);
        match task.outcome {
            Outcome::Succeeded {
                exit_code: code, ..
            } => {
                if exit_code == 0 {
                    exit_code = code;
                }
                output.extend_from_slice(&task.stdout);
            }
            Outcome::Failed { reason, message } => {
                let message = if limits.tasks > 1 {
                    format!("task {index}: {message}")
                } else {
                    message
                };
                failure.get_or_insert((reason, message));
            }
        }
    }
    if failure.is_none() && output.len() as u64 > limits.output_bytes {
        failure = Some((
            FailureReason::OutputTooLarge,
            format!(
                "the tasks wrote {} bytes together, more than the limit of {}",
                output.len(),
                limits.output_bytes
            ),
        ));
    }
    usage.cluster = Some(cluster_usage(
        slurm_id,
        limits,
        accounting,
        own_cpu_us,
        own_peak_rss,
    ));
    match failure {
        Some((reason, message)) => failure_report(reason, &message, limits, usage),
        None => success_report(exit_code, usage, output),
    }
}

/// A successful run's report: its output, and its length and hash in the outcome and usage.
fn success_report(exit_code: i32, mut usage: Usage, output: Vec<u8>) -> RunReport {
    usage.output_bytes = output.len() as u64;
    RunReport {
        outcome: Outcome::Succeeded {
            exit_code,
            output_hash: Hash32::of(&output),
            output_len: output.len() as u64,
        },
        usage,
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tasks: u32) -> Limits {
        Limits {
            fuel: 1_000,
            memory_bytes: 1 << 20,
            wall_time_ms: 1_000,
            output_bytes: 10,
            tasks,
        }
    }

    fn succeeded(stdout: &[u8], fuel: u64) -> Result<TaskOutcome, String> {
        Ok(TaskOutcome {
            outcome: Outcome::Succeeded {
                exit_code: 0,
                output_hash: Hash32::of(stdout),
                output_len: stdout.len() as u64,
            },
            usage: Usage {
                fuel,
                wall_time_ms: 5,
                memory_bytes: 65_536,
                output_bytes: stdout.len() as u64,
                ..Usage::default()
            },
            stdout: stdout.to_vec(),
            cpu_us: 3_000,
            peak_rss_bytes: 5 << 20,
        })
    }

    #[test]
    fn tasks_combine_in_order_with_the_clusters_accounting() {
        let accounting = rest::Accounting {
            start: 100,
            end: 103,
            cpus: 3,
            cpu_us: 2_500_000,
            peak_memory_bytes: 9 << 20,
        };
        let report = combine(
            42,
            &limits(3),
            "COMPLETED",
            vec![
                succeeded(b"a\n", 10),
                succeeded(b"b\n", 20),
                succeeded(b"c\n", 30),
            ],
            Some(accounting),
        );
        assert_eq!(report.output, b"a\nb\nc\n");
        assert_eq!(report.usage.fuel, 60);
        assert_eq!(report.usage.output_bytes, 6);
        assert_eq!(
            report.usage.cluster,
            Some(ClusterUsage {
                job_id: 42,
                elapsed_ms: 3_000,
                cpus: 3,
                cpu_ms: 2_500,
                peak_memory_bytes: 9 << 20,
            })
        );
        assert!(matches!(
            report.outcome,
            Outcome::Succeeded { output_len: 6, .. }
        ));
    }

    #[test]
    fn a_failed_or_missing_task_fails_the_run_and_claims_stay_checkable() {
        let report = combine(
            1,
            &limits(2),
            "NODE_FAIL",
            vec![succeeded(b"a", 10), Err("gone".into())],
            None,
        );
        match &report.outcome {
            Outcome::Failed { reason, message } => {
                assert_eq!(*reason, FailureReason::Trap);
                assert!(message.contains("task 1") && message.contains("NODE_FAIL"));
            }
            other => panic!("{other:?}"),
        }
        assert!(report.output.is_empty());
        // Without accounting, the tasks' own CPU time is billed.
        assert_eq!(report.usage.cluster.unwrap().cpu_ms, 3);
        let too_much = combine(
            1,
            &limits(2),
            "COMPLETED",
            vec![succeeded(b"123456", 1), succeeded(b"789012", 1)],
            None,
        );
        assert!(matches!(
            too_much.outcome,
            Outcome::Failed {
                reason: FailureReason::OutputTooLarge,
                ..
            }
        ));
        // CPU time beyond what the requester can check is never billed.
        let greedy = combine(
            1,
            &limits(1),
            "COMPLETED",
            vec![succeeded(b"", 1)],
            Some(rest::Accounting {
                cpu_us: u64::MAX,
                ..Default::default()
            }),
        );
        assert_eq!(greedy.usage.cluster.unwrap().cpu_ms, limits(1).max_cpu_ms());
    }

    #[test]
    fn capacity_counts_usable_nodes_of_the_partition() {
        let node = |name: &str, state: &str, partition: &str, alloc| NodeRecord {
            name: name.into(),
            states: vec![state.into()],
            cpus: 4,
            alloc_cpus: alloc,
            memory_mb: 1000,
            alloc_memory_mb: 250,
            gpus: vec![("a100".into(), 2)],
            gpus_used: 1,
            partitions: vec![partition.into()],
        };
        let config = SlurmConfig {
            partition: "mesh".into(),
            max_cpus: 6,
            ..SlurmConfig::default()
        };
        let nodes = [
            node("n1", "mixed", "mesh", 1),
            node("n2", "idle", "mesh", 0),
            node("n3", "down", "mesh", 0),
            node("n4", "idle", "other", 0),
        ];
        let jobs = [rest::JobRecord {
            job_id: 1,
            name: String::new(),
            state: "PENDING".into(),
            array_job_id: None,
            array_task_id: None,
            pending_tasks: String::new(),
        }];
        let info = cluster_info(&config, "22.05.8", &nodes, vec!["mesh".into()], &jobs);
        assert_eq!(info.scheduler, "slurm 22.05.8");
        assert_eq!(info.nodes, 2);
        assert_eq!(info.total.cpu_cores, 8);
        assert_eq!(info.free.cpu_cores, 7);
        assert_eq!(info.free.memory_bytes, 1500 << 20);
        assert_eq!(info.total.gpus[0].count, 4);
        assert_eq!(info.free.gpus[0].count, 2);
        assert_eq!(info.mesh_limit.cpu_cores, 6);
        assert_eq!((info.pending_jobs, info.running_jobs), (1, 0));
    }
}
