//! Capacity adverts: what every node gossips about itself, and their validation.
//!
//! Adverts are lossy by design: they are re-published periodically and on change, carry a TTL,
//! and the newest sequence number per node wins. A receiver validates an advert (signature,
//! sender, sizes, TTL bounds, clock skew) before it enters any capacity table.

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::money::PriceTerms;
use crate::signed::Document;

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

/// A sandbox a node can run jobs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ExecutorKind {
    /// WebAssembly modules with WASI preview 1, run by wasmtime.
    Wasm,
}

impl ExecutorKind {
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Wasm => "wasm",
        }
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
}

impl Document for CapacityAdvert {
    const KIND: &'static str = "advert";
    const MAX_BYTES: usize = MAX_ADVERT_BYTES;
    fn signer(&self) -> NodeId {
        self.node
    }
}

/// Why an advert was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    #[error("{field} is too large")]
    TooLarge { field: &'static str },
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

impl CapacityAdvert {
    /// When this advert stops being valid (Unix ms).
    pub fn expires_at_ms(&self) -> u64 {
        self.issued_at_ms.saturating_add(self.ttl_ms)
    }

    /// Checks sizes, TTL bounds and clock skew against the receiver's clock `now_ms`.
    pub fn validate(&self, now_ms: u64) -> Result<(), AdvertError> {
        let too_large = |field| Err(AdvertError::TooLarge { field });
        if self.region.len() > crate::job::MAX_REGION_BYTES {
            return too_large("region");
        }
        if self.listen_addrs.len() > MAX_LISTEN_ADDRS
            || self.listen_addrs.iter().any(|a| a.len() > MAX_ADDR_BYTES)
        {
            return too_large("listen_addrs");
        }
        for resources in [&self.total, &self.free] {
            if resources.gpus.len() > MAX_GPU_KINDS
                || resources
                    .gpus
                    .iter()
                    .any(|gpu| gpu.model.len() > MAX_GPU_MODEL_BYTES)
            {
                return too_large("gpus");
            }
        }
        if self.executors.len() > MAX_EXECUTORS {
            return too_large("executors");
        }
        if self.software_version.len() > MAX_VERSION_BYTES {
            return too_large("software_version");
        }
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&self.ttl_ms) {
            return Err(AdvertError::Ttl(self.ttl_ms));
        }
        if self.issued_at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(AdvertError::FromTheFuture(self.issued_at_ms - now_ms));
        }
        if self.expires_at_ms() <= now_ms {
            return Err(AdvertError::Expired(now_ms - self.expires_at_ms()));
        }
        if self.free.cpu_cores > self.total.cpu_cores
            || self.free.memory_bytes > self.total.memory_bytes
            || self.free.gpu_count() > self.total.gpu_count()
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
            prices: PriceTerms {
                base: Credits(100),
                per_million_fuel: Credits(5),
            },
            load_permille: 500,
            software_version: "0.1.0".into(),
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
        ];
        for mutate in cases {
            let mut advert = good.clone();
            mutate(&mut advert);
            assert!(advert.validate(NOW).is_err(), "{advert:?}");
        }
        let signed = Signed::sign(&good, &key).unwrap();
        assert!(signed.bytes().len() < MAX_ADVERT_BYTES);
        assert_eq!(signed.verify().unwrap(), good);
    }
}
