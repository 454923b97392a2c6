//! The `gossip` scenario: how long a changed capacity advert takes to reach every node's
//! capacity view, what a node costs in memory, connections and bytes, against bare gossipsub on
//! the same topology.
//!
//! For each mesh size N: start N nodes, each bootstrapping from a pseudo-random earlier one
//! (joining through view sync and the capacity view), and wait until every view holds all N
//! (timed from the last start). Up to [`MAX_FULL_NODES`] they are full nodes on loopback TCP
//! with production advert timing (re-publication every 10 s); above, network-only nodes
//! ([`NetNode`]: the real network task, advert validation and capacity view, without executor
//! or ledger) over the in-process memory transport, re-publishing every
//! [`LARGE_ADVERT_INTERVAL_SECS`] and pinging every [`LARGE_PING_INTERVAL_SECS`] (two cores
//! cannot verify a thousand nodes' ten-second adverts a thousand times over, nor carry their
//! five-second pings); they join one after another, each once its view sync is done. Both run
//! the default peer limits (target 25, at most 50). Then: the bytes read per node per second and
//! the process's CPU time per node over a quiet window, and `ROUNDS` times one node publishes a
//! new advert, timed until every view holds its sequence number (polled in place every
//! millisecond; a round still missing a node after [`ROUND_LIMIT`] counts at the limit and is
//! reported). Memory = growth of the resident set / N.
//!
//! Floor: N bare gossipsub swarms (`network::floor`) wired exactly like the nodes ended up
//! (each node's connected peers, read after convergence), publishing payloads of the size of a
//! signed advert message; same transport, gossipsub parameters, message ids and heartbeat. It
//! runs in a child process (`suanli bench-gossip-floor`, hidden), so its memory per swarm is
//! measured from a clean resident set rather than on top of memory the nodes freed.

use std::time::{Duration, Instant};

use suanli_protocol::wire::{GossipMessage, WireMessage};
use suanli_protocol::{NodeId, Signed};
use tracing::{info, warn};

use super::nodes::{BenchNode, NetNode, loopback_config};
use super::{BenchError, Context, Figure, Samples, ms, rss_bytes};
use crate::mesh::MeshView;
use crate::network::NetworkHandle;

const SCENARIO: &str = "gossip";
/// Largest mesh run with full nodes on loopback TCP; larger ones use network-only nodes over
/// the memory transport.
pub const MAX_FULL_NODES: usize = 100;
/// Advert re-publication interval of the network-only nodes.
pub const LARGE_ADVERT_INTERVAL_SECS: u64 = 300;
/// Ping interval of the network-only nodes (dead-peer detection; 5 s in production): a
/// thousand nodes' ~13,000 connections pinging both ways every 5 s are a third of a core.
pub const LARGE_PING_INTERVAL_SECS: u64 = 30;
/// Largest mesh run at all.
pub const MAX_NODES: usize = 2_000;
/// How long bytes are counted with no advert changing.
const QUIET_WINDOW: Duration = Duration::from_secs(5);

/// Why a mesh size is not run.
pub fn skip_reason(n: usize) -> Option<String> {
    (n > MAX_NODES).then(|| {
        format!(
            "{n} nodes skipped: at most {MAX_NODES} fit in one process on a 2-core machine \
             (the scale model in docs/benchmarks.md covers larger meshes)"
        )
    })
}

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let sizes = context.options.gossip_nodes.clone();
    let rounds = context.options.pick(5, 10);
    let mut figures = Vec::new();
    for n in sizes {
        if let Some(reason) = skip_reason(n) {
            warn!(%reason, "gossip mesh size skipped");
            continue;
        }
        match measure(context, n, rounds).await {
            Ok(measured) => figures.extend(measured),
            // A mesh that does not converge is a result too: report how far it got, go on.
            Err(NotConverged {
                n,
                smallest,
                waited,
            }) => {
                warn!(n, smallest, ?waited, "mesh did not converge");
                figures.push(not_converged(n, smallest, waited));
            }
            Err(Failed(error)) => return Err(error),
        }
    }
    Ok(figures)
}

fn not_converged(n: usize, smallest: usize, waited: Duration) -> Figure {
    Figure::plain(
        SCENARIO,
        format!(
            "{n} nodes: DID NOT CONVERGE in {} s; smallest capacity view",
            waited.as_secs()
        ),
        smallest as f64,
        "nodes",
    )
}

