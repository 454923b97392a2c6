//! Choosing providers: which nodes of the capacity view can take a job, best first.

use std::collections::HashSet;

use suanli_protocol::{Credits, JobSpec, NodeId};

use crate::mesh::MeshView;

/// A node that can take the job, with what it would cost at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub max_cost: Credits,
    pub load_permille: u16,
}

/// Nodes whose live advert fits `spec` (executor, memory, price, placement), cheapest first, then
/// least loaded; ties are broken by `salt` so that equal providers share the work.
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
            (max_cost <= spec.max_price).then(|| {
                let tie =
                    u64::from_le_bytes(advert.node.as_bytes()[..8].try_into().unwrap_or([0; 8]))
                        ^ salt;
                (
                    Candidate {
                        node: advert.node,
                        max_cost,
                        load_permille: advert.load_permille,
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
