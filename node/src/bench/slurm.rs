//! The `slurm` scenario: a job through the mesh onto a Slurm cluster, against the same job
//! submitted straight to slurmrestd (the floor).
//!
//! Needs a cluster, which the scenario reads from the environment that `scripts/slurm-cluster.sh
//! env DIR` prints: `SUANLI_SLURMRESTD`, `SUANLI_SLURM_USER`, `SUANLI_SLURM_JWT_KEY` and
//! `SUANLI_SLURM_WORK_DIR`, plus `SUANLI_SLURM_PARTITION` and `SUANLI_SLURM_ACCOUNT` (both
//! default to `mesh`).
//!
//! The job spins about 0.3 s of CPU, then prints. Both paths are measured the same way: from
//! submission to the Slurm job seen `RUNNING`, and from submission to the result.
//!
//! - **The floor.** The same batch job that a provider submits (`suanli exec DIR` on a prepared
//!   job directory, the same resources), posted to slurmrestd by this process and polled every
//!   20 ms until it is `COMPLETED`.
//! - **The mesh.** Node A receives the job through its API. It negotiates a contract with node B,
//!   which fronts the cluster. B writes the job directory, submits and polls (every 50 ms), waits
//!   for the accounting record, and delivers a receipt that A settles. A is long-polled until the
//!   job is final.
//!
//! The overhead figure includes the wait for slurmdbd's record, which only the mesh pays, since
//! its receipt bills from it. The floor's own "COMPLETED → accounting record" figure shows how
//! much of the overhead that wait is.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use suanli_protocol::{ContractId, ExecutorKind, Hash32, Limits};

use super::job_latency::json_answer;
use super::nodes::{BenchNode, loopback_config, wait_for_mesh};
use super::{BenchError, Context, Figure, Samples, ms};
use crate::config::SlurmConfig;
use crate::slurm::Cluster;
use crate::slurm::exec::ExecJob;

const SCENARIO: &str = "slurm";
/// Spins 300 million times (about 0.3 s here), then prints "done".
const SPIN_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "done\n")
  (func (export "_start") (local $i i64)
    (loop $spin
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $spin (i64.lt_u (local.get $i) (i64.const 300000000))))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
const FUEL: u64 = 10_000_000_000;
const POLL: Duration = Duration::from_millis(20);

/// The cluster the scenario uses, from the environment.
fn cluster_config() -> Result<SlurmConfig, BenchError> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            BenchError::scenario(
                SCENARIO,
                format!(
                    "{name} is not set: start a cluster with `eval \"$(scripts/slurm-cluster.sh up \
                     DIR)\"` first"
                ),
            )
        })
    };
    let or_mesh = |name: &str| std::env::var(name).unwrap_or_else(|_| "mesh".into());
    Ok(SlurmConfig {
        endpoint: Some(var("SUANLI_SLURMRESTD")?),
        user: var("SUANLI_SLURM_USER")?,
        jwt_key_file: Some(PathBuf::from(var("SUANLI_SLURM_JWT_KEY")?)),
        work_dir: Some(PathBuf::from(var("SUANLI_SLURM_WORK_DIR")?)),
        partition: or_mesh("SUANLI_SLURM_PARTITION"),
        account: Some(or_mesh("SUANLI_SLURM_ACCOUNT")),
        refresh_secs: 1,
        poll_interval_ms: 50,
        ..SlurmConfig::default()
    })
}

/// Whether the environment names a cluster (a full run skips the scenario otherwise).
pub fn configured() -> bool {
    std::env::var_os("SUANLI_SLURMRESTD").is_some()
}

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let config = cluster_config()?;
    let jobs = context.options.pick(3, 10);
    let fail = |error: String| BenchError::scenario(SCENARIO, error);
    let cluster = Cluster::connect(config.clone(), context.workspace.path())
        .await
        .map_err(|error| fail(error.to_string()))?;
    let floor = measure_floor(&cluster, jobs).await?;

    let mut b_config = loopback_config(&[], 1);
    b_config.slurm = config;
    b_config.provider.max_fuel = FUEL;
    let b = BenchNode::start(context.workspace.subdir("node")?, b_config).await?;
    let a = BenchNode::start(
        context.workspace.subdir("node")?,
        loopback_config(&[b.tcp_addr()?], 1),
    )
    .await?;
    let mesh = async {
        wait_for_mesh(std::slice::from_ref(&a), 2, Duration::from_secs(60)).await?;
        measure_mesh(&cluster, &a.api_url(), jobs).await
    }
    .await;
    a.stop().await;
    b.stop().await;
    let mesh = mesh?;

    let done_floor = ms(floor.done.p50());
    let done_mesh = ms(mesh.done.p50());
    let floor_metric = "the same batch job straight to slurmrestd, p50";
    Ok(vec![
        Figure::against(
            SCENARIO,
            "submit→running p50",
            ms(mesh.running.p50()),
            "ms",
            ms(floor.running.p50()),
            floor_metric,
        ),
        Figure::against(
            SCENARIO,
            "submit→done p50",
            done_mesh,
            "ms",
            done_floor,
            floor_metric,
        ),
        Figure::against(
            SCENARIO,
            "submit→done max",
            ms(mesh.done.max()),
            "ms",
            ms(floor.done.max()),
            "the same batch job straight to slurmrestd, max",
        ),
        Figure::plain(
            SCENARIO,
            "overhead over the floor, p50",
            done_mesh - done_floor,
            "ms",
        ),
        Figure::plain(
            SCENARIO,
            "floor: COMPLETED → accounting record, p50",
            ms(floor.accounting.p50()),
            "ms",
        ),
        Figure::plain(SCENARIO, "jobs measured (each way)", jobs as f64, "jobs"),
    ])
}

