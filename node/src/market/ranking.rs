//! Choosing providers: which nodes of the capacity view can take a job, best first.

use std::collections::HashSet;

use suanli_protocol::{ClusterInfo, Credits, ExecutorKind, JobSpec, NodeId};

use crate::mesh::MeshView;

/// A node that can take the job, with what it would cost at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub max_cost: Credits,
    pub load_permille: u16,
}

/// Nodes whose live advert fits `spec` (executor, memory, price, placement), cheapest first, then
/// least loaded; ties are broken by `salt` so that equal providers share the work. For a job on a
/// cluster (executor `slurm`) the load is the cluster's: its share of CPUs busy, and full while
/// jobs wait in its queue.
pub fn candidates(
    mesh: &MeshView,
    spec: &JobSpec,
    me: NodeId,
    now_ms: u64,
    excluded: &HashSet<NodeId>,
    salt: u64,
) -> Vec<Candidate> {
    let placement = &spec.placement;
    let mut fitting: Vec<(Candidate, u64)> = mesh
        .snapshot(now_ms)
        .into_iter()
        .map(|entry| entry.advert)
        .filter(|advert| {
            advert.executors.contains(&spec.executor)
                && advert.total.memory_bytes >= spec.limits.memory_bytes
                && advert.load_permille < 1000
                && !excluded.contains(&advert.node)
                && !(placement.exclude_self && advert.node == me)
                && placement
                    .provider
                    .is_none_or(|pinned| pinned == advert.node)
                && placement
                    .region
                    .as_ref()
                    .is_none_or(|region| *region == advert.region)
        })
        .filter_map(|advert| {
            let max_cost = advert.prices.max_cost(&spec.limits).ok()?;
            let load_permille = match (&advert.cluster, spec.executor) {
                (Some(cluster), ExecutorKind::Slurm) => cluster_load(cluster),
                (None, ExecutorKind::Slurm) => return None,
                _ => advert.load_permille,
            };
            (max_cost <= spec.max_price).then(|| {
                let tie =
                    u64::from_le_bytes(advert.node.as_bytes()[..8].try_into().unwrap_or([0; 8]))
                        ^ salt;
                (
                    Candidate {
                        node: advert.node,
                        max_cost,
                        load_permille,
                    },
                    tie.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                )
            })
        })
        .collect();
    fitting.sort_by_key(|(candidate, tie)| (candidate.max_cost, candidate.load_permille, *tie));
    fitting
        .into_iter()
        .map(|(candidate, _)| candidate)
        .collect()
}

/// A cluster's load in permille: its share of CPUs busy, above 1000 while jobs wait in its queue
/// (more waiting, more load).
fn cluster_load(cluster: &ClusterInfo) -> u16 {
    let total = u64::from(cluster.total.cpu_cores.max(1));
    let busy = total.saturating_sub(u64::from(cluster.free.cpu_cores));
    let busy_permille = busy * 1000 / total;
    let queued = u64::from(cluster.pending_jobs).saturating_mul(1000) / total;
    u16::try_from(busy_permille + queued).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_protocol::Resources;

    #[test]
    fn a_cluster_with_a_queue_is_busier_than_a_full_one() {
        let cluster = |free, pending| ClusterInfo {
            scheduler: "slurm".into(),
            nodes: 2,
            total: Resources {
                cpu_cores: 4,
                ..Resources::default()
            },
            free: Resources {
                cpu_cores: free,
                ..Resources::default()
            },
            mesh_limit: Resources::default(),
            partitions: Vec::new(),
            pending_jobs: pending,
            running_jobs: 0,
        };
        assert_eq!(cluster_load(&cluster(4, 0)), 0);
        assert_eq!(cluster_load(&cluster(1, 0)), 750);
        assert_eq!(cluster_load(&cluster(0, 0)), 1000);
        assert_eq!(cluster_load(&cluster(0, 2)), 1500);
    }
}
