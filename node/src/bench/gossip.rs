//! The `gossip` scenario: how long a changed capacity advert takes to reach every node's
//! capacity view, and what a node costs in memory, against bare gossipsub on the same topology.
//!
//! For each mesh size N: start N full nodes on loopback TCP, each bootstrapping from a
//! pseudo-random earlier one (discovery goes through the DHT), with production advert timing
//! (re-publication every 10 s, TTL 30 s); wait until every view holds all N; then, `ROUNDS`
//! times, have one node publish a new advert and time until every view holds its sequence
//! number (polled in place every millisecond). Memory = growth of the resident set / N.
//!
//! Floor: N bare gossipsub swarms (`network::floor`) wired exactly like the nodes ended up
//! (each node's connected peers, read after convergence), publishing payloads of the size of a
//! signed advert message; same transport, message ids and heartbeat. It runs in a child
//! process (`suanli bench-gossip-floor`, hidden), so its memory per swarm is measured from a
//! clean resident set rather than on top of memory the nodes freed.

use std::time::{Duration, Instant};

use suanli_protocol::wire::{GossipMessage, WireMessage};
use suanli_protocol::{NodeId, Signed};
use tracing::{info, warn};

use super::nodes::{BenchNode, loopback_config, stop_all, wait_for_mesh};
use super::{BenchError, Context, Figure, Samples, ms, rss_bytes};

const SCENARIO: &str = "gossip";
/// Mesh sizes beyond this are skipped unless asked for: see [`skip_reason`].
pub const MAX_DEFAULT_NODES: usize = 100;

/// Why a mesh size is not run by default.
pub fn skip_reason(n: usize) -> Option<String> {
    (n > MAX_DEFAULT_NODES).then(|| {
        format!(
            "{n} nodes skipped: full nodes end up connected to almost every other (Kademlia \
             lookups connect to the peers they query and gossipsub keeps every connection to a \
             subscribed peer alive), so {n} in-process nodes hold ~{} connections; 100 nodes \
             took about two minutes to converge on a quiet 2-core machine (and did not \
             converge in five minutes on a shared one), at ~20-27 MiB each. Run it with \
             --gossip-nodes {n} once the connection manager trims idle connections.",
            n * (n - 1) / 2
        )
    })
}

pub async fn run(context: &mut Context) -> Result<Vec<Figure>, BenchError> {
    let sizes = context.options.gossip_nodes.clone();
    let rounds = context.options.pick(5, 10);
    let mut figures = Vec::new();
    for n in sizes {
        match measure(context, n, rounds).await {
            Ok(measured) => figures.extend(measured),
            // A mesh that does not converge is a result too: report how far it got, go on.
            Err(NotConverged {
                n,
                smallest,
                waited,
            }) => {
                warn!(n, smallest, ?waited, "mesh did not converge");
                figures.push(Figure::plain(
                    SCENARIO,
                    format!(
                        "{n} nodes: DID NOT CONVERGE in {} s; smallest capacity view",
                        waited.as_secs()
                    ),
                    smallest as f64,
                    "nodes",
                ));
            }
            Err(Failed(error)) => return Err(error),
        }
    }
    Ok(figures)
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

/// How long a mesh may take to converge.
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);

