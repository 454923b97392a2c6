//! Replicated token requests end to end: a requester and three providers of the test model on
//! loopback, the last of which swaps the case of the text it sends and signs for
//! (`provider.test_corrupt_output`, the only test hook: the rest is the real engine, protocol and
//! signatures). The answer is the majority's text, evidence against the odd provider is stored
//! and verifies from its documents alone, and a requester killed in the middle of a replicated
//! request ends every standing contract the same way as its providers after its restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use suanli_node::config::ModelConfig;
use suanli_protocol::replicas::TokenMismatch;
use suanli_protocol::{Hash32, NodeId};
use suanli_tests::models::model_path;
use suanli_tests::process::NodeProcess;
use suanli_tests::{TestNode, test_config, with_timeout};

const MODEL: &str = "smollm2";

/// Three providers of the test model in this process, the last dishonest, joined through the
/// first; `bootstrap` adds an address for the first to join.
async fn model_providers(bootstrap: &[libp2p::Multiaddr]) -> Vec<TestNode> {
    let mut nodes: Vec<TestNode> = Vec::new();
    for index in 0..3 {
        let mut joined: Vec<_> = nodes.first().map(TestNode::tcp_addr).into_iter().collect();
        if index == 0 {
            joined.extend_from_slice(bootstrap);
        }
        let mut config = test_config(&joined);
        config.provider.test_corrupt_output = index == 2;
        config.tokens.models = vec![
            ModelConfig::parse_flag(&format!("{MODEL}={}", model_path().display()))
                .expect("model flag"),
        ];
        config.tokens.streams = Some(1);
        let dir = tempfile::tempdir().expect("temp dir");
        nodes.push(TestNode::start_with(dir, config).await);
    }
    nodes
}

fn url(api: impl std::fmt::Display, path: &str) -> String {
    format!("http://{api}{path}")
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = http.post(url).json(body).send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A greedy chat request for `replicas` providers.
fn request(content: &str, max_tokens: u32, replicas: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "replicas": replicas,
    })
}

