//! Job specifications: what a developer asks the mesh to run, and the [`JobId`] derived from it.
//!
//! A job's identity is computed from the spec's **raw bytes**: the creator encodes the spec once
//! (canonically) and sends those bytes; every receiver hashes the bytes it received
//! ([`job_hash_from_bytes`], [`job_id_from_bytes`]) and never re-encodes a decoded spec, since
//! bincode varints and map order are not canonical and re-encoding may give other bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::advert::ExecutorKind;
use crate::codec::{self, DecodeError, EncodeError};
use crate::hash::{self, Hash32, hash_id};
use crate::identity::NodeId;
use crate::money::Credits;

hash_id!(
    /// A job's identifier: `tagged("job-id", spec bytes || submitter nonce (16 bytes LE))`, over
    /// the spec bytes exactly as sent in the quote request ([`job_id_from_bytes`]).
    JobId
);

/// `tagged("job-spec", spec_bytes)`: the job hash a contract binds to, computed over the spec's
/// raw bytes exactly as received (never over a re-encoding).
pub fn job_hash_from_bytes(spec_bytes: &[u8]) -> Hash32 {
    hash::tagged("job-spec", &[spec_bytes])
}

/// `tagged("job-id", spec_bytes || nonce as 16 bytes LE)`: the job id, computed over the spec's
/// raw bytes exactly as received (never over a re-encoding).
pub fn job_id_from_bytes(spec_bytes: &[u8], nonce: u128) -> JobId {
    JobId(hash::tagged("job-id", &[spec_bytes, &nonce.to_le_bytes()]))
}

/// The largest module the mesh transfers (2 MiB), wasm binary or WAT text. The complexity caps
/// below already bound the code a module may hold to a few hundred kilobytes; the rest of this
/// allowance is for data segments and for WAT, which is several times larger than its binary.
pub const MAX_MODULE_BYTES: usize = 2 * 1024 * 1024;

/// Fuel charged per byte of module (as transferred: binary or WAT text) for compiling it. It is
/// part of a run's `usage.fuel`, deducted from the job's budget before the module runs, and
/// charged on a cache hit too, so every provider bills the same job the same.
///
/// Sized from measurements (docs/benchmarks.md): compiling ordinary code with wasmtime 48 takes
/// about 1-2.5 µs per byte, and running code burns 3,300 (call-heavy) to 14,000 (tight loops)
/// fuel per µs; 4,096 is the low end of that product, so a job is never charged more for
/// compiling than for running code of the same duration.
pub const COMPILE_FUEL_PER_BYTE: u64 = 4096;

/// The fuel charged for compiling a module of `module_len` bytes ([`COMPILE_FUEL_PER_BYTE`]
/// each). A budget below it ends the run as fuel-exhausted before any code runs.
pub const fn compile_fuel(module_len: usize) -> u64 {
    (module_len as u64).saturating_mul(COMPILE_FUEL_PER_BYTE)
}

/// Complexity caps: a wasm module must stay within every one of them to be compiled at all, so
/// that no module can make a node spend seconds or hundreds of megabytes compiling it. They are
/// checked on the binary (WAT is converted first) before compiling, by a pure function of its
/// bytes, so every node accepts or refuses the same module alike. The compile cost model and
/// the measurements behind these numbers are in docs/protocol.md and docs/benchmarks.md.
pub mod complexity {
    /// Functions defined in the module (imports not counted).
    pub const MAX_FUNCTIONS: u64 = 5_000;
    /// Bytes of one function body (its locals declarations and code).
    pub const MAX_FUNCTION_BODY_BYTES: u64 = 256 * 1024;
    /// Bytes of all function bodies together.
    pub const MAX_CODE_BYTES: u64 = 1024 * 1024;
    /// Parameters and declared locals of one function together.
    pub const MAX_LOCALS_PER_FUNCTION: u64 = 10_000;
    /// Entries of each of the type, import, export, global, element and data sections.
    pub const MAX_SECTION_ENTRIES: u64 = 10_000;
    /// The most compile-cost units a module may add up to (about 0.5 s of compiling on the
    /// reference machine of docs/benchmarks.md).
    pub const MAX_COMPILE_COST: u64 = 150_000;

