//! What this node offers: detected resources, capped or overridden by the operator's config, and
//! the capacity adverts built from them, with the load the adverts show.
//!
//! ```text
//!  market ── watch<Load> ──┐
//!                          ├─▶ advertise_load ── watch<Load> ──▶ network (adverts, re-published
//!  storage ─ watch<Health> ┘   (full while the storage refuses work)    on every change)
//! ```

use std::process::Command;
use std::time::Duration;
use suanli_protocol::tokens::ModelInfo;

use suanli_protocol::{
    CapacityAdvert, ClusterInfo, ExecutorKind, Gpu, NodeId, PriceTerms, Resources,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::CheckedConfig;
use crate::storage::Health;

/// Resources found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub cpu_cores: u32,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
}

impl Detected {
    /// Cores from the scheduler's view, memory from `/proc/meminfo`, GPUs from `nvidia-smi`.
    pub fn probe() -> Detected {
        let cpu_cores = std::thread::available_parallelism()
            .map(|cores| u32::try_from(cores.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        Detected {
            cpu_cores,
            memory_bytes: total_memory_bytes().unwrap_or(0),
            gpus: nvidia_gpus(),
        }
    }
}

fn total_memory_bytes() -> Option<u64> {
    proc_kib_field("/proc/meminfo", "MemTotal:")
}

/// This process's user + system CPU time from `/proc/self/stat`, microseconds.
pub(crate) fn own_cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks of 1/100 s to user space (USER_HZ).
    Some((utime + stime) * 10_000)
}

/// A `KEY: N kB` field of a `/proc` file (`/proc/meminfo`, `/proc/self/status`), in bytes.
pub(crate) fn proc_kib_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|line| line.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// GPUs reported by `nvidia-smi`, grouped by model; none when the tool is absent or fails.
fn nvidia_gpus() -> Vec<Gpu> {
    let output = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output();
    match output {
        Ok(output) if output.status.success() => {
            parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout))
        }
        _ => Vec::new(),
    }
}

/// Parses `name, memory MiB` lines into GPU kinds with counts.
pub fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    let mut gpus: Vec<Gpu> = Vec::new();
    for line in text.lines() {
        let Some((name, mib)) = line.rsplit_once(',') else {
            continue;
        };
        let Ok(mib) = mib.trim().parse::<u64>() else {
            continue;
        };
        let model: String = name.trim().chars().take(128).collect();
        let memory_bytes = mib.saturating_mul(1024 * 1024);
        match gpus
            .iter_mut()
            .find(|gpu| gpu.model == model && gpu.memory_bytes == memory_bytes)
        {
            Some(gpu) => gpu.count = gpu.count.saturating_add(1),
            None => gpus.push(Gpu {
                model,
                memory_bytes,
                count: 1,
            }),
        }
    }
    gpus.truncate(suanli_protocol::advert::MAX_GPU_KINDS);
    gpus
}

/// How busy the node's provider is; published by the market, read into every advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Load {
    /// Places taken: offers outstanding plus contracts not yet finished.
    pub in_use: u32,
    /// Jobs that run at once.
    pub slots: u32,
    /// Places in all: slots plus queue.
    pub capacity: u32,
}

impl Load {
    /// An idle node (also the load of a node that accepts no jobs).
    pub const IDLE: Load = Load {
        in_use: 0,
        slots: 1,
        capacity: 1,
    };

    /// Every place taken: what a node that takes no work advertises (load 1000 ‰, nothing free),
    /// which ranking skips.
    pub fn full(self) -> Load {
        let capacity = self.capacity.max(1);
        Load {
            in_use: capacity,
            slots: self.slots,
            capacity,
        }
    }

    fn busy_slots(&self) -> u64 {
        u64::from(self.in_use.min(self.slots))
    }

    fn load_permille(&self) -> u16 {
        let permille = u64::from(self.in_use) * 1000 / u64::from(self.capacity.max(1));
        u16::try_from(permille.min(1000)).unwrap_or(1000)
    }

    /// The share of `amount` not taken by busy slots.
    fn free_share(&self, amount: u64) -> u64 {
        let slots = u64::from(self.slots.max(1));
        amount / slots * (slots - self.busy_slots())
            + amount % slots * (slots - self.busy_slots()) / slots
    }
}

/// What an advert shows that changes while the node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    /// Unix ms.
    pub at_ms: u64,
    pub load: Load,
    /// The cluster this node fronts, as last read.
    pub cluster: Option<ClusterInfo>,
}

/// The load adverts show: the market's, or [full](Load::full) while `health` refuses work.
pub fn advertised_load(market: Load, health: &Health) -> Load {
    if health.is_accepting() {
        market
    } else {
        market.full()
    }
}

/// Keeps `advertised` at [`advertised_load`] of the market's load and the storage's health,
/// changing it (and so waking the network, which re-publishes the advert) only when the result
/// changes. Runs until `cancel`.
pub async fn advertise_load(
    mut market: watch::Receiver<Load>,
    mut health: watch::Receiver<Health>,
    advertised: watch::Sender<Load>,
    cancel: CancellationToken,
) {
    let (mut market_open, mut health_open) = (true, true);
    loop {
        let load = advertised_load(*market.borrow_and_update(), &health.borrow_and_update());
        advertised.send_if_modified(|current| {
            let changed = *current != load;
            *current = load;
            changed
        });
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            changed = market.changed(), if market_open => market_open = changed.is_ok(),
            // With both gone nothing can change any more: the last load stays until cancelled.
            changed = health.changed(), if health_open => health_open = changed.is_ok(),
        }
    }
}