struct Floor {
    running: Samples,
    done: Samples,
    accounting: Samples,
}

async fn measure_floor(cluster: &Cluster, jobs: usize) -> Result<Floor, BenchError> {
    let fail = |error: String| BenchError::scenario(SCENARIO, error);
    let limits = Limits {
        fuel: FUEL,
        memory_bytes: 64 << 20,
        wall_time_ms: 60_000,
        output_bytes: 1 << 20,
        tasks: 1,
    };
    let (mut running, mut done, mut accounting) = (Vec::new(), Vec::new(), Vec::new());
    for index in 0..jobs {
        let dir = cluster
            .work_dir()
            .join(format!("bench-floor-{}-{index}", std::process::id()));
        let job = ExecJob {
            module: SPIN_WAT.as_bytes().to_vec(),
            args: Vec::new(),
            env: Default::default(),
            stdin: Vec::new(),
            limits,
        };
        cluster
            .write_job(&dir, &job, ExecutorKind::Slurm)
            .map_err(fail)?;
        let name = format!("suanli-bench-{index}");
        let submission = cluster.submission(&name, &dir, &job, ExecutorKind::Slurm);
        let started = Instant::now();
        let id = cluster
            .client()
            .submit(&submission)
            .await
            .map_err(|error| fail(error.to_string()))?;
        let mut seen_running = None;
        loop {
            let records = cluster
                .client()
                .job(id)
                .await
                .map_err(|error| fail(error.to_string()))?
                .unwrap_or_default();
            let state = records.first().map(|record| record.state.as_str());
            if state == Some("RUNNING") && seen_running.is_none() {
                seen_running = Some(started.elapsed());
            }
            if records.first().is_some_and(|record| record.is_final()) {
                if state != Some("COMPLETED") {
                    return Err(fail(format!("the floor's job ended {state:?}")));
                }
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let completed = started.elapsed();
        done.push(completed);
        running.push(seen_running.unwrap_or(completed));
        let recorded = Instant::now();
        while cluster
            .client()
            .accounting(id, 1)
            .await
            .map_err(|error| fail(error.to_string()))?
            .is_none()
        {
            if recorded.elapsed() > Duration::from_secs(30) {
                return Err(fail(format!("no accounting record for job {id}")));
            }
            tokio::time::sleep(POLL).await;
        }
        accounting.push(recorded.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Floor {
        running: Samples::new(running),
        done: Samples::new(done),
        accounting: Samples::new(accounting),
    })
}

struct Mesh {
    running: Samples,
    done: Samples,
}

async fn measure_mesh(cluster: &Cluster, api: &str, jobs: usize) -> Result<Mesh, BenchError> {
    let fail = |error: String| BenchError::scenario(SCENARIO, error);
    let http = reqwest::Client::new();
    let body = json!({
        "module_wat": SPIN_WAT,
        "executor": "slurm",
        "limits": {"fuel": FUEL, "timeout_ms": 60_000},
        "placement": {"remote_only": true},
    });
    let (mut running, mut done) = (Vec::new(), Vec::new());
    for _ in 0..jobs {
        let started = Instant::now();
        let answer = json_answer(http.post(format!("{api}/v1/jobs")).json(&body)).await?;
        let id = answer["job_id"]
            .as_str()
            .ok_or_else(|| fail(format!("submission refused: {answer}")))?
            .to_owned();
        // The contract's Slurm job is named after it: watch the cluster for it.
        let mut seen_running = None;
        let job = loop {
            let job = json_answer(http.get(format!("{api}/v1/jobs/{id}"))).await?;
            if matches!(job["state"].as_str(), Some("succeeded" | "failed")) {
                break job;
            }
            if seen_running.is_none()
                && let Some(contract) = job["contract_id"].as_str()
                && running_on_cluster(cluster, contract).await?
            {
                seen_running = Some(started.elapsed());
            }
            tokio::time::sleep(POLL).await;
        };
        let finished = started.elapsed();
        if job["state"] != "succeeded" || job["usage"]["cluster"].is_null() {
            return Err(fail(format!(
                "the mesh's job did not run on the cluster: {job}"
            )));
        }
        done.push(finished);
        running.push(seen_running.unwrap_or(finished));
    }
    Ok(Mesh {
        running: Samples::new(running),
        done: Samples::new(done),
    })
}

/// Whether the cluster runs the Slurm job of `contract` (hex) now.
async fn running_on_cluster(cluster: &Cluster, contract: &str) -> Result<bool, BenchError> {
    let Ok(hash) = contract.parse::<Hash32>() else {
        return Ok(false);
    };
    let name = crate::slurm::job_name(ContractId(hash));
    let jobs = cluster
        .client()
        .jobs()
        .await
        .map_err(|error| BenchError::scenario(SCENARIO, error))?;
    Ok(jobs
        .iter()
        .any(|job| job.name == name && job.state == "RUNNING"))
}
