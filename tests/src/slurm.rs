//! A real Slurm cluster on this machine for the tests (`scripts/slurm-cluster.sh`): Debian's
//! packages installed once (apt; root), the daemons started under a temporary directory and
//! stopped when the [`SlurmLab`] is dropped, even after a failed assertion.
//!
//! The cluster needs root (slurmd, and jobs as the `nobody` user). Set `SUANLI_SKIP_SLURM=1` to
//! skip the tests that need it on a machine that cannot run it; they fail otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

fn script() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/slurm-cluster.sh"
    ))
    .to_owned()
}

/// Whether the Slurm tests were asked to be skipped.
pub fn skipped() -> bool {
    std::env::var_os("SUANLI_SKIP_SLURM").is_some_and(|value| value == "1")
}

/// A running single-machine cluster: munged, MariaDB, slurmdbd, slurmctld, two slurmd (2 CPUs
/// and 2000 MB each, partition and account `mesh`) and slurmrestd with JWT.
#[derive(Debug)]
pub struct SlurmLab {
    dir: TempDir,
    /// What `slurm-cluster.sh env` prints: SLURM_CONF, SUANLI_SLURMRESTD, SUANLI_SLURM_USER,
    /// SUANLI_SLURM_TOKEN, SUANLI_SLURM_JWT_KEY.
    pub env: BTreeMap<String, String>,
}

impl SlurmLab {
    /// Installs the packages if needed and brings a cluster up.
    pub fn up() -> SlurmLab {
        // A no-op once every package is installed.
        run(Command::new(script()).arg("install"), "install");
        let dir = tempfile::Builder::new()
            .prefix("suanli-slurm-")
            .tempdir()
            .expect("lab dir");
        // Jobs run as `nobody`: the lab must be reachable by it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("lab permissions");
        // Built before starting anything, so that a failed start is brought down too.
        let mut lab = SlurmLab {
            dir,
            env: BTreeMap::new(),
        };
        let output = run(Command::new(script()).arg("up").arg(lab.dir.path()), "up");
        lab.env = output
            .lines()
            .filter_map(|line| line.strip_prefix("export "))
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        lab
    }

    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("slurm-cluster.sh env has no {key}"))
    }

    /// The `[slurm]` section of a node fronting this cluster.
    pub fn node_config(&self) -> String {
        format!(
            "[slurm]\nendpoint = \"{}\"\nuser = \"{}\"\njwt_key_file = \"{}\"\npartition = \"mesh\"\n\
             account = \"mesh\"\nwork_dir = \"{}\"\nrefresh_secs = 1\npoll_interval_ms = 200\n\
             price_per_cpu_second = 1000\n",
            self.var("SUANLI_SLURMRESTD"),
            self.var("SUANLI_SLURM_USER"),
            self.var("SUANLI_SLURM_JWT_KEY"),
            self.var("SUANLI_SLURM_WORK_DIR"),
        )
    }

    /// A Slurm command (`sacct`, `squeue`, `scontrol`) against this cluster; its stdout.
    pub fn command(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new(program)
            .args(args)
            .env("SLURM_CONF", self.var("SLURM_CONF"))
            .output()
            .unwrap_or_else(|error| panic!("{program}: {error}"));
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for SlurmLab {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("slurm-cluster.sh {what}: {error}"));
    assert!(
        output.status.success(),
        "slurm-cluster.sh {what} failed (it needs root and Debian's Slurm packages; \
         SUANLI_SKIP_SLURM=1 skips these tests): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