    /// Compile-cost units of one defined function, before its code.
    pub const COST_PER_FUNCTION: u64 = 30;
    /// Units of each operator.
    pub const COST_PER_OPERATOR: u64 = 1;
    /// Extra units of each call (`call`, `call_indirect`, `call_ref` and their `return_` forms)
    /// and of each operator compiled to a call into the runtime (`memory.grow`, `memory.copy`,
    /// `memory.fill`, `memory.init`, `table.copy`, `table.init`, `table.fill`, `table.grow`):
    /// with fuel metering, a call saves and reloads the fuel counter around it.
    pub const COST_PER_CALL: u64 = 3;
    /// Extra units of each floating-point operator the engine canonicalises (arithmetic,
    /// `sqrt`, `min`/`max`, rounding, conversions from and to integers; scalar and SIMD): NaN
    /// canonicalisation, needed for identical results on every CPU, makes each one a sequence.
    pub const COST_PER_FLOAT_OPERATOR: u64 = 7;
    /// Extra units of each `loop`: a loop header gets fuel and epoch checks.
    pub const COST_PER_LOOP: u64 = 30;
    /// Units per `br_table` target, divided by this.
    pub const BR_TABLE_TARGETS_PER_UNIT: u64 = 8;
    /// Units per declared local (zero-initialised on entry), divided by this.
    pub const LOCALS_PER_UNIT: u64 = 16;
    /// Units per non-code section entry (type, import, export, global, element, data), divided
    /// by this.
    pub const SECTION_ENTRIES_PER_UNIT: u64 = 8;
    /// Quadratic terms of one function, which dominate small bombs: with `L` its parameters and
    /// locals, `J` its `block`, `if`, `else` and `try_table` operators and `P` its loops, the
    /// function adds `L × (J + LOOP_JOIN_WEIGHT × P) / LOCAL_JOINS_PER_UNIT` units (the SSA
    /// construction gives every local a value at every join and loop header) and
    /// `P × P / LOOP_PAIRS_PER_UNIT` units.
    pub const LOOP_JOIN_WEIGHT: u64 = 8;
    pub const LOCAL_JOINS_PER_UNIT: u64 = 16;
    pub const LOOP_PAIRS_PER_UNIT: u64 = 32;
}
/// The largest stdin the mesh transfers (4 MiB).
pub const MAX_STDIN_BYTES: usize = 4 * 1024 * 1024;
/// The largest output (stdout) a job may ask for (4 MiB).
pub const MAX_OUTPUT_BYTES: u64 = 4 * 1024 * 1024;
/// The most memory a job may ask for (4 GiB).
pub const MAX_MEMORY_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// The longest wall time a job may ask for (1 hour).
pub const MAX_WALL_TIME_MS: u64 = 60 * 60 * 1000;
/// Caps on the argument and environment lists.
pub const MAX_ARGS: usize = 256;
pub const MAX_ENV_VARS: usize = 256;
/// Cap on all argument and environment bytes together.
pub const MAX_ARGS_ENV_BYTES: usize = 64 * 1024;
/// Cap on an encoded job spec.
pub const MAX_SPEC_BYTES: usize = 96 * 1024;
/// Most replicas a job may ask for.
pub const MAX_REPLICAS: u8 = 8;
/// Cap on a region label.
pub const MAX_REGION_BYTES: usize = 64;

/// The most tasks one job may have (a job array on a cluster, executor `slurm`).
pub const MAX_TASKS: u32 = 1_000;

/// Resource limits of one run. The provider enforces them; the receipt's usage must stay within.
/// A run of many tasks (executor `slurm`) gives every task these limits, except output, whose
/// bound is for all tasks' output together; fuel and CPU time add up over the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Limits {
    /// wasmtime fuel (deterministic instruction budget).
    pub fuel: u64,
    /// Maximum linear memory, bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit, milliseconds.
    pub wall_time_ms: u64,
    /// Maximum stdout, bytes (of all tasks together).
    pub output_bytes: u64,
    /// Tasks run in parallel, each with index `0..tasks` (1 for every executor but `slurm`).
    pub tasks: u32,
}

