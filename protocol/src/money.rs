//! Money: integer micro-credits with checked arithmetic, and the price terms a provider quotes.
//!
//! suanli has no token and no chain: credits are a unit of account between two nodes, derived
//! from settlements. All arithmetic is checked; an overflow is an error, never a wrap.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::Limits;
use crate::negotiation::Usage;

/// An amount in micro-credits (1 credit = 1,000,000 micro-credits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Credits(pub u64);

/// An amount would not fit in 64 bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credit amount overflows")]
pub struct Overflow;

impl Credits {
    pub const ZERO: Credits = Credits(0);

    pub fn micro(self) -> u64 {
        self.0
    }

    pub fn checked_add(self, other: Credits) -> Result<Credits, Overflow> {
        self.0.checked_add(other.0).map(Credits).ok_or(Overflow)
    }

    pub fn checked_sub(self, other: Credits) -> Result<Credits, Overflow> {
        self.0.checked_sub(other.0).map(Credits).ok_or(Overflow)
    }
}

impl fmt::Display for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

impl fmt::Debug for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credits({self})")
    }
}
/// How a provider prices a job: a flat fee plus rates per million units of fuel and, for model
/// requests, per million prompt and completion tokens.
///
/// Fuel (wasmtime's deterministic instruction budget) and token counts are metered identically by
/// both parties, so both compute the same cost from the same usage:
/// `cost = base + ceil((fuel × per_million_fuel + prompt × per_million_prompt + completion ×
/// per_million_completion) / 1,000,000)`. For a standing contract (a model session) the "fuel"
/// of its limits and usage is its tokens, prompt and completion together.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, Debug)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PriceTerms {
    /// Charged for every job that was executed, whatever its outcome.
    pub base: Credits,
    /// Charged per 1,000,000 units of fuel consumed (rounded up).
    pub per_million_fuel: Credits,
    /// Charged per 1,000,000 prompt tokens.
    pub per_million_prompt: Credits,
    /// Charged per 1,000,000 completion tokens.
    pub per_million_completion: Credits,
    /// Charged per CPU-second a cluster's accounting reports (executor `slurm`; metered per
    /// millisecond).
    pub per_cpu_second: Credits,
}

impl PriceTerms {
    /// Terms for WebAssembly jobs: a base and a fuel rate.
    pub const fn fuel(base: Credits, per_million_fuel: Credits) -> PriceTerms {
        PriceTerms {
            base,
            per_million_fuel,
            per_million_prompt: Credits::ZERO,
            per_million_completion: Credits::ZERO,
            per_cpu_second: Credits::ZERO,
        }
    }

    /// The cost of a run that consumed `fuel` (and no tokens).
    pub fn cost_of_fuel(&self, fuel: u64) -> Result<Credits, Overflow> {
        self.base
            .checked_add(metered(&[(fuel, self.per_million_fuel)])?)
    }

    /// The cost of `prompt` and `completion` tokens at these prices, without the base.
    pub fn cost_of_tokens(&self, prompt: u64, completion: u64) -> Result<Credits, Overflow> {
        metered(&[
            (prompt, self.per_million_prompt),
            (completion, self.per_million_completion),
        ])
    }

    /// The cost of a run with this usage.
    pub fn cost(&self, usage: &Usage) -> Result<Credits, Overflow> {
        let cpu_ms = usage.cluster.map_or(0, |cluster| cluster.cpu_ms);
        let per_cpu_ms = self.per_cpu_ms()?;
        self.base.checked_add(metered(&[
            (usage.fuel, self.per_million_fuel),
            (usage.prompt_tokens, self.per_million_prompt),
            (usage.completion_tokens, self.per_million_completion),
            (cpu_ms, per_cpu_ms),
        ])?)
    }

    /// The most a job within `limits` can cost: all its fuel (for a model session, whose tokens
    /// are its fuel, every token at the dearer of the two token rates) and, priced per
    /// CPU-second, one CPU per task for its whole time limit.
    pub fn max_cost(&self, limits: &Limits) -> Result<Credits, Overflow> {
        let per_token = self.per_million_prompt.max(self.per_million_completion);
        let rate = self.per_million_fuel.checked_add(per_token)?;
        let per_cpu_ms = self.per_cpu_ms()?;
        self.base.checked_add(metered(&[
            (limits.total_fuel(), rate),
            (limits.max_cpu_ms(), per_cpu_ms),
        ])?)
    }