/// Why one mesh size has no spread figures.
#[derive(Debug)]
enum MeshError {
    NotConverged {
        n: usize,
        smallest: usize,
        waited: Duration,
    },
    Failed(BenchError),
}
use MeshError::{Failed, NotConverged};

impl From<BenchError> for MeshError {
    fn from(error: BenchError) -> MeshError {
        Failed(error)
    }
}

/// How long one spread round waits for every view to hold the new advert.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

/// How long a mesh may take to converge after its last node started.
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);

/// One node of the measured mesh: a full node or a network-only one.
enum Member {
    Full(BenchNode),
    Net(NetNode),
}

impl Member {
    fn network(&self) -> &NetworkHandle {
        match self {
            Member::Full(node) => &node.handle.network,
            Member::Net(node) => &node.network,
        }
    }

    fn mesh(&self) -> &MeshView {
        match self {
            Member::Full(node) => &node.handle.mesh,
            Member::Net(node) => &node.mesh,
        }
    }

    fn node_id(&self) -> NodeId {
        match self {
            Member::Full(node) => node.handle.node_id,
            Member::Net(node) => node.node_id,
        }
    }

    fn addr(&self) -> Result<String, BenchError> {
        match self {
            Member::Full(node) => node.tcp_addr(),
            Member::Net(node) => Ok(node.addr.clone()),
        }
    }

    fn keypair(&self) -> Result<suanli_protocol::Keypair, BenchError> {
        match self {
            Member::Full(node) => node.keypair(),
            Member::Net(node) => Ok(node.keypair.clone()),
        }
    }

    fn mesh_size(&self) -> usize {
        self.mesh().live_count(crate::clock::now_ms())
    }

    async fn stop(self) {
        match self {
            Member::Full(node) => node.stop().await,
            Member::Net(node) => node.stop().await,
        }
    }
}

async fn stop_all(members: Vec<Member>) {
    for member in members {
        member.stop().await;
    }
}

async fn start_member(
    context: &Context,
    n: usize,
    bootstrap: &[String],
    detected: &crate::capacity::Detected,
) -> Result<Member, BenchError> {
    if n <= MAX_FULL_NODES {
        let config = loopback_config(bootstrap, 10);
        let dir = context.workspace.subdir("gossip")?;
        return Ok(Member::Full(BenchNode::start(dir, config).await?));
    }
    let mut config = loopback_config(bootstrap, LARGE_ADVERT_INTERVAL_SECS);
    config.network.ping_interval_secs = LARGE_PING_INTERVAL_SECS;
    config.network.ping_timeout_secs = 2 * LARGE_PING_INTERVAL_SECS;
    config.network.listen = vec![crate::network::memory::unique_addr().to_string()];
    let dir = context.workspace.subdir("gossip")?;
    Ok(Member::Net(NetNode::start(dir, config, detected).await?))
}

/// How long a network-only joiner is given to sync its view before the next one starts.
const JOIN_WAIT: Duration = Duration::from_secs(2);

