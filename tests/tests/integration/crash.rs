//! Crash storms with real processes: a requester and a provider are killed with `kill -9` at
//! random points while jobs stream through them, and restarted on the same data dirs and ports.
//! Afterwards every contract must have ended on both sides, the same way; both ledgers verify;
//! balances are equal and opposite; an audit finds nothing missing; every job that ever
//! reported `succeeded` still does, with its output; and every job that succeeded was settled
//! exactly once on each side, under a receipt naming its output.
//!
//! Nodes keep their ports across restarts: they are drawn below the ephemeral range
//! ([`loopback_ports`]), so no outgoing connection takes one while its node is down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use suanli_node::fixtures::loopback_ports;
use suanli_protocol::ledger::{EntryBody, LedgerEntry};
use suanli_protocol::{Hash32, Outcome};
use suanli_tests::process::{NodeProcess, suanli};
use suanli_tests::slow_wat;

const JOBS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/jobs");

/// A small deterministic generator (splitmix64), so a failing storm can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// One node process that can be killed and restarted on the same data dir and ports.
struct Node {
    dir: PathBuf,
    tcp: u16,
    api_port: u16,
    bootstrap: Option<String>,
    process: Option<NodeProcess>,
    id: String,
}

impl Node {
    fn new(dir: &Path, bootstrap: Option<String>) -> Node {
        let [tcp, api_port] = loopback_ports::<2>().expect("loopback ports");
        let mut node = Node {
            dir: dir.to_owned(),
            tcp,
            api_port,
            bootstrap,
            process: None,
            id: String::new(),
        };
        // Short timers: providers lost after 2 s, checkpoints often; a small credit line is not
        // in the way (the test is about endings, not credit).
        std::fs::write(
            dir.join("config.toml"),
            "[jobs]\nprovider_lost_after_secs = 2\ndeadline_grace_secs = 5\n\
             placement_timeout_secs = 60\n[provider]\ncredit_limit = 1000000000000\nslots = 2\n\
             max_fuel = 100000000000\n",
        )
        .expect("config");
        node.start();
        node
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("run.json"));
        let mut args = vec![
            "--listen".to_owned(),
            format!("/ip4/127.0.0.1/tcp/{}", self.tcp),
            "--api".to_owned(),
            format!("127.0.0.1:{}", self.api_port),
        ];
        if let Some(bootstrap) = &self.bootstrap {
            args.push("--bootstrap".into());
            args.push(bootstrap.clone());
        }
        let mut process = NodeProcess::spawn_exact(&self.dir, &args);
        let info = process.wait_ready(Duration::from_secs(60));
        self.id = info["node_id"].as_str().expect("node id").to_owned();
        self.process = Some(process);
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    fn address(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.tcp, self.id)
    }
}

fn get(http: &reqwest::blocking::Client, url: &str) -> Option<Value> {
    let response = http.get(url).send().ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().ok()
}

/// Every entry of a node's ledger.
fn ledger(http: &reqwest::blocking::Client, api: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    loop {
        let page = get(
            http,
            &format!("{api}/v1/ledger?from={}&limit=1000", entries.len()),
        )
        .expect("ledger page");
        let page = page["entries"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return entries;
        }
        entries.extend(page);
    }
}

/// Per contract: the kinds of entry a ledger holds for it, with how many of each.
fn contracts(entries: &[Value]) -> BTreeMap<String, BTreeMap<String, u32>> {
    let mut contracts: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for entry in entries {
        if let (Some(id), Some(kind)) = (entry["contract_id"].as_str(), entry["kind"].as_str()) {
            *contracts
                .entry(id.to_owned())
                .or_default()
                .entry(kind.to_owned())
                .or_default() += 1;
        }
    }
    contracts
}

fn ended(kinds: &BTreeMap<String, u32>) -> bool {
    kinds.contains_key("settlement") != kinds.contains_key("failure")
}

