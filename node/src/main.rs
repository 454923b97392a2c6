//! The `suanli` command: runs a node and talks to running nodes.

use clap::Parser;

/// suanli (算力): a peer-to-peer compute-sharing node.
#[derive(Debug, Parser)]
#[command(name = "suanli", version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
