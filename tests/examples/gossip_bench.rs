//! Gossip benchmark: how long a changed capacity advert takes to reach every node's capacity
//! view, for meshes of N in-process nodes on loopback TCP, and the memory each node costs.
//!
//! `cargo run --release -p suanli-tests --example gossip_bench -- 10 50 100`
//!
//! Method: start N real nodes, each bootstrapping from a random earlier one (so discovery goes
//! through the DHT), wait until every view holds all N, then have one node publish a new advert
//! and time until every view holds that advert's sequence number (polled every 0.5 ms), with the
//! production re-publication interval (10 s) so periodic adverts do not hide the spread. Repeats
//! `ROUNDS` times from different publishers. Memory per node = growth of the process's resident
//! set from before the first node started to after convergence, divided by N.

use std::io::Write;
use std::time::{Duration, Instant};

use suanli_tests::{TestNode, test_config};

const ROUNDS: usize = 10;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn run(n: usize) {
    let rss_before = rss_bytes();
    let mut nodes: Vec<TestNode> = Vec::with_capacity(n);
    let started = Instant::now();
    for index in 0..n {
        let bootstrap: Vec<_> = if index == 0 {
            vec![]
        } else {
            // A pseudo-random earlier node: deterministic, spread out.
            vec![nodes[(index * 7919) % index].tcp_addr()]
        };
        // Production gossip timing (10 s re-publication, 30 s TTL): the background load of
        // periodic adverts grows with the square of the mesh size.
        let mut config = test_config(&bootstrap);
        config.network.advert_interval_secs = 10;
        config.network.advert_ttl_secs = 30;
        let dir = tempfile::tempdir().expect("temp dir");
        nodes.push(TestNode::start_with(dir, config).await);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while !nodes.iter().all(|node| node.mesh_size() == n) {
        assert!(Instant::now() < deadline, "{n} nodes did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let converged = started.elapsed();
    let mut mesh_sizes = Vec::new();
    for node in &nodes {
        mesh_sizes.push(node.handle.network.gossip_mesh().await.expect("mesh"));
    }
    let avg = |pick: fn(&(usize, usize)) -> usize| {
        mesh_sizes.iter().map(pick).sum::<usize>() as f64 / n as f64
    };
    let (mesh_avg, subscribed_avg) = (avg(|m| m.0), avg(|m| m.1));
    let rss_per_node = rss_bytes().saturating_sub(rss_before) / n as u64;

    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let publisher = &nodes[(round * 31) % n];
        let id = publisher.handle.node_id;
        let start = Instant::now();
        publisher
            .handle
            .network
            .publish_advert()
            .await
            .expect("publish");
        let seq = publisher
            .handle
            .mesh
            .get(&id)
            .expect("own advert")
            .advert
            .seq;
        loop {
            if nodes.iter().all(|node| {
                node.handle
                    .mesh
                    .get(&id)
                    .is_some_and(|e| e.advert.seq >= seq)
            }) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "advert did not spread"
            );
            // The check is cheap (no copies), so polling steals little CPU from the nodes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    times.sort();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "nodes={n:<4} converge={:>7.2}s  spread p50={:>7.2}ms p90={:>7.2}ms max={:>7.2}ms  rss/node={:.1}MiB  mesh peers={mesh_avg:.1} subscribed peers={subscribed_avg:.1}",
        converged.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3,
        times.last().expect("rounds").as_secs_f64() * 1e3,
        rss_per_node as f64 / (1024.0 * 1024.0),
    );
    drop(out);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 50, 100]
    } else {
        sizes
    };
    for n in sizes {
        run(n).await;
    }
}
