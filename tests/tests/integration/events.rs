//! A job's live events (`GET /v1/jobs/{id}/events`, server-sent events) from real node
//! processes: read as a client reads them while the job's first provider is killed with
//! `kill -9`, and through `suanli job submit --wait`.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use suanli_tests::process::{RunningNode, suanli};
use suanli_tests::slow_wat;
use tempfile::TempDir;

/// Providers are given up 2 s after they stop answering, and take jobs of a few seconds.
const CONFIG: &str = "[jobs]\nprovider_lost_after_secs = 2\ndeadline_grace_secs = 5\n\
                      placement_timeout_secs = 60\n[provider]\nmax_fuel = 100000000000\n";

fn node(base: &TempDir, name: &str, extra: &[String]) -> RunningNode {
    let dir = base.path().join(name);
    std::fs::create_dir_all(&dir).expect("data dir");
    std::fs::write(dir.join("config.toml"), CONFIG).expect("config");
    RunningNode::start(&dir, extra, Duration::from_secs(60))
}

fn wait_for_mesh(http: &reqwest::blocking::Client, api: &str, nodes: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = http
            .get(format!("{api}/v1/mesh"))
            .send()
            .ok()
            .and_then(|response| response.json::<Vec<Value>>().ok())
            .map_or(0, |mesh| mesh.len());
        if seen >= nodes {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mesh has {seen} of {nodes} nodes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads the event stream at `url` on a thread of its own: each event as its name and JSON data,
/// until the stream ends.
fn follow(url: String) -> mpsc::Receiver<(String, Value)> {
    let (send, events) = mpsc::channel();
    std::thread::spawn(move || {
        let response = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .expect("client")
            .get(url)
            .send()
            .expect("GET events");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap_or("");
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let mut name = String::new();
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if let Some(value) = line.strip_prefix("event: ") {
                name = value.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                let data = serde_json::from_str(data).expect("JSON data");
                if send.send((std::mem::take(&mut name), data)).is_err() {
                    return;
                }
            }
        }
    });
    events
}

fn next_event(events: &mpsc::Receiver<(String, Value)>) -> (String, Value) {
    events
        .recv_timeout(Duration::from_secs(120))
        .expect("another event within 120 s")
}

#[test]
fn a_jobs_events_follow_it_through_the_kill_of_its_provider() {
    let base = TempDir::new().expect("temp dir");
    // The job is submitted before any provider is up, so that every step of it comes after the
    // reader connected.
    let requester = node(&base, "requester", &[]);
    let http = reqwest::blocking::Client::new();
    let submitted: Value = http
        .post(format!("{}/v1/jobs", requester.api))
        .json(&json!({
            "module_wat": slow_wat(4_000_000_000),
            "limits": {"fuel": 60_000_000_000u64, "timeout_ms": 60_000},
            "placement": {"remote_only": true},
        }))
        .send()
        .expect("submit")
        .json()
        .expect("job id");
    let job_id = submitted["job_id"].as_str().expect("job id").to_owned();
    let events = follow(format!("{}/v1/jobs/{job_id}/events", requester.api));

    // The job as it stands comes first.
    let (name, snapshot) = next_event(&events);
    assert!(name == "snapshot", "{name}: {snapshot}");
    assert_eq!(snapshot["job_id"], job_id.as_str());
    assert!(
        matches!(snapshot["state"].as_str(), Some("queued" | "negotiating")),
        "{snapshot}"
    );
    let mut providers = vec![
        node(&base, "p1", &requester.bootstrap_args()),
        node(&base, "p2", &requester.bootstrap_args()),
    ];
    wait_for_mesh(&http, &requester.api, 3);

    // Then its steps, until it runs somewhere: that provider is killed.
    let mut seen = vec![];
    let first = loop {
        let (name, data) = next_event(&events);
        assert_eq!(data["job_id"], job_id.as_str(), "{name}: {data}");
        assert_eq!(data["event"], name.as_str(), "{data}");
        seen.push(name.clone());
        if name == "running" {
            break data["provider"].as_str().expect("provider").to_owned();
        }
    };
    let at = |wanted: &str| seen.iter().position(|name| name == wanted);
    let (quote, offer, contract) = (at("quote"), at("offer"), at("contract"));
    assert!(
        quote.is_some() && quote < offer && offer < contract,
        "{seen:?}"
    );
    let victim = providers
        .iter()
        .position(|provider| provider.id == first)
        .expect("a provider runs it");
    let mut killed = providers.remove(victim);
    killed.process.child.kill().expect("kill -9");
    let _ = killed.process.child.wait();

    // The job fails over and ends on the other provider; the stream closes with its final view.
    let mut after = vec![];
    let end = loop {
        let (name, data) = next_event(&events);
        if name == "end" {
            break data;
        }
        after.push((name, data));
    };
    let names: Vec<&str> = after.iter().map(|(name, _)| name.as_str()).collect();
    let position = |wanted: &str| names.iter().position(|name| *name == wanted);
    let failover = position("failover").unwrap_or_else(|| panic!("no failover in {names:?}"));
    assert_eq!(after[failover].1["provider"], first.as_str());
    assert_eq!(
        after[failover].1["outcome"], "lost",
        "{:?}",
        after[failover]
    );
    let running = position("running").expect("running again");
    let receipt = position("receipt").expect("a receipt");
    let settlement = position("settlement").expect("a settlement");
    assert!(
        failover < running && running < receipt && receipt < settlement,
        "{names:?}"
    );
    let second = providers[0].id.as_str();
    assert_eq!(after[running].1["provider"], second);
    assert_eq!(after[settlement].1["state"], "succeeded");
    assert_eq!(end["state"], "succeeded", "{end}");
    assert_eq!(end["provider"], second);
    assert_eq!(after[settlement].1["cost"], end["cost"]);
    // The stream ends after `end`.
    assert!(
        events.recv_timeout(Duration::from_secs(10)).is_err(),
        "an event after end"
    );

    // A job already final answers `end` at once; an unknown job is a JSON 404.
    let replay = follow(format!("{}/v1/jobs/{job_id}/events", requester.api));
    let (name, data) = next_event(&replay);
    assert_eq!(
        (name.as_str(), &data["state"]),
        ("end", &json!("succeeded"))
    );
    let missing = http
        .get(format!(
            "{}/v1/jobs/{}/events",
            requester.api,
            "0".repeat(64)
        ))
        .send()
        .expect("GET");
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().expect("JSON error");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    // `suanli job submit --wait` follows the events to the job's end and prints its output.
    let module = base.path().join("slow.wat");
    std::fs::write(&module, slow_wat(1000)).expect("module");
    let output = suanli(&[
        "job",
        "submit",
        "--api",
        &requester.api,
        "--remote",
        "--wait",
        module.to_str().expect("utf-8 path"),
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "done\n");
}