/// The output hash a receipt entry names, read from its stored bytes (the entry's JSON does not
/// show it); `None` for a failed run.
fn receipt_output(entry: &Value) -> Option<Hash32> {
    let raw = BASE64
        .decode(entry["raw_base64"].as_str()?)
        .expect("entry bytes");
    let EntryBody::Receipt(receipt) = LedgerEntry::decode(&raw).expect("entry").body else {
        return None;
    };
    match receipt.decode_unverified().expect("receipt").outcome {
        Outcome::Succeeded { output_hash, .. } => Some(output_hash),
        Outcome::Failed { .. } => None,
    }
}

/// Per job: the contracts a ledger settled for it, each with the output hash its receipt names.
fn settled_per_job(entries: &[Value]) -> BTreeMap<String, Vec<(String, Option<Hash32>)>> {
    let mut job_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut output_of: BTreeMap<&str, Option<Hash32>> = BTreeMap::new();
    let mut settled: BTreeSet<&str> = BTreeSet::new();
    for entry in entries {
        let Some(contract) = entry["contract_id"].as_str() else {
            continue;
        };
        if let Some(job) = entry["job_id"].as_str() {
            job_of.entry(contract).or_insert(job);
        }
        match entry["kind"].as_str() {
            Some("receipt") => {
                output_of.insert(contract, receipt_output(entry));
            }
            Some("settlement") => {
                settled.insert(contract);
            }
            _ => {}
        }
    }
    let mut per_job: BTreeMap<String, Vec<(String, Option<Hash32>)>> = BTreeMap::new();
    for contract in settled {
        let job = job_of
            .get(contract)
            .expect("a settled contract names its job");
        per_job.entry((*job).to_owned()).or_default().push((
            contract.to_owned(),
            output_of.get(contract).copied().flatten(),
        ));
    }
    per_job
}