async fn measure(context: &Context, n: usize, rounds: usize) -> Result<Vec<Figure>, MeshError> {
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut nodes: Vec<BenchNode> = Vec::with_capacity(n);
    for index in 0..n {
        let bootstrap = match index {
            0 => Vec::new(),
            _ => {
                // A pseudo-random earlier node: deterministic, spread out.
                let earlier = nodes.get((index * 7919) % index);
                vec![
                    earlier
                        .map(BenchNode::tcp_addr)
                        .transpose()?
                        .unwrap_or_default(),
                ]
            }
        };
        let config = loopback_config(&bootstrap, 10);
        nodes.push(BenchNode::start(context.workspace.subdir("gossip")?, config).await?);
    }
    let deadline = Instant::now() + CONVERGE_LIMIT;
    while !nodes.iter().all(|node| node.mesh_size() >= n) {
        if Instant::now() > deadline {
            let smallest = nodes.iter().map(BenchNode::mesh_size).min().unwrap_or(0);
            stop_all(nodes).await;
            return Err(NotConverged {
                n,
                smallest,
                waited: CONVERGE_LIMIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = spread(&nodes, n, rounds, started).await;
    let rss_per_node = rss_bytes().saturating_sub(rss_before) / n.max(1) as u64;
    let topology = topology(&nodes).await;
    let payload = advert_message_bytes(nodes.first());
    stop_all(nodes).await;
    let (converged, spreads, mesh_peers, connected) = result?;
    info!(
        n,
        ?converged,
        "nodes measured; now bare gossipsub on the same topology"
    );

    let request = FloorRequest {
        topology,
        payload,
        rounds,
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
    Ok(vec![
        Figure::against(
            SCENARIO,
            format!("{n} nodes: spread p50"),
            ms(spreads.p50()),
            "ms",
            ms(floor.p50()),
            "bare gossipsub spread p50, same topology",
        ),
        Figure::against(
            SCENARIO,
            format!("{n} nodes: spread max"),
            ms(spreads.max()),
            "ms",
            ms(floor.max()),
            "bare gossipsub spread max",
        ),
        Figure::against(
            SCENARIO,
            format!("{n} nodes: memory per node"),
            mib(rss_per_node),
            "MiB",
            mib(floor_rss),
            "bare gossipsub swarm, same topology",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: start → all views full"),
            converged.as_secs_f64(),
            "s",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: connected peers per node"),
            connected,
            "peers",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: gossip mesh peers per node"),
            mesh_peers,
            "peers",
        ),
        Figure::plain(
            SCENARIO,
            format!("{n} nodes: advert message size"),
            payload as f64,
            "bytes",
        ),
    ])
}

/// (convergence time, spread samples, mean gossip mesh peers, mean connected peers).
async fn spread(
    nodes: &[BenchNode],
    n: usize,
    rounds: usize,
    started: Instant,
) -> Result<(Duration, Samples, f64, f64), BenchError> {
    wait_for_mesh(nodes, n, Duration::from_secs(1)).await?;
    let converged = started.elapsed();
    let (mut mesh_peers, mut connected) = (0usize, 0usize);
    for node in nodes {
        let (mesh, subscribed) = node
            .handle
            .network
            .gossip_mesh()
            .await
            .map_err(|error| BenchError::scenario(SCENARIO, error))?;
        mesh_peers += mesh;
        connected += subscribed;
    }
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let Some(publisher) = nodes.get((round * 31) % n.max(1)) else {
            break;
        };
        let id = publisher.handle.node_id;
        let started = Instant::now();
        publisher
            .handle
            .network
            .publish_advert()
            .await
            .map_err(|error| BenchError::scenario(SCENARIO, error))?;
        let seq = publisher.handle.mesh.seq_of(&id).unwrap_or(0);
        while !nodes
            .iter()
            .all(|node| node.handle.mesh.seq_of(&id).is_some_and(|s| s >= seq))
        {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(BenchError::scenario(
                    SCENARIO,
                    format!("an advert did not reach all {n} nodes in 30 s"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok((
        converged,
        Samples::new(samples),
        mesh_peers as f64 / n.max(1) as f64,
        connected as f64 / n.max(1) as f64,
    ))
}

/// Each node's connected peers, as indices into `nodes`.
async fn topology(nodes: &[BenchNode]) -> Vec<Vec<usize>> {
    let ids: Vec<String> = nodes
        .iter()
        .map(|node| node.handle.node_id.to_string())
        .collect();
    let mut topology = vec![Vec::new(); nodes.len()];
    for (index, node) in nodes.iter().enumerate() {
        let peers = match node.handle.network.peers().await {
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
fn advert_message_bytes(node: Option<&BenchNode>) -> usize {
    const TYPICAL: usize = 400;
    let Some(node) = node else { return TYPICAL };
    let id: NodeId = node.handle.node_id;
    let (Some(entry), Ok(key)) = (node.handle.mesh.get(&id), node.keypair()) else {
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
}

/// What it answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct FloorAnswer {
    pub spreads_ns: Vec<u64>,
    pub rss_per_node_bytes: u64,
}

async fn run_floor(request: &FloorRequest) -> Result<Vec<Duration>, BenchError> {
    crate::network::floor::gossipsub_spread(&request.topology, request.payload, request.rounds)
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
