//! The real `suanli` binary: `suanli run` processes on loopback, driven through the CLI and HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use suanli_tests::process::{NodeProcess, p2p_addr, suanli, suanli_binary};
use tempfile::TempDir;

const JOBS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/jobs");

fn mesh_json(api: &str) -> Option<Vec<Value>> {
    let output = suanli(&["mesh", "--json", "--api", api]);
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice::<Value>(&output.stdout)
        .ok()?
        .as_array()
        .cloned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A mesh of `n` node processes; the first is everyone's bootstrap peer.
struct ProcessMesh {
    dirs: Vec<TempDir>,
    nodes: Vec<NodeProcess>,
    apis: Vec<String>,
    ids: Vec<String>,
}

impl ProcessMesh {
    fn start(n: usize) -> ProcessMesh {
        let dirs: Vec<TempDir> = (0..n)
            .map(|_| tempfile::tempdir().expect("temp dir"))
            .collect();
        let mut first = NodeProcess::spawn(dirs[0].path(), &[]);
        let info = first.wait_ready(Duration::from_secs(30));
        let bootstrap = p2p_addr(&info);
        let mut nodes = vec![first];
        for dir in &dirs[1..] {
            nodes.push(NodeProcess::spawn(
                dir.path(),
                &["--bootstrap".into(), bootstrap.clone()],
            ));
        }
        let mut apis = Vec::new();
        let mut ids = Vec::new();
        for node in &mut nodes {
            let info = node.wait_ready(Duration::from_secs(30));
            apis.push(format!("http://{}", info["api"].as_str().expect("api")));
            ids.push(info["node_id"].as_str().expect("id").to_owned());
        }
        let mesh = ProcessMesh {
            dirs,
            nodes,
            apis,
            ids,
        };
        mesh.wait_converged();
        mesh
    }

    fn wait_converged(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for api in &self.apis {
            loop {
                let mesh = mesh_json(api).unwrap_or_default();
                if mesh.len() == self.apis.len() {
                    for node in &mesh {
                        for field in [
                            "node_id",
                            "age_ms",
                            "region",
                            "cpu_cores",
                            "memory_bytes",
                            "gpus",
                            "executors",
                            "prices",
                            "load",
                        ] {
                            assert!(
                                node.get(field).is_some(),
                                "mesh entry lacks {field}: {node}"
                            );
                        }
                    }
                    break;
                }
                assert!(Instant::now() < deadline, "{api} sees {} nodes", mesh.len());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn three_processes_see_each_other_through_the_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    // `suanli init` prints the id; `suanli id` agrees; a second init is refused.
    let init = suanli(&["init", "--data-dir", path_str(dir.path())]);
    assert!(init.status.success(), "{init:?}");
    let id = String::from_utf8_lossy(&init.stdout).trim().to_owned();
    assert!(id.starts_with("12D3KooW"), "{id}");
    let again = suanli(&["id", "--data-dir", path_str(dir.path())]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), id);
    let refused = suanli(&["init", "--data-dir", path_str(dir.path())]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));

    let mut mesh = ProcessMesh::start(3);
    let peers = suanli(&["peers", "--json", "--api", &mesh.apis[0]]);
    let peers: Value = serde_json::from_slice(&peers.stdout).expect("peers json");
    assert!(peers.as_array().is_some_and(|peers| {
        peers.len() >= 2
            && peers
                .iter()
                .all(|p| p["node_id"].is_string() && p["addrs"].is_array())
    }));
    let status = suanli(&["status", "--api", &mesh.apis[0]]);
    assert!(String::from_utf8_lossy(&status.stdout).contains(&mesh.ids[0]));

    for node in &mut mesh.nodes {
        let status = node.terminate();
        assert!(status.success(), "clean exit on SIGTERM: {status}");
        assert!(!node.data_dir.join("run.json").exists());
    }
    // Unreachable node: one line, non-zero exit.
    let down = suanli(&["mesh", "--api", &mesh.apis[0]]);
    assert!(!down.status.success());
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}

fn job_json(api: &str, args: &[&str]) -> (bool, Value) {
    let mut command = vec!["job", "submit", "--api", api, "--json"];
    command.extend_from_slice(args);
    let output = suanli(&command);
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&output.stdout)));
    (output.status.success(), json)
}

