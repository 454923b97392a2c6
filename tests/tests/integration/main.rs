//! suanli's cross-crate integration tests, built into one test binary.

mod mesh;
mod process;
mod protocol;
