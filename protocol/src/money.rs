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

/// How a provider prices a job: a flat fee plus a rate per million units of fuel.
///
/// Fuel is wasmtime's deterministic instruction budget, so both parties compute the same cost
/// from the same metered usage: `cost = base + ceil(fuel × per_million_fuel / 1,000,000)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, Debug)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PriceTerms {
    /// Charged for every job that was executed, whatever its outcome.
    pub base: Credits,
    /// Charged per 1,000,000 units of fuel consumed (rounded up).
    pub per_million_fuel: Credits,
}

impl PriceTerms {
    /// The cost of a run that consumed `fuel`.
    pub fn cost_of_fuel(&self, fuel: u64) -> Result<Credits, Overflow> {
        let metered = u128::from(fuel)
            .checked_mul(u128::from(self.per_million_fuel.0))
            .ok_or(Overflow)?
            .div_ceil(1_000_000);
        let metered = u64::try_from(metered).map_err(|_| Overflow)?;
        self.base.checked_add(Credits(metered))
    }

    /// The cost of a run with this usage.
    pub fn cost(&self, usage: &Usage) -> Result<Credits, Overflow> {
        self.cost_of_fuel(usage.fuel)
    }

    /// The most a job within `limits` can cost.
    pub fn max_cost(&self, limits: &Limits) -> Result<Credits, Overflow> {
        self.cost_of_fuel(limits.fuel)
    }

    /// Whether these terms are no dearer than `other` for every possible usage.
    pub fn within(&self, other: &PriceTerms) -> bool {
        self.base <= other.base && self.per_million_fuel <= other.per_million_fuel
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cost_rounds_up_and_checks_overflow() {
        let terms = PriceTerms {
            base: Credits(10),
            per_million_fuel: Credits(3),
        };
        assert_eq!(terms.cost_of_fuel(0), Ok(Credits(10)));
        assert_eq!(terms.cost_of_fuel(1), Ok(Credits(11)));
        assert_eq!(terms.cost_of_fuel(1_000_000), Ok(Credits(13)));
        assert_eq!(terms.cost_of_fuel(1_000_001), Ok(Credits(14)));
        let dear = PriceTerms {
            base: Credits(u64::MAX),
            per_million_fuel: Credits(u64::MAX),
        };
        assert_eq!(dear.cost_of_fuel(u64::MAX), Err(Overflow));
        assert_eq!(Credits(u64::MAX).checked_add(Credits(1)), Err(Overflow));
        assert_eq!(Credits(0).checked_sub(Credits(1)), Err(Overflow));
        assert_eq!(Credits(1_500_000).to_string(), "1.500000");
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
