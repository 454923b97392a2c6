//! `suanli job …`: submit jobs and follow them through a node's API.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::ApiClient;
use super::output;
use super::{ClientArgs, SilentExit};

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
    /// Run only on this node.
    #[arg(long, value_name = "NODE_ID")]
    pub provider: Option<String>,
    /// Never run on the node the job is submitted to.
    #[arg(long)]
    pub remote: bool,
    /// Only on nodes of this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Wait for the job to finish and print its stdout.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn execute(command: JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Submit(args) => submit(*args).await,
        JobCommand::Status { id, client } => {
            let job = ApiClient::new(&client.api)?
                .get(&format!("/v1/jobs/{id}"))
                .await?;
            if client.json {
                output::json(&job)
            } else {
                print_status(&job)
            }
        }
        JobCommand::Output { id, client } => {
            let bytes = ApiClient::new(&client.api)?
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
            let page = ApiClient::new(&client.api)?.get(&path).await?;
            if client.json {
                return output::json(&page);
            }
            let rows = output::rows(&page["jobs"], |job| {
                vec![
                    output::text(job, "/job_id"),
                    output::text(job, "/state"),
                    output::text(job, "/provider"),
                    output::text(job, "/cost"),
                    output::text(job, "/error/code"),
                ]
            });
            output::table(&["JOB", "STATE", "PROVIDER", "COST µcr", "ERROR"], &rows)?;
            if let Some(next) = page["next"].as_str() {
                output::line(&format!("more: --after {next}"))?;
            }
            Ok(())
        }
    }
}

fn submission(args: &SubmitArgs) -> anyhow::Result<Value> {
    let module =
        std::fs::read(&args.file).with_context(|| format!("read {}", args.file.display()))?;
    let is_text = args
        .file
        .extension()
        .is_some_and(|extension| extension == "wat")
        || !module.starts_with(b"\0asm");
    let mut body = json!({ "args": args.args });
    if is_text {
        body["module_wat"] =
            Value::String(String::from_utf8(module).context("a .wat module must be UTF-8 text")?);
    } else {
        body["module_base64"] = Value::String(BASE64.encode(module));
    }
    let mut env = serde_json::Map::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env takes KEY=VALUE, got {pair:?}");
        };
        env.insert(key.to_owned(), Value::String(value.to_owned()));
    }
    body["env"] = Value::Object(env);
    if let Some(path) = &args.stdin {
        let stdin = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        body["stdin_base64"] = Value::String(BASE64.encode(stdin));
    }
    let timeout_ms = match args.timeout {
        Some(secs) if secs.is_finite() && secs > 0.0 => Some((secs * 1000.0).ceil() as u64),
        Some(secs) => bail!("--timeout must be a positive number of seconds, got {secs}"),
        None => None,
    };
    body["limits"] = json!({
        "fuel": args.fuel,
        "memory_bytes": args.memory,
        "timeout_ms": timeout_ms,
        "max_output_bytes": args.max_output,
    });
    if let Some(price) = args.max_price {
        body["max_price"] = json!(price);
    }
    body["placement"] = json!({
        "provider": args.provider,
        "remote_only": args.remote,
        "region": args.region,
    });
    Ok(body)
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let body = submission(&args)?;
    let client = ApiClient::new(&args.client.api)?;
    let answer = client.post("/v1/jobs", &body).await?;
    let id = answer["job_id"]
        .as_str()
        .context("the node answered without a job id")?
        .to_owned();
    if !args.wait {
        return if args.client.json {
            output::json(&summary(
                &client.get(&format!("/v1/jobs/{id}")).await?,
                None,
            ))
        } else {
            output::line(&id)
        };
    }
    let job = wait(&client, &id).await?;
    let stdout = if job["output_hash"].is_string() {
        Some(client.get_bytes(&format!("/v1/jobs/{id}/output")).await?)
    } else {
        None
    };
    let succeeded = job["state"] == "succeeded";
    if args.client.json {
        output::json(&summary(&job, stdout.as_deref()))?;
    } else if let Some(stdout) = &stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(stdout)?;
        out.flush()?;
    }
    if succeeded {
        return Ok(());
    }
    let code = output::text(&job, "/error/code");
    let message = output::text(&job, "/error/message");
    let mut err = std::io::stderr().lock();
    writeln!(err, "error: job {id} failed: {code}: {message}")?;
    Err(SilentExit(1).into())
}

/// Long-polls the job until it is final.
async fn wait(client: &ApiClient, id: &str) -> anyhow::Result<Value> {
    loop {
        let job = client.get(&format!("/v1/jobs/{id}?wait_ms=20000")).await?;
        if matches!(job["state"].as_str(), Some("succeeded" | "failed")) {
            return Ok(job);
        }
    }
}

/// The one JSON object `job submit --json` prints.
fn summary(job: &Value, stdout: Option<&[u8]>) -> Value {
    json!({
        "job_id": job["job_id"],
        "state": job["state"],
        "provider": job["provider"],
        "contract_id": job["contract_id"],
        "exit_code": job["exit_code"],
        "stdout": stdout.map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
        "stdout_base64": stdout.map(|bytes| BASE64.encode(bytes)),
        "error": job["error"],
        "usage": job["usage"],
        "cost": job["cost"],
        "attempts": job["attempts"],
    })
}

fn print_status(job: &Value) -> anyhow::Result<()> {
    for (label, pointer) in [
        ("job id", "/job_id"),
        ("state", "/state"),
        ("provider", "/provider"),
        ("contract", "/contract_id"),
        ("exit code", "/exit_code"),
        ("cost µcr", "/cost"),
        ("fuel", "/usage/fuel"),
        ("wall ms", "/usage/wall_ms"),
        ("error", "/error/code"),
        ("message", "/error/message"),
    ] {
        output::line(&format!("{label:<10} {}", output::text(job, pointer)))?;
    }
    let attempts = job["attempts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !attempts.is_empty() {
        output::line("attempts:")?;
        for attempt in attempts {
            output::line(&format!(
                "  {} {} {} {}",
                output::text(attempt, "/provider"),
                output::text(attempt, "/outcome"),
                output::text(attempt, "/reason"),
                output::text(attempt, "/message"),
            ))?;
        }
    }
    Ok(())
}
