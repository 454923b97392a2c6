//! suanli's cross-crate integration tests, built into one test binary.

mod protocol;
