//! Capacity adverts: what every node gossips about itself, and their validation.
//!
//! Adverts are lossy by design: they are re-published periodically and on change, carry a TTL,
//! and the newest sequence number per node wins. A receiver validates an advert (signature,
//! sender, sizes, TTL bounds, clock skew) before it enters any capacity table. The size checks
//! are the advert's [`Document::check_bounds`], so signing and verifying enforce them too; the
//! checks that need a clock are in [`CapacityAdvert::validate`].

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::money::PriceTerms;
use crate::signed::{BoundsError, Document};
use crate::tokens::ModelInfo;

/// Caps and bounds of an advert.
pub const MAX_ADVERT_BYTES: usize = 16 * 1024;
pub const MAX_LISTEN_ADDRS: usize = 16;
pub const MAX_ADDR_BYTES: usize = 256;
pub const MAX_GPU_KINDS: usize = 16;
pub const MAX_GPU_MODEL_BYTES: usize = 128;
pub const MAX_EXECUTORS: usize = 8;
pub const MAX_VERSION_BYTES: usize = 64;
pub const MIN_TTL_MS: u64 = 1_000;
pub const MAX_TTL_MS: u64 = 10 * 60 * 1_000;
/// How far in the future an advert's issue time may be (the sender's clock running ahead).
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;
/// Load is given in permille of capacity in use.
pub const MAX_LOAD_PERMILLE: u16 = 1_000;
/// Caps of a [`ClusterInfo`].
pub const MAX_PARTITIONS: usize = 16;
pub const MAX_PARTITION_BYTES: usize = 64;
pub const MAX_SCHEDULER_BYTES: usize = 64;

/// A sandbox a node can run jobs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ExecutorKind {
    /// WebAssembly modules with WASI preview 1, run by wasmtime.
    Wasm,
    /// Model inference sessions (standing contracts, [`crate::tokens`]).
    Llm,
    /// WebAssembly jobs run on the provider's cluster through its scheduler (Slurm): each task
    /// is `suanli exec` on a compute node, under the same sandbox and limits as `wasm`, and a
    /// job of many tasks is one job array ([`ClusterInfo`], [`crate::negotiation::ClusterUsage`]).
    Slurm,
    /// A plain batch script (the "module" is its text) run by the provider's Slurm cluster as
    /// it is, outside any sandbox: providers offer it only to the node ids they list. No fuel is
    /// metered; the cluster's accounting is the whole usage.
    Batch,
}

impl ExecutorKind {
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Wasm => "wasm",
            ExecutorKind::Llm => "llm",
            ExecutorKind::Slurm => "slurm",
            ExecutorKind::Batch => "batch",
        }
    }

    /// Whether jobs of this kind run on a cluster through its scheduler.
    pub fn on_cluster(self) -> bool {
        matches!(self, ExecutorKind::Slurm | ExecutorKind::Batch)
    }
}

/// A kind of GPU a node has.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Gpu {
    pub model: String,
    pub memory_bytes: u64,
    pub count: u32,
}

/// An amount of compute resources.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Resources {
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
}

impl Resources {
    fn gpu_count(&self) -> u64 {
        self.gpus.iter().map(|gpu| u64::from(gpu.count)).sum()
    }
}

/// A node's signed statement of what it offers, valid for `ttl_ms` after `issued_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CapacityAdvert {
    pub node: NodeId,
    /// Increases with every advert the node issues; the highest wins.
    pub seq: u64,
    /// Unix time, milliseconds.
    pub issued_at_ms: u64,
    pub ttl_ms: u64,
    pub region: String,
    /// libp2p multiaddrs in text form.
    pub listen_addrs: Vec<String>,
    pub total: Resources,
    pub free: Resources,
    pub executors: Vec<ExecutorKind>,
    pub prices: PriceTerms,
    /// Share of capacity in use, permille (0–1000).
    pub load_permille: u16,
    pub software_version: String,
    /// The models this node serves (executor `llm`), at most [`crate::tokens::MAX_MODELS`].
    pub models: Vec<ModelInfo>,
    /// The cluster this node fronts (executor `slurm`), as its scheduler last reported it.
    pub cluster: Option<ClusterInfo>,
}

