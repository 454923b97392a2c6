//! suanli's cross-crate integration tests, built into one test binary.

mod faults;
mod jobs;
mod mesh;
mod process;
mod protocol;
mod transparency;