/// Waits until `api`'s node sees the model offered by `providers` nodes.
async fn wait_providers(http: &reqwest::Client, api: &str, providers: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let models = get(http, &url(api, "/v1/models")).await;
        let count = models["data"]
            .as_array()
            .and_then(|models| models.iter().find(|m| m["id"] == MODEL))
            .and_then(|model| model["suanli"]["providers"].as_array().map(Vec::len));
        if count == Some(providers) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{api} never saw {providers} providers: {models}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks stored evidence as anyone holding it would.
fn check_evidence(hex_evidence: &str, odd: NodeId, honest: &BTreeSet<NodeId>) -> (Hash32, Hash32) {
    let bytes: Vec<u8> = (0..hex_evidence.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex_evidence[at..at + 2], 16).expect("hex"))
        .collect();
    let evidence = TokenMismatch::decode(&bytes).expect("evidence decodes");
    let verified = evidence.verify().expect("evidence verifies");
    assert_eq!(verified.offender, odd);
    let majority: BTreeSet<NodeId> = verified.majority.iter().copied().collect();
    assert_eq!(&majority, honest);
    (verified.majority_output, verified.odd_output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_of_a_greedy_request_answer_with_the_majority_and_evidence() {
    with_timeout(async {
        let requester = TestNode::start(&[]).await;
        let providers = model_providers(&[requester.tcp_addr()]).await;
        let odd = providers[2].handle.node_id;
        let honest: BTreeSet<NodeId> = providers[..2].iter().map(|p| p.handle.node_id).collect();
        let api = requester.handle.api_addr.to_string();
        let chat = url(&api, "/v1/chat/completions");
        let http = reqwest::Client::new();
        wait_providers(&http, &api, 3).await;

        // What the request needs before any provider is asked.
        for (body, param) in [
            (request("Hi", 8, 9), "replicas"),
            (request("Hi", 8, 0), "replicas"),
            (
                json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                       "replicas": 3}),
                "replicas",
            ),
            (
                json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                       "temperature": 0, "stream": true, "replicas": 3}),
                "replicas",
            ),
        ] {
            let (status, answer) = post(&http, &chat, &body).await;
            assert_eq!(status, 400, "{body}: {answer}");
            assert_eq!(answer["error"]["param"], param, "{answer}");
        }
        let (status, answer) = post(&http, &chat, &request("Hi", 8, 4)).await;
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"]["code"], "not_enough_providers", "{answer}");

        // Three replicas, one of them dishonest: the majority's text, the verdict, every run
        // charged.
        let (status, answer) = post(
            &http,
            &chat,
            &request("Name the capital of France in one word.", 12, 3),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let text = answer["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .to_owned();
        assert!(
            text.chars().any(|c| c.is_ascii_alphabetic()),
            "the test needs letters to tell the odd text: {text:?}"
        );
        let verdict = &answer["suanli"]["replicas"];
        assert_eq!(verdict["asked"], 3, "{answer}");
        assert_eq!(verdict["agreeing"], 2, "{answer}");
        assert_eq!(verdict["odd"], json!([odd.to_string()]), "{answer}");
        let winner: NodeId = answer["suanli"]["provider"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .expect("provider");
        assert!(honest.contains(&winner), "{answer}");

        // The requester's ledger holds the three usage receipts; the cost is their sum.
        let ledger = get(&http, &url(&api, "/v1/ledger?from=0&limit=1000")).await;
        let usages: Vec<&Value> = ledger["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["kind"] == "usage")
            .collect();
        assert_eq!(usages.len(), 3, "{ledger}");
        let billed: u64 = usages.iter().map(|e| e["cost"].as_u64().unwrap_or(0)).sum();
        assert!(billed > 0, "{ledger}");
        assert_eq!(answer["suanli"]["cost_micro"], billed, "{answer}");

        // The evidence, stored before the answer, verifies and names the odd provider.
        let page = get(&http, &url(&api, "/v1/evidence")).await;
        let evidence = page["evidence"].as_array().expect("evidence");
        assert_eq!(evidence.len(), 1, "{page}");
        assert_eq!(evidence[0]["kind"], "tokens", "{page}");
        assert_eq!(evidence[0]["provider"], odd.to_string(), "{page}");
        assert_eq!(evidence[0]["verified"], true, "{page}");
        assert_eq!(evidence[0]["group"], verdict["id"], "{page}");
        let (majority_output, odd_output) =
            check_evidence(evidence[0]["evidence"].as_str().unwrap(), odd, &honest);
        assert_eq!(majority_output, Hash32::of(text.as_bytes()));
        let swapped: String = text
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        assert_eq!(odd_output, Hash32::of(swapped.as_bytes()));

        // The odd provider's standing falls below trust: it is no longer a candidate, so three
        // replicas cannot be found any more; two still can.
        let standing = requester.handle.market.reputation().standing(&odd);
        assert_eq!(standing.counts.mismatched, 1, "{standing:?}");
        assert!(standing.distrusted, "{standing:?}");
        for provider in &honest {
            assert!(
                !requester
                    .handle
                    .market
                    .reputation()
                    .standing(provider)
                    .distrusted
            );
        }
        let (status, answer) = post(&http, &chat, &request("Hi", 8, 3)).await;
        assert_eq!(status, 503, "{answer}");
        let (status, answer) = post(&http, &chat, &request("Say hello.", 8, 2)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["suanli"]["replicas"]["agreeing"], 2, "{answer}");
        assert_eq!(answer["suanli"]["replicas"]["odd"], json!([]), "{answer}");
        for node in providers {
            node.stop().await;
        }
        requester.stop().await;
    })
    .await;
}

/// Contract id → how it ended (`settlement` or `failure`), from a ledger page.
fn ended(ledger: &Value) -> BTreeMap<String, String> {
    ledger["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "settlement" || e["kind"] == "failure")
        .map(|e| {
            (
                e["contract_id"].as_str().unwrap_or_default().to_owned(),
                e["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn contracts(ledger: &Value) -> BTreeSet<String> {
    ledger["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "contract")
        .map(|e| e["contract_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// How long the kill test may take: three engines, a restarted process and every contract's
/// close share two cores, so it gets more than the usual test's two minutes.
const KILL_TEST_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_killed_during_a_replicated_request_ends_every_contract_like_its_providers() {
    suanli_tests::init_logging();
    let body = async {
        let providers = model_providers(&[]).await;
        let odd = providers[2].handle.node_id;
        let honest: BTreeSet<NodeId> = providers[..2].iter().map(|p| p.handle.node_id).collect();
        let http = reqwest::Client::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let [tcp, api_port] = suanli_node::fixtures::loopback_ports::<2>().expect("ports");
        let args = [
            "--listen".to_owned(),
            format!("/ip4/127.0.0.1/tcp/{tcp}"),
            "--api".to_owned(),
            format!("127.0.0.1:{api_port}"),
            "--bootstrap".to_owned(),
            providers[0].tcp_addr().to_string(),
        ];
        let api = format!("127.0.0.1:{api_port}");
        let mut requester = NodeProcess::spawn_exact(dir.path(), &args);
        requester.wait_ready(Duration::from_secs(60));
        wait_providers(&http, &api, 3).await;

        // A long replicated answer; the requester dies once its three standing contracts are
        // signed and the runs generate.
        let long = {
            let (http, chat) = (http.clone(), url(&api, "/v1/chat/completions"));
            tokio::spawn(async move {
                let body = request("Write a long story about a lighthouse keeper.", 400, 3);
                http.post(&chat)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status())
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ledger = get(&http, &url(&api, "/v1/ledger?from=0&limit=1000")).await;
            if contracts(&ledger).len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "no three contracts: {ledger}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        requester.child.kill().expect("kill -9 the requester");
        let _ = requester.child.wait();
        let answered = long.await.expect("client task");
        assert!(answered.is_err(), "the killed node answered: {answered:?}");
        drop(requester);

        // Restarted, it closes the contracts of its earlier run; each ends the same way on
        // both sides, and nothing was stored against anyone for an undecided request.
        let mut requester = NodeProcess::spawn_exact(dir.path(), &args);
        requester.wait_ready(Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ledger = get(&http, &url(&api, "/v1/ledger?from=0&limit=1000")).await;
            let mine = ended(&ledger);
            let mut theirs = BTreeMap::new();
            for node in &providers {
                let page = get(
                    &http,
                    &url(node.handle.api_addr, "/v1/ledger?from=0&limit=1000"),
                )
                .await;
                theirs.extend(ended(&page));
            }
            let all = contracts(&ledger);
            if all.len() == 3 && mine.len() == 3 && mine == theirs {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "contracts did not end alike: requester {mine:?}, providers {theirs:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let page = get(&http, &url(&api, "/v1/evidence")).await;
        assert_eq!(page["evidence"], json!([]), "{page}");

        // The restarted requester serves the next replicated request, with its verdict.
        wait_providers(&http, &api, 3).await;
        let (status, answer) = post(
            &http,
            &url(&api, "/v1/chat/completions"),
            &request("Name a colour.", 8, 3),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["suanli"]["replicas"]["odd"],
            json!([odd.to_string()])
        );
        let page = get(&http, &url(&api, "/v1/evidence")).await;
        let evidence = page["evidence"].as_array().expect("evidence");
        assert_eq!(evidence.len(), 1, "{page}");
        check_evidence(evidence[0]["evidence"].as_str().unwrap(), odd, &honest);
        requester.terminate();
        for node in providers {
            node.stop().await;
        }
    };
    if tokio::time::timeout(KILL_TEST_TIMEOUT, body).await.is_err() {
        panic!("test timed out after {KILL_TEST_TIMEOUT:?}");
    }
}
