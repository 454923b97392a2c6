//! The real `suanli` binary, run as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the `suanli` binary, built once per test run (a no-op when it is up to date).
pub fn suanli_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "suanli-node", "--bin", "suanli"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building suanli failed");
        // target/<profile>/deps/integration-… → target/<profile>/suanli
        let exe = std::env::current_exe().expect("test executable");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir");
        let binary = profile_dir.join(format!("suanli{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "{} missing", binary.display());
        binary
    })
}

/// The log filter of the nodes tests start: `SUANLI_TEST_NODE_LOG` (a `RUST_LOG` value, e.g.
/// `suanli_node=debug` to see why a test's nodes did what they did), else warnings only.
pub fn node_log_filter() -> String {
    std::env::var("SUANLI_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into())
}

/// Runs `suanli ARGS…` to completion.
pub fn suanli(args: &[&str]) -> Output {
    Command::new(suanli_binary())
        .args(args)
        .env_remove("SUANLI_API")
        .env_remove("SUANLI_TOKEN")
        .output()
        .expect("run suanli")
}

/// The TCP address with the node id (`…/tcp/PORT/p2p/ID`) of a node's `run.json`: what other
/// nodes bootstrap from.
pub fn p2p_addr(info: &Value) -> String {
    let tcp = info["listen_addrs"]
        .as_array()
        .and_then(|addrs| {
            addrs
                .iter()
                .filter_map(Value::as_str)
                .find(|a| a.contains("/tcp/"))
        })
        .expect("tcp address");
    format!("{tcp}/p2p/{}", info["node_id"].as_str().expect("node id"))
}

/// A `suanli run` process, stopped with SIGTERM (or killed) when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    pub child: Child,
    pub data_dir: PathBuf,
}

impl NodeProcess {
    /// Starts `suanli run --data-dir DIR` on loopback ports with `extra` arguments.
    pub fn spawn(data_dir: &Path, extra: &[String]) -> NodeProcess {
        let mut args: Vec<String> = ["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"]
            .map(str::to_owned)
            .to_vec();
        args.extend_from_slice(extra);
        NodeProcess::spawn_exact(data_dir, &args)
    }

    /// Starts `suanli run --data-dir DIR ARGS…` (the caller names listen and API addresses).
    pub fn spawn_exact(data_dir: &Path, args: &[String]) -> NodeProcess {
        // A node killed with SIGKILL leaves its run.json: readiness is the new one.
        let _ = std::fs::remove_file(data_dir.join("run.json"));
        let mut command = Command::new(suanli_binary());
        command
            .arg("run")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", node_log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = command.spawn().expect("spawn suanli run");
        NodeProcess {
            child,
            data_dir: data_dir.to_owned(),
        }
    }

    /// Waits for the node's `run.json` and returns it.
    pub fn wait_ready(&mut self, limit: Duration) -> Value {
        let path = self.data_dir.join("run.json");
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(info) = serde_json::from_str::<Value>(&text)
            {
                return info;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("suanli run exited early: {status}");
            }
            assert!(Instant::now() < deadline, "node not ready after {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait for killed node");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A ready `suanli run` process with what clients and other nodes need of it.
#[derive(Debug)]
pub struct RunningNode {
    pub process: NodeProcess,
    /// `http://HOST:PORT` of its API.
    pub api: String,
    pub id: String,
    /// Its TCP address with its id, to bootstrap from.
    pub p2p: String,
}

impl RunningNode {
    /// Spawns `suanli run` in `dir` with `extra` arguments ([`NodeProcess::spawn`]) and waits
    /// up to `ready_within` for it to be ready.
    pub fn start(dir: &Path, extra: &[String], ready_within: Duration) -> RunningNode {
        let mut process = NodeProcess::spawn(dir, extra);
        let info = process.wait_ready(ready_within);
        RunningNode {
            process,
            api: format!("http://{}", info["api"].as_str().expect("api")),
            p2p: p2p_addr(&info),
            id: info["node_id"].as_str().expect("id").to_owned(),
        }
    }

    /// `--bootstrap` arguments for another node to join through this one.
    pub fn bootstrap_args(&self) -> Vec<String> {
        vec!["--bootstrap".into(), self.p2p.clone()]
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
