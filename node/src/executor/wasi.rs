//! What a job sees of the world: a WASI preview 1 context with in-memory stdio, its arguments
//! and environment, a virtual clock and a fixed random stream, and nothing else (no preopened
//! directories, no sockets, nothing inherited from the host).
//!
//! Virtual time: both guest clocks read a per-job counter that starts at a fixed instant
//! ([`WALL_CLOCK_START_SECS`] for the wall clock, 0 for the monotonic one) and advances by
//! [`CLOCK_READ_TICK_NS`] per read and by the full timeout of every sleep. So a job sees time
//! pass, busy-waits on the clock end, and its output and fuel do not depend on the machine.
//!
//! Sleeping: wasmtime-wasi implements `poll_oneoff` with a real host sleep, which epoch
//! interruption cannot cut short (a guest asking for an hour would hold its slot for an hour)
//! and which would read the host clock. It is replaced here by [`poll_oneoff`], which never
//! blocks: clock subscriptions fire at once and move virtual time, and stdio is always ready.
//!
//! Random: `random_get` returns a fixed pseudo-random stream (the same for every job), so a job
//! using randomness (hash-map seeds, sampling) still gives the same output everywhere. It is
//! therefore no source of secrets; jobs must not generate keys with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Caller, Engine, Extern, Linker};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use super::job::JobState;

/// `argv[0]` of every job.
pub(super) const PROGRAM_NAME: &str = "job";
/// The guest's wall clock starts at 2025-01-01T00:00:00Z.
pub(super) const WALL_CLOCK_START_SECS: u64 = 1_735_689_600;
/// Virtual time that passes on every clock read (also the clocks' resolution).
pub(super) const CLOCK_READ_TICK_NS: u64 = 1_000;
/// Length of the random stream before it repeats.
const RANDOM_STREAM_BYTES: usize = 4096;
/// Most subscriptions one `poll_oneoff` call may pass. Host work is not metered by fuel, so it
/// is bounded here; real programs poll a handful.
const MAX_SUBSCRIPTIONS: u32 = 4096;

/// The WASI preview 1 functions, with `poll_oneoff` replaced by the virtual-time one.
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<JobState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state: &mut JobState| &mut state.wasi)?;
    linker.allow_shadowing(true);
    linker.func_wrap("wasi_snapshot_preview1", "poll_oneoff", poll_oneoff)?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// The fixed random stream: SHA-256 in counter mode over a constant label.
pub(super) fn random_bytes() -> Arc<[u8]> {
    let mut bytes = Vec::with_capacity(RANDOM_STREAM_BYTES);
    let mut counter = 0u64;
    while bytes.len() < RANDOM_STREAM_BYTES {
        let block = Sha256::new()
            .chain_update(b"suanli/v1/wasi-random\0")
            .chain_update(counter.to_le_bytes())
            .finalize();
        bytes.extend_from_slice(&block);
        counter += 1;
    }
    bytes.truncate(RANDOM_STREAM_BYTES);
    bytes.into()
}

/// What the guest gets: `argv = ["job", args…]`, exactly `env`, `stdin` from memory, stdout
/// and stderr into the given pipes, virtual clocks on `time`, the fixed random stream.
pub(super) fn context(
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
    stdin: Vec<u8>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    time: &VirtualTime,
    random: &[u8],
) -> WasiP1Ctx {
    // The builder starts closed: no stdin, discarded output, no args, no env, no preopens, no
    // network. Only what is set below is visible to the job.
    let mut builder = WasiCtxBuilder::new();
    builder
        .arg(PROGRAM_NAME)
        .args(args)
        .stdin(MemoryInputPipe::new(stdin))
        .stdout(stdout)
        .stderr(stderr)
        .wall_clock(WallClock(time.clone()))
        .monotonic_clock(MonotonicClock(time.clone()))
        .secure_random(Deterministic::new(random.to_vec()))
        .insecure_random(Deterministic::new(random.to_vec()))
        .insecure_random_seed(0);
    for (name, value) in env {
        builder.env(name, value);
    }
    builder.build_p1()
}

