//! `suanli job …`: submit jobs and follow them through a node's API.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::client::ApiClient;
use super::output::{self, label, or_dash};
use super::sse::SseReader;
use super::{ClientArgs, SilentExit};
use crate::api::types::{
    AttemptView, ExecutorName, JobErrorView, JobEvent, JobEventView, JobPage, JobState, JobView,
    LimitsRequest, PlacementRequest, SubmitRequest, SubmitResponse, UsageView,
};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a WebAssembly job (.wasm or .wat) to the node.
    Submit(Box<SubmitArgs>),
    /// Show a job's state, provider, contract, usage, cost and attempts.
    Status {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job: it is not placed any more, and a contract it has ends as cancelled on
    /// both sides (the provider stops the run; on a cluster, the Slurm job is cancelled).
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a job's stdout (raw bytes).
    Output {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List jobs submitted to the node.
    List {
        /// Most jobs to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Show jobs after this job id (the `next` of a previous page).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The module: a `.wasm` binary or `.wat` text.
    pub file: PathBuf,
    /// An argument for the job (repeatable; in order).
    #[arg(long = "arg", value_name = "A", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// An environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// A file to use as the job's stdin.
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<PathBuf>,
    /// Fuel budget (wasmtime's deterministic instruction count).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory limit, bytes.
    #[arg(long, value_name = "BYTES")]
    pub memory: Option<u64>,
    /// Wall-clock limit, seconds (fractions allowed).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Largest stdout accepted, bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_output: Option<u64>,
    /// The most to pay, micro-credits.
    #[arg(long, value_name = "N")]
    pub max_price: Option<u64>,
    /// Where it runs: `wasm` (a provider's own sandbox), `slurm` (a provider's Slurm cluster,
    /// as `suanli exec` on a compute node) or `batch` (FILE is a batch script, run on a
    /// provider's cluster as it is, by providers that list this node). Default: `slurm` with
    /// --tasks, else `wasm`.
    #[arg(long, value_parser = ["wasm", "slurm", "batch"])]
    pub executor: Option<String>,
    /// Run N tasks (one Slurm job array); task i sees SUANLI_TASK=i and `{task}` in its
    /// arguments replaced by i.
    #[arg(long, value_name = "N")]
    pub tasks: Option<u32>,
    /// Run only on this node.
    #[arg(long, value_name = "NODE_ID")]
    pub provider: Option<String>,
    /// Never run on the node the job is submitted to.
    #[arg(long)]
    pub remote: bool,
    /// Only on nodes of this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Run it on K distinct providers; a strict majority of their results decides, and a
    /// provider whose result differs is recorded with evidence (executor wasm only).
    #[arg(long, value_name = "K")]
    pub replicas: Option<u8>,
    /// Wait for the job to finish and print its stdout.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn execute(command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Submit(args) => submit(*args).await,
        JobCommand::Cancel { id, client } => {
            let job: JobView = client
                .client()?
                .delete_json(&format!("/v1/jobs/{id}"))
                .await?;
            if client.json {
                output::json(&job)
            } else {
                output::line(&format!(
                    "cancelling job {} ({})",
                    job.job_id,
                    label(&job.state)
                ))
            }
        }
        JobCommand::Status { id, client } => {
            let job: JobView = client.client()?.get_json(&format!("/v1/jobs/{id}")).await?;
            if client.json {
                output::json(&job)
            } else {
                print_status(&job)
            }
        }
        JobCommand::Output { id, client } => {
            let bytes = client
                .client()?
                .get_bytes(&format!("/v1/jobs/{id}/output"))
                .await?;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()?;
            Ok(())
        }
        JobCommand::List {
            limit,
            after,
            client,
        } => {
            let mut path = format!("/v1/jobs?limit={limit}");
            if let Some(after) = after {
                path.push_str(&format!("&after={after}"));
            }
            let page: JobPage = client.client()?.get_json(&path).await?;
            if client.json {
                return output::json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .jobs
                .iter()
                .map(|job| {
                    vec![
                        job.job_id.to_string(),
                        label(&job.state),
                        or_dash(job.provider),
                        or_dash(job.cost),
                        or_dash(job.error.as_ref().map(|error| label(&error.code))),
                    ]
                })
                .collect();
            output::table(&["JOB", "STATE", "PROVIDER", "COST µcr", "ERROR"], &rows)?;
            if let Some(next) = page.next {
                output::line(&format!("more: --after {next}"))?;
            }
            Ok(())
        }
    }
}

fn submission(args: &SubmitArgs) -> anyhow::Result<SubmitRequest> {
    let module =
        std::fs::read(&args.file).with_context(|| format!("read {}", args.file.display()))?;
    let is_text = args
        .file
        .extension()
        .is_some_and(|extension| extension == "wat")
        || !module.starts_with(b"\0asm");
    let mut request = SubmitRequest {
        args: args.args.clone(),
        ..SubmitRequest::default()
    };
    if is_text {
        request.module_wat =
            Some(String::from_utf8(module).context("a .wat module must be UTF-8 text")?);
    } else {
        request.module_base64 = Some(BASE64.encode(module));
    }
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env takes KEY=VALUE, got {pair:?}");
        };
        request.env.insert(key.to_owned(), value.to_owned());
    }
    if let Some(path) = &args.stdin {
        let stdin = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        request.stdin_base64 = Some(BASE64.encode(stdin));
    }
    let timeout_ms = match args.timeout {
        Some(secs) if secs.is_finite() && secs > 0.0 => Some((secs * 1000.0).ceil() as u64),
        Some(secs) => bail!("--timeout must be a positive number of seconds, got {secs}"),
        None => None,
    };
    request.limits = LimitsRequest {
        fuel: args.fuel,
        memory_bytes: args.memory,
        timeout_ms,
        max_output_bytes: args.max_output,
        tasks: args.tasks,
    };
    request.executor = match (args.executor.as_deref(), args.tasks) {
        (Some("batch"), _) => Some(ExecutorName::Batch),
        (Some("slurm"), _) | (None, Some(2..)) => Some(ExecutorName::Slurm),
        (Some("wasm"), Some(2..)) => bail!("--tasks above 1 needs --executor slurm"),
        _ => None,
    };
    request.max_price = args.max_price;
    request.replicas = args.replicas;
    request.placement = PlacementRequest {
        provider: args.provider.clone(),
        remote_only: args.remote,
        region: args.region.clone(),
    };
    Ok(request)
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let request = submission(&args)?;
    let client = args.client.client()?;
    let SubmitResponse { job_id } = client.post_json("/v1/jobs", &request).await?;
    if !args.wait {
        return if args.client.json {
            let job: JobView = client.get_json(&format!("/v1/jobs/{job_id}")).await?;
            output::json(&Summary::new(&job, None))
        } else {
            output::line(&job_id.to_string())
        };
    }
    let job = follow(&args.client, &client, &job_id.to_string()).await?;
    let stdout = if job.output_hash.is_some() {
        Some(
            client
                .get_bytes(&format!("/v1/jobs/{job_id}/output"))
                .await?,
        )
    } else {
        None
    };
    if args.client.json {
        output::json(&Summary::new(&job, stdout.as_deref()))?;
    } else if let Some(stdout) = &stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(stdout)?;
        out.flush()?;
    }
    if job.state == JobState::Succeeded {
        return Ok(());
    }
    let code = or_dash(job.error.as_ref().map(|error| label(&error.code)));
    let message = or_dash(job.error.as_ref().map(|error| &error.message));
    let mut err = std::io::stderr().lock();
    writeln!(err, "error: job {job_id} failed: {code}: {message}")?;
    Err(SilentExit(1).into())
}

