//! Replicated jobs end to end: one requester and three providers on loopback, one of which signs
//! for an output its runs did not write (`provider.test_corrupt_output`, the only test hook:
//! everything after it is the real protocol with real signatures). The majority's result wins,
//! evidence against the odd provider is stored and verifies from its documents alone, and the
//! verdict survives a `kill -9` of the requester.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use suanli_node::market::{JobState, SubmitError};
use suanli_protocol::NodeId;
use suanli_protocol::replicas::ReplicaMismatch;
use suanli_tests::process::NodeProcess;
use suanli_tests::{TestNode, slow_wat, test_config, wait_until, wat_job, with_timeout};

const HELLO: &str = include_str!("../../../examples/jobs/hello.wat");
const JOB: Duration = Duration::from_secs(60);

/// Starts three providers in this process, the last of them dishonest, all joined through the
/// first; `bootstrap` adds an address for the first to join.
async fn providers(bootstrap: &[libp2p::Multiaddr]) -> Vec<TestNode> {
    priced_providers(bootstrap, [100; 3]).await
}

/// [`providers`] with a fee per job each (`capacity.price_base`, micro-credits).
async fn priced_providers(bootstrap: &[libp2p::Multiaddr], fees: [u64; 3]) -> Vec<TestNode> {
    let mut nodes: Vec<TestNode> = Vec::new();
    for (index, fee) in fees.into_iter().enumerate() {
        let mut joined: Vec<_> = nodes.first().map(TestNode::tcp_addr).into_iter().collect();
        if index == 0 {
            joined.extend_from_slice(bootstrap);
        }
        let mut config = test_config(&joined);
        config.provider.test_corrupt_output = index == 2;
        config.capacity.price_base = fee;
        let dir = tempfile::tempdir().expect("temp dir");
        nodes.push(TestNode::start_with(dir, config).await);
    }
    nodes
}