impl Limits {
    /// Whether every limit of `self` is at most the corresponding limit of `other`.
    pub fn within(&self, other: &Limits) -> bool {
        self.fuel <= other.fuel
            && self.memory_bytes <= other.memory_bytes
            && self.wall_time_ms <= other.wall_time_ms
            && self.output_bytes <= other.output_bytes
            && self.tasks <= other.tasks
    }

    /// The fuel all tasks together may use.
    pub fn total_fuel(&self) -> u64 {
        self.fuel.saturating_mul(u64::from(self.tasks))
    }

    /// The most CPU time, milliseconds, all tasks together can be billed: one CPU per task for
    /// its time limit and the grace ([`crate::negotiation::WALL_TIME_GRACE_MS`]).
    pub fn max_cpu_ms(&self) -> u64 {
        self.wall_time_ms
            .saturating_add(crate::negotiation::WALL_TIME_GRACE_MS)
            .saturating_mul(u64::from(self.tasks))
    }
}

/// Where a job may run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Placement {
    /// Only providers advertising this region label.
    pub region: Option<String>,
    /// Only this provider.
    pub provider: Option<NodeId>,
    /// Never the node the job was submitted to.
    pub exclude_self: bool,
}

/// A job as submitted: everything a provider needs to price and run it, except the module and
/// stdin bytes themselves, which travel separately and are checked against their hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct JobSpec {
    pub executor: ExecutorKind,
    /// SHA-256 of the module bytes.
    pub module_hash: Hash32,
    /// `argv[1..]` (the module name is `argv[0]`).
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// SHA-256 of stdin (of the empty string when there is none).
    pub stdin_hash: Hash32,
    pub limits: Limits,
    /// The most the submitter pays for one run.
    pub max_price: Credits,
    pub placement: Placement,
    /// How many independent providers should run it.
    pub replicas: u8,
}

/// A job spec that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("too many arguments ({0}, at most {MAX_ARGS})")]
    TooManyArgs(usize),
    #[error("too many environment variables ({0}, at most {MAX_ENV_VARS})")]
    TooManyEnvVars(usize),
    #[error("arguments and environment take {0} bytes, at most {MAX_ARGS_ENV_BYTES}")]
    ArgsTooLarge(usize),
    #[error("environment variable names must be non-empty and contain no '=' or NUL: {0:?}")]
    BadEnvName(String),
    #[error("arguments and environment values must not contain NUL")]
    NulByte,
    #[error("limit {name} must be between 1 and {max}, got {value}")]
    Limit {
        name: &'static str,
        value: u64,
        max: u64,
    },
    #[error(
        "tasks must be between 1 and {MAX_TASKS}, and 1 unless the executor runs on a cluster \
         (slurm, batch); got {0}"
    )]
    Tasks(u32),
    #[error("replicas must be between 1 and {MAX_REPLICAS}, got {0}")]
    Replicas(u8),
    #[error("region label longer than {MAX_REGION_BYTES} bytes")]
    Region,
}

