//! Plain batch scripts (executor `batch`): a script run on the cluster as it is, outside the
//! sandbox, for the node ids an operator lists (`slurm.batch_requesters`). The provider checks
//! the list before it offers.
//!
//! Besides `job.bin`, the job directory holds the files the script's wrapper uses:
//!
//! ```text
//!  DIR/script        the script (the job's "module"), mode 755
//!  DIR/stdin         the job's stdin
//!  DIR/out-N         task N's stdout (its output), DIR/err-N its stderr (diagnostics only)
//!  DIR/exit-N        task N's exit status, written last (absent: the task was killed)
//! ```
//!
//! No fuel is metered. The cluster's accounting is the usage: CPU time (priced per
//! CPU-second), elapsed time and peak memory. Wall time and memory in the receipt are clamped
//! to the contract's limits, which the requester checks; the real figures stay in
//! `usage.cluster`.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use suanli_protocol::negotiation::WALL_TIME_GRACE_MS;
use suanli_protocol::{FailureReason, Limits, Usage};

use super::exec::{
    ExecJob, TASK_PLACEHOLDER, TASK_VAR, TASKS_VAR, read_at_most, write_bytes_atomic,
};
use super::rest::Accounting;
use super::{RunReport, cluster_usage, failure_report, success_report};

/// Checks a submitted batch script: text, starting with `#!`.
pub fn check_script(script: &[u8]) -> Result<(), String> {
    if !script.starts_with(b"#!") {
        return Err("a batch script must start with #! (its interpreter)".into());
    }
    std::str::from_utf8(script).map_err(|_| "a batch script must be UTF-8 text".to_owned())?;
    Ok(())
}

/// Writes the script and stdin beside `job.bin`.
pub(super) fn write_files(dir: &Path, job: &ExecJob) -> Result<(), String> {
    let script = dir.join("script");
    write_bytes_atomic(&script, &job.module)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .map_err(|error| format!("{}: {error}", script.display()))?;
    write_bytes_atomic(&dir.join("stdin"), &job.stdin)
}

/// The batch script Slurm runs: the job's script with its arguments (`{task}` replaced by the
/// task's index), stdin and output files, and its exit status recorded.
pub(super) fn wrapper(dir: &Path, job: &ExecJob) -> String {
    let quote = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
    let path = |name: &str| quote(&dir.join(name).display().to_string());
    let args: Vec<String> = job
        .args
        .iter()
        .map(|arg| {
            arg.split(TASK_PLACEHOLDER)
                .map(quote)
                .collect::<Vec<_>>()
                .join("\"$task\"")
        })
        .collect();
    let out = |name: &str| format!("{}\"-$task\"", path(name));
    format!(
        "#!/bin/sh\ntask=\"${{SLURM_ARRAY_TASK_ID:-0}}\"\nexport {TASK_VAR}=\"$task\" {TASKS_VAR}={}\n\
         {} {} < {} > {} 2> {}\ncode=$?\nprintf '%s\\n' \"$code\" > {}.tmp && mv {}.tmp {}\n\
         exit \"$code\"\n",
        job.limits.tasks,
        path("script"),
        args.join(" "),
        path("stdin"),
        out("out"),
        out("err"),
        out("exit"),
        out("exit"),
        out("exit"),
    )
}

/// How one task of a script ended: its exit status and stdout, when it wrote its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ScriptTask {
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    /// The task wrote more than the job's output limit.
    pub too_much: bool,
}

/// Each task's status and output (at most `limits.output_bytes` read of each).
pub(super) fn read_tasks(dir: &Path, limits: &Limits) -> Vec<ScriptTask> {
    (0..limits.tasks)
        .map(|task| {
            let exit_code = read_at_most(&dir.join(format!("exit-{task}")), 32)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| text.trim().parse().ok());
            let mut stdout = Vec::new();
            let read = std::fs::File::open(dir.join(format!("out-{task}"))).and_then(|file| {
                file.take(limits.output_bytes.saturating_add(1))
                    .read_to_end(&mut stdout)
            });
            let too_much = read.is_ok() && stdout.len() as u64 > limits.output_bytes;
            ScriptTask {
                exit_code,
                stdout,
                too_much,
            }
        })
        .collect()
}

