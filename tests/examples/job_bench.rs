//! Job benchmark: submit-to-result latency of a trivial job between two nodes on loopback, next to
//! the same module run in-process by the executor; and settled jobs per second across three nodes.
//!
//! `cargo run --release -p suanli-tests --example job_bench -- [latency_jobs] [throughput_secs]`
//!
//! Latency: node A places each job remotely (`remote_only`) on node B; the client posts it to A's
//! HTTP API and long-polls until it is final; one job at a time. Floor: the executor running the
//! same module in-process (warm), plus an HTTP round trip to the API.
//! Throughput: 64 client tasks submit trivial jobs round-robin to three nodes (each placing
//! wherever the ranking says, itself included) and wait for each; settled jobs per second over
//! the window. Every job is a signed contract, a receipt and a settlement, durable in the ledgers.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use suanli_node::executor::{Executor, ExecutorConfig, JobInput};
use suanli_protocol::Limits;
use suanli_tests::TestNode;

const HELLO: &str = include_str!("../../examples/jobs/hello.wat");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

async fn run_job(http: &reqwest::Client, api: &str, body: &Value) -> Value {
    let answer: Value = http
        .post(format!("{api}/v1/jobs"))
        .json(body)
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let id = answer["job_id"].as_str().expect("job id");
    loop {
        let job: Value = http
            .get(format!("{api}/v1/jobs/{id}?wait_ms=30000"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        if matches!(job["state"].as_str(), Some("succeeded" | "failed")) {
            return job;
        }
    }
}

async fn floor() -> (Duration, Duration) {
    let executor = Executor::new(ExecutorConfig::default()).expect("executor");
    let module = Arc::new(HELLO.as_bytes().to_vec());
    let input = JobInput {
        module,
        args: vec![],
        env: Default::default(),
        stdin: vec![],
        limits: Limits {
            fuel: 1_000_000_000,
            memory_bytes: 64 << 20,
            wall_time_ms: 10_000,
            output_bytes: 1 << 20,
        },
    };
    let mut runs = Vec::new();
    for _ in 0..1000 {
        let start = Instant::now();
        executor.run(input.clone()).await;
        runs.push(start.elapsed());
    }
    runs.sort();
    (percentile(&runs, 0.5), percentile(&runs, 0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let latency_jobs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let throughput_secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);

    let (floor_p50, floor_p99) = floor().await;
    say(format!(
        "floor: executor in-process run of hello.wat p50={:.3}ms p99={:.3}ms",
        ms(floor_p50),
        ms(floor_p99)
    ));

    let a = TestNode::start(&[]).await;
    let b = TestNode::start(&[a.tcp_addr()]).await;
    let c = TestNode::start(&[a.tcp_addr()]).await;
    while [&a, &b, &c].iter().any(|node| node.mesh_size() < 3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let http = reqwest::Client::new();
    let apis: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|node| format!("http://{}", node.handle.api_addr))
        .collect();

    // HTTP round trip to the API, for the floor.
    let mut rtts = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        http.get(format!("{}/healthz", apis[0]))
            .send()
            .await
            .expect("healthz");
        rtts.push(start.elapsed());
    }
    rtts.sort();
    let rtt = percentile(&rtts, 0.5);
    say(format!(
        "floor: HTTP round trip to the API p50={:.3}ms",
        ms(rtt)
    ));

    // Latency: A places on B or C, one job at a time.
    let remote = json!({ "module_wat": HELLO, "placement": { "remote_only": true } });
    for _ in 0..20 {
        run_job(&http, &apis[0], &remote).await; // warm-up
    }
    let mut latencies = Vec::with_capacity(latency_jobs);
    for _ in 0..latency_jobs {
        let start = Instant::now();
        let job = run_job(&http, &apis[0], &remote).await;
        latencies.push(start.elapsed());
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    latencies.sort();
    let p50 = percentile(&latencies, 0.5);
    let floor_total = floor_p50 + rtt;
    say(format!(
        "job-latency (remote, {latency_jobs} jobs): p50={:.3}ms p99={:.3}ms max={:.3}ms; floor {:.3}ms; overhead {:.3}ms; ratio {:.1}x",
        ms(p50),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().expect("jobs")),
        ms(floor_total),
        ms(p50.saturating_sub(floor_total)),
        p50.as_secs_f64() / floor_total.as_secs_f64()
    ));

    // Throughput: 64 clients over three nodes.
    let any = Arc::new(json!({ "module_wat": HELLO }));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(throughput_secs);
    let start = Instant::now();
    let mut clients = Vec::new();
    for client in 0..64 {
        let (http, api, body) = (http.clone(), apis[client % 3].clone(), any.clone());
        let (done, failed) = (done.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let job = run_job(&http, &api, &body).await;
                if job["state"] == "succeeded" {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    let elapsed = start.elapsed();
    let settled = done.load(Ordering::Relaxed);
    say(format!(
        "throughput (3 nodes, 64 clients, {:.1}s): {settled} settled jobs, {:.0} jobs/s, {} failed",
        elapsed.as_secs_f64(),
        settled as f64 / elapsed.as_secs_f64(),
        failed.load(Ordering::Relaxed)
    ));
    for node in [&a, &b, &c] {
        let stats = node.handle.ledger.stats();
        say(format!(
            "ledger {}: {} entries in {} fsync barriers (largest batch {}), verify ok={}",
            node.handle.node_id,
            stats.appended,
            stats.barriers,
            stats.largest_batch,
            node.handle.ledger.verify().ok
        ));
    }
    for node in [a, b, c] {
        node.stop().await;
    }
}