impl JobSpec {
    /// Checks every bound a provider relies on.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.args.len() > MAX_ARGS {
            return Err(SpecError::TooManyArgs(self.args.len()));
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(SpecError::TooManyEnvVars(self.env.len()));
        }
        let total: usize = self.args.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum::<usize>();
        if total > MAX_ARGS_ENV_BYTES {
            return Err(SpecError::ArgsTooLarge(total));
        }
        if let Some(name) = self
            .env
            .keys()
            .find(|name| name.is_empty() || name.contains(['=', '\0']))
        {
            return Err(SpecError::BadEnvName(name.clone()));
        }
        if self
            .args
            .iter()
            .chain(self.env.values())
            .any(|text| text.contains('\0'))
        {
            return Err(SpecError::NulByte);
        }
        let limits = [
            ("fuel", self.limits.fuel, u64::MAX),
            ("memory_bytes", self.limits.memory_bytes, MAX_MEMORY_BYTES),
            ("wall_time_ms", self.limits.wall_time_ms, MAX_WALL_TIME_MS),
            ("output_bytes", self.limits.output_bytes, MAX_OUTPUT_BYTES),
        ];
        for (name, value, max) in limits {
            if value == 0 || value > max {
                return Err(SpecError::Limit { name, value, max });
            }
        }
        let tasks_allowed = match self.executor {
            ExecutorKind::Slurm | ExecutorKind::Batch => MAX_TASKS,
            ExecutorKind::Wasm | ExecutorKind::Llm => 1,
        };
        if !(1..=tasks_allowed).contains(&self.limits.tasks) {
            return Err(SpecError::Tasks(self.limits.tasks));
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(SpecError::Replicas(self.replicas));
        }
        if self
            .placement
            .region
            .as_ref()
            .is_some_and(|region| region.len() > MAX_REGION_BYTES)
        {
            return Err(SpecError::Region);
        }
        Ok(())
    }

    /// The canonical bytes of this spec; refuses more than [`MAX_SPEC_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let bytes = codec::encode(self)?;
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(EncodeError::too_large(bytes.len(), MAX_SPEC_BYTES));
        }
        Ok(bytes)
    }

    /// Decodes a spec of at most [`MAX_SPEC_BYTES`]. Does not [`validate`](Self::validate) it.
    pub fn decode(bytes: &[u8]) -> Result<JobSpec, DecodeError> {
        codec::decode(bytes, MAX_SPEC_BYTES)
    }

    /// The job hash of this spec's canonical encoding. For the spec's creator only: a receiver
    /// uses [`job_hash_from_bytes`] on the bytes it received.
    pub fn hash(&self) -> Result<Hash32, EncodeError> {
        Ok(job_hash_from_bytes(&self.encode()?))
    }

    /// The job's id for this submitter nonce, over this spec's canonical encoding. For the spec's
    /// creator only: a receiver uses [`job_id_from_bytes`] on the bytes it received.
    pub fn job_id(&self, nonce: u128) -> Result<JobId, EncodeError> {
        Ok(job_id_from_bytes(&self.encode()?, nonce))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_spec() -> JobSpec {
        JobSpec {
            executor: ExecutorKind::Wasm,
            module_hash: Hash32::of(b"module"),
            args: vec!["--n".into(), "10".into()],
            env: BTreeMap::from([("MODE".into(), "fast".into())]),
            stdin_hash: Hash32::of(b""),
            limits: Limits {
                fuel: 1_000_000,
                memory_bytes: 64 << 20,
                wall_time_ms: 5_000,
                output_bytes: 1 << 20,
                tasks: 1,
            },
            max_price: Credits(1_000),
            placement: Placement::default(),
            replicas: 1,
        }
    }

    #[test]
    fn valid_sample() {
        assert_eq!(sample_spec().validate(), Ok(()));
    }

    type Case = (fn(&mut JobSpec), &'static str);

    #[test]
    fn rejects_each_bound() {
        let cases: Vec<Case> = vec![
            (
                |s| s.args = vec![String::new(); MAX_ARGS + 1],
                "too many arguments",
            ),
            (
                |s| s.args = vec!["x".repeat(MAX_ARGS_ENV_BYTES + 1)],
                "bytes",
            ),
            (
                |s| {
                    s.env.insert("A=B".into(), "1".into());
                },
                "names",
            ),
            (
                |s| {
                    s.env.insert(String::new(), "1".into());
                },
                "names",
            ),
            (|s| s.args = vec!["a\0b".into()], "NUL"),
            (|s| s.limits.fuel = 0, "fuel"),
            (
                |s| s.limits.memory_bytes = MAX_MEMORY_BYTES + 1,
                "memory_bytes",
            ),
            (|s| s.limits.wall_time_ms = 0, "wall_time_ms"),
            (
                |s| s.limits.output_bytes = MAX_OUTPUT_BYTES + 1,
                "output_bytes",
            ),
            (|s| s.replicas = 0, "replicas"),
            (|s| s.limits.tasks = 2, "tasks"),
            (
                |s| {
                    s.executor = ExecutorKind::Slurm;
                    s.limits.tasks = MAX_TASKS + 1;
                },
                "tasks",
            ),
            (
                |s| {
                    s.executor = ExecutorKind::Slurm;
                    s.limits.tasks = 0;
                },
                "tasks",
            ),
            (|s| s.placement.region = Some("r".repeat(65)), "region"),
        ];
        for (mutate, expected) in cases {
            let mut spec = sample_spec();
            mutate(&mut spec);
            let error = spec.validate().unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{error} should mention {expected}"
            );
        }
    }

    #[test]
    fn job_id_depends_on_spec_and_nonce() {
        let spec = sample_spec();
        let id = spec.job_id(1).unwrap();
        assert_eq!(id, spec.job_id(1).unwrap());
        assert_ne!(id, spec.job_id(2).unwrap());
        let mut other = sample_spec();
        other.args.push("x".into());
        assert_ne!(id, other.job_id(1).unwrap());
        assert_ne!(spec.hash().unwrap(), id.0);
    }

    /// The sample spec with its `limits.fuel` varint written in a longer form than needed.
    pub(crate) fn non_canonical_sample_bytes() -> Vec<u8> {
        let canonical = sample_spec().encode().unwrap();
        // fuel 1 000 000 is `fc 40420f00`; the same value as a u64 marker is `fd 40420f0000000000`.
        let short = [0xfc, 0x40, 0x42, 0x0f, 0x00];
        let at = canonical
            .windows(short.len())
            .position(|window| window == short)
            .unwrap();
        let mut bytes = canonical[..at].to_vec();
        bytes.extend_from_slice(&[0xfd, 0x40, 0x42, 0x0f, 0x00, 0, 0, 0, 0]);
        bytes.extend_from_slice(&canonical[at + short.len()..]);
        bytes
    }

    #[test]
    fn identity_is_computed_over_the_raw_bytes() {
        let spec = sample_spec();
        let canonical = spec.encode().unwrap();
        assert_eq!(spec.hash().unwrap(), job_hash_from_bytes(&canonical));
        assert_eq!(spec.job_id(5).unwrap(), job_id_from_bytes(&canonical, 5));
        // Bytes that decode to the same spec but are not its canonical encoding: the receiver's
        // id of what it received differs from an id of the re-encoded value, so a receiver must
        // hash the bytes, never `JobSpec::hash` of what it decoded.
        let other = non_canonical_sample_bytes();
        assert_ne!(other, canonical);
        assert_eq!(JobSpec::decode(&other).unwrap(), spec);
        assert_ne!(job_hash_from_bytes(&other), spec.hash().unwrap());
        assert_ne!(job_id_from_bytes(&other, 5), spec.job_id(5).unwrap());
    }

    #[test]
    fn known_answers() {
        // docs/protocol.md section 14.3.
        let spec = sample_spec();
        assert_eq!(spec.encode().unwrap().len(), 110);
        assert_eq!(
            spec.hash().unwrap().to_hex(),
            "5892f6d4cae8df070a872f0b86952564431e8f06f6ef0c9e3d2b8de671178676"
        );
        assert_eq!(
            spec.job_id(1).unwrap().0.to_hex(),
            "b22093ddaefbfa79dd46d77df1b907123bdb76d92af31640a2b6f42a6151f2b9"
        );
    }

    #[test]
    fn spec_size_is_capped_both_ways() {
        let mut spec = sample_spec();
        spec.args = vec!["x".repeat(MAX_SPEC_BYTES)];
        assert!(spec.encode().is_err());
        assert!(spec.hash().is_err());
        let oversized = vec![0u8; MAX_SPEC_BYTES + 1];
        assert!(matches!(
            JobSpec::decode(&oversized),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
