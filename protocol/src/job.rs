//! Job specifications: what a developer asks the mesh to run, and the [`JobId`] derived from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::advert::ExecutorKind;
use crate::codec::{self, EncodeError};
use crate::hash::{self, Hash32, hash_id};
use crate::identity::NodeId;
use crate::money::Credits;

hash_id!(
    /// A job's identifier: `tagged("job-id", canonical spec bytes || submitter nonce (16 bytes))`.
    JobId
);

/// The largest module the mesh transfers (8 MiB).
pub const MAX_MODULE_BYTES: usize = 8 * 1024 * 1024;
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

/// Resource limits of one run. The provider enforces them; the receipt's usage must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Limits {
    /// wasmtime fuel (deterministic instruction budget).
    pub fuel: u64,
    /// Maximum linear memory, bytes.
    pub memory_bytes: u64,
    /// Wall-clock limit, milliseconds.
    pub wall_time_ms: u64,
    /// Maximum stdout, bytes.
    pub output_bytes: u64,
}

impl Limits {
    /// Whether every limit of `self` is at most the corresponding limit of `other`.
    pub fn within(&self, other: &Limits) -> bool {
        self.fuel <= other.fuel
            && self.memory_bytes <= other.memory_bytes
            && self.wall_time_ms <= other.wall_time_ms
            && self.output_bytes <= other.output_bytes
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

    /// The canonical bytes of this spec.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode(self)
    }

    /// `tagged("job-spec", canonical bytes)`: what a contract binds to.
    pub fn hash(&self) -> Result<Hash32, EncodeError> {
        Ok(hash::tagged("job-spec", &[&self.encode()?]))
    }

    /// The job's id for this submitter nonce.
    pub fn job_id(&self, nonce: u128) -> Result<JobId, EncodeError> {
        Ok(JobId(hash::tagged(
            "job-id",
            &[&self.encode()?, &nonce.to_le_bytes()],
        )))
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
}