/// Checks stored evidence as anyone holding it would: it decodes, verifies, names `odd` and is
/// backed by the runs of `honest`.
fn check_evidence(bytes: &[u8], odd: NodeId, honest: &BTreeSet<NodeId>) {
    let evidence = ReplicaMismatch::decode(bytes).expect("evidence decodes");
    let verified = evidence.verify().expect("evidence verifies");
    assert_eq!(verified.offender, odd);
    let majority: BTreeSet<NodeId> = verified.majority.iter().copied().collect();
    assert_eq!(&majority, honest);
    assert!(!majority.contains(&odd));
    assert_ne!(verified.odd_vote, verified.majority_vote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_with_one_dishonest_provider_end_with_the_majority_and_evidence() {
    with_timeout(async {
        let requester = TestNode::start(&[]).await;
        let providers = providers(&[requester.tcp_addr()]).await;
        wait_until(
            "every node sees the whole mesh",
            Duration::from_secs(30),
            || requester.mesh_size() == 4 && providers.iter().all(|p| p.mesh_size() == 4),
        )
        .await;
        let odd = providers[2].handle.node_id;
        let honest: BTreeSet<NodeId> = providers[..2].iter().map(|p| p.handle.node_id).collect();

        // Refused before anything runs: a pinned provider, another executor.
        let mut pinned = wat_job(HELLO);
        pinned.replicas = 3;
        pinned.placement.provider = Some(odd);
        let refused = requester.handle.market.submit(pinned).await;
        assert!(
            matches!(refused, Err(SubmitError::Invalid(_))),
            "{refused:?}"
        );
        let mut batch = wat_job("#!/bin/sh\necho hi\n");
        batch.executor = suanli_protocol::ExecutorKind::Batch;
        batch.replicas = 3;
        let refused = requester.handle.market.submit(batch).await;
        assert!(
            matches!(refused, Err(SubmitError::Invalid(_))),
            "{refused:?}"
        );

        let mut job = wat_job(HELLO);
        job.replicas = 3;
        job.placement.exclude_self = true;
        let group_id = requester.submit(job).await;
        let group = requester.wait_job(&group_id, JOB).await;
        assert_eq!(group.state, JobState::Succeeded, "{group:?}");
        let output = requester
            .handle
            .market
            .jobs()
            .blobs()
            .get(&group.output_hash.expect("output"))
            .expect("blob store")
            .expect("output stored");
        assert_eq!(output, b"hello from suanli\n");

        // Three runs, on the three providers, each its own job and contract.
        let replicas = group.replicas.clone().expect("a group");
        assert_eq!(replicas.children.len(), 3);
        let runs: Vec<_> = replicas
            .children
            .iter()
            .map(|child| requester.job(child))
            .collect();
        let used: BTreeSet<NodeId> = runs.iter().filter_map(|run| run.provider).collect();
        assert_eq!(used.len(), 3, "distinct providers: {runs:?}");
        assert!(!used.contains(&requester.handle.node_id));
        for run in &runs {
            assert_eq!(run.group, Some(group_id));
            assert_eq!(run.state, JobState::Succeeded, "{run:?}");
            let same = run.output_hash == group.output_hash;
            assert_eq!(same, run.provider != Some(odd), "{run:?}");
        }
        // The group costs what its three runs cost; each settled on its own.
        let costs: u64 = runs.iter().filter_map(|run| run.cost).sum();
        assert_eq!(group.cost, Some(costs));

        // Evidence against the odd provider only, verifiable from its documents alone.
        assert_eq!(replicas.odd, vec![odd]);
        let book = requester.handle.market.jobs();
        let mismatches = book.mismatches().expect("mismatches");
        assert_eq!(mismatches.len(), 1, "{mismatches:?}");
        assert_eq!(mismatches[0].provider, odd);
        assert_eq!(mismatches[0].group, group_id);
        let stored = book.mismatches_of(&group_id).expect("evidence");
        assert_eq!(stored.len(), 1);
        check_evidence(&stored[0].evidence, odd, &honest);

        // The odd provider's standing falls below trust; the honest ones' does not. Placement
        // then passes it over: six more jobs run on the honest two.
        let standing = requester.handle.market.reputation().standing(&odd);
        assert_eq!(standing.counts.mismatched, 1, "{standing:?}");
        assert!(standing.distrusted, "{standing:?}");
        for provider in &honest {
            let standing = requester.handle.market.reputation().standing(provider);
            assert!(!standing.distrusted, "{standing:?}");
        }
        for _ in 0..6 {
            let mut job = wat_job(HELLO);
            job.placement.exclude_self = true;
            let id = requester.submit(job).await;
            let run = requester.wait_job(&id, JOB).await;
            assert_eq!(run.state, JobState::Succeeded, "{run:?}");
            assert_ne!(run.provider, Some(odd), "{run:?}");
        }

        // The same through the HTTP API.
        let http = reqwest::Client::new();
        let api = format!("http://{}", requester.handle.api_addr);
        let view: Value = http
            .get(format!("{api}/v1/jobs/{group_id}"))
            .send()
            .await
            .expect("GET job")
            .json()
            .await
            .expect("job view");
        assert_eq!(view["state"], "succeeded", "{view}");
        assert_eq!(view["replicas"]["count"], 3);
        assert_eq!(view["replicas"]["odd"], json!([odd.to_string()]));
        assert_eq!(view["replicas"]["runs"].as_array().map(Vec::len), Some(3));
        assert_eq!(view["replicas"]["evidence"][0]["verified"], true, "{view}");
        let page: Value = http
            .get(format!("{api}/v1/evidence"))
            .send()
            .await
            .expect("GET evidence")
            .json()
            .await
            .expect("evidence page");
        let listed = page["evidence"].as_array().expect("a list");
        assert_eq!(listed.len(), 1, "{page}");
        assert_eq!(listed[0]["provider"], odd.to_string());
        assert_eq!(listed[0]["group"], group_id.to_string());
        let bytes = hex_decode(listed[0]["evidence"].as_str().expect("hex"));
        check_evidence(&bytes, odd, &honest);
        let output = http
            .get(format!("{api}/v1/jobs/{group_id}/output"))
            .send()
            .await
            .expect("GET output")
            .bytes()
            .await
            .expect("output");
        assert_eq!(output.as_ref(), b"hello from suanli\n");

        requester.stop().await;
        for provider in providers {
            provider.stop().await;
        }
    })
    .await;
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
        .collect()
}

/// The requester, a `suanli run` process on fixed loopback ports, restartable on its data dir.
struct Requester {
    dir: tempfile::TempDir,
    tcp: u16,
    api: u16,
    bootstrap: String,
    process: Option<NodeProcess>,
}

impl Requester {
    fn start(&mut self) -> String {
        let args = [
            "--listen".to_owned(),
            format!("/ip4/127.0.0.1/tcp/{}", self.tcp),
            "--api".to_owned(),
            format!("127.0.0.1:{}", self.api),
            "--bootstrap".to_owned(),
            self.bootstrap.clone(),
        ];
        let mut process = NodeProcess::spawn_exact(self.dir.path(), &args);
        let info = process.wait_ready(Duration::from_secs(60));
        self.process = Some(process);
        info["node_id"].as_str().expect("node id").to_owned()
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api)
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

fn write_config(dir: &Path, jobs: &str) {
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[jobs]\nprovider_lost_after_secs = 2\ndeadline_grace_secs = 30\n\
             placement_timeout_secs = 60\n{jobs}"
        ),
    )
    .expect("config");
}

/// A requester process on `dir` joined to `providers`, once it sees the four nodes.
async fn requester_of(
    providers: &[TestNode],
    dir: tempfile::TempDir,
    http: &reqwest::Client,
) -> Requester {
    let [tcp, api] = suanli_node::fixtures::loopback_ports::<2>().expect("ports");
    let mut requester = Requester {
        dir,
        tcp,
        api,
        bootstrap: providers[0].tcp_addr().to_string(),
        process: None,
    };
    requester.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(http, &requester.url("/v1/mesh"))
        .await
        .and_then(|mesh| mesh.as_array().map(Vec::len))
        != Some(4)
    {
        assert!(
            Instant::now() < deadline,
            "the requester never saw the mesh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    requester
}

/// Waits until the runs of the replicated job at `url` are as `wanted` says (`what`), failing if
/// the job ends first.
async fn wait_runs(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    wanted: impl Fn(&[Value]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = get_json(http, url).await.expect("job view");
        let runs = view["replicas"]["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if wanted(&runs) {
            return;
        }
        assert!(
            !view["state"]
                .as_str()
                .is_some_and(|s| s == "succeeded" || s == "failed"),
            "the job ended before {what}: {view}"
        );
        assert!(Instant::now() < deadline, "never {what}: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks that the job at `url` wrote "done" and that the requester stored one piece of
/// evidence, which checks against `odd` and `honest`; returns that evidence's view.
async fn output_and_evidence(
    http: &reqwest::Client,
    url: &str,
    requester: &Requester,
    odd: NodeId,
    honest: &BTreeSet<NodeId>,
) -> Value {
    let output = http
        .get(format!("{url}/output"))
        .send()
        .await
        .expect("GET output")
        .bytes()
        .await
        .expect("output");
    assert_eq!(output.as_ref(), b"done\n");
    let page = get_json(http, &requester.url("/v1/evidence"))
        .await
        .expect("evidence");
    let listed = page["evidence"].as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{page}");
    check_evidence(
        &hex_decode(listed[0]["evidence"].as_str().expect("hex")),
        odd,
        honest,
    );
    listed[0].clone()
}

/// Waits until `url`'s job is final and returns its view.
async fn wait_final(http: &reqwest::Client, url: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(view) = get_json(http, &format!("{url}?wait_ms=5000")).await
            && view["state"]
                .as_str()
                .is_some_and(|s| s == "succeeded" || s == "failed")
        {
            return view;
        }
        assert!(Instant::now() < deadline, "{url} never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_job_survives_a_kill_of_its_requester_with_one_verdict() {
    with_timeout(async {
        let providers = providers(&[]).await;
        let odd = providers[2].handle.node_id;
        let honest: BTreeSet<NodeId> = providers[..2].iter().map(|p| p.handle.node_id).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        write_config(dir.path(), "");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let mut requester = requester_of(&providers, dir, &http).await;

        // Long enough a run that the kill lands while the replicas run.
        let body = json!({
            "module_wat": slow_wat(1_500_000_000),
            "replicas": 3,
            "max_price": 1_000_000_000u64,
            "placement": { "remote_only": true },
            "limits": { "fuel": 60_000_000_000u64, "timeout_ms": 60_000 },
        });
        let answer: Value = http
            .post(requester.url("/v1/jobs"))
            .json(&body)
            .send()
            .await
            .expect("POST job")
            .json()
            .await
            .expect("submit answer");
        let group = answer["job_id"].as_str().expect("job id").to_owned();
        let job_url = requester.url(&format!("/v1/jobs/{group}"));

        // kill -9 once every replica has a contract.
        wait_runs(&http, &job_url, "all three replicas running", |runs| {
            runs.len() == 3 && runs.iter().all(|run| run["state"] == "running")
        })
        .await;
        requester.kill();
        requester.start();

        // The group ends, once, with the majority's output and one piece of evidence.
        let view = wait_final(&http, &job_url, Duration::from_secs(90)).await;
        assert_eq!(view["state"], "succeeded", "{view}");
        assert_eq!(view["replicas"]["odd"], json!([odd.to_string()]), "{view}");
        output_and_evidence(&http, &job_url, &requester, odd, &honest).await;
        // The group is listed once, and reads the same after another restart.
        let jobs = get_json(&http, &requester.url("/v1/jobs"))
            .await
            .expect("jobs");
        assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");
        requester.kill();
        requester.start();
        let again = get_json(&http, &job_url).await.expect("job view");
        assert_eq!(again["state"], view["state"]);
        assert_eq!(again["output_hash"], view["output_hash"]);
        assert_eq!(again["replicas"]["odd"], view["replicas"]["odd"]);
        let page = get_json(&http, &requester.url("/v1/evidence"))
            .await
            .expect("evidence");
        assert_eq!(page["evidence"].as_array().map(Vec::len), Some(1));
        requester.kill();
        for provider in providers {
            provider.stop().await;
        }
    })
    .await;
}

/// Spot checks (`jobs.spot_check_fraction = 1`): a job that lands on the dishonest provider (the
/// cheapest) keeps the result it got, but its check on an honest provider disagrees, a tie-break
/// on the other honest one decides, and evidence is stored against the dishonest provider; the
/// requester is killed (`kill -9`) while the check runs and the check still ends once. The next
/// job runs on an honest provider and its check agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_check_catches_a_dishonest_provider_across_a_kill_of_its_requester() {
    with_timeout(async {
        let providers = priced_providers(&[], [100, 200, 50]).await;
        let odd = providers[2].handle.node_id;
        let honest: BTreeSet<NodeId> = providers[..2].iter().map(|p| p.handle.node_id).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        write_config(dir.path(), "spot_check_fraction = 1.0\n");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let mut requester = requester_of(&providers, dir, &http).await;

        let body = json!({
            "module_wat": slow_wat(600_000_000),
            "max_price": 1_000_000_000u64,
            "placement": { "remote_only": true },
            "limits": { "fuel": 60_000_000_000u64, "timeout_ms": 60_000 },
        });
        let jobs_url = requester.url("/v1/jobs");
        let submit = |body: Value| {
            let http = http.clone();
            let url = jobs_url.clone();
            async move {
                let answer: Value = http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .expect("POST job")
                    .json()
                    .await
                    .expect("submit answer");
                answer["job_id"].as_str().expect("job id").to_owned()
            }
        };
        let job = submit(body.clone()).await;
        let job_url = requester.url(&format!("/v1/jobs/{job}"));

        // The job ends on the cheapest provider with the result it signed; it names its check.
        let view = wait_final(&http, &job_url, Duration::from_secs(60)).await;
        assert_eq!(view["state"], "succeeded", "{view}");
        assert_eq!(view["provider"], odd.to_string(), "{view}");
        let check = view["group"].as_str().expect("a spot check").to_owned();
        let check_url = requester.url(&format!("/v1/jobs/{check}"));

        // kill -9 while the check's run is running.
        wait_runs(&http, &check_url, "the check's run running", |runs| {
            runs.len() == 2 && runs[1]["state"] == "running"
        })
        .await;
        requester.kill();
        requester.start();

        // The check disagreed, a tie-break decided, and the evidence names the odd provider.
        let checked = wait_final(&http, &check_url, Duration::from_secs(120)).await;
        assert_eq!(checked["state"], "succeeded", "{checked}");
        assert_eq!(checked["replicas"]["spot_check"], true, "{checked}");
        assert_eq!(checked["replicas"]["count"], 3, "{checked}");
        assert_eq!(
            checked["replicas"]["odd"],
            json!([odd.to_string()]),
            "{checked}"
        );
        assert!(checked.get("api_token").is_none(), "{checked}");
        let runs = checked["replicas"]["runs"]
            .as_array()
            .expect("runs")
            .clone();
        assert_eq!(
            runs[0]["job_id"],
            job.as_str(),
            "the checked job is the first run"
        );
        let used: BTreeSet<String> = runs
            .iter()
            .filter_map(|run| run["provider"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(used.len(), 3, "distinct providers: {checked}");
        let listed = output_and_evidence(&http, &check_url, &requester, odd, &honest).await;
        assert_eq!(listed["group"], check.as_str());
        // The checked job is as it ended; only it is listed; the odd provider is distrusted.
        let again = get_json(&http, &job_url).await.expect("job view");
        assert_eq!(again["output_hash"], view["output_hash"]);
        assert_eq!(again["cost"], view["cost"]);
        let jobs = get_json(&http, &requester.url("/v1/jobs"))
            .await
            .expect("jobs");
        assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");
        let peers = get_json(&http, &requester.url("/v1/peers"))
            .await
            .expect("peers");
        let standing = peers
            .as_array()
            .and_then(|peers| {
                peers
                    .iter()
                    .find(|peer| peer["node_id"] == odd.to_string())
                    .map(|peer| peer["standing"].clone())
            })
            .expect("the odd provider's standing");
        assert_eq!(standing["distrusted"], true, "{standing}");

        // The next job avoids it; its check runs on the other honest provider and agrees.
        let job = submit(body).await;
        let view = wait_final(
            &http,
            &requester.url(&format!("/v1/jobs/{job}")),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(view["state"], "succeeded", "{view}");
        assert_ne!(view["provider"], odd.to_string(), "{view}");
        let check = view["group"].as_str().expect("a spot check");
        let checked = wait_final(
            &http,
            &requester.url(&format!("/v1/jobs/{check}")),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(checked["state"], "succeeded", "{checked}");
        assert_eq!(checked["replicas"]["count"], 2, "{checked}");
        assert_eq!(checked["replicas"]["odd"], json!([]), "{checked}");
        assert_eq!(checked["output_hash"], view["output_hash"], "{checked}");
        requester.kill();
        for provider in providers {
            provider.stop().await;
        }
    })
    .await;
}
