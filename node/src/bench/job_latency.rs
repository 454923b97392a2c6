//! The `job-latency` scenario: submit → result of a trivial job through the HTTP API, placed
//! remotely, one job at a time.
//!
//! Two nodes A and B on loopback; the client posts `hello.wat` with `remote_only` placement to
//! A's API and long-polls `GET /v1/jobs/{id}?wait_ms=` until the job is final. Every job is a
//! quote, a dual-signed contract, an execution on B, a signed receipt and a dual-signed
//! settlement, each durable in both ledgers. Floor: the same module run in-process by the
//! executor plus one libp2p loopback round trip (from the `floor` scenario of the same run).

use std::time::Instant;

use serde_json::{Value, json};

use super::nodes::{start_star, stop_all};
use super::{BenchError, Context, Figure, Samples, ms};

const SCENARIO: &str = "job-latency";

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let floors = context.floors().await?;
    let jobs = context.options.pick(100, 1_000);
    let nodes = start_star(&context.workspace, 2).await?;
    let api = nodes
        .first()
        .map(super::BenchNode::api_url)
        .unwrap_or_default();
    let result = measure(&api, jobs).await;
    stop_all(nodes).await;
    let latencies = result?;
    let floor = ms(floors.wasm_run_p50 + floors.round_trip_p50);
    let floor_metric = "executor run p50 + libp2p round trip p50";
    let p50 = ms(latencies.p50());
    Ok(vec![
        Figure::against(
            SCENARIO,
            "submit→result p50",
            p50,
            "ms",
            floor,
            floor_metric,
        ),
        Figure::against(
            SCENARIO,
            "submit→result p99",
            ms(latencies.percentile(0.99)),
            "ms",
            floor,
            floor_metric,
        ),
        Figure::against(
            SCENARIO,
            "submit→result max",
            ms(latencies.max()),
            "ms",
            floor,
            floor_metric,
        ),
        Figure::plain(SCENARIO, "overhead over the floor, p50", p50 - floor, "ms"),
        Figure::plain(SCENARIO, "jobs measured", latencies.len() as f64, "jobs"),
    ])
}

async fn measure(api: &str, jobs: usize) -> Result<Samples, BenchError> {
    let http = reqwest::Client::new();
    let body = json!({ "module_wat": super::HELLO_WAT, "placement": { "remote_only": true } });
    for _ in 0..20 {
        run_job(&http, api, &body).await?;
    }
    let mut samples = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let started = Instant::now();
        let job = run_job(&http, api, &body).await?;
        samples.push(started.elapsed());
        if job["state"] != "succeeded" {
            return Err(BenchError::scenario(SCENARIO, format!("job failed: {job}")));
        }
    }
    Ok(Samples::new(samples))
}

/// Sends `request` and reads its JSON answer.
pub async fn json_answer(request: reqwest::RequestBuilder) -> Result<Value, BenchError> {
    let fail = |error: reqwest::Error| BenchError::scenario("jobs", error);
    request
        .send()
        .await
        .map_err(fail)?
        .json()
        .await
        .map_err(fail)
}

/// Submits `body` to `api` and long-polls until the job is final; returns its record.
pub async fn run_job(http: &reqwest::Client, api: &str, body: &Value) -> Result<Value, BenchError> {
    let answer = json_answer(http.post(format!("{api}/v1/jobs")).json(body)).await?;
    let Some(id) = answer["job_id"].as_str() else {
        return Err(BenchError::scenario(
            "jobs",
            format!("submission refused: {answer}"),
        ));
    };
    loop {
        let job = json_answer(http.get(format!("{api}/v1/jobs/{id}?wait_ms=30000"))).await?;
        if matches!(job["state"].as_str(), Some("succeeded" | "failed")) {
            return Ok(job);
        }
    }
}
