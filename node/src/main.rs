//! The `suanli` binary: parses the command line, sets up logging, runs the command.

use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::Parser;
use suanli_node::cli::{Cli, LogFormat, SilentExit, execute};

/// candle sizes its thread pools from this variable, once per process. One thread per stream is
/// what keeps streams from queueing for a shared pool on a busy machine (docs/benchmarks.md);
/// an operator's own setting is kept.
const ENGINE_THREADS: &str = "RAYON_NUM_THREADS";

fn main() -> ExitCode {
    if std::env::var_os(ENGINE_THREADS).is_none() {
        // The environment of this process cannot be changed safely once threads may exist, so
        // the process replaces itself with the same command and the setting (exec returns only
        // on failure).
        if let Ok(exe) = std::env::current_exe() {
            let error = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env(ENGINE_THREADS, "1")
                .exec();
            return fail(&format!("cannot set {ENGINE_THREADS}: {error}"));
        }
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<SilentExit>() {
            Some(SilentExit(code)) => ExitCode::from(*code),
            // `suanli ledger export | head`: the reader has what it wanted.
            None if closed_pipe(&error) => ExitCode::SUCCESS,
            None => fail(&format!("{error:#}")),
        },
    }
}

/// Log lines go to stderr (stdout is the command's output), filtered by `RUST_LOG`.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Prints a one-line reason and exits non-zero.
fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {message}");
    ExitCode::FAILURE
}

/// Whether the command stopped because stdout's reader went away.
fn closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