#[test]
fn the_cli_runs_jobs_on_a_mesh_of_processes() {
    let mut mesh = ProcessMesh::start(3);
    let api = mesh.apis[0].clone();
    let hello = format!("{JOBS}/hello.wat");

    // --wait prints the job's stdout and exits 0.
    let plain = suanli(&["job", "submit", &hello, "--remote", "--wait", "--api", &api]);
    assert!(plain.status.success(), "{plain:?}");
    assert_eq!(plain.stdout, b"hello from suanli\n");

    // --json: one object with the documented fields; it ran on another node.
    let (ok, job) = job_json(&api, &[&hello, "--remote", "--wait"]);
    assert!(ok, "{job}");
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["stdout"], "hello from suanli\n");
    assert_eq!(job["exit_code"], 0);
    for field in [
        "job_id",
        "provider",
        "contract_id",
        "stdout_base64",
        "error",
        "usage",
        "cost",
    ] {
        assert!(job.get(field).is_some(), "missing {field}: {job}");
    }
    assert!(job["usage"]["fuel"].as_u64().is_some_and(|fuel| fuel > 0));
    assert!(job["usage"]["wall_ms"].is_u64());
    assert_ne!(job["provider"], mesh.ids[0].as_str());

    // Arguments reach the job.
    let (ok, job) = job_json(
        &api,
        &[
            &format!("{JOBS}/args.wat"),
            "--arg",
            "one",
            "--arg",
            "two",
            "--wait",
        ],
    );
    assert!(ok, "{job}");
    assert_eq!(job["stdout"].as_str().map(str::trim), Some("one two"));

    // A failing job: non-zero exit, still one JSON object, with the reason.
    let (ok, job) = job_json(&api, &[&format!("{JOBS}/trap.wat"), "--wait"]);
    assert!(!ok);
    assert_eq!(job["state"], "failed");
    assert_eq!(job["error"]["code"], "trap");
    let failed = suanli(&[
        "job",
        "submit",
        &format!("{JOBS}/spin.wat"),
        "--fuel",
        "10000000",
        "--wait",
        "--api",
        &api,
    ]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("fuel_exhausted"));

    // status, output and list name the same ids.
    let id = job["job_id"].as_str().expect("id").to_owned();
    let status = suanli(&["job", "status", &id, "--json", "--api", &api]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(status["job_id"], id.as_str());
    let list = suanli(&["job", "list", "--json", "--api", &api]);
    let list: Value = serde_json::from_slice(&list.stdout).expect("json");
    assert!(list["jobs"].as_array().is_some_and(|jobs| jobs.len() >= 5));

    // Every ledger verifies (a node no job was placed on has an empty one), and the requester
    // owes its providers.
    for (index, api) in mesh.apis.iter().enumerate() {
        let verify = suanli(&["ledger", "verify", "--json", "--api", api]);
        assert!(verify.status.success(), "{verify:?}");
        let report: Value = serde_json::from_slice(&verify.stdout).expect("json");
        assert_eq!(report["ok"], true);
        assert!(report["head"].is_string());
        if index == 0 {
            assert!(
                report["entries"].as_u64().is_some_and(|n| n > 0),
                "{report}"
            );
        }
    }
    let balances = suanli(&["balances", "--json", "--api", &api]);
    let balances: Value = serde_json::from_slice(&balances.stdout).expect("json");
    assert!(balances.as_array().is_some_and(|b| {
        b.iter()
            .all(|b| b["net_micro"].as_i64().is_some_and(|n| n < 0))
    }));

    // Transparency: the signed checkpoint, and an audit of every provider that agrees.
    let note = suanli(&["ledger", "checkpoint", "--api", &api]);
    assert!(note.status.success(), "{note:?}");
    let note = String::from_utf8_lossy(&note.stdout).into_owned();
    assert_eq!(note.lines().next(), Some(mesh.ids[0].as_str()));
    let providers: BTreeSet<String> = ledger_of(&api)
        .iter()
        .filter(|entry| entry["kind"] == "settlement")
        .filter_map(|entry| entry["provider"].as_str().map(str::to_owned))
        .filter(|provider| provider != &mesh.ids[0])
        .collect();
    assert!(!providers.is_empty());
    for provider in &providers {
        let audit = suanli(&[
            "ledger", "audit", "--peer", provider, "--json", "--api", &api,
        ]);
        assert!(audit.status.success(), "{audit:?}");
        let report: Value = serde_json::from_slice(&audit.stdout).expect("json");
        assert_eq!(report["verdict"], "agree", "{report}");
        assert!(report["agreements"].as_u64().is_some_and(|n| n >= 3));
    }
    let unknown_peer = suanli(&["ledger", "audit", "--peer", "not-a-node", "--api", &api]);
    assert!(!unknown_peer.status.success());
    assert!(String::from_utf8_lossy(&unknown_peer.stderr).contains("peer"));
    // Proofs and exports, checked offline by the same binary with nothing but the files.
    let scratch = tempfile::tempdir().expect("temp dir");
    let proof = suanli(&["ledger", "proof", "inclusion", "0", "--api", &api]);
    assert!(proof.status.success(), "{proof:?}");
    let proof_file = scratch.path().join("proof.json");
    std::fs::write(&proof_file, &proof.stdout).expect("write");
    let checked = suanli(&["ledger", "proof", "verify", path_str(&proof_file)]);
    assert!(checked.status.success(), "{checked:?}");
    let jsonl = scratch.path().join("ledger.jsonl");
    let tiles = scratch.path().join("tiles");
    for (format, out) in [("jsonl", &jsonl), ("tiles", &tiles)] {
        let export = suanli(&[
            "ledger",
            "export",
            "--format",
            format,
            "--out",
            path_str(out),
            "--api",
            &api,
        ]);
        assert!(export.status.success(), "{export:?}");
        let verified = suanli(&[
            "ledger",
            "verify",
            "--export",
            path_str(out),
            "--node",
            &mesh.ids[0],
        ]);
        assert!(verified.status.success(), "{format}: {verified:?}");
    }

    // An equivocation "proof" that proves nothing is refused offline.
    let bogus = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        bogus.path(),
        serde_json::json!({"first": note, "second": note, "fork": null}).to_string(),
    )
    .expect("write");
    let refused = suanli(&["ledger", "verify-equivocation", path_str(bogus.path())]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stdout).contains("INVALID"));

    // Bad input over HTTP: clear 4xx JSON errors.
    let http = reqwest::blocking::Client::new();
    let post = |body: String| {
        http.post(format!("{api}/v1/jobs"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("http")
    };
    let bad_module = post(r#"{"module_wat": "(module (func"}"#.into());
    assert_eq!(bad_module.status(), 400);
    let body: Value = bad_module.json().expect("json");
    assert_eq!(body["error"]["code"], "invalid_module");
    assert_eq!(post("{not json".into()).status(), 400);
    let (status, body) = announce_huge_body(&api, 30 * 1024 * 1024);
    assert_eq!(status, 413, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["code"], "too_large");
    // A fresh connection: the server closes the one whose oversized body it refused unread.
    let unknown =
        reqwest::blocking::get(format!("{api}/v1/jobs/{}", "0".repeat(64))).expect("http");
    assert_eq!(unknown.status(), 404);
    // A path that is not UTF-8 once decoded: a 400 with a JSON body, like every other error.
    for path in [
        "/v1/jobs/%FF",
        "/v1/jobs/%FF/output",
        "/v1/ledger/entry/%C3%28",
    ] {
        let bad_path = reqwest::blocking::get(format!("{api}{path}")).expect("http");
        assert_eq!(bad_path.status(), 400, "{path}");
        let body: Value = bad_path.json().expect("json");
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
    }
    // A compile bomb (200,000 empty functions) is refused before it is compiled.
    let bomb = format!(
        r#"{{"module_wat": "(module (func (export \"_start\")) {})"}}"#,
        "(func)".repeat(200_000)
    );
    let too_complex = reqwest::blocking::Client::new()
        .post(format!("{api}/v1/jobs"))
        .header("content-type", "application/json")
        .body(bomb)
        .send()
        .expect("http");
    assert_eq!(too_complex.status(), 400);
    let body: Value = too_complex.json().expect("json");
    assert_eq!(body["error"]["code"], "module_too_complex");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("functions")),
        "{body}"
    );

    // Offline: a stopped node's ledger verifies from its data dir alone. The requester's: it
    // holds every contract above (a given provider may not have been picked for any).
    let data_dir = mesh.dirs[0].path().to_owned();
    assert!(mesh.nodes[0].terminate().success());
    let offline = suanli(&[
        "ledger",
        "verify",
        "--json",
        "--data-dir",
        path_str(&data_dir),
    ]);
    assert!(offline.status.success(), "{offline:?}");
    let shown = suanli(&[
        "ledger",
        "show",
        "--json",
        "--data-dir",
        path_str(&data_dir),
    ]);
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert!(shown["entries"].as_array().is_some_and(|e| !e.is_empty()));
}

