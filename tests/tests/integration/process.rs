//! The real `suanli` binary: three `suanli run` processes on loopback, driven through the CLI.

use std::time::{Duration, Instant};

use serde_json::Value;
use suanli_tests::process::{NodeProcess, suanli};

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

#[test]
fn three_processes_see_each_other_through_the_cli() {
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    // `suanli init` prints the id; `suanli id` agrees with it.
    let init = suanli(&[
        "init",
        "--data-dir",
        dirs[0].path().to_str().expect("utf-8"),
    ]);
    assert!(init.status.success(), "{init:?}");
    let id = String::from_utf8_lossy(&init.stdout).trim().to_owned();
    assert!(id.starts_with("12D3KooW"), "{id}");
    let again = suanli(&["id", "--data-dir", dirs[0].path().to_str().expect("utf-8")]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), id);
    let refused = suanli(&[
        "init",
        "--data-dir",
        dirs[0].path().to_str().expect("utf-8"),
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));

    let mut first = NodeProcess::spawn(dirs[0].path(), &[]);
    let info = first.wait_ready(Duration::from_secs(30));
    assert_eq!(info["node_id"], id);
    let tcp = info["listen_addrs"]
        .as_array()
        .and_then(|addrs| {
            addrs
                .iter()
                .filter_map(Value::as_str)
                .find(|a| a.contains("/tcp/"))
        })
        .expect("tcp address")
        .to_owned();
    let bootstrap = format!("{tcp}/p2p/{id}");
    let mut nodes = vec![first];
    for dir in &dirs[1..] {
        nodes.push(NodeProcess::spawn(
            dir.path(),
            &["--bootstrap".into(), bootstrap.clone()],
        ));
    }
    let apis: Vec<String> = nodes
        .iter_mut()
        .map(|node| {
            let info = node.wait_ready(Duration::from_secs(30));
            format!("http://{}", info["api"].as_str().expect("api"))
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    for api in &apis {
        loop {
            let mesh = mesh_json(api).unwrap_or_default();
            if mesh.len() == 3 {
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
    let peers = suanli(&["peers", "--json", "--api", &apis[0]]);
    let peers: Value = serde_json::from_slice(&peers.stdout).expect("peers json");
    assert!(peers.as_array().is_some_and(|peers| {
        peers.len() >= 2
            && peers
                .iter()
                .all(|p| p["node_id"].is_string() && p["addrs"].is_array())
    }));
    let status = suanli(&["status", "--api", &apis[0]]);
    assert!(String::from_utf8_lossy(&status.stdout).contains(&id));

    for node in &mut nodes {
        let status = node.terminate();
        assert!(status.success(), "clean exit on SIGTERM: {status}");
        assert!(!node.data_dir.join("run.json").exists());
    }
    // Unreachable node: one line, non-zero exit.
    let down = suanli(&["mesh", "--api", &apis[0]]);
    assert!(!down.status.success());
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
}
