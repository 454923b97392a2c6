//! Test harness shared by suanli's integration tests (multi-node helpers arrive with the daemon).