/// A cluster behind a node: what its scheduler reports, and the share the mesh may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ClusterInfo {
    /// The scheduler and its version, e.g. `slurm 22.05.8`.
    pub scheduler: String,
    /// Compute nodes that can take jobs (not down, drained or failed).
    pub nodes: u32,
    /// The whole cluster's resources, and what is idle now.
    pub total: Resources,
    pub free: Resources,
    /// The most one mesh job may use at once: CPUs (one per task), memory and GPUs.
    pub mesh_limit: Resources,
    /// The partitions mesh jobs go to.
    pub partitions: Vec<String>,
    /// Jobs waiting in the scheduler's queue, and running.
    pub pending_jobs: u32,
    pub running_jobs: u32,
}
impl Document for CapacityAdvert {
    const KIND: &'static str = "advert";
    const MAX_BYTES: usize = MAX_ADVERT_BYTES;
    fn signer(&self) -> NodeId {
        self.node
    }

    /// The size checks of [`CapacityAdvert::validate`] (not the clock checks).
    fn check_bounds(&self) -> Result<(), BoundsError> {
        BoundsError::check("region", self.region.len(), crate::job::MAX_REGION_BYTES)?;
        BoundsError::check("listen_addrs", self.listen_addrs.len(), MAX_LISTEN_ADDRS)?;
        for addr in &self.listen_addrs {
            BoundsError::check("listen_addrs", addr.len(), MAX_ADDR_BYTES)?;
        }
        for resources in [&self.total, &self.free] {
            BoundsError::check("gpus", resources.gpus.len(), MAX_GPU_KINDS)?;
            for gpu in &resources.gpus {
                BoundsError::check("gpus", gpu.model.len(), MAX_GPU_MODEL_BYTES)?;
            }
        }
        BoundsError::check("executors", self.executors.len(), MAX_EXECUTORS)?;
        if let Some(cluster) = &self.cluster {
            cluster.check_bounds()?;
        }
        BoundsError::check("models", self.models.len(), crate::tokens::MAX_MODELS)?;
        for model in &self.models {
            model.check_bounds()?;
        }
        BoundsError::check(
            "software_version",
            self.software_version.len(),
            MAX_VERSION_BYTES,
        )
    }
}

/// Why an advert was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    #[error(transparent)]
    TooLarge(#[from] BoundsError),
    #[error("ttl {0} ms is outside {MIN_TTL_MS}..={MAX_TTL_MS}")]
    Ttl(u64),
    #[error("issued {0} ms in the future (clock skew)")]
    FromTheFuture(u64),
    #[error("expired {0} ms ago")]
    Expired(u64),
    #[error("free resources exceed total resources")]
    FreeExceedsTotal,
    #[error("load {0} permille is above {MAX_LOAD_PERMILLE}")]
    Load(u16),
}

impl ClusterInfo {
    fn check_bounds(&self) -> Result<(), BoundsError> {
        BoundsError::check("scheduler", self.scheduler.len(), MAX_SCHEDULER_BYTES)?;
        BoundsError::check("partitions", self.partitions.len(), MAX_PARTITIONS)?;
        for partition in &self.partitions {
            BoundsError::check("partitions", partition.len(), MAX_PARTITION_BYTES)?;
        }
        for resources in [&self.total, &self.free, &self.mesh_limit] {
            BoundsError::check("gpus", resources.gpus.len(), MAX_GPU_KINDS)?;
            for gpu in &resources.gpus {
                BoundsError::check("gpus", gpu.model.len(), MAX_GPU_MODEL_BYTES)?;
            }
        }
        Ok(())
    }
}