/// Waits until a network-only joiner's view holds what its bootstrap peer's did when it started
/// (its view sync is done), for at most [`JOIN_WAIT`]. A thousand in-process nodes started at
/// once would all sync from peers that know nobody yet, and then learn each other only from
/// re-publications; data centers join a running grid one at a time.
async fn joined(member: &Member, known: usize) {
    let until = Instant::now() + JOIN_WAIT;
    while member.mesh_size() < known && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The node that node `index` (> 0) bootstraps from: a pseudo-random earlier one, deterministic
/// and spread out.
fn earlier(index: usize) -> usize {
    let mixed = (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
    usize::try_from(mixed).unwrap_or(0) % index.max(1)
}

/// What the nodes measured before the floor runs.
struct Measured {
    spreads: Samples,
    /// Rounds whose advert had not reached every node after [`ROUND_LIMIT`].
    missed_rounds: usize,
    mesh_peers: f64,
    connected: f64,
    most_connections: usize,
    max_connections: usize,
    quiet_bytes_per_node_s: f64,
    /// CPU time of the whole process in the quiet window, per node per second.
    quiet_cpu_ms_per_node_s: f64,
    bytes_per_advert_per_node: f64,
}

async fn measure(context: &Context, n: usize, rounds: usize) -> Result<Vec<Figure>, MeshError> {
    let memory = n > MAX_FULL_NODES;
    let detected = crate::capacity::Detected::probe();
    let rss_before = rss_bytes();
    let mut nodes: Vec<Member> = Vec::with_capacity(n);
    for index in 0..n {
        let (bootstrap, known) = match index {
            0 => (Vec::new(), 0),
            _ => match nodes.get(earlier(index)) {
                Some(earlier) => (vec![earlier.addr()?], earlier.mesh_size()),
                None => (Vec::new(), 0),
            },
        };
        let member = start_member(context, n, &bootstrap, &detected).await?;
        if memory {
            joined(&member, known).await;
        }
        nodes.push(member);
        if index % 100 == 99 {
            info!(started = index + 1, n, "gossip nodes starting");
        }
    }
    let last_started = Instant::now();
    let deadline = last_started + CONVERGE_LIMIT;
    let mut next_report = last_started;
    while !nodes.iter().all(|node| node.mesh_size() >= n) {
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(5);
            let short = nodes.iter().filter(|node| node.mesh_size() < n).count();
            let smallest = nodes.iter().map(Member::mesh_size).min().unwrap_or(0);
            info!(n, short, smallest, "views not full yet");
        }
        if Instant::now() > deadline {
            break;
        }
        // Each look reads every view whole: a thousand of them every 20 ms would be a load
        // of its own.
        tokio::time::sleep(Duration::from_millis(if memory { 200 } else { 20 })).await;
    }
    // Views that did not fill are a figure of their own; spread, connections and memory are
    // still measured (a published advert reaching everyone does not need full views).
    let smallest = nodes.iter().map(Member::mesh_size).min().unwrap_or(0);
    let converged = (smallest >= n).then(|| last_started.elapsed());
    match converged {
        Some(converged) => info!(n, ?converged, "every view full"),
        None => warn!(
            n,
            smallest,
            ?CONVERGE_LIMIT,
            "views not full; measuring the rest"
        ),
    }
    let result = spread(&nodes, n, rounds).await;
    if let (Err(error), None) = (&result, converged) {
        warn!(n, %error, "no spread figure either");
        stop_all(nodes).await;
        return Err(NotConverged {
            n,
            smallest,
            waited: CONVERGE_LIMIT,
        });
    }
    let rss_per_node = rss_bytes().saturating_sub(rss_before) / n.max(1) as u64;
    let topology = topology(&nodes).await;
    let payload = advert_message_bytes(nodes.first());
    stop_all(nodes).await;
    let measured = result?;
    info!(n, "nodes measured; now bare gossipsub on the same topology");

    let request = FloorRequest {
        topology,
        payload,
        rounds,
        memory,
    };
    let (floor, floor_rss) = match floor_in_child(&request).await {
        Ok(answer) => answer,
        Err(error) => {
            warn!(%error, "bare gossipsub in a child process failed; measuring in this process");
            let before = rss_bytes();
            let spreads = run_floor(&request).await?;
            let rss = rss_bytes().saturating_sub(before) / n.max(1) as u64;
            (spreads, rss)
        }
    };
    let floor = Samples::new(floor);
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let kind = if memory {
        "network-only nodes, memory transport"
    } else {
        "full nodes, loopback TCP"
    };
    Ok(vec![
        Figure::against(
            SCENARIO,
            format!("{n} nodes: spread p50"),
            ms(measured.spreads.p50()),
            "ms",
            ms(floor.p50()),
            "bare gossipsub spread p50, same topology",
        ),
        Figure::against(
            SCENARIO,
            format!("{n} nodes: spread max"),
            ms(measured.spreads.max()),
            "ms",
            ms(floor.max()),
            "bare gossipsub spread max",
        ),
        Figure::against(
            SCENARIO,
            format!("{n} nodes: memory per node ({kind})"),
            mib(rss_per_node),
            "MiB",
            mib(floor_rss),
            "bare gossipsub swarm, same topology",
        ),
        match converged {
            Some(converged) => Figure::plain(
                SCENARIO,
                format!("{n} nodes: last start → all views full"),
                converged.as_secs_f64(),
                "s",
            ),
            None => not_converged(n, smallest, CONVERGE_LIMIT),
        },
        Figure::against(
            SCENARIO,
            format!("{n} nodes: most connections held by a node"),
            measured.most_connections as f64,
            "connections",
            measured.max_connections as f64,
            "configured maximum",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: connected peers per node"),
            measured.connected,
            "peers",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: gossip mesh peers per node"),
            measured.mesh_peers,
            "peers",
        ),
        Figure::plain(
            SCENARIO,
            format!(
                "{n} nodes: rounds whose advert missed a node for {} s (counted at {0} s)",
                ROUND_LIMIT.as_secs()
            ),
            measured.missed_rounds as f64,
            "rounds",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: advert message size"),
            payload as f64,
            "bytes",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: bytes read per node per second, quiet"),
            measured.quiet_bytes_per_node_s,
            "B/s",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: CPU per node per second, quiet (whole process / N)"),
            measured.quiet_cpu_ms_per_node_s,
            "ms/s",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: bytes read per node per advert published"),
            measured.bytes_per_advert_per_node,
            "bytes",
        ),
    ])
}

/// Traffic, connections and spread of a mesh once started.
async fn spread(nodes: &[Member], n: usize, rounds: usize) -> Result<Measured, BenchError> {
    let fail = |error: crate::network::NetworkStopped| BenchError::scenario(SCENARIO, error);
    let (mut mesh_peers, mut connected, mut most_connections, mut max_connections) =
        (0usize, 0usize, 0usize, 0usize);
    for node in nodes {
        let (mesh, _) = node.network().gossip_mesh().await.map_err(fail)?;
        let stats = node.network().connection_stats().await.map_err(fail)?;
        mesh_peers += mesh;
        connected += stats.peers;
        most_connections = most_connections.max(stats.peak_established);
        max_connections = stats.max_connections;
    }
    // Bytes are counted on the memory transport only (full nodes use sockets).
    let bytes = || crate::network::memory::BYTES_READ.load(std::sync::atomic::Ordering::Relaxed);
    let cpu_us = || crate::capacity::own_cpu_us().unwrap_or(0);
    let quiet_started = (Instant::now(), bytes(), cpu_us());
    tokio::time::sleep(QUIET_WINDOW).await;
    let quiet_bytes = bytes() - quiet_started.1;
    let quiet_cpu_ms_per_node_s = cpu_us().saturating_sub(quiet_started.2) as f64
        / 1000.0
        / n.max(1) as f64
        / quiet_started.0.elapsed().as_secs_f64();
    let quiet_per_node_s =
        quiet_bytes as f64 / n.max(1) as f64 / quiet_started.0.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(rounds);
    let mut missed_rounds = 0;
    let mut advert_bytes = 0.0;
    for round in 0..rounds {
        let Some(publisher) = nodes.get((round * 31) % n.max(1)) else {
            break;
        };
        let id = publisher.node_id();
        let (started, before) = (Instant::now(), bytes());
        publisher.network().publish_advert().await.map_err(fail)?;
        let seq = publisher.mesh().seq_of(&id).unwrap_or(0);
        let has_it = |node: &Member| node.mesh().seq_of(&id).is_some_and(|s| s >= seq);
        while !nodes.iter().all(has_it) {
            if started.elapsed() > ROUND_LIMIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Gossip is lossy: a node that missed the advert gets it with the next re-publication.
        // Such a round counts at the limit (so the percentiles stay honest) and is reported.
        let missing = nodes.iter().filter(|node| !has_it(node)).count();
        if missing > 0 {
            warn!(
                n,
                round, missing, "an advert did not reach every node in time"
            );
            missed_rounds += 1;
        }
        samples.push(started.elapsed().min(ROUND_LIMIT));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The round's bytes beyond the quiet rate, per node.
        let extra = (bytes() - before) as f64
            - quiet_per_node_s * n as f64 * started.elapsed().as_secs_f64();
        advert_bytes += extra.max(0.0) / n.max(1) as f64;
    }
    if missed_rounds == samples.len() {
        return Err(BenchError::scenario(
            SCENARIO,
            format!("no advert reached all {n} nodes within {ROUND_LIMIT:?}"),
        ));
    }
    Ok(Measured {
        missed_rounds,
        spreads: Samples::new(samples),
        mesh_peers: mesh_peers as f64 / n.max(1) as f64,
        connected: connected as f64 / n.max(1) as f64,
        most_connections,
        max_connections,
        quiet_bytes_per_node_s: quiet_per_node_s,
        quiet_cpu_ms_per_node_s,
        bytes_per_advert_per_node: advert_bytes / rounds.max(1) as f64,
    })
}

/// Each node's connected peers, as indices into `nodes`.
async fn topology(nodes: &[Member]) -> Vec<Vec<usize>> {
    let ids: Vec<String> = nodes
        .iter()
        .map(|node| node.node_id().to_string())
        .collect();
    let mut topology = vec![Vec::new(); nodes.len()];
    for (index, node) in nodes.iter().enumerate() {
        let peers = match node.network().peers().await {
            Ok(peers) => peers,
            Err(error) => {
                warn!(%error, "no peer list; the floor topology misses this node's links");
                continue;
            }
        };
        for peer in peers {
            let Some(other) = ids.iter().position(|id| *id == peer.node_id) else {
                continue;
            };
            for (a, b) in [(index, other), (other, index)] {
                if a != b
                    && let Some(list) = topology.get_mut(a)
                    && !list.contains(&b)
                {
                    list.push(b);
                }
            }
        }
    }
    topology
}

/// The encoded size of `node`'s signed advert as gossiped (a typical size when it has none).
fn advert_message_bytes(node: Option<&Member>) -> usize {
    const TYPICAL: usize = 400;
    let Some(node) = node else { return TYPICAL };
    let id: NodeId = node.node_id();
    let (Some(entry), Ok(key)) = (node.mesh().get(&id), node.keypair()) else {
        return TYPICAL;
    };
    Signed::sign(&entry.advert, &key)
        .ok()
        .and_then(|signed| GossipMessage::Advert(signed).to_bytes().ok())
        .map_or(TYPICAL, |bytes| bytes.len())
}

/// What the child process of the bare-gossipsub floor is asked to do.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct FloorRequest {
    pub topology: Vec<Vec<usize>>,
    pub payload: usize,
    pub rounds: usize,
    /// Over the memory transport (as the network-only nodes), else loopback TCP.
    pub memory: bool,
}

/// What it answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct FloorAnswer {
    pub spreads_ns: Vec<u64>,
    pub rss_per_node_bytes: u64,
}

