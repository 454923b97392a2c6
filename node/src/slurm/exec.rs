//! What a mesh job is on the cluster: a job directory on storage the compute nodes share, and
//! `suanli exec DIR`, the same binary in a one-job mode that runs one task of it in the
//! WebAssembly sandbox, under the job's limits, and writes the task's outcome there.
//!
//! ```text
//!  DIR/job.bin        the job: module, args, env, stdin, limits (written by the node, atomically)
//!  DIR/slurm.id       the Slurm job id (written by the node once submitted)
//!  DIR/task-N.out     task N's outcome, usage, stdout and own CPU time (written by suanli exec)
//!  DIR/slurm-*.txt    Slurm's stdout of the batch script (diagnostics only)
//! ```
//!
//! Task `N` (its index `SLURM_ARRAY_TASK_ID`, 0 without an array) sees `SUANLI_TASK=N` and
//! `SUANLI_TASKS` in its environment and every `{task}` in its arguments replaced by `N`. Every
//! file is written to a temporary name, synced and renamed, so a reader sees all of it or none.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use suanli_protocol::codec;
use suanli_protocol::job::{MAX_MODULE_BYTES, MAX_OUTPUT_BYTES, MAX_STDIN_BYTES};
use suanli_protocol::{Limits, Outcome, Usage};
use tokio_util::sync::CancellationToken;

use crate::executor::{Executor, ExecutorConfig, JobInput};

pub const JOB_FILE: &str = "job.bin";
pub const SLURM_ID_FILE: &str = "slurm.id";
/// The environment variables a task gets its index and the task count in.
pub const TASK_VAR: &str = "SUANLI_TASK";
pub const TASKS_VAR: &str = "SUANLI_TASKS";
/// Replaced by the task's index in every argument.
pub const TASK_PLACEHOLDER: &str = "{task}";
/// The largest job file read (module, stdin, args and env with room to spare).
const MAX_JOB_FILE_BYTES: usize = MAX_MODULE_BYTES + MAX_STDIN_BYTES + 256 * 1024;
/// The largest task outcome read (all of stdout and room for the rest).
const MAX_OUTCOME_BYTES: usize = MAX_OUTPUT_BYTES as usize + 64 * 1024;
/// Compiled code a one-job executor may cache (one module).
const EXEC_MODULE_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// A mesh job as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecJob {
    #[serde(with = "serde_bytes")]
    pub module: Vec<u8>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
    pub limits: Limits,
}

/// How one task ended, as `suanli exec` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub outcome: Outcome,
    pub usage: Usage,
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// This process's own user + system CPU time, microseconds: what is billed when the
    /// cluster's accounting has no record of the task.
    pub cpu_us: u64,
    /// This process's peak resident memory (`VmHWM`), bytes: what is reported when the
    /// accounting sampled none (a task shorter than its sampling interval).
    pub peak_rss_bytes: u64,
}

pub fn task_file(dir: &Path, task: u32) -> PathBuf {
    dir.join(format!("task-{task}.out"))
}

pub fn read_job(dir: &Path) -> Result<ExecJob, String> {
    read(&dir.join(JOB_FILE), MAX_JOB_FILE_BYTES)
}

pub fn read_task(dir: &Path, task: u32) -> Result<TaskOutcome, String> {
    read(&task_file(dir, task), MAX_OUTCOME_BYTES)
}

fn read<T: serde::de::DeserializeOwned>(path: &Path, limit: usize) -> Result<T, String> {
    let bytes = read_at_most(path, limit)?;
    codec::decode(&bytes, limit).map_err(|error| format!("{}: {error}", path.display()))
}

/// A file's bytes, refused beyond `limit` (without reading more than one byte past it): the
/// files of a job directory are written by the cluster's job user, not by this node.
pub fn read_at_most(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let describe = |error: std::io::Error| format!("{}: {error}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| {
            file.take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
                .read_to_end(&mut bytes)
        })
        .map_err(describe)?;
    if bytes.len() > limit {
        return Err(format!("{}: larger than {limit} bytes", path.display()));
    }
    Ok(bytes)
}

/// Writes `value` to `path` atomically and durably: a temporary file, synced, renamed, and the
/// directory synced.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let bytes = codec::encode(value).map_err(|error| error.to_string())?;
    write_bytes_atomic(path, &bytes)
}

pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let describe = |error: std::io::Error| format!("{}: {error}", path.display());
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temporary = tempfile::NamedTempFile::new_in(dir).map_err(describe)?;
    temporary.write_all(bytes).map_err(describe)?;
    temporary.as_file().sync_all().map_err(describe)?;
    // Readable by the node and by the cluster's job user alike.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(temporary.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(describe)?;
    temporary
        .persist(path)
        .map_err(|error| describe(error.error))?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(describe)
}

/// `suanli exec DIR [--task N]`: runs task N (default: `SLURM_ARRAY_TASK_ID`, else 0) of the
/// job in DIR and writes its outcome. A job that fails is an outcome, not an error: `Err` only
/// when the job cannot be read or the outcome cannot be written.
pub fn run(dir: &Path, task: Option<u32>) -> Result<(), String> {
    let job = read_job(dir)?;
    let task = match task {
        Some(task) => task,
        None => match std::env::var("SLURM_ARRAY_TASK_ID") {
            Ok(id) => id
                .parse()
                .map_err(|_| format!("SLURM_ARRAY_TASK_ID {id:?} is not a task index"))?,
            Err(_) => 0,
        },
    };
    if task >= job.limits.tasks {
        return Err(format!(
            "task {task} is beyond the job's {} tasks",
            job.limits.tasks
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start a runtime: {error}"))?;
    let outcome = runtime.block_on(run_task(job, task))?;
    write_atomic(&task_file(dir, task), &outcome)
}

async fn run_task(job: ExecJob, task: u32) -> Result<TaskOutcome, String> {
    let executor = Executor::new(ExecutorConfig {
        max_concurrency: 1,
        max_memory_bytes: job.limits.memory_bytes.max(64 * 1024),
        module_cache_bytes: EXEC_MODULE_CACHE_BYTES,
        compile_threads: 1,
        compile_queue: 1,
    })
    .map_err(|error| error.to_string())?;
    let index = task.to_string();
    let mut env = job.env;
    env.insert(TASK_VAR.into(), index.clone());
    env.insert(TASKS_VAR.into(), job.limits.tasks.to_string());
    let result = executor
        .run(JobInput {
            module: Arc::new(job.module),
            args: job
                .args
                .iter()
                .map(|arg| arg.replace(TASK_PLACEHOLDER, &index))
                .collect(),
            env,
            stdin: job.stdin,
            limits: Limits {
                tasks: 1,
                ..job.limits
            },
            cancel: CancellationToken::new(),
        })
        .await;
    Ok(TaskOutcome {
        outcome: result.outcome,
        usage: result.usage,
        stdout: result.stdout,
        cpu_us: crate::capacity::own_cpu_us().unwrap_or(0),
        peak_rss_bytes: own_peak_rss_bytes().unwrap_or(0),
    })
}

/// This process's peak resident set from `/proc/self/status`, bytes.
fn own_peak_rss_bytes() -> Option<u64> {
    crate::capacity::proc_kib_field("/proc/self/status", "VmHWM:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_and_memory_are_read() {
        assert!(crate::capacity::own_cpu_us().is_some());
        assert!(own_peak_rss_bytes().is_some_and(|bytes| bytes > 0));
    }

    #[test]
    fn files_round_trip_and_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let job = ExecJob {
            module: b"(module)".to_vec(),
            args: vec!["{task}".into()],
            env: BTreeMap::new(),
            stdin: Vec::new(),
            limits: Limits {
                fuel: 1,
                memory_bytes: 1,
                wall_time_ms: 1,
                output_bytes: 1,
                tasks: 2,
            },
        };
        write_atomic(&dir.path().join(JOB_FILE), &job).unwrap();
        assert_eq!(read_job(dir.path()).unwrap(), job);
        std::fs::write(dir.path().join(JOB_FILE), b"garbage").unwrap();
        assert!(read_job(dir.path()).unwrap_err().contains("job.bin"));
        std::fs::write(task_file(dir.path(), 0), vec![0u8; MAX_OUTCOME_BYTES + 1]).unwrap();
        assert!(
            read_task(dir.path(), 0)
                .unwrap_err()
                .contains("larger than")
        );
        assert!(read_task(dir.path(), 0).unwrap_err().contains("task-0.out"));
    }
}