impl CapacityAdvert {
    /// When this advert stops being valid (Unix ms).
    pub fn expires_at_ms(&self) -> u64 {
        self.issued_at_ms.saturating_add(self.ttl_ms)
    }

    /// Checks sizes ([`Document::check_bounds`]), TTL bounds and clock skew against the
    /// receiver's clock `now_ms`.
    pub fn validate(&self, now_ms: u64) -> Result<(), AdvertError> {
        self.check_bounds()?;
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&self.ttl_ms) {
            return Err(AdvertError::Ttl(self.ttl_ms));
        }
        if self.issued_at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(AdvertError::FromTheFuture(self.issued_at_ms - now_ms));
        }
        if self.expires_at_ms() <= now_ms {
            return Err(AdvertError::Expired(now_ms - self.expires_at_ms()));
        }
        let within = |free: &Resources, total: &Resources| {
            free.cpu_cores <= total.cpu_cores
                && free.memory_bytes <= total.memory_bytes
                && free.gpu_count() <= total.gpu_count()
        };
        if !within(&self.free, &self.total)
            || self
                .cluster
                .as_ref()
                .is_some_and(|cluster| !within(&cluster.free, &cluster.total))
        {
            return Err(AdvertError::FreeExceedsTotal);
        }
        if self.load_permille > MAX_LOAD_PERMILLE {
            return Err(AdvertError::Load(self.load_permille));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::Keypair;
    use crate::money::Credits;
    use crate::signed::Signed;

    pub(crate) const NOW: u64 = 1_800_000_000_000;

    pub(crate) fn sample_advert(node: NodeId) -> CapacityAdvert {
        CapacityAdvert {
            node,
            seq: 3,
            issued_at_ms: NOW,
            ttl_ms: 30_000,
            region: "eu-west".into(),
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            total: Resources {
                cpu_cores: 64,
                memory_bytes: 256 << 30,
                gpus: vec![Gpu {
                    model: "H100".into(),
                    memory_bytes: 80 << 30,
                    count: 8,
                }],
            },
            free: Resources {
                cpu_cores: 32,
                memory_bytes: 128 << 30,
                gpus: vec![],
            },
            executors: vec![ExecutorKind::Wasm],
            prices: PriceTerms::fuel(Credits(100), Credits(5)),
            load_permille: 500,
            software_version: "0.1.0".into(),
            models: Vec::new(),
            cluster: None,
        }
    }

    #[test]
    fn validation_bounds() {
        let key = Keypair::from_secret_bytes([1; 32]);
        let good = sample_advert(key.node_id());
        assert_eq!(good.validate(NOW), Ok(()));
        assert_eq!(good.validate(NOW - MAX_CLOCK_SKEW_MS), Ok(()));
        assert!(matches!(
            good.validate(NOW - MAX_CLOCK_SKEW_MS - 1),
            Err(AdvertError::FromTheFuture(_))
        ));
        assert!(matches!(
            good.validate(NOW + 30_000),
            Err(AdvertError::Expired(0))
        ));
        let cases: Vec<fn(&mut CapacityAdvert)> = vec![
            |a| a.ttl_ms = 10,
            |a| a.ttl_ms = MAX_TTL_MS + 1,
            |a| a.region = "x".repeat(65),
            |a| a.listen_addrs = vec![String::new(); MAX_LISTEN_ADDRS + 1],
            |a| a.listen_addrs = vec!["x".repeat(MAX_ADDR_BYTES + 1)],
            |a| a.free.cpu_cores = 65,
            |a| {
                a.free.gpus = vec![Gpu {
                    model: "x".into(),
                    memory_bytes: 1,
                    count: 9,
                }]
            },
            |a| a.load_permille = 1_001,
            |a| a.software_version = "v".repeat(65),
            |a| a.executors = vec![ExecutorKind::Wasm; MAX_EXECUTORS + 1],
            |a| {
                let mut cluster = sample_cluster();
                cluster.free.cpu_cores = cluster.total.cpu_cores + 1;
                a.cluster = Some(cluster);
            },
        ];
        let mut fronting = good.clone();
        fronting.cluster = Some(sample_cluster());
        assert_eq!(fronting.validate(NOW), Ok(()));
        for mutate in cases {
            let mut advert = good.clone();
            mutate(&mut advert);
            assert!(advert.validate(NOW).is_err(), "{advert:?}");
        }
        let signed = Signed::sign(&good, &key).unwrap();
        assert!(signed.bytes().len() < MAX_ADVERT_BYTES);
        assert_eq!(signed.verify().unwrap(), good);
    }

    pub(crate) fn sample_cluster() -> ClusterInfo {
        let resources = |cpu_cores, gib: u64| Resources {
            cpu_cores,
            memory_bytes: gib << 30,
            gpus: Vec::new(),
        };
        ClusterInfo {
            scheduler: "slurm 22.05.8".into(),
            nodes: 2,
            total: resources(4, 4),
            free: resources(3, 3),
            mesh_limit: resources(2, 2),
            partitions: vec!["mesh".into()],
            pending_jobs: 1,
            running_jobs: 1,
        }
    }

    #[test]
    fn size_bounds_are_enforced_by_sign_and_verify() {
        let key = Keypair::from_secret_bytes([1; 32]);
        type Case = (fn(&mut CapacityAdvert), &'static str);
        let cases: Vec<Case> = vec![
            (|a| a.region = "x".repeat(65), "region"),
            (
                |a| a.listen_addrs = vec![String::new(); MAX_LISTEN_ADDRS + 1],
                "listen_addrs",
            ),
            (
                |a| a.listen_addrs = vec!["x".repeat(MAX_ADDR_BYTES + 1)],
                "listen_addrs",
            ),
            (
                |a| {
                    a.total.gpus = vec![
                        Gpu {
                            model: String::new(),
                            memory_bytes: 0,
                            count: 0,
                        };
                        MAX_GPU_KINDS + 1
                    ]
                },
                "gpus",
            ),
            (
                |a| {
                    a.free.gpus = vec![Gpu {
                        model: "m".repeat(MAX_GPU_MODEL_BYTES + 1),
                        memory_bytes: 0,
                        count: 0,
                    }]
                },
                "gpus",
            ),
            (
                |a| a.executors = vec![ExecutorKind::Wasm; MAX_EXECUTORS + 1],
                "executors",
            ),
            (|a| a.software_version = "v".repeat(65), "software_version"),
            (
                |a| {
                    let mut cluster = sample_cluster();
                    cluster.partitions = vec![String::new(); MAX_PARTITIONS + 1];
                    a.cluster = Some(cluster);
                },
                "partitions",
            ),
            (
                |a| {
                    let mut cluster = sample_cluster();
                    cluster.scheduler = "s".repeat(MAX_SCHEDULER_BYTES + 1);
                    a.cluster = Some(cluster);
                },
                "scheduler",
            ),
        ];
        for (mutate, field) in cases {
            let mut advert = sample_advert(key.node_id());
            mutate(&mut advert);
            let error = advert.check_bounds().unwrap_err();
            assert_eq!(error.field, field);
            assert!(matches!(
                Signed::sign(&advert, &key),
                Err(crate::signed::SignError::OutOfBounds { kind: "advert", .. })
            ));
            assert_eq!(
                crate::signed::tests::sign_unchecked(&advert, &key).verify(),
                Err(crate::signed::VerifyError::OutOfBounds {
                    kind: "advert",
                    source: error.clone()
                })
            );
            assert_eq!(advert.validate(NOW), Err(AdvertError::TooLarge(error)));
        }
        // Bounds hold whatever the clock: an expired advert still signs and verifies.
        let mut stale = sample_advert(key.node_id());
        stale.issued_at_ms = 0;
        assert!(Signed::sign(&stale, &key).unwrap().verify().is_ok());
    }
}