async fn run_floor(request: &FloorRequest) -> Result<Vec<Duration>, BenchError> {
    crate::network::floor::gossipsub_spread(
        &request.topology,
        request.payload,
        request.rounds,
        request.memory,
    )
    .await
    .map_err(|error| BenchError::scenario(SCENARIO, error))
}

/// The child's side: runs the floor for `request` (JSON) and returns the answer (JSON).
pub async fn floor_child(request: &str) -> Result<String, BenchError> {
    let request: FloorRequest =
        serde_json::from_str(request).map_err(|error| BenchError::scenario(SCENARIO, error))?;
    let before = rss_bytes();
    let spreads = run_floor(&request).await?;
    let answer = FloorAnswer {
        spreads_ns: spreads
            .iter()
            .map(|spread| u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX))
            .collect(),
        rss_per_node_bytes: rss_bytes().saturating_sub(before)
            / request.topology.len().max(1) as u64,
    };
    serde_json::to_string(&answer).map_err(|error| BenchError::scenario(SCENARIO, error))
}

/// Runs the floor in a child `suanli bench-gossip-floor` (this very executable).
async fn floor_in_child(request: &FloorRequest) -> Result<(Vec<Duration>, u64), BenchError> {
    use tokio::io::AsyncWriteExt;
    let fail = |error: &dyn std::fmt::Display| BenchError::scenario(SCENARIO, error);
    let exe = std::env::current_exe().map_err(|error| fail(&error))?;
    if exe
        .file_stem()
        .is_none_or(|stem| stem.to_string_lossy() != "suanli")
    {
        return Err(fail(&"not running as the suanli binary"));
    }
    let mut child = tokio::process::Command::new(exe)
        .arg("bench-gossip-floor")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| fail(&error))?;
    let input = serde_json::to_vec(request).map_err(|error| fail(&error))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&input)
            .await
            .map_err(|error| fail(&error))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|error| fail(&error))?;
    if !output.status.success() {
        return Err(fail(&format!("child exited with {}", output.status)));
    }
    let answer: FloorAnswer =
        serde_json::from_slice(&output.stdout).map_err(|error| fail(&error))?;
    Ok((
        answer
            .spreads_ns
            .into_iter()
            .map(Duration::from_nanos)
            .collect(),
        answer.rss_per_node_bytes,
    ))
}
