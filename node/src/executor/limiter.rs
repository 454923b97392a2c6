//! The per-job memory limiter: enforces the memory limit, records the peak, and remembers whether
//! it refused a growth, so a trap that follows can be reported as `MemoryLimit`.
//!
//! wasmtime asks it before every linear-memory allocation, including the initial one at
//! instantiation; a refused `memory.grow` returns -1 to the guest (the wasm semantics of "no
//! more memory"), a refused initial allocation fails instantiation.

use wasmtime::ResourceLimiter;

pub(super) struct MemoryLimiter {
    limit_bytes: u64,
    /// Bytes of linear memory allocated now (all memories of the store).
    used_bytes: u64,
    peak_bytes: u64,
    /// The last approved growth and the peak before it, undone if wasmtime then fails to grow.
    pending: Option<(u64, u64)>,
    refused: bool,
    table_elements: usize,
    max_table_elements: usize,
}

impl MemoryLimiter {
    pub(super) fn new(limit_bytes: u64, max_table_elements: usize) -> Self {
        MemoryLimiter {
            limit_bytes,
            used_bytes: 0,
            peak_bytes: 0,
            pending: None,
            refused: false,
            table_elements: 0,
            max_table_elements,
        }
    }

    pub(super) fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// The most linear memory the job had at once; never above the limit.
    pub(super) fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }

    /// Whether a memory allocation or growth was refused for being over the limit.
    pub(super) fn refused(&self) -> bool {
        self.refused
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Beyond the module's own declared maximum wasmtime fails the growth anyway: that is
        // the module's limit, not ours, so it is not counted as a refusal.
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        let growth = u64::try_from(desired.saturating_sub(current)).unwrap_or(u64::MAX);
        let after = self.used_bytes.saturating_add(growth);
        if after > self.limit_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.pending = Some((growth, self.peak_bytes));
        self.used_bytes = after;
        self.peak_bytes = self.peak_bytes.max(after);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // Approved but failed (the OS or the pool said no): the guest sees -1 and the usage
        // must not count memory it never had.
        if let Some((growth, peak)) = self.pending.take() {
            self.used_bytes = self.used_bytes.saturating_sub(growth);
            self.peak_bytes = peak;
        }
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        // Tables live in host memory outside the memory limit: cap them in elements.
        let after = self
            .table_elements
            .saturating_add(desired.saturating_sub(current));
        if after > self.max_table_elements {
            return Ok(false);
        }
        self.table_elements = after;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 * 1024;

    #[test]
    fn refuses_beyond_the_limit_and_keeps_the_peak() -> wasmtime::Result<()> {
        let mut limiter = MemoryLimiter::new(4 * PAGE as u64, 10);
        assert!(limiter.memory_growing(0, PAGE, None)?);
        assert!(limiter.memory_growing(PAGE, 4 * PAGE, None)?);
        assert!(!limiter.refused());
        assert!(!limiter.memory_growing(4 * PAGE, 5 * PAGE, None)?);
        assert!(limiter.refused());
        assert_eq!(limiter.peak_bytes(), 4 * PAGE as u64);
        Ok(())
    }

    #[test]
    fn module_maximum_is_not_a_refusal() -> wasmtime::Result<()> {
        let mut limiter = MemoryLimiter::new(100 * PAGE as u64, 10);
        assert!(!limiter.memory_growing(PAGE, 3 * PAGE, Some(2 * PAGE))?);
        assert!(!limiter.refused());
        Ok(())
    }

    #[test]
    fn failed_growth_is_not_billed() -> wasmtime::Result<()> {
        let mut limiter = MemoryLimiter::new(100 * PAGE as u64, 10);
        assert!(limiter.memory_growing(0, PAGE, None)?);
        assert!(limiter.memory_growing(PAGE, 50 * PAGE, None)?);
        limiter.memory_grow_failed(wasmtime::Error::msg("no"))?;
        assert_eq!(limiter.peak_bytes(), PAGE as u64);
        Ok(())
    }

    #[test]
    fn tables_are_capped() -> wasmtime::Result<()> {
        let mut limiter = MemoryLimiter::new(PAGE as u64, 10);
        assert!(limiter.table_growing(0, 10, None)?);
        assert!(!limiter.table_growing(10, 11, None)?);
        Ok(())
    }
}