    /// `per_cpu_second` as a rate per million CPU-milliseconds.
    fn per_cpu_ms(&self) -> Result<Credits, Overflow> {
        self.per_cpu_second
            .0
            .checked_mul(1_000)
            .map(Credits)
            .ok_or(Overflow)
    }

    /// Whether these terms are no dearer than `other` for every possible usage.
    pub fn within(&self, other: &PriceTerms) -> bool {
        self.base <= other.base
            && self.per_million_fuel <= other.per_million_fuel
            && self.per_million_prompt <= other.per_million_prompt
            && self.per_million_completion <= other.per_million_completion
            && self.per_cpu_second <= other.per_cpu_second
    }
}

/// `ceil(Σ units × rate / 1,000,000)`, checked.
fn metered(terms: &[(u64, Credits)]) -> Result<Credits, Overflow> {
    let mut sum: u128 = 0;
    for (units, rate) in terms {
        let product = u128::from(*units)
            .checked_mul(u128::from(rate.0))
            .ok_or(Overflow)?;
        sum = sum.checked_add(product).ok_or(Overflow)?;
    }
    u64::try_from(sum.div_ceil(1_000_000))
        .map(Credits)
        .map_err(|_| Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cost_rounds_up_and_checks_overflow() {
        let terms = PriceTerms::fuel(Credits(10), Credits(3));
        assert_eq!(terms.cost_of_fuel(0), Ok(Credits(10)));
        assert_eq!(terms.cost_of_fuel(1), Ok(Credits(11)));
        assert_eq!(terms.cost_of_fuel(1_000_000), Ok(Credits(13)));
        assert_eq!(terms.cost_of_fuel(1_000_001), Ok(Credits(14)));
        let dear = PriceTerms::fuel(Credits(u64::MAX), Credits(u64::MAX));
        assert_eq!(dear.cost_of_fuel(u64::MAX), Err(Overflow));
        assert_eq!(Credits(u64::MAX).checked_add(Credits(1)), Err(Overflow));
        assert_eq!(Credits(0).checked_sub(Credits(1)), Err(Overflow));
        assert_eq!(Credits(1_500_000).to_string(), "1.500000");
    }

    #[test]
    fn cpu_seconds_are_metered_per_millisecond_and_bounded_by_tasks() {
        use crate::job::Limits;
        use crate::negotiation::{ClusterUsage, Usage};
        let terms = PriceTerms {
            per_cpu_second: Credits(2_000),
            ..PriceTerms::fuel(Credits(10), Credits(0))
        };
        let usage = |cpu_ms| Usage {
            cluster: Some(ClusterUsage {
                cpu_ms,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(terms.cost(&usage(0)), Ok(Credits(10)));
        assert_eq!(terms.cost(&usage(1)), Ok(Credits(12)));
        assert_eq!(terms.cost(&usage(1_500)), Ok(Credits(3_010)));
        let limits = Limits {
            fuel: 1,
            memory_bytes: 1,
            wall_time_ms: 1_000,
            output_bytes: 1,
            tasks: 20,
        };
        // 20 tasks × (1 s + 1 s grace) of one CPU at 2,000 per CPU-second, and 20 fuel at 0.
        assert_eq!(limits.max_cpu_ms(), 40_000);
        assert_eq!(terms.max_cost(&limits), Ok(Credits(80_010)));
        let dear = PriceTerms {
            per_cpu_second: Credits(u64::MAX),
            ..PriceTerms::default()
        };
        assert_eq!(dear.cost(&usage(1)), Err(Overflow));
    }

    proptest! {
        #[test]
        fn cost_is_monotonic_in_fuel(terms in any::<PriceTerms>(), a in any::<u64>(), b in any::<u64>()) {
            let (low, high) = (a.min(b), a.max(b));
            if let (Ok(low_cost), Ok(high_cost)) = (terms.cost_of_fuel(low), terms.cost_of_fuel(high)) {
                prop_assert!(low_cost <= high_cost);
            }
        }
    }
}