/// The node's offer: totals after the operator's overrides, its executors and prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub region: String,
    pub total: Resources,
    pub executors: Vec<ExecutorKind>,
    pub prices: PriceTerms,
    /// The models served (set once they are loaded).
    pub models: Vec<ModelInfo>,
}

impl Capacity {
    /// Applies the config to what was detected. Configured cores and memory are capped at what
    /// the machine has (an operator cannot offer more than exists); GPUs set in the config
    /// replace detection, so they can be declared where `nvidia-smi` is not available.
    pub fn from_config(config: &CheckedConfig, detected: &Detected) -> Capacity {
        let wanted = &config.capacity;
        let cpu_cores = wanted
            .cpu_cores
            .map_or(detected.cpu_cores, |cores| cores.min(detected.cpu_cores));
        let memory_bytes = wanted.memory_bytes.map_or(detected.memory_bytes, |bytes| {
            bytes.min(detected.memory_bytes)
        });
        let gpus = wanted.gpus.as_ref().map_or_else(
            || detected.gpus.clone(),
            |gpus| {
                gpus.iter()
                    .map(|gpu| Gpu {
                        model: gpu.model.clone(),
                        memory_bytes: gpu.memory_bytes,
                        count: gpu.count,
                    })
                    .collect()
            },
        );
        Capacity {
            region: wanted.region.clone(),
            total: Resources {
                cpu_cores,
                memory_bytes,
                gpus,
            },
            executors: config.executors.clone(),
            prices: config.prices,
            models: Vec::new(),
        }
    }

    /// An advert of this capacity as it is `now`: busy slots take their share of cores and
    /// memory.
    pub fn advert(
        &self,
        node: NodeId,
        seq: u64,
        ttl: Duration,
        listen_addrs: Vec<String>,
        now: Now,
    ) -> CapacityAdvert {
        let Now {
            at_ms: now_ms,
            load,
            cluster,
        } = now;
        let free = Resources {
            cpu_cores: u32::try_from(load.free_share(u64::from(self.total.cpu_cores)))
                .unwrap_or(self.total.cpu_cores),
            memory_bytes: load.free_share(self.total.memory_bytes),
            gpus: self.total.gpus.clone(),
        };
        CapacityAdvert {
            node,
            seq,
            issued_at_ms: now_ms,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            region: self.region.clone(),
            listen_addrs,
            total: self.total.clone(),
            free,
            executors: self.executors.clone(),
            prices: self.prices,
            load_permille: load.load_permille(),
            software_version: env!("CARGO_PKG_VERSION").into(),
            models: self.models.clone(),
            cluster,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, GpuConfig};

    #[test]
    fn parses_nvidia_smi_output() {
        let gpus = parse_nvidia_smi(
            "NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\nTesla T4, 15360\ngarbage\n",
        );
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].count, 2);
        assert_eq!(gpus[0].memory_bytes, 81559 * 1024 * 1024);
        assert_eq!(gpus[1].model, "Tesla T4");
    }

    #[test]
    fn config_caps_and_overrides_detection() {
        let detected = Detected {
            cpu_cores: 8,
            memory_bytes: 1 << 34,
            gpus: vec![],
        };
        let mut config = Config::default();
        config.capacity.cpu_cores = Some(64);
        config.capacity.memory_bytes = Some(1 << 30);
        config.capacity.gpus = Some(vec![GpuConfig {
            model: "A100".into(),
            memory_bytes: 40 << 30,
            count: 4,
        }]);
        let capacity = Capacity::from_config(&config.validate().unwrap(), &detected);
        assert_eq!(capacity.total.cpu_cores, 8);
        assert_eq!(capacity.total.memory_bytes, 1 << 30);
        assert_eq!(capacity.total.gpus[0].count, 4);
        let probed = Detected::probe();
        assert!(probed.cpu_cores >= 1);
    }

    #[test]
    fn load_shows_in_free_resources() {
        let load = Load {
            in_use: 3,
            slots: 4,
            capacity: 8,
        };
        assert_eq!(load.free_share(8), 2);
        assert_eq!(load.load_permille(), 375);
        let full = Load {
            in_use: 12,
            slots: 4,
            capacity: 8,
        };
        assert_eq!(full.free_share(8), 0);
        assert_eq!(full.load_permille(), 1000);
        assert_eq!(Load::IDLE.free_share(7), 7);
        assert_eq!(Load::IDLE.full().load_permille(), 1000);
        assert_eq!(Load::IDLE.full().free_share(7), 0);
    }

    #[tokio::test]
    async fn adverts_show_full_load_while_storage_refuses_work() {
        let (market, market_load) = watch::channel(Load::IDLE);
        let (health, storage_health) = watch::channel(Health::Healthy);
        let (advertised, mut load) = watch::channel(Load::IDLE);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(advertise_load(
            market_load,
            storage_health,
            advertised,
            cancel.clone(),
        ));
        let busy = Load {
            in_use: 1,
            slots: 2,
            capacity: 4,
        };
        market.send_replace(busy);
        let seen = load
            .wait_for(|load| *load == busy)
            .await
            .unwrap()
            .load_permille();
        assert_eq!(seen, 250);
        health.send_replace(Health::DiskFull {
            available_bytes: 1,
            min_free_bytes: 2,
        });
        load.wait_for(|load| load.load_permille() == 1000)
            .await
            .unwrap();
        // The market's changes still count, and come back as they are once storage recovers.
        market.send_replace(Load::IDLE);
        health.send_replace(Health::Healthy);
        load.wait_for(|load| *load == Load::IDLE).await.unwrap();
        health.send_replace(Health::Failed {
            reason: "fsync".into(),
        });
        load.wait_for(|load| load.load_permille() == 1000)
            .await
            .unwrap();
        cancel.cancel();
        task.await.unwrap();
    }
}