/// One run's report from its tasks (in task order) and the cluster's accounting.
///
/// Succeeded when every task wrote its exit status (the first non-zero one is the run's), with
/// the tasks' stdout concatenated within `limits.output_bytes`. A task killed before it wrote
/// one failed the run: `timeout`, `memory_limit` or `cancelled` after Slurm's final state, else
/// `trap`.
pub(super) fn combine(
    slurm_id: u64,
    limits: &Limits,
    final_state: &str,
    tasks: Vec<ScriptTask>,
    accounting: Option<Accounting>,
) -> RunReport {
    let cluster = cluster_usage(slurm_id, limits, accounting, 0, 0);
    let elapsed = cluster.elapsed_ms;
    let usage = Usage {
        wall_time_ms: elapsed.min(limits.wall_time_ms.saturating_add(WALL_TIME_GRACE_MS)),
        memory_bytes: cluster.peak_memory_bytes.min(limits.memory_bytes),
        cluster: Some(cluster),
        ..Usage::default()
    };
    if let Some(index) = tasks.iter().position(|task| task.exit_code.is_none()) {
        let reason = match final_state {
            "TIMEOUT" | "DEADLINE" => FailureReason::Timeout,
            "OUT_OF_MEMORY" => FailureReason::MemoryLimit,
            "CANCELLED" => FailureReason::Cancelled,
            _ => FailureReason::Trap,
        };
        let message = format!("task {index} was ended by the cluster (Slurm: {final_state})");
        return failure_report(reason, &message, limits, usage);
    }
    let output: Vec<u8> = tasks.iter().flat_map(|task| task.stdout.clone()).collect();
    if tasks.iter().any(|task| task.too_much) || output.len() as u64 > limits.output_bytes {
        let message = format!(
            "the tasks wrote more than the output limit of {} bytes",
            limits.output_bytes
        );
        return failure_report(FailureReason::OutputTooLarge, &message, limits, usage);
    }
    let exit_code = tasks
        .iter()
        .filter_map(|task| task.exit_code)
        .find(|code| *code != 0)
        .unwrap_or(0);
    success_report(exit_code, usage, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_protocol::Outcome;

    fn limits(tasks: u32) -> Limits {
        Limits {
            fuel: 1,
            memory_bytes: 1 << 20,
            wall_time_ms: 1_000,
            output_bytes: 8,
            tasks,
        }
    }

    fn task(code: Option<i32>, stdout: &[u8]) -> ScriptTask {
        ScriptTask {
            exit_code: code,
            stdout: stdout.to_vec(),
            too_much: false,
        }
    }

    #[test]
    fn scripts_must_name_their_interpreter_and_be_text() {
        assert!(check_script(b"#!/bin/sh\necho hi\n").is_ok());
        assert!(check_script(b"echo hi\n").unwrap_err().contains("#!"));
        assert!(
            check_script(b"#!/bin/sh\n\xff")
                .unwrap_err()
                .contains("UTF-8")
        );
    }

    #[test]
    fn the_wrapper_quotes_arguments_and_substitutes_the_task() {
        let job = ExecJob {
            module: b"#!/bin/sh\n".to_vec(),
            args: vec!["it's".into(), "part-{task}.csv".into()],
            env: Default::default(),
            stdin: Vec::new(),
            limits: limits(4),
        };
        let script = wrapper(Path::new("/shared/d"), &job);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(
            script.contains(r#"'/shared/d/script' 'it'\''s' 'part-'"$task"'.csv'"#),
            "{script}"
        );
        assert!(script.contains("SUANLI_TASKS=4"));
        assert!(script.contains(r#"> '/shared/d/out'"-$task""#), "{script}");
    }

    #[test]
    fn tasks_combine_and_killed_tasks_fail_the_run() {
        let ok = combine(
            7,
            &limits(2),
            "COMPLETED",
            vec![task(Some(0), b"a\n"), task(Some(3), b"b\n")],
            None,
        );
        assert_eq!(ok.output, b"a\nb\n");
        assert!(matches!(
            ok.outcome,
            Outcome::Succeeded { exit_code: 3, .. }
        ));
        assert_eq!(ok.usage.fuel, 0);
        assert_eq!(ok.usage.cluster.unwrap().job_id, 7);
        let killed = combine(
            7,
            &limits(2),
            "TIMEOUT",
            vec![task(Some(0), b"a"), task(None, b"")],
            None,
        );
        assert!(matches!(
            killed.outcome,
            Outcome::Failed {
                reason: FailureReason::Timeout,
                ..
            }
        ));
        // A claimed timeout shows the whole time limit, as the requester checks.
        assert_eq!(killed.usage.wall_time_ms, 1_000);
        let noisy = combine(
            7,
            &limits(2),
            "COMPLETED",
            vec![task(Some(0), b"12345"), task(Some(0), b"67890")],
            None,
        );
        assert!(matches!(
            noisy.outcome,
            Outcome::Failed {
                reason: FailureReason::OutputTooLarge,
                ..
            }
        ));
    }
}
