//! `suanli devnet` and the web console: a three-node devnet of real processes, its console
//! driven in headless Chromium (`tests/browser/console.cjs`: the mesh shows all three nodes, a
//! job submitted with the CLI turns `succeeded` in the jobs view, the ledger view verifies an
//! inclusion proof), screenshots kept under `target/test-artefacts/console/`, and the devnet
//! stopped with SIGTERM leaving no node behind.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use suanli_tests::models::browser_test;
use suanli_tests::process::suanli_binary;
use tempfile::TempDir;

/// One node as `suanli devnet` printed it: its id and console URL.
#[derive(Debug)]
struct Printed {
    id: String,
    console: String,
}

/// `suanli devnet` in `dir`, killed if the test ends first.
struct Devnet {
    child: Child,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `suanli devnet --nodes N --dir DIR` and reads what it prints until it is ready.
fn start_devnet(dir: &Path, nodes: usize) -> (Devnet, Vec<Printed>) {
    let mut child = Command::new(suanli_binary())
        .args(["devnet", "--nodes", &nodes.to_string(), "--dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn suanli devnet");
    let stdout = child.stdout.take().expect("stdout");
    let devnet = Devnet { child };
    let mut printed = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("devnet output");
        if line.starts_with("Ctrl-C") {
            break;
        }
        if let Some(rest) = line.strip_prefix("node ") {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(fields.len(), 3, "{line}");
            printed.push(Printed {
                id: fields[1].to_owned(),
                console: fields[2].to_owned(),
            });
        }
    }
    assert_eq!(printed.len(), nodes, "{printed:?}");
    (devnet, printed)
}

/// Where tests keep what they leave for people to look at: `target/test-artefacts/NAME`.
fn artefacts(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/integration-… → target/test-artefacts/NAME
    let target = exe.ancestors().nth(3).expect("the target dir").to_owned();
    let dir = target.join("test-artefacts").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artefacts dir");
    dir
}

/// The pids of `suanli run` processes whose data dir is under `dir`.
fn nodes_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let dir = dir.to_string_lossy();
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let command = std::fs::read(entry.path().join("cmdline")).ok()?;
            let command = String::from_utf8_lossy(&command).replace('\0', " ");
            (command.contains(" run ") && command.contains(dir.as_ref())).then_some(pid)
        })
        .collect()
}

#[test]
fn a_devnet_console_shows_the_mesh_a_cli_job_and_a_verified_inclusion_proof() {
    let base = TempDir::new().expect("temp dir");
    let (mut devnet, printed) = start_devnet(base.path(), 3);
    let pids = nodes_under(base.path());
    assert_eq!(pids.len(), 3, "three node processes: {pids:?}");

    // Every node serves the console, its script and style, without a token.
    let http = reqwest::blocking::Client::new();
    for node in &printed {
        let page = http.get(&node.console).send().expect("GET /");
        assert_eq!(page.status(), 200);
        assert_eq!(
            page.headers()["content-type"],
            "text/html; charset=utf-8",
            "{}",
            node.console
        );
        assert!(page.headers().contains_key("content-security-policy"));
        let script = http
            .get(format!("{}console/app.js", node.console))
            .send()
            .expect("GET app.js");
        assert_eq!(script.status(), 200);
        let info: serde_json::Value = http
            .get(format!("{}v1/node", node.console))
            .send()
            .and_then(reqwest::blocking::Response::json)
            .expect("node info");
        assert_eq!(info["node_id"], node.id.as_str());
    }

    let screenshots = artefacts("console");
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs/hello.wat");
    let started = Instant::now();
    let output = browser_test()
        .arg("--suanli")
        .arg(suanli_binary())
        .arg("--module")
        .arg(&module)
        .arg("--out")
        .arg(&screenshots)
        .args(printed.iter().map(|node| node.console.as_str()))
        .output()
        .expect("run node tests/browser/console.cjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser test failed after {:?}:\n{stdout}\n{}",
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    for check in ["ok mesh", "ok jobs", "ok ledger", "ok page-errors"] {
        assert!(
            stdout.lines().any(|line| line.starts_with(check)),
            "{check} missing:\n{stdout}"
        );
    }
    for shot in ["mesh.png", "jobs.png", "ledger.png"] {
        let bytes = std::fs::read(screenshots.join(shot)).expect("a screenshot");
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }

    // SIGTERM stops the devnet and every node of it.
    let pid = devnet.child.id();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = devnet.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the devnet did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "devnet exited with {status}");
    assert!(
        nodes_under(base.path()).is_empty(),
        "nodes left running: {:?}",
        nodes_under(base.path())
    );
}
