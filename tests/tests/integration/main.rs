//! suanli's cross-crate integration tests, built into one test binary.

mod access;
mod admission;
mod adversary;
mod console;
mod crash;
mod events;
mod faults;
mod jobs;
mod mesh;
mod metrics;
mod openapi;
mod process;
mod protocol;
mod replicas;
mod slurm;
mod storage;
mod token_replicas;
mod tokens;
mod transparency;
