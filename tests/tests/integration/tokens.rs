//! AI tokens end to end, with real `suanli` processes: a node serving SmolLM2 on the built-in
//! engine, another node as the OpenAI endpoint a client talks to, the official `openai` Python
//! client, standing contracts, per-request usage receipts in both ledgers, settlement, and
//! `kill -9` of either side.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use suanli_tests::metrics::{scrape, value};
use suanli_tests::models::{model_path, openai_client_script, python};
use suanli_tests::process::{RunningNode, suanli};
use tempfile::TempDir;

const MODEL: &str = "smollm2";

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client")
}

fn get(api: &str, path: &str) -> Value {
    http()
        .get(format!("{api}{path}"))
        .send()
        .and_then(|response| response.json())
        .unwrap_or(Value::Null)
}

fn post(api: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = http()
        .post(format!("{api}{path}"))
        .json(body)
        .send()
        .expect("POST");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

type Running = RunningNode;

fn start(dir: &Path, extra: &[String]) -> Running {
    // Loading the model (hashing it, re-quantising it, measuring it) takes a few seconds.
    RunningNode::start(dir, extra, Duration::from_secs(120))
}

fn serve_model_args() -> Vec<String> {
    vec![
        "--model".into(),
        format!("{MODEL}={}", model_path().display()),
    ]
}

fn bootstrap(to: &Running) -> Vec<String> {
    to.bootstrap_args()
}

/// Waits until `api` lists `model` in `/v1/models`.
fn wait_model(api: &str, model: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = get(api, "/v1/models");
        let found = listed["data"]
            .as_array()
            .is_some_and(|models| models.iter().any(|m| m["id"] == model));
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{model} never listed at {api}: {listed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every entry of a running node's ledger.
fn entries(api: &str) -> Vec<Value> {
    get(api, "/v1/ledger?from=0&limit=1000")["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn of_kind<'a>(entries: &'a [Value], kind: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["kind"] == kind).collect()
}

/// Usage entries by raw bytes of their document (the same receipt in two ledgers is the same
/// co-signed document, so its contract, request and tokens match).
fn usage_summary(entries: &[Value]) -> BTreeMap<(String, String), (u64, u64)> {
    of_kind(entries, "usage")
        .into_iter()
        .map(|e| {
            (
                (
                    e["contract_id"].as_str().unwrap_or_default().to_owned(),
                    e["detail"].as_str().unwrap_or_default().to_owned(),
                ),
                (
                    e["prompt_tokens"].as_u64().unwrap_or(0),
                    e["completion_tokens"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// Waits until `check` holds of both nodes' ledgers.
fn wait_ledgers(
    what: &str,
    limit: Duration,
    apis: [&str; 2],
    check: impl Fn(&[Value], &[Value]) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let (a, b) = (entries(apis[0]), entries(apis[1]));
        if check(&a, &b) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {limit:?}\nA: {a:#?}\nB: {b:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn chat(api: &str, content: &str, max_tokens: u32) -> (u16, Value) {
    post(
        api,
        "/v1/chat/completions",
        &json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }),
    )
}

/// The official `openai` client against node A of a mesh where only B serves the model: models,
/// chat and completions, streamed and not, greedy and seeded reproducibility, stop sequences,
/// errors. Every request is a usage receipt in both ledgers; the standing contract settles on
/// their totals when A stops.
#[test]
fn the_openai_client_gets_tokens_from_another_node() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let b = start(dirs[1].path(), &serve_model_args());
    let mut a = start(dirs[0].path(), &bootstrap(&b));
    wait_model(&a.api, MODEL);

    let output = python()
        .arg(openai_client_script())
        .arg(format!("{}/v1", a.api))
        .arg(MODEL)
        .output()
        .expect("run the openai client");
    assert!(
        output.status.success(),
        "openai client: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("client report");

    // Bodies the client library would never send: OpenAI's error shape, nothing billed.
    let response = http()
        .post(format!("{}/v1/chat/completions", a.api))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .expect("POST");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().expect("error body");
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");
    assert!(body["error"]["message"].is_string() && body["error"].get("param").is_some());
    let huge =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(3 << 20)}]});
    let (status, body) = post(&a.api, "/v1/chat/completions", &huge);
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large");

    // The command line: the models, and a chat answered through the mesh.
    let models = suanli(&["models", "--api", &a.api]);
    assert!(models.status.success());
    assert!(String::from_utf8_lossy(&models.stdout).contains(MODEL));
    let chat = suanli(&[
        "chat",
        "--api",
        &a.api,
        "--max-tokens",
        "8",
        "--json",
        "What is 2+2?",
    ]);
    assert!(
        chat.status.success(),
        "{}",
        String::from_utf8_lossy(&chat.stderr)
    );
    let said: Value = serde_json::from_slice(&chat.stdout).expect("chat --json");
    assert!(
        said["answer"].as_str().is_some_and(|a| !a.is_empty()),
        "{said}"
    );
    let usage = |report: &Value, field: &str| report["usage"][field].as_u64().unwrap();
    let requests = usage(&report, "requests") as usize + 1;
    let reported = (
        usage(&report, "prompt_tokens") + usage(&said, "prompt_tokens"),
        usage(&report, "completion_tokens") + usage(&said, "completion_tokens"),
    );

    // Every request served is one usage receipt, the same in both ledgers, and the usage the
    // clients were told is what the receipts hold.
    wait_ledgers(
        "usage receipts in both ledgers",
        Duration::from_secs(30),
        [&a.api, &b.api],
        |a, b| usage_summary(a).len() == requests && usage_summary(a) == usage_summary(b),
    );
    let receipts = usage_summary(&entries(&a.api));
    let summed = receipts
        .values()
        .fold((0, 0), |(p, c), (prompt, completion)| {
            (p + prompt, c + completion)
        });
    assert_eq!(
        summed, reported,
        "the ledger's receipts and the API's usage differ"
    );
    // One negotiation for all of them.
    let contracts: Vec<String> = of_kind(&entries(&a.api), "contract")
        .iter()
        .map(|e| e["contract_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        contracts.len(),
        1,
        "one standing contract for every request"
    );
    // It is open on both sides, each counting the tokens both signed for; so do the metrics.
    let session = |api: &str, side: &str| {
        get(api, "/v1/sessions")
            .as_array()
            .and_then(|list| list.iter().find(|s| s["side"] == side).cloned())
            .unwrap_or_else(|| panic!("no {side} session at {api}"))
    };
    let signed_for = reported.0 + reported.1;
    for (api, side, peer) in [(&a.api, "requester", &b.id), (&b.api, "provider", &a.id)] {
        let open = session(api, side);
        assert_eq!(open["contract_id"], contracts[0].as_str(), "{open}");
        assert_eq!(open["peer"], peer.as_str(), "{open}");
        assert_eq!(open["model"], MODEL, "{open}");
        assert_eq!(open["used_tokens"].as_u64(), Some(signed_for), "{open}");
        let counted = scrape(api);
        for (kind, tokens) in [("prompt", reported.0), ("completion", reported.1)] {
            let key =
                format!("suanli_tokens_total{{kind=\"{kind}\",model=\"{MODEL}\",side=\"{side}\"}}");
            assert_eq!(value(&counted, &key), tokens as f64, "{key}: {counted:?}");
        }
    }

    // A stops: it closes the contract; B delivers its receipt, and A settles it when it is back.
    assert!(a.process.terminate().success());
    drop(a);
    let a = start(dirs[0].path(), &bootstrap(&b));
    wait_ledgers(
        "the standing contract settles on both sides",
        Duration::from_secs(60),
        [&a.api, &b.api],
        |a, b| of_kind(a, "settlement").len() == 1 && of_kind(b, "settlement").len() == 1,
    );
    for ledger in [entries(&a.api), entries(&b.api)] {
        let receipt = of_kind(&ledger, "receipt")[0].clone();
        assert_eq!(receipt["prompt_tokens"].as_u64(), Some(reported.0));
        assert_eq!(receipt["completion_tokens"].as_u64(), Some(reported.1));
        let settlement = of_kind(&ledger, "settlement")[0].clone();
        assert_eq!(settlement["cost"], receipt["cost"]);
        assert!(settlement["cost"].as_u64().unwrap() > 0);
    }
    let balances = get(&b.api, "/v1/balances");
    let owed = balances
        .as_array()
        .and_then(|list| list.iter().find(|x| x["node_id"] == a.id.as_str()))
        .map(|x| x["net_micro"].as_i64().unwrap())
        .expect("a balance with A");
    assert!(owed > 0, "B is owed for its tokens: {balances}");
    drop(b);
}

/// A client that goes away mid-stream stops generation; what was generated is billed.
#[test]
fn a_client_that_disconnects_stops_generation_and_is_billed() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let b = start(dirs[1].path(), &serve_model_args());
    let a = start(dirs[0].path(), &bootstrap(&b));
    wait_model(&a.api, MODEL);
    let max_tokens: u32 = 400;
    let mut response = http()
        .post(format!("{}/v1/chat/completions", a.api))
        .json(&json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": true,
        }))
        .send()
        .expect("stream");
    assert_eq!(response.status().as_u16(), 200);
    // Read until some text came, then hang up.
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"") || seen.len() < 600 {
        let n = response.read(&mut buffer).expect("read the stream");
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buffer[..n]);
    }
    drop(response);
    wait_ledgers(
        "a cancelled request's receipt",
        Duration::from_secs(60),
        [&a.api, &b.api],
        |a, b| usage_summary(a).len() == 1 && usage_summary(a) == usage_summary(b),
    );
    let ledger = entries(&a.api);
    let usage = of_kind(&ledger, "usage")[0].clone();
    assert_eq!(usage["outcome"], "cancelled", "{usage}");
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(
        completion >= 1 && completion < u64::from(max_tokens),
        "{usage}"
    );
}

/// kill -9 of the provider mid-stream, then of the requester: every standing contract still
/// ends the same way on both sides, on the totals of the receipts both hold.
#[test]
fn standing_contracts_survive_kill_9_of_either_side() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut b = start(dirs[1].path(), &serve_model_args());
    let mut a = start(dirs[0].path(), &bootstrap(&b));
    wait_model(&a.api, MODEL);
    let (status, first) = chat(&a.api, "Name three colours.", 12);
    assert_eq!(status, 200, "{first}");

    // The provider dies in the middle of a long answer: the client gets an error, nothing is
    // billed for that request.
    let api = a.api.clone();
    let streaming = std::thread::spawn(move || {
        chat(
            &api,
            "Write a very long story about a lighthouse keeper.",
            2000,
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    b.process.child.kill().expect("kill -9 B");
    let _ = b.process.child.wait();
    let (status, answer) = streaming.join().expect("client thread");
    assert!(status >= 500, "the request failed: {status} {answer}");
    assert!(answer["error"]["message"].is_string(), "{answer}");
    drop(b);

    // B is back (on a new port: it dials A): A's next request is served, under a new standing
    // contract.
    let mut args = serve_model_args();
    args.extend(bootstrap(&a));
    let b = start(dirs[1].path(), &args);
    wait_model(&a.api, MODEL);
    let deadline = Instant::now() + Duration::from_secs(60);
    let second = loop {
        let (status, answer) = chat(&a.api, "Name three animals.", 12);
        if status == 200 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "never served again: {status} {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(second["choices"][0]["message"]["content"].is_string());

    // Now the requester dies, with its contract open; at its restart it closes it.
    a.process.child.kill().expect("kill -9 A");
    let _ = a.process.child.wait();
    drop(a);
    let a = start(dirs[0].path(), &bootstrap(&b));
    wait_ledgers(
        "every contract ends the same way on both sides",
        Duration::from_secs(120),
        [&a.api, &b.api],
        |a, b| {
            let ended = |ledger: &[Value]| -> BTreeMap<String, String> {
                ledger
                    .iter()
                    .filter(|e| e["kind"] == "settlement" || e["kind"] == "failure")
                    .map(|e| {
                        (
                            e["contract_id"].as_str().unwrap_or_default().to_owned(),
                            e["kind"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            };
            let contracts = of_kind(a, "contract").len();
            contracts >= 2 && ended(a).len() == contracts && ended(a) == ended(b)
        },
    );
    // What each settled contract billed is the total of the receipts both sides hold.
    let (ledger_a, ledger_b) = (entries(&a.api), entries(&b.api));
    assert_eq!(usage_summary(&ledger_a), usage_summary(&ledger_b));
    for receipt in of_kind(&ledger_a, "receipt") {
        let contract = receipt["contract_id"].as_str().unwrap();
        let total = usage_summary(&ledger_a)
            .iter()
            .filter(|((id, _), _)| id == contract)
            .fold((0, 0), |(p, c), (_, (prompt, completion))| {
                (p + prompt, c + completion)
            });
        assert_eq!(
            (
                receipt["prompt_tokens"].as_u64().unwrap_or(0),
                receipt["completion_tokens"].as_u64().unwrap_or(0)
            ),
            total,
            "{receipt}"
        );
    }
    drop((a, b));
}

/// A node serves a model from an upstream OpenAI-compatible server (here another suanli node);
/// requests through a third node are metered from the upstream's usage.
#[test]
fn a_model_can_come_from_an_upstream_server() {
    let dirs: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let engine = start(dirs[0].path(), &serve_model_args());
    let mut proxy_args = bootstrap(&engine);
    proxy_args.extend([
        "--model".into(),
        format!("proxied={}/v1#{MODEL}", engine.api),
    ]);
    let proxy = start(dirs[1].path(), &proxy_args);
    let client = start(dirs[2].path(), &bootstrap(&engine));
    wait_model(&client.api, "proxied");
    let (status, answer) = post(
        &client.api,
        "/v1/chat/completions",
        &json!({
            "model": "proxied",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16,
            "temperature": 0,
        }),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["suanli"]["provider"], proxy.id.as_str());
    let (direct_status, direct) = chat(&engine.api, "What is the capital of France?", 16);
    assert_eq!(direct_status, 200);
    assert_eq!(
        answer["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
        "the proxy answers what its upstream does"
    );
    assert_eq!(answer["usage"], direct["usage"]);
    wait_ledgers(
        "the proxied request's receipt",
        Duration::from_secs(30),
        [&client.api, &proxy.api],
        |c, p| usage_summary(c).len() == 1 && usage_summary(c) == usage_summary(p),
    );
    drop((client, proxy, engine));
}

/// A model that cannot be loaded is a clear start-up error.
#[test]
fn a_model_that_cannot_load_stops_the_node_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    let output = suanli(&[
        "run",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api",
        "127.0.0.1:0",
        "--model",
        &format!("broken={}", missing.display()),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason = stderr.lines().last().unwrap_or_default();
    assert!(
        reason.starts_with("error: ")
            && reason.contains("model broken")
            && reason.contains("missing.gguf"),
        "{stderr}"
    );
    for flag in ["nameonly", "=/x.gguf"] {
        let output = suanli(&[
            "run",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--model",
            flag,
        ]);
        assert!(!output.status.success(), "--model {flag} was accepted");
        assert!(String::from_utf8_lossy(&output.stderr).contains("--model"));
    }
}

/// A standing contract whose budget is spent, or whose time is up, settles without anyone
/// stopping; the next request gets a new one.
#[test]
fn standing_contracts_end_when_spent_or_when_their_time_is_up() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let b = start(dirs[1].path(), &serve_model_args());
    // Contracts of 150 tokens standing 10 s: a short request fits twice.
    let config = dirs[0].path().join("tokens.toml");
    std::fs::write(
        &config,
        "[tokens]\ncontract_budget_tokens = 150\ncontract_secs = 10\n",
    )
    .unwrap();
    let mut args = bootstrap(&b);
    args.extend(["--config".into(), config.display().to_string()]);
    let a = start(dirs[0].path(), &args);
    wait_model(&a.api, MODEL);
    let settled = |ledger: &[Value]| of_kind(ledger, "settlement").len();
    for _ in 0..3 {
        let (status, answer) = chat(&a.api, "Hi", 8);
        assert_eq!(status, 200, "{answer}");
    }
    // The third request did not fit the first contract: it was closed and settled at once.
    wait_ledgers(
        "the spent contract settles on both sides",
        Duration::from_secs(30),
        [&a.api, &b.api],
        |a, b| of_kind(a, "contract").len() == 2 && settled(a) >= 1 && settled(b) >= 1,
    );
    // The second one's time runs out: it settles too, and the next request opens a third.
    wait_ledgers(
        "the expired contract settles on both sides",
        Duration::from_secs(60),
        [&a.api, &b.api],
        |a, b| settled(a) == 2 && settled(b) == 2,
    );
    let (status, answer) = chat(&a.api, "Hi", 8);
    assert_eq!(status, 200, "{answer}");
    let ledger = entries(&a.api);
    assert_eq!(of_kind(&ledger, "contract").len(), 3);
    assert_eq!(of_kind(&ledger, "usage").len(), 4);
    drop((a, b));
}
