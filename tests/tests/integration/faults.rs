//! Network faults between real `suanli` processes.
//!
//! A black-holed link is simulated by stopping a node with SIGSTOP: its kernel keeps the TCP
//! connections open and acknowledges what is sent, but nothing answers, exactly like a peer
//! behind a silent cut (no FIN, no RST). SIGCONT heals the cut.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use suanli_tests::process::{NodeProcess, p2p_addr};
use tempfile::TempDir;

/// Short liveness settings: a silent connection is closed after 1 + 2 = 3 s without an answer,
/// and a lost peer is re-dialled at least every second.
const CONFIG: &str = "[network]\nping_interval_secs = 1\nping_timeout_secs = 2\n";
/// The configured silence bound (3 s) plus the check's tick, with slack for a loaded machine.
const DROP_LIMIT: Duration = Duration::from_secs(10);
/// One re-dial interval (1 s) plus a handshake, with the same slack.
const RETURN_LIMIT: Duration = Duration::from_secs(10);

/// The node ids `GET /v1/peers` lists, or `None` when the node does not answer.
fn peers_of(http: &reqwest::blocking::Client, api: &str) -> Option<BTreeSet<String>> {
    let peers: Value = http
        .get(format!("{api}/v1/peers"))
        .send()
        .ok()?
        .json()
        .ok()?;
    Some(
        peers
            .as_array()?
            .iter()
            .filter_map(|peer| peer["node_id"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// Polls every node in `apis` until `holds` is true of each one's peers; panics after `limit`.
fn wait_for_peers(
    http: &reqwest::blocking::Client,
    apis: &[&str],
    limit: Duration,
    what: &str,
    holds: impl Fn(&str, &BTreeSet<String>) -> bool,
) {
    let started = Instant::now();
    for api in apis {
        loop {
            let peers = peers_of(http, api).unwrap_or_default();
            if holds(api, &peers) {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "{what}: {api} still lists {peers:?} after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn signal(node: &NodeProcess, name: &str) {
    let pid = node.child.id().to_string();
    let status = Command::new("kill")
        .args([name, &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {name} {pid}");
}

fn spawn(dir: &Path, extra: &[String]) -> NodeProcess {
    std::fs::write(dir.join("config.toml"), CONFIG).expect("write config.toml");
    NodeProcess::spawn(dir, extra)
}

#[test]
fn a_silent_peer_leaves_the_peer_lists_and_returns_when_the_cut_heals() {
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut first = spawn(dirs[0].path(), &[]);
    let info = first.wait_ready(Duration::from_secs(30));
    let bootstrap = p2p_addr(&info);
    let mut nodes = vec![first];
    for dir in &dirs[1..] {
        nodes.push(spawn(
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
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    let others = |index: usize| -> BTreeSet<String> {
        ids.iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, id)| id.clone())
            .collect()
    };
    let index_of = |api: &str| apis.iter().position(|known| known == api).expect("api");
    let all: Vec<&str> = apis.iter().map(String::as_str).collect();
    wait_for_peers(
        &http,
        &all,
        Duration::from_secs(30),
        "full mesh",
        |api, peers| peers.is_superset(&others(index_of(api))),
    );

    // Cut node 1 off silently: nodes 0 and 2 must notice and drop it, and only it.
    let silent = ids[1].clone();
    let watchers = [apis[0].as_str(), apis[2].as_str()];
    signal(&nodes[1], "-STOP");
    wait_for_peers(
        &http,
        &watchers,
        DROP_LIMIT,
        "drop the silent peer",
        |api, peers| !peers.contains(&silent) && peers.contains(&ids[2 - index_of(api)]),
    );
    // A job pinned to the silent node, submitted during the cut: it cannot be placed now, and
    // is retried with that provider until the cut heals.
    let hello = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/jobs/hello.wat"
    ))
    .expect("hello.wat");
    let submitted: Value = http
        .post(format!("{}/v1/jobs", apis[0]))
        .json(&serde_json::json!({ "module_wat": hello, "placement": { "provider": silent } }))
        .send()
        .expect("submit")
        .json()
        .expect("json");
    let pinned = submitted["job_id"].as_str().expect("job id").to_owned();
    // The cut lasts a few more re-dial intervals, so re-dials into the stopped node are under
    // way (their handshakes hang) when it heals.
    std::thread::sleep(Duration::from_secs(2));
    for api in watchers {
        let peers = peers_of(&http, api).expect("a live node answers");
        assert!(
            !peers.contains(&silent),
            "{api} lists the silent peer again"
        );
    }

    // Heal the cut: everyone lists everyone again.
    signal(&nodes[1], "-CONT");
    wait_for_peers(
        &http,
        &all,
        RETURN_LIMIT,
        "reconnect the healed peer",
        |api, peers| peers.is_superset(&others(index_of(api))),
    );

    // The pinned job ran on its provider once the cut healed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job: Value = http
            .get(format!("{}/v1/jobs/{pinned}?wait_ms=1000", apis[0]))
            .send()
            .and_then(|response| response.json())
            .unwrap_or(Value::Null);
        if matches!(job["state"].as_str(), Some("succeeded" | "failed")) {
            break job;
        }
        assert!(
            Instant::now() < deadline,
            "the pinned job never ended: {job}"
        );
    };
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["provider"], silent.as_str(), "{job}");

    for node in &mut nodes {
        assert!(node.terminate().success(), "clean exit on SIGTERM");
    }
}