/// A job's virtual time in nanoseconds since its start. Shared by both clocks and
/// [`poll_oneoff`], all within one Store (the atomic is for `Send`, not for contention).
#[derive(Debug, Clone, Default)]
pub(super) struct VirtualTime(Arc<AtomicU64>);

impl VirtualTime {
    /// The time now; reading advances it by [`CLOCK_READ_TICK_NS`].
    fn read(&self) -> u64 {
        self.0.fetch_add(CLOCK_READ_TICK_NS, Ordering::Relaxed)
    }

    fn peek(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn advance(&self, nanos: u64) {
        let now = self.peek();
        self.0.store(now.saturating_add(nanos), Ordering::Relaxed);
    }

    fn wall_nanos(nanos: u64) -> u64 {
        (WALL_CLOCK_START_SECS * 1_000_000_000).saturating_add(nanos)
    }
}

struct WallClock(VirtualTime);

impl HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(CLOCK_READ_TICK_NS)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(VirtualTime::wall_nanos(self.0.read()))
    }
}

struct MonotonicClock(VirtualTime);

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        CLOCK_READ_TICK_NS
    }

    fn now(&self) -> u64 {
        self.0.read()
    }
}

// WASI preview 1 ABI (wasi_snapshot_preview1.witx): layouts and codes used by poll_oneoff.
const SUBSCRIPTION_SIZE: u64 = 48;
const EVENT_SIZE: u64 = 32;
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: u16 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const CLOCKID_REALTIME: u32 = 0;
const CLOCKID_MONOTONIC: u32 = 1;
const SUBCLOCKFLAGS_ABSTIME: u16 = 1;

enum Subscription {
    /// Fires after `wait` nanoseconds of virtual time.
    Clock { userdata: u64, wait: u64 },
    /// Ready at once with `error` (stdio never blocks; other descriptors do not exist).
    Fd {
        userdata: u64,
        event_type: u8,
        error: u16,
    },
}