/// POSTs to `/v1/jobs` a request that announces a `length`-byte body but sends only its head,
/// and returns the status and body of the answer: the server refuses it from the announced
/// length alone (body bytes it would not read could turn its close into a reset, which can
/// discard the answer before it is read).
fn announce_huge_body(api: &str, length: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let address = api.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        stream,
        "POST /v1/jobs HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n"
    )
    .expect("write the head");
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    // Up to the end of the first answer: its head, then content-length bytes.
    let (head, body) = loop {
        let read = stream.read(&mut buffer).expect("read the answer");
        assert!(read > 0, "closed before answering: {answer:?}");
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .expect("a content-length");
        if body.len() >= length {
            break (head.to_owned(), body.to_owned());
        }
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
    (status, body)
}

/// Every entry of a node's ledger through `suanli ledger show --json`.
fn ledger_of(api: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    loop {
        let from = entries.len().to_string();
        let output = suanli(&[
            "ledger", "show", "--json", "--from", &from, "--limit", "1000", "--api", api,
        ]);
        assert!(output.status.success(), "{output:?}");
        let page: Value = serde_json::from_slice(&output.stdout).expect("json");
        let page = page["entries"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return entries;
        }
        entries.extend(page);
    }
}

fn contracts_of_kind(entries: &[Value], kind: &str, requester: &str) -> BTreeSet<String> {
    entries
        .iter()
        .filter(|e| e["kind"] == kind && e["requester"] == requester)
        .filter_map(|e| e["contract_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_node_killed_during_a_stream_of_jobs_keeps_every_acknowledged_entry() {
    let mut mesh = ProcessMesh::start(2);
    let (a_api, b_api) = (mesh.apis[0].clone(), mesh.apis[1].clone());
    let a_id = mesh.ids[0].clone();
    let hello = std::fs::read_to_string(format!("{JOBS}/hello.wat")).expect("hello.wat");
    // A stream of remote jobs into A, then kill -9 A in the middle of it.
    let http = reqwest::blocking::Client::new();
    let body = serde_json::json!({ "module_wat": hello, "placement": { "remote_only": true } });
    let started = Instant::now();
    let mut submitted = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        if http
            .post(format!("{a_api}/v1/jobs"))
            .json(&body)
            .send()
            .is_ok_and(|r| r.status() == 202)
        {
            submitted += 1;
        }
    }
    mesh.nodes[0].child.kill().expect("kill -9");
    let _ = mesh.nodes[0].child.wait();
    assert!(submitted > 0);

    // Restart A on the same data dir.
    let a_dir = mesh.dirs[0].path().to_owned();
    let _ = std::fs::remove_file(a_dir.join("run.json"));
    let mut restarted = NodeProcess::spawn(&a_dir, &[]);
    let info = restarted.wait_ready(Duration::from_secs(30));
    assert_eq!(info["node_id"], a_id.as_str());
    let a_api = format!("http://{}", info["api"].as_str().expect("api"));

    let verify = suanli(&["ledger", "verify", "--json", "--api", &a_api]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // Everything A acknowledged to B is in A's ledger: A sends Execute only after its contract
    // is durable, and answers a delivery only after receipt and settlement are durable.
    std::thread::sleep(Duration::from_millis(500));
    let a_entries = ledger_of(&a_api);
    let b_entries = ledger_of(&b_api);
    let executed_for_a = contracts_of_kind(&b_entries, "receipt", &a_id);
    let settled_for_a = contracts_of_kind(&b_entries, "settlement", &a_id);
    assert!(
        !settled_for_a.is_empty(),
        "some jobs settled before the kill"
    );
    let a_contracts = contracts_of_kind(&a_entries, "contract", &a_id);
    let a_settled = contracts_of_kind(&a_entries, "settlement", &a_id);
    assert!(
        executed_for_a.is_subset(&a_contracts),
        "contracts B ran are in A's ledger"
    );
    assert!(
        settled_for_a.is_subset(&a_settled),
        "settlements B holds are in A's ledger"
    );
    assert!(restarted.terminate().success());
    // Interrupted jobs are closed, not left dangling.
    drop(restarted);
}

/// `suanli bench floor --quick --json` runs, prints one well-formed figure per line and leaves
/// no temporary directory behind. Smoke test only: no timing is checked, ever.
#[test]
fn bench_floor_quick_prints_well_formed_json_lines() {
    let base = TempDir::new().expect("temp dir");
    let output = suanli(&[
        "bench",
        "floor",
        "--quick",
        "--json",
        "--dir",
        path_str(base.path()),
    ]);
    assert!(
        output.status.success(),
        "suanli bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 5, "too few figures: {stdout}");
    for line in lines {
        let figure: Value = serde_json::from_str(line).expect("one JSON object per line");
        let keys: BTreeSet<&str> = figure
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "scenario",
                "metric",
                "value",
                "unit",
                "floor",
                "floor_metric",
                "ratio"
            ]),
            "{line}"
        );
        assert_eq!(figure["scenario"], "floor", "{line}");
        assert!(figure["value"].is_number(), "{line}");
    }
    // The run's temporary directory is gone.
    let left: Vec<_> = std::fs::read_dir(base.path()).expect("read dir").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The log lines (stderr) of `suanli init` with `format` (`None`: the default), at `info`.
fn init_logs(format: Option<&str>) -> String {
    let dir = TempDir::new().expect("temp dir");
    let mut command = std::process::Command::new(suanli_binary());
    if let Some(format) = format {
        command.args(["--log-format", format]);
    }
    let output = command
        .args(["init", "--data-dir", path_str(dir.path())])
        .env("RUST_LOG", "info")
        .output()
        .expect("run suanli init");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stderr).expect("utf-8 logs")
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_json_lines_when_asked() {
    // stderr is a pipe here: no colour codes.
    let text = init_logs(None);
    assert!(text.contains("initialised data dir"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes off a terminal: {text:?}"
    );

    let json = init_logs(Some("json"));
    let lines: Vec<Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per log line"))
        .collect();
    let line = lines
        .iter()
        .find(|line| line["message"] == "initialised data dir")
        .unwrap_or_else(|| panic!("no init line in {json}"));
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(line["path"].is_string(), "{line}");
    assert!(line["timestamp"].is_string(), "{line}");
    assert!(line["target"].is_string(), "{line}");

    // An unknown format is refused with a reason, before anything runs.
    let refused = suanli(&["--log-format", "xml", "id"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("xml"),
        "{refused:?}"
    );
}

/// `suanli run` processes whose data dir is under `dir`: the node processes a bench run started
/// there, each as its pid and command line.
fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let needle = path_str(dir);
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .filter(|(_, cmdline)| cmdline.contains(" run --data-dir ") && cmdline.contains(needle))
        .collect()
}

/// Sends `kill -SIGNAL pid`; whether it was delivered.
fn send_signal(name: &str, pid: u32) -> bool {
    std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `suanli ARGS…` with stdout and stderr in files of `logs`, stopping it after `limit`.
/// Returns its exit status and stdout; `signal` (e.g. "INT") is sent to it once `when` holds.
/// `base` is the run's `--dir`: a run that overruns gets SIGTERM (it then stops its node
/// processes itself), SIGKILL a while later, and any node process still under `base` gets
/// SIGKILL, before the test fails (and its temporary directories are removed).
fn bench_process(
    args: &[&str],
    base: &Path,
    logs: &Path,
    limit: Duration,
    mut signal: Option<(&str, &dyn Fn() -> bool)>,
) -> (std::process::ExitStatus, String, String) {
    let stdout = logs.join("stdout");
    let stderr = logs.join("stderr");
    let mut child = std::process::Command::new(suanli_tests::process::suanli_binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn suanli bench");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for suanli bench") {
            break status;
        }
        if let Some((name, when)) = signal
            && when()
        {
            assert!(send_signal(name, child.id()), "kill -{name} {}", child.id());
            signal = None;
        }
        if Instant::now() > deadline {
            send_signal("TERM", child.id());
            let grace = Instant::now() + Duration::from_secs(10);
            while child.try_wait().is_ok_and(|status| status.is_none()) && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            for (pid, _) in processes_under(base) {
                send_signal("KILL", pid);
            }
            panic!(
                "suanli bench still running after {limit:?}: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status,
        std::fs::read_to_string(&stdout).expect("stdout"),
        std::fs::read_to_string(&stderr).expect("stderr"),
    )
}

/// `suanli bench crash --quick --json` kills and restarts real node processes, prints one
/// well-formed figure per line, and leaves neither a temporary directory nor a process behind;
/// interrupted with Ctrl-C once its node processes run, it stops them and removes
/// its directory too. Smoke test only: no timing is checked, ever.
#[test]
fn bench_crash_quick_prints_well_formed_json_lines_and_leaves_nothing_behind() {
    let logs = TempDir::new().expect("temp dir");
    let base = TempDir::new().expect("temp dir");
    let (status, stdout, stderr) = bench_process(
        &[
            "bench",
            "crash",
            "--quick",
            "--json",
            "--dir",
            path_str(base.path()),
        ],
        base.path(),
        logs.path(),
        Duration::from_secs(300),
        None,
    );
    assert!(status.success(), "suanli bench crash failed: {stderr}");
    let mut figures = BTreeMap::new();
    for line in stdout.lines() {
        let figure: Value = serde_json::from_str(line).expect("one JSON object per line");
        let keys: BTreeSet<&str> = figure
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "scenario",
                "metric",
                "value",
                "unit",
                "floor",
                "floor_metric",
                "ratio"
            ]),
            "{line}"
        );
        assert_eq!(figure["scenario"], "crash", "{line}");
        let value = figure["value"].as_f64().expect("a number");
        figures.insert(
            figure["metric"].as_str().expect("a metric").to_owned(),
            value,
        );
    }
    // The counts the quick storm is made of (counts, not timings).
    assert_eq!(
        figures.get("jobs streamed in the storm"),
        Some(&100.0),
        "{stdout}"
    );
    let kills = figures
        .get("kills of the requester")
        .copied()
        .unwrap_or(0.0)
        + figures.get("kills of the provider").copied().unwrap_or(0.0);
    assert_eq!(kills, 5.0, "{stdout}");
    assert!(
        figures.contains_key("recovery after a restart p50"),
        "{stdout}"
    );
    assert!(
        figures.contains_key("settled jobs/s during the storm"),
        "{stdout}"
    );
    assert!(processes_under(base.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(base.path()).expect("read dir").collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // Ctrl-C once its node processes run.
    let started = || !processes_under(base.path()).is_empty();
    let (status, _, stderr) = bench_process(
        &["bench", "crash", "--quick", "--dir", path_str(base.path())],
        base.path(),
        logs.path(),
        Duration::from_secs(300),
        Some(("INT", &started)),
    );
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert_eq!(processes_under(base.path()), Vec::new());
    let left: Vec<_> = std::fs::read_dir(base.path()).expect("read dir").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
