//! API tokens and the HTTP guard, on the real binary: a node open beyond loopback, its tokens
//! made and revoked with the CLI, requests from a non-loopback address, a kill -9 in between;
//! and slow or oversized request heads and bodies.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use suanli_tests::process::{NodeProcess, suanli, suanli_binary};
use tempfile::TempDir;

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/jobs/hello.wat");

/// This machine's address on its default route: requests to it do not come over loopback.
fn routed_ip() -> IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind udp");
    // A UDP "connect" sends nothing: it only picks the route and with it the source address.
    socket
        .connect("192.0.2.200:9")
        .or_else(|_| socket.connect("198.51.100.1:9"))
        .expect("this test needs a non-loopback IPv4 route");
    let ip = socket.local_addr().expect("local addr").ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `suanli token create` in `dir`; returns the token.
fn create_token(dir: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "create",
        "--data-dir",
        path_str(dir),
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    let output = suanli(&args);
    assert!(
        output.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("suanli_"), "{token}");
    token
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A request's status, its headers and its JSON body.
fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = http().request(method.parse().unwrap(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

fn hello_job(max_price: u64) -> Value {
    json!({
        "module_wat": std::fs::read_to_string(HELLO).unwrap(),
        "max_price": max_price,
    })
}

/// The API port of a ready node whose API listens on 0.0.0.0.
fn api_port(info: &Value) -> u16 {
    let api = info["api"].as_str().expect("api");
    api.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn start_open(dir: &Path) -> (NodeProcess, u16) {
    let args: Vec<String> = ["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "0.0.0.0:0"]
        .map(str::to_owned)
        .to_vec();
    let mut node = NodeProcess::spawn_exact(dir, &args);
    let info = node.wait_ready(Duration::from_secs(60));
    (node, api_port(&info))
}

#[test]
fn tokens_guard_a_node_open_beyond_loopback_across_a_kill() {
    let temp = TempDir::new().unwrap();
    let dir = temp.path().join("node");
    assert!(
        suanli(&["init", "--data-dir", path_str(&dir)])
            .status
            .success()
    );

    // Open beyond loopback without a token: refused, with a one-line reason.
    let refused = Command::new(suanli_binary())
        .args([
            "run",
            "--data-dir",
            path_str(&dir),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .args(["--api", "0.0.0.0:0"])
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .expect("run suanli");
    assert!(!refused.status.success());
    let reason = String::from_utf8_lossy(&refused.stderr);
    assert!(reason.contains("suanli token create"), "{reason}");
    assert_eq!(reason.trim().lines().count(), 1, "{reason}");

    // One credit of quota; one request an hour; one to revoke.
    let alice = create_token(&dir, "alice", &["--quota-credits", "1"]);
    let bob = create_token(&dir, "bob", &["--rate", "1/h"]);
    let carol = create_token(&dir, "carol", &["--expires", "1d"]);
    let (mut node, port) = start_open(&dir);
    let remote = format!("http://{}:{port}", routed_ip());
    let local = format!("http://127.0.0.1:{port}");

    // From the network, without a token: public reads only.
    assert_eq!(call("GET", &format!("{remote}/v1/node"), None, None).0, 200);
    assert_eq!(
        call("GET", &format!("{remote}/v1/ledger?limit=1"), None, None).0,
        200
    );
    for (method, path, body) in [
        ("GET", "/v1/jobs", None),
        ("POST", "/v1/jobs", Some(hello_job(1_000))),
        ("GET", "/v1/balances", None),
        ("GET", "/v1/ledger/verify", None),
        ("GET", "/v1/tokens", None),
        (
            "POST",
            "/v1/chat/completions",
            Some(json!({"model": "m", "messages": []})),
        ),
    ] {
        let (status, headers, body) = call(method, &format!("{remote}{path}"), None, body);
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(error_code(&body), "unauthorized");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    // Over loopback, without a token: the operator; but not a page of another site in the
    // operator's browser.
    assert_eq!(call("GET", &format!("{local}/v1/jobs"), None, None).0, 200);
    let page = http()
        .post(format!("{local}/v1/jobs"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(hello_job(1_000).to_string())
        .send()
        .unwrap();
    assert_eq!(page.status().as_u16(), 401);
    // A bad token is refused even where none is needed.
    let (status, _, body) = call(
        "GET",
        &format!("{local}/v1/node"),
        Some("suanli_0000000000000000_x"),
        None,
    );
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
    // An OpenAI client's placeholder key is no token: the operator on loopback, nobody beyond.
    assert_eq!(
        call("GET", &format!("{local}/v1/jobs"), Some("unused"), None).0,
        200
    );
    assert_eq!(
        call("GET", &format!("{remote}/v1/jobs"), Some("unused"), None).0,
        401
    );
    let malformed = http()
        .get(format!("{remote}/v1/jobs"))
        .header("authorization", "Basic YWxpY2U6eA==")
        .send()
        .unwrap();
    assert_eq!(malformed.status().as_u16(), 401);
    // A name that is not this node's (DNS rebinding): 403, before anything else.
    let rebound = http()
        .get(format!("{local}/healthz"))
        .header("host", format!("evil.example:{port}"))
        .send()
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 403);
    assert_eq!(error_code(&rebound.json().unwrap()), "forbidden_host");

    // alice runs a job through the CLI from the network, with SUANLI_TOKEN.
    let submitted = Command::new(suanli_binary())
        .args([
            "job",
            "submit",
            HELLO,
            "--max-price",
            "1000000",
            "--wait",
            "--json",
        ])
        .args(["--api", &remote])
        .env("SUANLI_TOKEN", &alice)
        .env_remove("SUANLI_API")
        .output()
        .unwrap();
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let summary: Value = serde_json::from_slice(&submitted.stdout).unwrap();
    let job_id = summary["job_id"].as_str().expect("job id").to_owned();
    let job_url = format!("{remote}/v1/jobs/{job_id}");
    let (status, _, job) = call("GET", &job_url, Some(&alice), None);
    assert_eq!(status, 200);
    assert_eq!(job["state"], "succeeded");
    let alice_id = job["api_token"].as_str().expect("attributed").to_owned();
    // Another token sees nothing of it; the operator sees it and whose it is.
    assert_eq!(call("GET", &job_url, Some(&carol), None).0, 404);
    assert_eq!(
        call("GET", &format!("{job_url}/output"), Some(&carol), None).0,
        404
    );
    let (_, _, page) = call("GET", &format!("{remote}/v1/jobs"), Some(&carol), None);
    assert_eq!(page["jobs"], json!([]));
    let (_, _, page) = call("GET", &format!("{local}/v1/jobs"), None, None);
    assert_eq!(page["jobs"][0]["api_token"], alice_id.as_str());

    // Its quota is spent: the job cost something, so one more credit does not fit.
    let (status, _, body) = call(
        "POST",
        &format!("{remote}/v1/jobs"),
        Some(&alice),
        Some(hello_job(1_000_000)),
    );
    assert_eq!(
        (status, error_code(&body)),
        (429, "quota_exhausted"),
        "{body}"
    );
    let cli = Command::new(suanli_binary())
        .args([
            "job",
            "submit",
            HELLO,
            "--max-price",
            "1000000",
            "--api",
            &remote,
            "--token",
            &alice,
        ])
        .env_remove("SUANLI_TOKEN")
        .output()
        .unwrap();
    assert!(!cli.status.success());
    assert_eq!(
        String::from_utf8_lossy(&cli.stderr).trim().lines().count(),
        1
    );

    // bob's rate: one request, then 429 with Retry-After.
    assert_eq!(
        call("GET", &format!("{remote}/v1/jobs"), Some(&bob), None).0,
        200
    );
    let (status, headers, body) = call("GET", &format!("{remote}/v1/jobs"), Some(&bob), None);
    assert_eq!((status, error_code(&body)), (429, "rate_limited"));
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");

    // carol, revoked while the node runs, is refused from the next request on.
    assert_eq!(
        call("GET", &format!("{remote}/v1/jobs"), Some(&carol), None).0,
        200
    );
    let revoked = suanli(&["token", "revoke", "--data-dir", path_str(&dir), "carol"]);
    assert!(revoked.status.success());
    let (status, _, body) = call("GET", &format!("{remote}/v1/jobs"), Some(&carol), None);
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );

    // kill -9, restart: what alice spent is derived from durable job records, so her quota
    // stays spent.
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let (mut node, port) = start_open(&dir);
    let remote = format!("http://{}:{port}", routed_ip());
    let local = format!("http://127.0.0.1:{port}");
    let (status, _, body) = call(
        "POST",
        &format!("{remote}/v1/jobs"),
        Some(&alice),
        Some(hello_job(1_000_000)),
    );
    assert_eq!(
        (status, error_code(&body)),
        (429, "quota_exhausted"),
        "{body}"
    );
    assert_eq!(
        call("GET", &format!("{remote}/v1/jobs"), Some(&carol), None).0,
        401
    );

    // `suanli token list` shows each token's state and, from the node, its spending.
    let listed = suanli(&[
        "token",
        "list",
        "--data-dir",
        path_str(&dir),
        "--api",
        &local,
        "--json",
    ]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let by_name = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|token| token["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {listed}"))
    };
    let alice_listed = by_name("alice");
    assert_eq!(alice_listed["state"], "active");
    assert_eq!(alice_listed["spend"]["jobs"], 1);
    let spent = alice_listed["spend"]["jobs_spent"].as_u64().unwrap();
    assert!(spent > 0 && spent <= 1_000_000, "{alice_listed}");
    assert_eq!(by_name("carol")["state"], "revoked");
    // The file holds digests, never the tokens.
    let file = std::fs::read_to_string(dir.join("api-tokens.json")).unwrap();
    for token in [&alice, &bob, &carol] {
        assert!(!file.contains(token.as_str()));
    }
    assert!(node.terminate().success());
}

/// Sends `head` (and `body`) on a fresh connection and reads the answer until the server closes
/// or `limit` passes: the status (0: closed without one) and the body's JSON.
fn raw(addr: &str, head: &str, body: &[u8], limit: Duration) -> (u16, Option<Value>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(head.as_bytes()).expect("write the head");
    stream.write_all(body).expect("write the body");
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    let started = Instant::now();
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|length| rest.len() >= length) {
                break;
            }
        }
        assert!(started.elapsed() < limit, "no answer within {limit:?}");
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return (0, None);
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, serde_json::from_str(rest).ok())
}

#[test]
fn slow_and_oversized_requests_get_json_errors_and_lose_their_connection() {
    let temp = TempDir::new().unwrap();
    let dir = temp.path().join("node");
    assert!(
        suanli(&["init", "--data-dir", path_str(&dir)])
            .status
            .success()
    );
    std::fs::write(
        dir.join("config.toml"),
        "[api]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\n",
    )
    .unwrap();
    let mut node = NodeProcess::spawn(&dir, &[]);
    let info = node.wait_ready(Duration::from_secs(60));
    let addr = info["api"].as_str().unwrap().to_owned();
    let limit = Duration::from_secs(20);

    let long_target = format!(
        "GET /v1/mesh?{} HTTP/1.1\r\nhost: {addr}\r\n\r\n",
        "a".repeat(9000)
    );
    let (status, body) = raw(&addr, &long_target, b"", limit);
    assert_eq!(status, 414);
    assert_eq!(error_code(&body.unwrap()), "uri_too_long");

    let many: String = (0..200).map(|i| format!("x-{i}: y\r\n")).collect();
    let (status, body) = raw(
        &addr,
        &format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n{many}\r\n"),
        b"",
        limit,
    );
    assert_eq!(status, 431);
    assert_eq!(error_code(&body.unwrap()), "headers_too_large");
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: {addr}\r\nx-big: {}\r\n\r\n",
        "b".repeat(40_000)
    );
    let (status, body) = raw(&addr, &big, b"", limit);
    assert_eq!(status, 431);
    assert_eq!(error_code(&body.unwrap()), "headers_too_large");

    // A body announced and never finished: 408 once its second is up.
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: 100\r\n\r\n"
    );
    let (status, body) = raw(&addr, &head, b"{\"module_wat\":", limit);
    assert_eq!(status, 408);
    assert_eq!(error_code(&body.unwrap()), "request_timeout");

    // A head never finished: the connection is closed, without an answer to read.
    let (status, _) = raw(&addr, "GET /healthz HTTP/1.1\r\nhost: x\r\n", b"", limit);
    assert!(status == 0 || status == 408, "{status}");

    // Not JSON: 400 with the error body.
    let (status, body) = raw(
        &addr,
        &format!("POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 2\r\n\r\n"),
        b"{}",
        limit,
    );
    assert_eq!(status, 400);
    assert_eq!(error_code(&body.unwrap()), "bad_request");

    // The node still serves.
    let (status, _) = raw(
        &addr,
        &format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
        b"",
        limit,
    );
    assert_eq!(status, 200);
    assert!(node.terminate().success());
}