/// `poll_oneoff(in, out, nsubscriptions, nevents) -> errno` in virtual time.
///
/// If any descriptor is subscribed, those events are returned at once and no time passes (our
/// stdio is always ready). Otherwise the earliest clock fires: virtual time jumps to it and every
/// clock due by then is reported. Never sleeps.
fn poll_oneoff(
    mut caller: Caller<'_, JobState>,
    subscriptions: i32,
    events: i32,
    count: i32,
    written: i32,
) -> wasmtime::Result<i32> {
    let Some(memory) = caller.get_export("memory").and_then(Extern::into_memory) else {
        return Err(wasmtime::Error::msg(
            "poll_oneoff: the module exports no memory",
        ));
    };
    let count = count.cast_unsigned();
    if count == 0 || count > MAX_SUBSCRIPTIONS {
        return Ok(ERRNO_INVAL);
    }
    let subscriptions = u64::from(subscriptions.cast_unsigned());
    let events = u64::from(events.cast_unsigned());
    let written = u64::from(written.cast_unsigned());
    let memory_len = memory.data_size(&caller) as u64;
    let fits = |at: u64, len: u64| at.checked_add(len).is_some_and(|end| end <= memory_len);
    if !fits(subscriptions, u64::from(count) * SUBSCRIPTION_SIZE)
        || !fits(events, u64::from(count) * EVENT_SIZE)
        || !fits(written, 4)
    {
        return Ok(ERRNO_FAULT);
    }

    let time = caller.data().time.clone();
    let now = time.peek();
    let data = memory.data(&caller);
    let mut parsed = Vec::with_capacity(count as usize);
    for index in 0..u64::from(count) {
        let at = usize::try_from(subscriptions + index * SUBSCRIPTION_SIZE)?;
        let Some(raw) = data.get(at..at + SUBSCRIPTION_SIZE as usize) else {
            return Ok(ERRNO_FAULT);
        };
        let userdata = read_u64(raw, 0);
        match raw[8] {
            EVENTTYPE_CLOCK => {
                let id = read_u32(raw, 16);
                let timeout = read_u64(raw, 24);
                let absolute = read_u16(raw, 40) & SUBCLOCKFLAGS_ABSTIME != 0;
                let wait = match (id, absolute) {
                    (CLOCKID_REALTIME | CLOCKID_MONOTONIC, false) => timeout,
                    (CLOCKID_MONOTONIC, true) => timeout.saturating_sub(now),
                    (CLOCKID_REALTIME, true) => {
                        timeout.saturating_sub(VirtualTime::wall_nanos(now))
                    }
                    // CPU-time clocks are not supported, as in wasmtime-wasi.
                    _ => return Ok(ERRNO_INVAL),
                };
                parsed.push(Subscription::Clock { userdata, wait });
            }
            event_type @ (EVENTTYPE_FD_READ | EVENTTYPE_FD_WRITE) => {
                let fd = read_u32(raw, 16);
                let ready = matches!(
                    (event_type, fd),
                    (EVENTTYPE_FD_READ, 0) | (EVENTTYPE_FD_WRITE, 1 | 2)
                );
                parsed.push(Subscription::Fd {
                    userdata,
                    event_type,
                    error: if ready { 0 } else { ERRNO_BADF },
                });
            }
            _ => return Ok(ERRNO_INVAL),
        }
    }

    let any_fd = parsed
        .iter()
        .any(|subscription| matches!(subscription, Subscription::Fd { .. }));
    let fired_by = if any_fd {
        None
    } else {
        let earliest = parsed
            .iter()
            .filter_map(|subscription| match subscription {
                Subscription::Clock { wait, .. } => Some(*wait),
                Subscription::Fd { .. } => None,
            })
            .min()
            .unwrap_or(0);
        time.advance(earliest);
        Some(earliest)
    };

    let data = memory.data_mut(&mut caller);
    let mut fired = 0u32;
    for subscription in &parsed {
        let event = match *subscription {
            Subscription::Fd {
                userdata,
                event_type,
                error,
            } => event_bytes(userdata, error, event_type),
            Subscription::Clock { userdata, wait } if fired_by.is_some_and(|by| wait <= by) => {
                event_bytes(userdata, 0, EVENTTYPE_CLOCK)
            }
            Subscription::Clock { .. } => continue,
        };
        let at = usize::try_from(events + u64::from(fired) * EVENT_SIZE)?;
        let Some(slot) = data.get_mut(at..at + EVENT_SIZE as usize) else {
            return Ok(ERRNO_FAULT);
        };
        slot.copy_from_slice(&event);
        fired += 1;
    }
    let at = usize::try_from(written)?;
    let Some(slot) = data.get_mut(at..at + 4) else {
        return Ok(ERRNO_FAULT);
    };
    slot.copy_from_slice(&fired.to_le_bytes());
    Ok(ERRNO_SUCCESS)
}

/// An `event` record: userdata, error, type; `fd_readwrite` (nbytes, flags) left zero.
fn event_bytes(userdata: u64, error: u16, event_type: u8) -> [u8; EVENT_SIZE as usize] {
    let mut event = [0u8; EVENT_SIZE as usize];
    event[0..8].copy_from_slice(&userdata.to_le_bytes());
    event[8..10].copy_from_slice(&error.to_le_bytes());
    event[10] = event_type;
    event
}

fn read_u16(raw: &[u8], at: usize) -> u16 {
    let mut bytes = [0u8; 2];
    bytes.copy_from_slice(&raw[at..at + 2]);
    u16::from_le_bytes(bytes)
}

fn read_u32(raw: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&raw[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn read_u64(raw: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&raw[at..at + 8]);
    u64::from_le_bytes(bytes)
}