/// Follows the job's events to its end, shown as one progress line when stderr is a terminal;
/// long-polls instead when the events cannot be read (a proxy that buffers them, a broken
/// stream).
async fn follow(args: &ClientArgs, client: &ApiClient, id: &str) -> anyhow::Result<JobView> {
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    let followed = follow_events(args, id, &mut progress).await;
    progress.clear();
    match followed {
        Ok(Some(job)) => return Ok(job),
        Ok(None) => tracing::debug!(job_id = id, "the job's events ended early; polling"),
        Err(error) => {
            tracing::debug!(job_id = id, %error, "cannot follow the job's events; polling")
        }
    }
    wait(client, id).await
}

/// The job's final view from its events, or `None` if they end before it does.
async fn follow_events(
    args: &ClientArgs,
    id: &str,
    progress: &mut Progress,
) -> anyhow::Result<Option<JobView>> {
    let client = args.streaming_client()?;
    let response = client.get_stream(&format!("/v1/jobs/{id}/events")).await?;
    let mut events = SseReader::new(response);
    while let Some(event) = events.next().await? {
        match event.name.as_deref() {
            Some("end") => return Ok(Some(serde_json::from_str(&event.data)?)),
            Some("snapshot") => {
                let job: JobView = serde_json::from_str(&event.data)?;
                progress.show(&format!(
                    "{} ({} attempts)",
                    label(&job.state),
                    job.attempts.len()
                ))?;
            }
            // Steps this CLI does not know yet are skipped.
            Some(_) => {
                if let Ok(step) = serde_json::from_str::<JobEventView>(&event.data) {
                    progress.show(&describe(&step.event))?;
                }
            }
            None => {}
        }
    }
    Ok(None)
}

