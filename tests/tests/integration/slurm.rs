//! A data center's Slurm cluster behind node B, used by node A through the mesh, all real: the
//! cluster of `scripts/slurm-cluster.sh` (slurmctld, two slurmd, slurmdbd on MariaDB,
//! slurmrestd with JWT), two `suanli run` processes, and `suanli exec` on the compute nodes.
//!
//! One test, in order, on one cluster: a job's result, receipt and `sacct` agree; a 20-task
//! array completes; cancelling a job fails its contract on both sides and cancels its Slurm
//! job; a plain batch script runs for a node B lists and is declined for one it does not;
//! `kill -9` of B while the cluster runs its job, then a restart, ends the contract once, the
//! same way on both sides.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use suanli_tests::process::{RunningNode, suanli};
use suanli_tests::slurm::{SlurmLab, skipped};

/// Spins ITERATIONS times (CPU time the cluster accounts), then prints its arguments
/// (`job\0ARG\0…`).
const SPIN_AND_ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $i i64)
    (loop $spin
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $spin (i64.lt_u (local.get $i) (i64.const ITERATIONS))))
    (drop (call $sizes (i32.const 16) (i32.const 20)))
    (drop (call $args (i32.const 1024) (i32.const 4096)))
    (i32.store (i32.const 0) (i32.const 4096))
    (i32.store (i32.const 4) (i32.load (i32.const 20)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

fn start(dir: &Path, extra: &[String]) -> RunningNode {
    RunningNode::start(dir, extra, Duration::from_secs(60))
}

fn get(api: &str, path: &str) -> Value {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
        .get(format!("{api}{path}"))
        .send()
        .and_then(|response| response.json())
        .unwrap_or(Value::Null)
}

fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn module(dir: &Path, iterations: u64) -> PathBuf {
    let path = dir.join(format!("spin-{iterations}.wat"));
    std::fs::write(
        &path,
        SPIN_AND_ECHO.replace("ITERATIONS", &iterations.to_string()),
    )
    .expect("write module");
    path
}

/// `suanli job submit ARGS… --json` against `api`: the summary it prints.
fn submit(api: &str, module: &Path, args: &[&str]) -> Value {
    let mut all = vec!["job", "submit", "--api", api, "--json"];
    all.extend_from_slice(args);
    let module = module.display().to_string();
    all.push(&module);
    let output = suanli(&all);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "job submit {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `job\0ARG\0` for each task's argument, in task order.
fn echoed(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .map(|arg| format!("job\0{arg}\0"))
        .collect()
}

/// The accounting `sacct` holds of Slurm job `id` (every task of an array).
fn sacct(lab: &SlurmLab, id: u64) -> Value {
    let text = lab.command("sacct", &["-j", &id.to_string(), "--json"]);
    serde_json::from_str(&text).expect("sacct --json")
}

/// CPU time of every step of every record, milliseconds (what the receipt bills).
fn sacct_cpu_ms(accounting: &Value) -> u64 {
    let micros = |time: &Value| {
        time["seconds"].as_u64().unwrap_or(0) * 1_000_000
            + time["microseconds"].as_u64().unwrap_or(0)
    };
    let total: u64 = accounting["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .flat_map(|job| job["steps"].as_array().cloned().unwrap_or_default())
        .map(|step| micros(&step["time"]["user"]) + micros(&step["time"]["system"]))
        .sum();
    total / 1000
}

/// The receipts of `contract` in a node's ledger.
fn receipts(api: &str, contract: &str) -> Vec<Value> {
    get(api, "/v1/ledger?from=0&limit=1000")["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| entry["kind"] == "receipt" && entry["contract_id"] == contract)
        .collect()
}

fn kinds_of(api: &str, contract: &str) -> Vec<String> {
    get(api, "/v1/ledger?from=0&limit=1000")["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| entry["contract_id"] == contract)
        .map(|entry| entry["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The Slurm jobs named after `contract` (`suanli-<contract>`), as `sacct` lists them.
fn slurm_jobs_of(lab: &SlurmLab, contract: &str) -> Vec<String> {
    lab.command(
        "sacct",
        &[
            "-X",
            "-n",
            "-P",
            "-a",
            "--name",
            &format!("suanli-{contract}"),
            "-o",
            "JobIDRaw,State",
        ],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// What the cluster's accounting holds under the Slurm job name of each contract, through the
/// node's own REST client.
fn accounted_by_name(lab: &SlurmLab, contracts: &[&str]) -> Vec<Option<u64>> {
    use suanli_node::slurm::rest::{Auth, Client};
    let key = std::fs::read(lab.var("SUANLI_SLURM_JWT_KEY")).expect("jwt key");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = Client::connect(
            lab.var("SUANLI_SLURMRESTD"),
            lab.var("SUANLI_SLURM_USER"),
            Auth::Key(key),
        )
        .await
        .expect("slurmrestd");
        let mut found = Vec::new();
        for contract in contracts {
            let name = format!("suanli-{contract}");
            found.push(client.accounted_job_named(&name).await.expect("accounting"));
        }
        found
    })
}

/// Waits until job `job_id` submitted to `api` has a contract whose Slurm job runs; the
/// contract id.
fn running_on_slurm(lab: &SlurmLab, api: &str, job_id: &str) -> String {
    let contract = wait_for("the job has a contract", Duration::from_secs(30), || {
        get(api, &format!("/v1/jobs/{job_id}"))["contract_id"]
            .as_str()
            .map(str::to_owned)
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|line: &String| line.ends_with("|RUNNING")) {
        assert!(
            Instant::now() < deadline,
            "Slurm never ran the job: sacct lists {seen:?}; the job: {}",
            get(api, &format!("/v1/jobs/{job_id}"))
        );
        std::thread::sleep(Duration::from_millis(200));
        seen = slurm_jobs_of(lab, &contract);
    }
    contract
}

#[test]
fn a_nodes_slurm_cluster_runs_mesh_jobs() {
    if skipped() {
        return;
    }
    let lab = SlurmLab::up();
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    // B runs A's batch scripts (not C's), and takes jobs of up to 200 G fuel (the long one
    // below spins for several seconds).
    let init = suanli(&["init", "--data-dir", &dirs[0].path().display().to_string()]);
    let a_id = String::from_utf8_lossy(&init.stdout).trim().to_owned();
    let config = format!(
        "{}batch_requesters = [\"{a_id}\"]\n[provider]\nmax_fuel = 200000000000\n",
        lab.node_config()
    );
    std::fs::write(dirs[1].path().join("config.toml"), config).unwrap();
    let mut b = start(dirs[1].path(), &[]);
    let a = start(dirs[0].path(), &b.bootstrap_args());
    // C gives up placing a job after 5 s (its batch script is declined by the only cluster).
    std::fs::write(
        dirs[2].path().join("config.toml"),
        "[jobs]\nplacement_timeout_secs = 5\n",
    )
    .unwrap();
    let c = start(dirs[2].path(), &b.bootstrap_args());
    assert_eq!(a.id, a_id);

    // A sees that B fronts a cluster, and how big it is.
    let cluster = wait_for("A sees B's cluster", Duration::from_secs(30), || {
        get(&a.api, "/v1/mesh")
            .as_array()?
            .iter()
            .find(|node| node["node_id"] == b.id.as_str())
            .and_then(|node| node.get("cluster").cloned())
    });
    assert!(
        cluster["scheduler"]
            .as_str()
            .is_some_and(|s| s.starts_with("slurm 22.05")),
        "{cluster}"
    );
    assert_eq!(cluster["nodes"], 2);
    assert_eq!(cluster["total"]["cpu_cores"], 4);
    assert_eq!(cluster["partitions"], serde_json::json!(["mesh"]));
    let mesh = suanli(&["mesh", "--api", &a.api]);
    let table = String::from_utf8_lossy(&mesh.stdout);
    assert!(
        table.contains("slurm 22.05") && table.contains("2 nodes"),
        "{table}"
    );

    // 1. One job from A runs on B's cluster; the result, the receipt's Slurm usage and sacct
    // agree.
    let spin = module(dirs[0].path(), 300_000_000);
    let job = submit(
        &a.api,
        &spin,
        &[
            "--wait",
            "--executor",
            "slurm",
            "--arg",
            "{task}",
            "--fuel",
            "10000000000",
        ],
    );
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["provider"], b.id.as_str());
    assert_eq!(job["stdout"], echoed(["0".to_owned()]));
    let usage = &job["usage"]["cluster"];
    let slurm_id = usage["job_id"].as_u64().expect("Slurm job id");
    let accounting = sacct(&lab, slurm_id);
    let record = &accounting["jobs"][0];
    assert_eq!(record["state"]["current"], "COMPLETED");
    assert_eq!(
        usage["cpu_ms"].as_u64(),
        Some(sacct_cpu_ms(&accounting)),
        "{usage} vs {accounting:#}"
    );
    assert!(usage["cpu_ms"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["elapsed_ms"].as_u64(),
        record["time"]["elapsed"].as_u64().map(|secs| secs * 1000)
    );
    assert_eq!(usage["cpus"], 1);
    assert!(
        usage["peak_memory_bytes"].as_u64().unwrap() > 0,
        "{usage} vs {:#}",
        record["steps"]
    );
    // The receipt both ledgers hold says the same, and the CPU-seconds are billed.
    let contract = job["contract_id"].as_str().expect("contract").to_owned();
    for api in [&a.api, &b.api] {
        let receipts = receipts(api, &contract);
        assert_eq!(receipts.len(), 1, "{receipts:#?}");
        assert_eq!(&receipts[0]["cluster"], usage);
    }
    assert!(job["cost"].as_u64().unwrap() >= usage["cpu_ms"].as_u64().unwrap());

    // 2. Twenty tasks are one job array spread over the cluster.
    let tasks = submit(
        &a.api,
        &module(dirs[0].path(), 1_000),
        &["--wait", "--tasks", "20", "--arg", "{task}"],
    );
    assert_eq!(tasks["state"], "succeeded", "{tasks:#}");
    assert_eq!(tasks["stdout"], echoed((0..20).map(|i| i.to_string())));
    let array_id = tasks["usage"]["cluster"]["job_id"].as_u64().unwrap();
    assert_eq!(tasks["usage"]["cluster"]["cpus"], 20);
    let array = sacct(&lab, array_id);
    let records = array["jobs"].as_array().unwrap();
    assert_eq!(records.len(), 20);
    assert!(
        records
            .iter()
            .all(|job| job["state"]["current"] == "COMPLETED"
                && job["array"]["job_id"] == array_id)
    );

    // A provider that crashed between submitting and recording a job's id finds it by name, in
    // the accounting too once the controller has forgotten it: both jobs above are found there.
    let single_contract = job["contract_id"].as_str().unwrap();
    let array_contract = tasks["contract_id"].as_str().unwrap();
    let accounted = accounted_by_name(&lab, &[single_contract, array_contract]);
    assert_eq!(accounted, [Some(slurm_id), Some(array_id)]);
    assert_eq!(accounted_by_name(&lab, &["0".repeat(64).as_str()]), [None]);

    // 3. Cancelling the job fails its contract on both sides and cancels the Slurm job.
    // Long enough (about 8 fuel per iteration, several seconds on any machine) that the test
    // sees it run on the cluster before it ends.
    let long = module(dirs[0].path(), 20_000_000_000);
    let long_args = [
        "--executor",
        "slurm",
        "--arg",
        "x",
        "--fuel",
        "200000000000",
        "--timeout",
        "60",
    ];
    let doomed = submit(&a.api, &long, &long_args);
    let job_id = doomed["job_id"].as_str().unwrap().to_owned();
    let contract = running_on_slurm(&lab, &a.api, &job_id);
    let cancel = suanli(&["job", "cancel", "--api", &a.api, &job_id]);
    assert!(cancel.status.success(), "{cancel:?}");
    let ended = wait_for("the job ends", Duration::from_secs(60), || {
        let job = get(&a.api, &format!("/v1/jobs/{job_id}?wait_ms=5000"));
        matches!(job["state"].as_str(), Some("succeeded" | "failed")).then_some(job)
    });
    assert_eq!(ended["state"], "failed", "{ended:#}");
    assert_eq!(ended["error"]["code"], "cancelled", "{ended:#}");
    wait_for("Slurm cancels the job", Duration::from_secs(30), || {
        let runs = slurm_jobs_of(&lab, &contract);
        (runs.len() == 1 && runs[0].contains("|CANCELLED")).then_some(())
    });
    for api in [&a.api, &b.api] {
        wait_for("the contract fails here", Duration::from_secs(30), || {
            kinds_of(api, &contract)
                .contains(&"failure".to_owned())
                .then_some(())
        });
        assert!(receipts(api, &contract).is_empty());
    }
    // Cancelling an ended job is refused with a reason.
    let again = suanli(&["job", "cancel", "--api", &a.api, &job_id]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("409"),
        "{again:?}"
    );

    // 4. A plain batch script, from a node B lists: three tasks, each with its index, its
    // arguments and the job's stdin, run as they are; from a node B does not list, declined.
    let script = dirs[0].path().join("tasks.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nread line\necho \"task $SUANLI_TASK of $SUANLI_TASKS: $1, $line\"\n",
    )
    .unwrap();
    let stdin = dirs[0].path().join("stdin.txt");
    std::fs::write(&stdin, "hello\n").unwrap();
    let stdin = stdin.display().to_string();
    let batch_args = [
        "--wait",
        "--executor",
        "batch",
        "--tasks",
        "3",
        "--arg",
        "part-{task}",
        "--stdin",
        &stdin,
    ];
    let scripted = submit(&a.api, &script, &batch_args);
    assert_eq!(scripted["state"], "succeeded", "{scripted:#}");
    assert_eq!(
        scripted["stdout"],
        (0..3)
            .map(|i| format!("task {i} of 3: part-{i}, hello\n"))
            .collect::<String>()
    );
    assert_eq!(scripted["usage"]["fuel"], 0);
    assert_eq!(scripted["usage"]["cluster"]["cpus"], 3);
    let refused = submit(&c.api, &script, &batch_args);
    assert_eq!(refused["state"], "failed", "{refused:#}");
    assert_eq!(refused["error"]["code"], "no_provider", "{refused:#}");
    assert!(
        refused["attempts"]
            .as_array()
            .is_some_and(|attempts| attempts
                .iter()
                .all(|attempt| attempt["reason"] == "executor_unsupported")),
        "{refused:#}"
    );

    // 5. kill -9 of B while the cluster runs the job, then a restart: B re-attaches to the
    // Slurm job (it is not submitted again), and the contract settles on both sides.
    let pending = submit(&a.api, &long, &long_args);
    let job_id = pending["job_id"].as_str().unwrap().to_owned();
    let contract = running_on_slurm(&lab, &a.api, &job_id);
    b.process.child.kill().unwrap();
    b.process.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let b = start(dirs[1].path(), &[]);
    let done = wait_for("the job ends", Duration::from_secs(120), || {
        let job = get(&a.api, &format!("/v1/jobs/{job_id}?wait_ms=5000"));
        matches!(job["state"].as_str(), Some("succeeded" | "failed")).then_some(job)
    });
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["contract_id"], contract.as_str(), "{done:#}");
    let runs = slurm_jobs_of(&lab, &contract);
    assert_eq!(runs.len(), 1, "submitted once: {runs:?}");
    assert!(runs[0].ends_with("|COMPLETED"), "{runs:?}");
    for api in [&a.api, &b.api] {
        wait_for("the contract settles here", Duration::from_secs(30), || {
            let kinds = kinds_of(api, &contract);
            kinds.contains(&"settlement".to_owned()).then_some(())
        });
        assert_eq!(receipts(api, &contract).len(), 1);
        assert!(!kinds_of(api, &contract).contains(&"failure".to_owned()));
    }
}