#[test]
fn contracts_end_the_same_way_on_both_sides_through_a_crash_storm() {
    let seed: u64 = std::env::var("SUANLI_STORM_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(7);
    let storm = Duration::from_secs(
        std::env::var("SUANLI_STORM_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(45),
    );
    let mut rng = Rng(seed);
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut requester = Node::new(dir_a.path(), None);
    let mut provider = Node::new(dir_b.path(), Some(requester.address()));
    requester.bootstrap = Some(provider.address());
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // Both see each other before the storm.
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&http, &format!("{}/v1/mesh", requester.api()))
        .and_then(|mesh| mesh.as_array().map(Vec::len))
        .unwrap_or(0)
        < 2
    {
        assert!(Instant::now() < deadline, "the two nodes never met");
        std::thread::sleep(Duration::from_millis(100));
    }

    let hello = std::fs::read_to_string(format!("{JOBS}/hello.wat")).expect("hello.wat");
    let fib = std::fs::read_to_string(format!("{JOBS}/fib.wat")).expect("fib.wat");
    let spin = std::fs::read_to_string(format!("{JOBS}/spin.wat")).expect("spin.wat");
    // Short jobs, and runs of a second or so (a spin that ends `fuel_exhausted`, settled all
    // the same) that kills often catch in the middle.
    let bodies = [
        json!({ "module_wat": hello, "placement": { "remote_only": true } }),
        json!({ "module_wat": fib, "placement": { "remote_only": true } }),
        json!({ "module_wat": spin, "limits": { "fuel": 3_000_000_000u64, "timeout_ms": 20_000 },
                "placement": { "remote_only": true } }),
    ];
    let mut jobs: Vec<String> = Vec::new();
    // Jobs seen `succeeded`, with the output they had then.
    let mut succeeded: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut kills = 0;
    let started = Instant::now();
    let mut next_kill = started + Duration::from_millis(rng.between(1_500, 4_000));
    while started.elapsed() < storm {
        if requester.process.is_some() {
            let body = &bodies[(rng.next() % bodies.len() as u64) as usize];
            if let Ok(response) = http
                .post(format!("{}/v1/jobs", requester.api()))
                .json(body)
                .send()
                && response.status() == 202
                && let Ok(answer) = response.json::<Value>()
                && let Some(id) = answer["job_id"].as_str()
            {
                jobs.push(id.to_owned());
            }
            // Remember what reads succeeded, to check it never goes back.
            let probe = &jobs[jobs.len().saturating_sub(20)..];
            for id in probe {
                if succeeded.contains_key(id) {
                    continue;
                }
                if let Some(job) = get(&http, &format!("{}/v1/jobs/{id}", requester.api()))
                    && job["state"] == "succeeded"
                    && let Ok(output) = http
                        .get(format!("{}/v1/jobs/{id}/output", requester.api()))
                        .send()
                        .and_then(|response| response.bytes())
                {
                    succeeded.insert(id.clone(), output.to_vec());
                }
            }
        }
        if Instant::now() >= next_kill {
            let victim = if rng.next().is_multiple_of(2) {
                &mut requester
            } else {
                &mut provider
            };
            victim.kill();
            kills += 1;
            std::thread::sleep(Duration::from_millis(rng.between(100, 2_500)));
            victim.start();
            next_kill = Instant::now() + Duration::from_millis(rng.between(1_500, 4_000));
        }
        std::thread::sleep(Duration::from_millis(rng.between(20, 120)));
    }
    assert!(kills >= 5, "a storm of {kills} kills");
    assert!(jobs.len() >= 20, "{} jobs submitted", jobs.len());

    // After the storm: every job ends, every contract ends on both sides.
    let (a_api, b_api) = (requester.api(), provider.api());
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut pending_jobs: BTreeSet<String> = jobs.iter().cloned().collect();
    loop {
        pending_jobs.retain(|id| {
            get(&http, &format!("{a_api}/v1/jobs/{id}"))
                .is_none_or(|job| !matches!(job["state"].as_str(), Some("succeeded" | "failed")))
        });
        let (a, b) = (
            contracts(&ledger(&http, &a_api)),
            contracts(&ledger(&http, &b_api)),
        );
        let open: Vec<&String> = a
            .iter()
            .chain(b.iter())
            .filter(|(_, kinds)| !ended(kinds))
            .map(|(id, _)| id)
            .collect();
        let one_sided: Vec<&String> = a
            .keys()
            .filter(|id| !b.contains_key(*id))
            .chain(b.keys().filter(|id| !a.contains_key(*id)))
            .collect();
        if pending_jobs.is_empty() && open.is_empty() && one_sided.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the storm: {} jobs not final, {} contracts open ({open:?}), {} on one side only ({one_sided:?})",
            pending_jobs.len(),
            open.len(),
            one_sided.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let (a, b) = (ledger(&http, &a_api), ledger(&http, &b_api));
    let (a_contracts, b_contracts) = (contracts(&a), contracts(&b));
    assert!(!a_contracts.is_empty());
    for (id, kinds) in &a_contracts {
        let theirs = &b_contracts[id];
        for side in [kinds, theirs] {
            assert!(
                side.values().all(|count| *count == 1),
                "{id} recorded twice: {side:?}"
            );
            assert!(ended(side), "{id} not ended exactly once: {side:?}");
        }
        assert_eq!(
            kinds.contains_key("settlement"),
            theirs.contains_key("settlement"),
            "{id} ended differently: {kinds:?} / {theirs:?}"
        );
        assert_eq!(
            kinds.contains_key("receipt"),
            theirs.contains_key("receipt"),
            "{id}: {kinds:?} / {theirs:?}"
        );
    }
    for api in [&a_api, &b_api] {
        let verify = get(&http, &format!("{api}/v1/ledger/verify")).expect("verify");
        assert_eq!(verify["ok"], true, "{verify}");
    }
    // Balances equal and opposite.
    let balance = |api: &str, peer: &str| -> i128 {
        get(&http, &format!("{api}/v1/balances"))
            .and_then(|balances| {
                balances.as_array()?.iter().find_map(|balance| {
                    (balance["node_id"] == peer).then(|| balance["net_micro"].as_i64())?
                })
            })
            .map_or(0, i128::from)
    };
    let (owed_to_b, owed_by_a) = (
        balance(&b_api, &requester.id),
        balance(&a_api, &provider.id),
    );
    assert!(owed_to_b > 0, "some jobs were paid");
    assert_eq!(owed_to_b, -owed_by_a, "balances differ");
    // An audit finds nothing missing either way.
    let audit = suanli(&[
        "ledger",
        "audit",
        "--peer",
        &provider.id,
        "--json",
        "--api",
        &a_api,
    ]);
    let report: Value = serde_json::from_slice(&audit.stdout).expect("audit json");
    assert_eq!(report["discrepancies"], 0, "{report}");
    // Every job that succeeded was paid for exactly once on each side, under its contract, and
    // the receipt paid for names the output the requester serves.
    let (a_settled, b_settled) = (settled_per_job(&a), settled_per_job(&b));
    let mut jobs_succeeded = 0;
    for id in &jobs {
        let job = get(&http, &format!("{a_api}/v1/jobs/{id}")).expect("job");
        if job["state"] != "succeeded" {
            continue;
        }
        jobs_succeeded += 1;
        for (side, settled) in [("requester", &a_settled), ("provider", &b_settled)] {
            let contracts = settled.get(id).map_or(&[][..], Vec::as_slice);
            let [(contract, output)] = contracts else {
                panic!("{id} succeeded, settled by the {side} as {contracts:?}");
            };
            assert_eq!(job["contract_id"], contract.as_str(), "{side}: {job}");
            assert_eq!(
                output.map(|hash| hash.to_string()).as_deref(),
                job["output_hash"].as_str(),
                "{id}: the receipt the {side} settled names another output"
            );
        }
    }
    assert!(jobs_succeeded > 0, "no job succeeded");
    // Every job that reported succeeded still does, with the same output.
    assert!(
        !succeeded.is_empty(),
        "some job was seen succeeding during the storm"
    );
    for (id, output) in &succeeded {
        let job = get(&http, &format!("{a_api}/v1/jobs/{id}")).expect("job");
        assert_eq!(job["state"], "succeeded", "{id} went back: {job}");
        assert_eq!(
            job["output_hash"].as_str(),
            Some(Hash32::of(output).to_string().as_str()),
            "{id}"
        );
        let now = http
            .get(format!("{a_api}/v1/jobs/{id}/output"))
            .send()
            .and_then(|response| response.bytes())
            .expect("output");
        assert_eq!(now.as_ref(), output.as_slice(), "{id}'s output changed");
    }
    // What the storm did, for whoever runs it with --nocapture.
    #[allow(clippy::print_stderr)]
    let report = || {
        eprintln!(
            "storm: seed {seed}, {kills} kills, {} jobs, {} contracts ({} settled)",
            jobs.len(),
            a_contracts.len(),
            a_contracts
                .values()
                .filter(|kinds| kinds.contains_key("settlement"))
                .count()
        )
    };
    report();
    requester.kill();
    provider.kill();
}

/// Sends SIGTERM and returns how long the node took to exit, and whether it exited cleanly.
fn terminate(node: &mut Node) -> (Duration, bool) {
    let mut process = node.process.take().expect("a running node");
    let started = Instant::now();
    let pid = process.child.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = process.child.wait().expect("wait for the node");
    (started.elapsed(), status.success())
}

fn job_state(http: &reqwest::blocking::Client, api: &str, id: &str) -> Value {
    get(http, &format!("{api}/v1/jobs/{id}")).unwrap_or(Value::Null)
}

#[test]
fn sigterm_stops_a_node_with_a_job_running_and_the_contract_resumes() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut requester = Node::new(dir_a.path(), None);
    let mut provider = Node::new(dir_b.path(), Some(requester.address()));
    requester.bootstrap = Some(provider.address());
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let body = json!({
        "module_wat": slow_wat(3_000_000_000),
        "limits": { "fuel": 30_000_000_000u64, "timeout_ms": 60_000 },
        "placement": { "provider": provider.id },
    });
    for victim_is_provider in [true, false] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            // Until the requester sees the provider's advert, a pinned job finds no provider.
            if let Ok(response) = http
                .post(format!("{}/v1/jobs", requester.api()))
                .json(&body)
                .send()
                && response.status() == 202
                && let Ok(answer) = response.json::<Value>()
            {
                break answer["job_id"].as_str().expect("job id").to_owned();
            }
            assert!(Instant::now() < deadline, "no job accepted");
            std::thread::sleep(Duration::from_millis(200));
        };
        loop {
            let job = job_state(&http, &requester.api(), &id);
            if job["state"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "the job never ran: {job}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the run get going, then stop one side in the middle of it.
        std::thread::sleep(Duration::from_millis(300));
        let victim = if victim_is_provider {
            &mut provider
        } else {
            &mut requester
        };
        let (took, clean) = terminate(victim);
        assert!(clean, "a clean exit on SIGTERM");
        assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
        #[allow(clippy::print_stderr)]
        let report = || {
            let side = if victim_is_provider {
                "provider"
            } else {
                "requester"
            };
            eprintln!("SIGTERM of the {side} with a job running: exited in {took:?}");
        };
        report();
        victim.start();
        // The contract resumes from both ledgers and the job ends, once.
        let job = loop {
            let job = job_state(&http, &requester.api(), &id);
            if matches!(job["state"].as_str(), Some("succeeded" | "failed")) {
                break job;
            }
            assert!(
                Instant::now() < deadline + Duration::from_secs(60),
                "stuck: {job}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(job["state"], "succeeded", "{job}");
        let output = http
            .get(format!("{}/v1/jobs/{id}/output", requester.api()))
            .send()
            .and_then(|response| response.bytes())
            .expect("output");
        assert_eq!(output.as_ref(), b"done\n");
        let contract = job["contract_id"].as_str().expect("contract").to_owned();
        let settled_everywhere = || {
            [requester.api(), provider.api()].iter().all(|api| {
                let kinds = contracts(&ledger(&http, api));
                kinds
                    .get(&contract)
                    .is_some_and(|kinds| kinds.get("settlement") == Some(&1))
            })
        };
        while !settled_everywhere() {
            assert!(
                Instant::now() < deadline + Duration::from_secs(90),
                "not settled on both sides"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    requester.kill();
    provider.kill();
}

#[test]
fn a_job_killed_right_after_it_succeeded_still_reads_succeeded_with_its_output() {
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let mut requester = Node::new(dir_a.path(), None);
    let provider = Node::new(dir_b.path(), Some(requester.address()));
    requester.bootstrap = Some(provider.address());
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let hello = std::fs::read_to_string(format!("{JOBS}/hello.wat")).expect("hello.wat");
    let body = json!({ "module_wat": hello, "placement": { "provider": provider.id } });
    for round in 0..5 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            if let Ok(response) = http
                .post(format!("{}/v1/jobs", requester.api()))
                .json(&body)
                .send()
                && response.status() == 202
                && let Ok(answer) = response.json::<Value>()
            {
                break answer["job_id"].as_str().expect("job id").to_owned();
            }
            assert!(Instant::now() < deadline, "no job accepted");
            std::thread::sleep(Duration::from_millis(200));
        };
        // The moment it reads succeeded, kill -9 the requester.
        let job = get(
            &http,
            &format!("{}/v1/jobs/{id}?wait_ms=30000", requester.api()),
        )
        .expect("job");
        assert_eq!(job["state"], "succeeded", "round {round}: {job}");
        requester.kill();
        requester.start();
        let again = get(&http, &format!("{}/v1/jobs/{id}", requester.api())).expect("job");
        assert_eq!(again["state"], "succeeded", "round {round}: {again}");
        assert_eq!(again["output_hash"], job["output_hash"]);
        let output = http
            .get(format!("{}/v1/jobs/{id}/output", requester.api()))
            .send()
            .and_then(|response| response.bytes())
            .expect("output");
        assert_eq!(output.as_ref(), b"hello from suanli\n", "round {round}");
    }
    requester.kill();
}