/// One line about a job's step.
fn describe(event: &JobEvent) -> String {
    let short = |id: &dyn std::fmt::Display| {
        let id = id.to_string();
        id.chars().take(16).collect::<String>()
    };
    match event {
        JobEvent::Quote { candidates } => format!("{} providers fit", candidates.len()),
        JobEvent::Offer { provider } => format!("offered to {}…", short(provider)),
        JobEvent::Decline {
            provider, message, ..
        } => format!("declined by {}…: {message}", short(provider)),
        JobEvent::Contract { provider, .. } => format!("contract with {}…", short(provider)),
        JobEvent::Running { provider, .. } => format!("running on {}…", short(provider)),
        JobEvent::Receipt { fuel, wall_ms, .. } => format!("receipt: {fuel} fuel, {wall_ms} ms"),
        JobEvent::Settlement { state, cost, .. } => {
            format!("{} ({} µcr)", label(state), or_dash(*cost))
        }
        JobEvent::Failover {
            provider, outcome, ..
        } => format!("{} on {}…, trying another", label(outcome), short(provider)),
    }
}

/// The line `--wait` keeps rewriting on a terminal (nothing off one).
#[derive(Debug)]
struct Progress {
    terminal: bool,
    shown: bool,
}

impl Progress {
    fn new(terminal: bool) -> Progress {
        Progress {
            terminal,
            shown: false,
        }
    }

    fn show(&mut self, text: &str) -> std::io::Result<()> {
        if !self.terminal {
            return Ok(());
        }
        let line: String = text.chars().take(100).collect();
        let mut err = std::io::stderr().lock();
        // Back to the line's start, clear it, write the new text.
        write!(err, "\r\x1b[2K{line}")?;
        err.flush()?;
        self.shown = true;
        Ok(())
    }

    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

/// Long-polls the job until it is final.
async fn wait(client: &ApiClient, id: &str) -> anyhow::Result<JobView> {
    loop {
        let job: JobView = client
            .get_json(&format!("/v1/jobs/{id}?wait_ms=20000"))
            .await?;
        if job.state.is_final() {
            return Ok(job);
        }
    }
}

/// The one JSON object `job submit --json` prints: the job's outcome and its stdout. A CLI
/// output, not an API answer.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    job_id: String,
    state: JobState,
    provider: Option<String>,
    contract_id: Option<String>,
    exit_code: Option<i32>,
    stdout: Option<String>,
    stdout_base64: Option<String>,
    error: Option<&'a JobErrorView>,
    usage: Option<UsageView>,
    cost: Option<u64>,
    attempts: &'a [AttemptView],
}

impl<'a> Summary<'a> {
    fn new(job: &'a JobView, stdout: Option<&[u8]>) -> Summary<'a> {
        Summary {
            job_id: job.job_id.to_string(),
            state: job.state,
            provider: job.provider.map(|provider| provider.to_string()),
            contract_id: job.contract_id.map(|contract| contract.to_string()),
            exit_code: job.exit_code,
            stdout: stdout.map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
            stdout_base64: stdout.map(|bytes| BASE64.encode(bytes)),
            error: job.error.as_ref(),
            usage: job.usage,
            cost: job.cost,
            attempts: &job.attempts,
        }
    }
}

fn print_status(job: &JobView) -> anyhow::Result<()> {
    let error = job.error.as_ref();
    for (label_text, value) in [
        ("job id", job.job_id.to_string()),
        ("state", label(&job.state)),
        ("provider", or_dash(job.provider)),
        ("contract", or_dash(job.contract_id)),
        ("exit code", or_dash(job.exit_code)),
        ("cost µcr", or_dash(job.cost)),
        ("fuel", or_dash(job.usage.map(|usage| usage.fuel))),
        ("wall ms", or_dash(job.usage.map(|usage| usage.wall_ms))),
        (
            "cluster",
            or_dash(job.usage.and_then(|usage| usage.cluster).map(|cluster| {
                format!(
                    "Slurm job {}: {} CPUs, {:.3} CPU-s, {:.1} s elapsed, peak {} MiB",
                    cluster.job_id,
                    cluster.cpus,
                    cluster.cpu_ms as f64 / 1000.0,
                    cluster.elapsed_ms as f64 / 1000.0,
                    cluster.peak_memory_bytes >> 20
                )
            })),
        ),
        ("error", or_dash(error.map(|error| label(&error.code)))),
        ("message", or_dash(error.map(|error| &error.message))),
    ] {
        output::line(&format!("{label_text:<10} {value}"))?;
    }
    if let Some(replicas) = &job.replicas {
        output::line(&format!("replicas ({}):", replicas.count))?;
        for run in &replicas.runs {
            output::line(&format!(
                "  {} {} {} {}",
                run.job_id,
                label(&run.state),
                or_dash(run.provider),
                or_dash(run.output_hash),
            ))?;
        }
        for evidence in &replicas.evidence {
            output::line(&format!(
                "  evidence against {} (contract {}): {}",
                evidence.provider,
                evidence.contract_id,
                if evidence.verified {
                    "verifies"
                } else {
                    "DOES NOT VERIFY"
                }
            ))?;
        }
    }
    if !job.attempts.is_empty() {
        output::line("attempts:")?;
        for attempt in &job.attempts {
            output::line(&format!(
                "  {} {} {} {}",
                attempt.provider,
                label(&attempt.outcome),
                or_dash(attempt.reason.as_ref().map(label)),
                attempt.message,
            ))?;
        }
    }
    Ok(())
}
