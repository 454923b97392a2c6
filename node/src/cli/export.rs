//! `suanli ledger export` and `suanli ledger verify --export`: a ledger as JSON Lines, CSV or a
//! C2SP tlog-tiles directory, from a running node (through its API) or a stopped node's data
//! dir, and the offline check of such an export that needs nothing but the export itself.
//!
//! ```text
//!  API /v1/ledger pages ─┐                    ┌─ jsonl: one EntryJson + "ledger" per line
//!                        ├─ raw entries ──────┼─ csv:   the same columns, without the bytes
//!  stopped node's db ────┘  (≤ 1024 at once)  └─ tiles: tile/<L>/<N>, tile/entries/<N>, checkpoint
//! ```
//!
//! Memory stays bounded whatever the ledger's length: one page of entries, one entry bundle
//! (≤ 256 entries) and the [`TileBuilder`]'s pending hashes (≤ 255 per level). Every row is
//! derived from the entry's exact bytes by the same function whether online or offline, so the
//! two exports of one ledger are identical.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use suanli_protocol::NodeId;
use suanli_protocol::checkpoint::SignedCheckpoint;
use suanli_protocol::ledger::{ChainHead, ChainVerifier, LedgerEntry, entry_hash};
use suanli_protocol::merkle::Frontier;
use suanli_protocol::signed::SignatureBatch;
use suanli_protocol::tiles::{
    MAX_BUNDLE_ENTRY_BYTES, TILE_WIDTH, Tile, TileBuilder, TileId, push_bundle_entry, read_bundle,
    root_from_tiles, tiles_in_tree,
};

use super::client::ApiClient;
use super::ledger::Source;
use super::proof::{offline_store, read_checkpoint};
use crate::api::types::{EntryView, NodeView, RawEntriesPage};
use crate::bench::floor::fresh_seed;
use crate::data_dir::DataDir;
use crate::ledger::{MAX_RANGE, Store, StoredEntry};

/// Longest line read from a JSON Lines export: an entry's base64 (≤ 128 KiB) and its columns.
const MAX_LINE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// JSON Lines: one entry per line, with its exact bytes (base64).
    Jsonl,
    /// CSV with a header line; the readable columns only.
    Csv,
    /// A C2SP tlog-tiles directory: hash tiles, entry bundles and the signed checkpoint.
    Tiles,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// First entry index (jsonl and csv).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub from: u64,
    /// End of the export, exclusive: a ledger size [default: the ledger's durable size; for
    /// tiles, the checkpoint's size, which is the only value accepted].
    #[arg(long, value_name = "N")]
    pub to: Option<u64>,
    /// Output file (jsonl, csv; default stdout) or directory (tiles; required, must be new or
    /// empty).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub source: Source,
}

/// One exported row: the entry as the API shows it, and whose ledger it is.
#[derive(Debug, Serialize)]
struct ExportRow<'a> {
    ledger: &'a str,
    #[serde(flatten)]
    entry: EntryView,
}

const CSV_HEADER: &str = "ledger,index,timestamp_ms,kind,contract_id,requester,provider,job_id,\
                          job_hash,fuel,wall_time_ms,memory_bytes,output_bytes,prompt_tokens,\
                          completion_tokens,cluster_job_id,cluster_elapsed_ms,cluster_cpus,\
                          cluster_cpu_ms,cluster_peak_memory_bytes,cost,outcome,detail,hash,\
                          prev_hash";

/// Where the entries come from.
enum Entries {
    Api(ApiClient),
    Offline { store: Store, data_dir: DataDir },
}

impl Entries {
    async fn open(source: &Source) -> anyhow::Result<(Entries, NodeId)> {
        match &source.data_dir {
            Some(dir) => {
                let store = offline_store(dir)?;
                let owner = store.owner();
                let data_dir = DataDir::new(dir);
                Ok((Entries::Offline { store, data_dir }, owner))
            }
            None => {
                let client = source.client.client()?;
                let node: NodeView = client.get_json("/v1/node").await?;
                Ok((Entries::Api(client), node.node_id))
            }
        }
    }

    /// The durable size now.
    async fn size(&self) -> anyhow::Result<u64> {
        match self {
            Entries::Offline { store, .. } => Ok(store.head().size),
            Entries::Api(client) => {
                let page: RawEntriesPage = client.get_json("/v1/ledger?limit=1&fields=raw").await?;
                Ok(page.size)
            }
        }
    }

    /// Up to [`MAX_RANGE`] entries from `from`, below `to`.
    async fn page(&self, from: u64, to: u64) -> anyhow::Result<Vec<StoredEntry>> {
        let limit = u32::try_from(to.saturating_sub(from))
            .unwrap_or(MAX_RANGE)
            .min(MAX_RANGE);
        let entries = match self {
            Entries::Offline { store, .. } => store.range(from, limit)?,
            Entries::Api(client) => {
                let page: RawEntriesPage = client
                    .get_json(&format!("/v1/ledger?from={from}&limit={limit}&fields=raw"))
                    .await?;
                page.entries
                    .into_iter()
                    .map(|row| {
                        let raw = BASE64.decode(&row.raw_base64).map_err(|error| {
                            anyhow!("/v1/ledger: entry {}: bad raw_base64: {error}", row.index)
                        })?;
                        Ok(StoredEntry {
                            seq: row.index,
                            raw,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
        };
        for (offset, entry) in entries.iter().enumerate() {
            if entry.seq != from + offset as u64 {
                bail!(
                    "the ledger answered entry {} where entry {} was expected",
                    entry.seq,
                    from + offset as u64
                );
            }
        }
        if entries.is_empty() && from < to {
            bail!("the ledger has no entry {from}, although it reported {to} entries");
        }
        Ok(entries)
    }

    /// The signed checkpoint to export tiles up to: the API's, or the data dir's file.
    async fn checkpoint(&self) -> anyhow::Result<SignedCheckpoint> {
        match self {
            Entries::Offline { data_dir, .. } => {
                let path = data_dir.checkpoint_path();
                if !path.exists() {
                    bail!(
                        "{} does not exist: the node has not published a checkpoint yet \
                         (tiles are exported up to a signed checkpoint)",
                        path.display()
                    );
                }
                read_checkpoint(&path)
            }
            Entries::Api(client) => {
                let bytes = client.get_bytes("/v1/ledger/checkpoint").await?;
                let note = String::from_utf8(bytes)
                    .map_err(|_| anyhow!("/v1/ledger/checkpoint: not UTF-8 text"))?;
                SignedCheckpoint::from_note(&note)
                    .map_err(|error| anyhow!("/v1/ledger/checkpoint: {error}"))
            }
        }
    }
}

/// `suanli ledger export`.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let (entries, owner) = Entries::open(&args.source).await?;
    let started = Instant::now();
    let exported = match args.format {
        ExportFormat::Jsonl | ExportFormat::Csv => {
            let size = entries.size().await?;
            let to = args.to.unwrap_or(size);
            if to > size {
                bail!("--to {to} is beyond the ledger's {size} entries");
            }
            if args.from > to {
                bail!("--from {} is after --to {to}", args.from);
            }
            let writer: Box<dyn Write> = match &args.out {
                Some(path) => Box::new(
                    File::create(path).with_context(|| format!("create {}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut writer = BufWriter::new(writer);
            let owner = owner.to_string();
            let csv = args.format == ExportFormat::Csv;
            if csv {
                writeln!(writer, "{CSV_HEADER}")?;
            }
            let mut next = args.from;
            while next < to {
                for stored in entries.page(next, to).await? {
                    let row = ExportRow {
                        ledger: &owner,
                        entry: EntryView::from(&stored),
                    };
                    if csv {
                        write_csv_row(&mut writer, &row)?;
                    } else {
                        serde_json::to_writer(&mut writer, &row)?;
                        writer.write_all(b"\n")?;
                    }
                    next = stored.seq + 1;
                }
            }
            writer.flush()?;
            to - args.from
        }
        ExportFormat::Tiles => {
            let out = args
                .out
                .as_deref()
                .ok_or_else(|| anyhow!("--format tiles needs --out DIR"))?;
            let checkpoint = entries.checkpoint().await?;
            if checkpoint.signer() != owner {
                bail!(
                    "the checkpoint is signed by {}, not by the ledger's node {owner}",
                    checkpoint.signer()
                );
            }
            if args.from != 0 {
                bail!("--format tiles exports the whole tree: --from must be 0");
            }
            if let Some(to) = args.to
                && to != checkpoint.size()
            {
                bail!(
                    "--format tiles exports exactly up to the checkpoint's size {}; --to {to} \
                     is not that",
                    checkpoint.size()
                );
            }
            export_tiles(&entries, &checkpoint, out).await?
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        entries = exported,
        seconds,
        per_second = (exported as f64 / seconds.max(1e-9)).round(),
        "export finished"
    );
    Ok(())
}

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn write_csv_row(writer: &mut impl Write, row: &ExportRow<'_>) -> std::io::Result<()> {
    let entry = &row.entry;
    fn text<T: std::fmt::Display>(value: Option<&T>) -> String {
        csv_field(&value.map(ToString::to_string).unwrap_or_default())
    }
    let number = |value: Option<u64>| value.map(|n| n.to_string()).unwrap_or_default();
    let fields = [
        csv_field(row.ledger),
        entry.index.to_string(),
        entry.timestamp_ms.to_string(),
        entry.kind.name().to_owned(),
        text(entry.contract_id.as_ref()),
        text(entry.requester.as_ref()),
        text(entry.provider.as_ref()),
        text(entry.job_id.as_ref()),
        text(entry.job_hash.as_ref()),
        number(entry.fuel),
        number(entry.wall_time_ms),
        number(entry.memory_bytes),
        number(entry.output_bytes),
        number(entry.prompt_tokens),
        number(entry.completion_tokens),
        number(entry.cluster.map(|cluster| cluster.job_id)),
        number(entry.cluster.map(|cluster| cluster.elapsed_ms)),
        number(entry.cluster.map(|cluster| u64::from(cluster.cpus))),
        number(entry.cluster.map(|cluster| cluster.cpu_ms)),
        number(entry.cluster.map(|cluster| cluster.peak_memory_bytes)),
        number(entry.cost),
        text(entry.outcome.as_ref()),
        text(entry.detail.as_ref()),
        entry.hash.to_string(),
        entry.prev_hash.clone(),
    ];
    writeln!(writer, "{}", fields.join(","))
}

/// Writes `bytes` at `dir/relative`, creating directories.
fn write_file(dir: &Path, relative: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))
}

/// Writes the tiles, bundles and checkpoint of the tree the checkpoint names; refuses when the
/// entries do not lead to the checkpoint's root.
async fn export_tiles(
    entries: &Entries,
    checkpoint: &SignedCheckpoint,
    out: &Path,
) -> anyhow::Result<u64> {
    if out.exists() {
        let mut listing = std::fs::read_dir(out)
            .with_context(|| format!("{} exists and is not a readable directory", out.display()))?;
        if listing.next().is_some() {
            bail!(
                "{} is not empty; export tiles into a new directory",
                out.display()
            );
        }
    }
    let size = checkpoint.size();
    let mut builder = TileBuilder::new();
    let mut frontier = Frontier::new();
    let mut bundle = Vec::new();
    let mut bundles = 0u64;
    let mut next = 0;
    while next < size {
        for stored in entries.page(next, size).await? {
            if stored.raw.len() > MAX_BUNDLE_ENTRY_BYTES {
                bail!(
                    "entry {} is {} bytes: a tlog-tiles entry bundle holds entries of at most \
                     {MAX_BUNDLE_ENTRY_BYTES} bytes; export it as jsonl instead",
                    stored.seq,
                    stored.raw.len()
                );
            }
            push_bundle_entry(&mut bundle, &stored.raw)?;
            let leaf = entry_hash(&stored.raw);
            frontier.push(leaf);
            for tile in builder.push(leaf) {
                write_file(out, &tile.id.path(), &tile.to_bytes())?;
            }
            if (stored.seq + 1) % u64::from(TILE_WIDTH) == 0 {
                let id = TileId::new(0, bundles, TILE_WIDTH)?;
                write_file(out, &id.entries_path(), &bundle)?;
                bundle.clear();
                bundles += 1;
            }
            next = stored.seq + 1;
        }
    }
    if frontier.root() != checkpoint.root() {
        bail!(
            "the ledger's first {size} entries have root {}, but the checkpoint names {}: \
             the ledger is not the one the checkpoint was signed for; nothing more written",
            frontier.root(),
            checkpoint.root()
        );
    }
    for tile in builder.finish() {
        write_file(out, &tile.id.path(), &tile.to_bytes())?;
    }
    let partial = u16::try_from(size % u64::from(TILE_WIDTH)).unwrap_or(0);
    if partial > 0 {
        write_file(
            out,
            &TileId::new(0, bundles, partial)?.entries_path(),
            &bundle,
        )?;
    }
    // Last: a directory with a checkpoint is complete.
    write_file(out, "checkpoint", checkpoint.note().as_bytes())?;
    Ok(size)
}

/// `suanli ledger verify --export PATH`: `Ok(Ok(summary))`, `Ok(Err(reason))` when the export
/// does not verify, `Err` when it cannot be read at all.
pub fn verify_export(path: &Path, node: Option<NodeId>) -> anyhow::Result<Result<String, String>> {
    if path.is_dir() {
        verify_tiles(path, node)
    } else if path.extension().is_some_and(|ext| ext == "csv") {
        bail!(
            "{}: a CSV export carries no entry bytes and cannot be verified; verify a jsonl or \
             tiles export",
            path.display()
        )
    } else {
        verify_jsonl(path, node)
    }
}

/// Rows of a JSON Lines export whose signatures are checked in one batch, and most bytes of
/// entries held for it (the rows are held until their batch is checked).
const VERIFY_BATCH_ROWS: usize = 1024;
const VERIFY_BATCH_BYTES: usize = 4 << 20;

/// A row whose entry passed no chain check yet: its signatures wait for the batch.
struct PendingRow {
    index: u64,
    number: u64,
    raw: Vec<u8>,
    /// Why its columns are not what its bytes say, if they are not.
    column_error: Option<String>,
}

/// Checks the pending rows' entries (signatures in one batch) and clears them. The first row
/// that fails, with the reason a row-by-row check would give: its chain check first, then its
/// columns.
fn check_pending(
    verifier: &mut Option<ChainVerifier>,
    batch: &mut SignatureBatch,
    pending: &mut Vec<PendingRow>,
) -> Option<String> {
    let verifier = verifier.as_mut()?;
    let start = verifier.head().size;
    let raws: Vec<&[u8]> = pending.iter().map(|row| row.raw.as_slice()).collect();
    let chain_error = verifier.push_batch(&raws, batch).err();
    let chain_at = chain_error
        .as_ref()
        .map(|error| usize::try_from(error.index.saturating_sub(start)).unwrap_or(usize::MAX));
    let column_at = pending.iter().position(|row| row.column_error.is_some());
    let failure = match (chain_error, chain_at, column_at) {
        (Some(error), Some(at), column) if column.is_none_or(|column| at <= column) => {
            Some(match pending.get(at) {
                Some(row) => format!("entry {} (line {}): {}", row.index, row.number, error.error),
                None => error.to_string(),
            })
        }
        (_, _, Some(at)) => pending.get(at).map(|row| {
            format!(
                "entry {} (line {}): {}",
                row.index,
                row.number,
                row.column_error.as_deref().unwrap_or_default()
            )
        }),
        _ => None,
    };
    pending.clear();
    failure
}

fn verify_jsonl(path: &Path, node: Option<NodeId>) -> anyhow::Result<Result<String, String>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut owner: Option<NodeId> = node;
    let mut verifier: Option<ChainVerifier> = None;
    let mut first = None;
    let mut count = 0u64;
    // Entries are checked like `ChainVerifier::push` one by one, with their signatures in
    // batches: same verdict, same first bad entry, about twice as fast.
    let mut batch = SignatureBatch::new(fresh_seed());
    let mut pending: Vec<PendingRow> = Vec::new();
    let mut pending_bytes = 0usize;
    // A row's own failure is reported only if no earlier pending row fails.
    macro_rules! refuse {
        ($reason:expr) => {{
            let reason: String = $reason;
            if let Some(earlier) = check_pending(&mut verifier, &mut batch, &mut pending) {
                return Ok(Err(earlier));
            }
            return Ok(Err(reason));
        }};
    }
    for number in 1u64.. {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("read {}", path.display()))?;
        if read == 0 {
            break;
        }
        if line.len() > MAX_LINE_BYTES {
            refuse!(format!(
                "line {number} is longer than {MAX_LINE_BYTES} bytes: not an entry"
            ));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row: Value = match serde_json::from_slice(&line) {
            Ok(row) => row,
            Err(error) => refuse!(format!("line {number} is not JSON: {error}")),
        };
        let Some(index) = row["index"].as_u64() else {
            refuse!(format!("line {number} has no index"));
        };
        let fail = |reason: String| format!("entry {index} (line {number}): {reason}");
        let Some(ledger) = row["ledger"]
            .as_str()
            .and_then(|id| id.parse::<NodeId>().ok())
        else {
            refuse!(fail("no valid ledger column".into()));
        };
        let owner = *owner.get_or_insert(ledger);
        if ledger != owner {
            refuse!(fail(format!(
                "belongs to the ledger of {ledger}, not {owner}"
            )));
        }
        let Some(raw) = row["raw_base64"]
            .as_str()
            .and_then(|text| BASE64.decode(text).ok())
        else {
            refuse!(fail("no valid raw_base64".into()));
        };
        if verifier.is_none() {
            // An export may start anywhere: the chain is checked from its first entry on.
            let prev_hash = match LedgerEntry::decode(&raw) {
                Ok(entry) => entry.prev_hash,
                Err(error) => refuse!(fail(format!("cannot be decoded: {error}"))),
            };
            first = Some(index);
            let resumed = ChainHead {
                size: index,
                head: prev_hash,
                timestamp_ms: 0,
            };
            verifier = Some(ChainVerifier::resume(owner, resumed));
        }
        // Every column must be what the bytes say (checked after the entry's chain checks).
        let stored = StoredEntry { seq: index, raw };
        let expected = serde_json::to_value(ExportRow {
            ledger: &owner.to_string(),
            entry: EntryView::from(&stored),
        })?;
        let column_error = (expected != row).then(|| {
            let differing: Vec<&str> = expected
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(key, value)| row.get(key.as_str()) != Some(value))
                .map(|(key, _)| key.as_str())
                .collect();
            format!(
                "column(s) {} differ from what the entry's bytes say",
                if differing.is_empty() {
                    "(extra)".to_owned()
                } else {
                    differing.join(", ")
                }
            )
        });
        pending_bytes += stored.raw.len();
        pending.push(PendingRow {
            index,
            number,
            raw: stored.raw,
            column_error,
        });
        if pending.len() >= VERIFY_BATCH_ROWS || pending_bytes >= VERIFY_BATCH_BYTES {
            pending_bytes = 0;
            if let Some(reason) = check_pending(&mut verifier, &mut batch, &mut pending) {
                return Ok(Err(reason));
            }
        }
        count += 1;
    }
    if let Some(reason) = check_pending(&mut verifier, &mut batch, &mut pending) {
        return Ok(Err(reason));
    }
    let (Some(owner), Some(first)) = (owner, first) else {
        return Ok(Err(format!("{} holds no entries", path.display())));
    };
    let end = first + count;
    let before = if first > 0 {
        format!(" (entries before {first} are not in the export: the chain is checked from there)")
    } else {
        String::new()
    };
    Ok(Ok(format!(
        "entries {first}..{end} ({count}) of the ledger of {owner}: chain links, sequence, \
         timestamps, every signature, every entry hash and every column check out{before}"
    )))
}

/// Reads a file of the tiles directory, refusing anything larger than `limit`.
fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if bytes.len() > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    Ok(bytes)
}

fn verify_tiles(dir: &Path, node: Option<NodeId>) -> anyhow::Result<Result<String, String>> {
    let checkpoint = read_checkpoint(&dir.join("checkpoint"))?;
    let owner = checkpoint.signer();
    if let Some(node) = node
        && node != owner
    {
        return Ok(Err(format!(
            "the checkpoint is signed by {owner}, not by {node}"
        )));
    }
    let size = checkpoint.size();
    let max_bundle = usize::from(TILE_WIDTH) * (2 + MAX_BUNDLE_ENTRY_BYTES);
    let check_tile = |tile: &Tile| -> Result<(), String> {
        let bytes = read_bounded(&dir.join(tile.id.path()), tile.id.byte_len())?;
        if bytes != tile.to_bytes() {
            return Err(format!(
                "{} does not hold the hashes its entries give",
                tile.id.path()
            ));
        }
        Ok(())
    };
    let mut verifier = ChainVerifier::new(owner);
    let mut batch = SignatureBatch::new(fresh_seed());
    let mut builder = TileBuilder::new();
    let mut frontier = Frontier::new();
    for id in tiles_in_tree(size).filter(|id| id.level() == 0) {
        let path = dir.join(id.entries_path());
        let bundle = match read_bounded(&path, max_bundle) {
            Ok(bundle) => bundle,
            Err(reason) => return Ok(Err(reason)),
        };
        let raws = match read_bundle(&bundle) {
            Ok(raws) => raws,
            Err(error) => return Ok(Err(format!("{}: {error}", id.entries_path()))),
        };
        if raws.len() != usize::from(id.width()) {
            return Ok(Err(format!(
                "{} holds {} entries, not {}",
                id.entries_path(),
                raws.len(),
                id.width()
            )));
        }
        // A bundle's signatures in one batch (same verdict and first bad entry as one by one);
        // its tiles are complete only after its last entry, so no tile is checked before them.
        if let Err(error) = verifier.push_batch(&raws, &mut batch) {
            return Ok(Err(error.to_string()));
        }
        for raw in raws {
            let leaf = entry_hash(raw);
            frontier.push(leaf);
            for tile in builder.push(leaf) {
                if let Err(reason) = check_tile(&tile) {
                    return Ok(Err(reason));
                }
            }
        }
    }
    for tile in builder.finish() {
        if let Err(reason) = check_tile(&tile) {
            return Ok(Err(reason));
        }
    }
    if frontier.root() != checkpoint.root() {
        return Ok(Err(format!(
            "the entries' root is {}, the checkpoint's {}",
            frontier.root(),
            checkpoint.root()
        )));
    }
    let from_tiles = root_from_tiles(size, |id| read_bounded(&dir.join(id.path()), id.byte_len()));
    match from_tiles {
        Ok(root) if root == checkpoint.root() => {}
        Ok(root) => {
            return Ok(Err(format!(
                "the tiles give root {root}, the checkpoint {}",
                checkpoint.root()
            )));
        }
        Err(error) => return Ok(Err(error.to_string())),
    }
    Ok(Ok(format!(
        "{size} entries of the ledger of {owner}: chain links, sequence, timestamps and every \
         signature check out; every tile holds what the entries give; the root {} is the one \
         the checkpoint signed by {owner} names",
        checkpoint.root()
    )))
}

#[cfg(test)]
mod tests {
    use suanli_protocol::Keypair;
    use suanli_protocol::checkpoint::Checkpoint;
    use tempfile::TempDir;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::cli::ClientArgs;
    use crate::fixtures::{Deal, evidence_body, failure_body, provider, requester, stranger};
    use crate::ledger::{LedgerHandle, testing};

    /// A stopped node's data dir: its key, a ledger of `deals` jobs (three entries each) plus a
    /// failure and a misbehaviour record, and a checkpoint of the whole ledger.
    async fn data_dir_with(deals: u64) -> TempDir {
        let dir = TempDir::new().unwrap();
        populate(dir.path(), deals).await;
        dir
    }

    /// A data dir at `path` holding the provider's key, and its ledger started.
    fn start_ledger(
        path: &Path,
    ) -> (
        DataDir,
        LedgerHandle,
        tokio::task::JoinHandle<()>,
        CancellationToken,
    ) {
        let data_dir = DataDir::new(path);
        let key = provider();
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(
            data_dir.key_path(),
            format!("{}\n", hex::encode(key.secret_bytes())),
        )
        .unwrap();
        let cancel = CancellationToken::new();
        let storage =
            crate::storage::Storage::open(&data_dir.db_path(), &Default::default()).unwrap();
        let (ledger, task) = Store::open(&storage, key.node_id())
            .unwrap()
            .start(cancel.clone());
        (data_dir, ledger, task, cancel)
    }

    async fn populate(path: &Path, deals: u64) {
        let key = provider();
        let (data_dir, ledger, task, cancel) = start_ledger(path);
        append_deals(&ledger, 0..deals).await;
        ledger
            .append(failure_body(&key, requester().node_id()))
            .await
            .unwrap();
        ledger
            .append(evidence_body(&key, stranger().node_id()))
            .await
            .unwrap();
        cancel.cancel();
        task.await.unwrap();
        drop(ledger);
        write_checkpoint(&data_dir, &key);
    }

    /// Fills a data dir by hand, for measurements and the worked examples of docs/ledger.md:
    /// `SUANLI_POPULATE_DIR=/tmp/ledger SUANLI_POPULATE_DEALS=1000 cargo test -p suanli-node
    /// --lib populate_a_data_dir -- --ignored` (the node id is that of secret key 0x22…22).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "fills a data dir for measurements by hand"]
    async fn populate_a_data_dir() {
        let Some(path) = std::env::var_os("SUANLI_POPULATE_DIR") else {
            return;
        };
        let deals = std::env::var("SUANLI_POPULATE_DEALS")
            .ok()
            .and_then(|deals| deals.parse().ok())
            .unwrap_or(1_000);
        populate(Path::new(&path), deals).await;
    }

    async fn append_deals(ledger: &LedgerHandle, nonces: std::ops::Range<u64>) {
        let tasks: Vec<_> = nonces
            .map(|nonce| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    let deal = Deal::new(nonce, &requester(), &provider(), 1_000 + nonce).unwrap();
                    for body in deal.bodies() {
                        ledger.append(body).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }

    /// Signs the stopped ledger's current tree as its checkpoint file.
    fn write_checkpoint(data_dir: &DataDir, key: &Keypair) {
        let store = crate::ledger::open_offline(&data_dir.db_path(), key.node_id()).unwrap();
        let size = store.head().size;
        let note = Checkpoint::new(key.node_id(), size, store.tree_root(size).unwrap())
            .sign(key)
            .unwrap()
            .into_note();
        std::fs::write(data_dir.checkpoint_path(), note).unwrap();
    }

    fn offline(dir: &Path) -> Source {
        Source {
            data_dir: Some(dir.to_owned()),
            client: ClientArgs {
                api: "http://127.0.0.1:9".into(),
                token: None,
                json: false,
            },
        }
    }

    fn args(format: ExportFormat, out: &Path, source: Source) -> ExportArgs {
        ExportArgs {
            format,
            from: 0,
            to: None,
            out: Some(out.to_owned()),
            source,
        }
    }

    fn verdict(path: &Path) -> Result<String, String> {
        verify_export(path, None).unwrap()
    }

    fn edit_line(path: &Path, line: usize, edit: impl FnOnce(&mut Value)) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut row: Value = serde_json::from_str(&lines[line]).unwrap();
        edit(&mut row);
        lines[line] = row.to_string();
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[tokio::test]
    async fn jsonl_and_csv_exports_verify_and_tampering_is_caught() {
        let dir = data_dir_with(4).await;
        let out = TempDir::new().unwrap();
        let jsonl = out.path().join("ledger.jsonl");
        export(args(ExportFormat::Jsonl, &jsonl, offline(dir.path())))
            .await
            .unwrap();
        let text = std::fs::read_to_string(&jsonl).unwrap();
        assert_eq!(text.lines().count(), 14);
        // Deals were appended concurrently: find a receipt wherever it landed.
        let receipt: Value = text
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .find(|row| row["kind"] == "receipt")
            .unwrap();
        assert_eq!(receipt["ledger"], provider().node_id().to_string());
        assert_eq!(receipt["kind"], "receipt");
        assert_eq!(receipt["wall_time_ms"], 12);
        let summary = verdict(&jsonl).unwrap();
        assert!(summary.contains("entries 0..14 (14)"), "{summary}");
        assert!(
            verify_export(&jsonl, Some(provider().node_id()))
                .unwrap()
                .is_ok()
        );
        let other = verify_export(&jsonl, Some(stranger().node_id())).unwrap();
        assert!(other.unwrap_err().contains("not"), "wrong owner accepted");

        let csv = out.path().join("ledger.csv");
        export(args(ExportFormat::Csv, &csv, offline(dir.path())))
            .await
            .unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), CSV_HEADER);
        let columns = CSV_HEADER.split(',').count();
        let rows: Vec<&str> = lines.collect();
        assert_eq!(rows.len(), 14);
        let receipt: Vec<&str> = rows
            .iter()
            .find(|line| line.contains(",receipt,"))
            .unwrap()
            .split(',')
            .collect();
        assert_eq!(receipt.len(), columns, "{receipt:?}");
        assert_eq!(receipt[3], "receipt");
        assert!(receipt[9].starts_with("100"), "fuel column: {receipt:?}");
        // A detail holding a comma is quoted.
        let contract = rows
            .iter()
            .find(|line| line.contains(",contract,"))
            .unwrap();
        assert!(contract.contains(",\"max cost "), "{contract}");
        assert!(verify_export(&csv, None).is_err());

        // A partial export verifies from where it starts.
        let tail = out.path().join("tail.jsonl");
        let mut partial = args(ExportFormat::Jsonl, &tail, offline(dir.path()));
        partial.from = 3;
        partial.to = Some(9);
        export(partial).await.unwrap();
        let summary = verdict(&tail).unwrap();
        assert!(summary.contains("entries 3..9 (6)"), "{summary}");
        assert!(summary.contains("not in the export"), "{summary}");

        // An edited column, edited bytes, a dropped line.
        let original = std::fs::read(&jsonl).unwrap();
        edit_line(&jsonl, 2, |row| row["cost"] = Value::from(1));
        let reason = verdict(&jsonl).unwrap_err();
        assert!(
            reason.contains("entry 2") && reason.contains("cost"),
            "{reason}"
        );
        std::fs::write(&jsonl, &original).unwrap();
        assert!(verdict(&jsonl).is_ok());
        edit_line(&jsonl, 5, |row| {
            let mut raw = BASE64.decode(row["raw_base64"].as_str().unwrap()).unwrap();
            let last = raw.len() - 1;
            raw[last] ^= 1;
            row["raw_base64"] = Value::from(BASE64.encode(raw));
        });
        let reason = verdict(&jsonl).unwrap_err();
        assert!(
            reason.contains("entry 5") && reason.contains("signature"),
            "{reason}"
        );
        let text = std::fs::read_to_string(&tail).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&tail, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let reason = verdict(&tail).unwrap_err();
        assert!(reason.contains("entry 5"), "{reason}");

        // Bad arguments are refused before anything is written.
        let mut beyond = args(ExportFormat::Jsonl, &tail, offline(dir.path()));
        beyond.to = Some(15);
        let error = export(beyond).await.unwrap_err().to_string();
        assert!(error.contains("beyond the ledger's 14"), "{error}");
        let empty = TempDir::new().unwrap();
        assert!(
            export(args(ExportFormat::Jsonl, &tail, offline(empty.path())))
                .await
                .is_err()
        );
    }

    /// Large enough for the signatures to be checked in a batch: one bad signature among many is
    /// still named, and of a bad column and a later bad signature, the column (the first bad
    /// row) is.
    #[tokio::test]
    async fn a_batched_jsonl_verification_names_the_first_bad_entry() {
        let dir = data_dir_with(40).await;
        let out = TempDir::new().unwrap();
        let jsonl = out.path().join("ledger.jsonl");
        export(args(ExportFormat::Jsonl, &jsonl, offline(dir.path())))
            .await
            .unwrap();
        let original = std::fs::read(&jsonl).unwrap();
        let rows = std::fs::read_to_string(&jsonl).unwrap().lines().count();
        assert!(rows > 100, "{rows} rows");
        assert!(verdict(&jsonl).unwrap().contains(&format!("({rows})")));
        let flip_signature = |row: &mut Value| {
            let mut raw = BASE64.decode(row["raw_base64"].as_str().unwrap()).unwrap();
            let last = raw.len() - 1;
            raw[last] ^= 1;
            row["raw_base64"] = Value::from(BASE64.encode(raw));
        };
        edit_line(&jsonl, 97, flip_signature);
        let reason = verdict(&jsonl).unwrap_err();
        assert!(
            reason.contains("entry 97 (line 98)") && reason.contains("signature"),
            "{reason}"
        );
        edit_line(&jsonl, 60, |row| row["timestamp_ms"] = Value::from(1));
        let reason = verdict(&jsonl).unwrap_err();
        assert!(
            reason.contains("entry 60 (line 61)") && reason.contains("timestamp_ms"),
            "{reason}"
        );
        std::fs::write(&jsonl, &original).unwrap();
        // A row that is not JSON after a bad signature: the signature is named.
        edit_line(&jsonl, 20, flip_signature);
        let text = std::fs::read_to_string(&jsonl).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[80] = "not json";
        std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
        let reason = verdict(&jsonl).unwrap_err();
        assert!(reason.contains("entry 20 (line 21)"), "{reason}");
    }

    #[tokio::test]
    async fn tiles_export_matches_its_checkpoint_and_tampering_is_caught() {
        // 300 entries: one full bundle and tile, a partial one, and a level-1 tile.
        let dir = data_dir_with(99).await;
        let out = TempDir::new().unwrap();
        let tiles = out.path().join("tiles");
        export(args(ExportFormat::Tiles, &tiles, offline(dir.path())))
            .await
            .unwrap();
        for path in [
            "checkpoint",
            "tile/0/000",
            "tile/0/001.p/43",
            "tile/1/000.p/1",
            "tile/entries/000",
            "tile/entries/001.p/43",
        ] {
            assert!(tiles.join(path).is_file(), "{path} missing");
        }
        assert_eq!(std::fs::read(tiles.join("tile/0/000")).unwrap().len(), 8192);
        let summary = verdict(&tiles).unwrap();
        assert!(summary.contains("299 entries"), "{summary}");
        let checkpoint = read_checkpoint(&tiles.join("checkpoint")).unwrap();
        let root = root_from_tiles(checkpoint.size(), |id| {
            std::fs::read(tiles.join(id.path())).map_err(|error| error.to_string())
        })
        .unwrap();
        assert_eq!(root, checkpoint.root());
        assert!(
            verify_export(&tiles, Some(stranger().node_id()))
                .unwrap()
                .is_err()
        );

        // Into a non-empty directory: refused.
        let error = export(args(ExportFormat::Tiles, &tiles, offline(dir.path())))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("not empty"), "{error}");

        // A flipped byte in a bundle, then in a hash tile.
        let bundle = tiles.join("tile/entries/001.p/43");
        let original = std::fs::read(&bundle).unwrap();
        let mut flipped = original.clone();
        flipped[100] ^= 1;
        std::fs::write(&bundle, &flipped).unwrap();
        assert!(verdict(&tiles).is_err());
        std::fs::write(&bundle, &original).unwrap();
        let tile = tiles.join("tile/1/000.p/1");
        let mut hashes = std::fs::read(&tile).unwrap();
        hashes[0] ^= 1;
        std::fs::write(&tile, &hashes).unwrap();
        let reason = verdict(&tiles).unwrap_err();
        assert!(reason.contains("tile/1/000.p/1"), "{reason}");
        std::fs::remove_file(&tile).unwrap();
        assert!(verdict(&tiles).is_err());
    }

    #[tokio::test]
    async fn a_history_rewritten_on_disk_does_not_export_under_its_checkpoint() {
        let dir = data_dir_with(3).await;
        let data_dir = DataDir::new(dir.path());
        // Replace entry 4 by entry 3's bytes (a valid, signed entry in the wrong place).
        let store = crate::ledger::open_offline(&data_dir.db_path(), provider().node_id()).unwrap();
        let three = store.raw_entry(3).unwrap().unwrap();
        drop(store);
        testing::rewrite_entry_offline(dir.path(), 4, &three).unwrap();
        let out = TempDir::new().unwrap();
        let error = export(args(
            ExportFormat::Tiles,
            &out.path().join("t"),
            offline(dir.path()),
        ))
        .await
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("not the one the checkpoint was signed for"),
            "{error}"
        );
        // The jsonl export of it is refused by the verifier at the rewritten entry.
        let jsonl = out.path().join("l.jsonl");
        export(args(ExportFormat::Jsonl, &jsonl, offline(dir.path())))
            .await
            .unwrap();
        assert!(verdict(&jsonl).unwrap_err().contains("entry 4"));
    }

    /// What `/v1/node` answers for `node_id`: only the id matters to an export.
    fn node_view(node_id: NodeId) -> NodeView {
        use crate::api::types::{
            ExecutorName, GossipStats, MarketStats, PricesView, ResourcesView, StorageState,
            StorageView,
        };
        NodeView {
            node_id,
            version: env!("CARGO_PKG_VERSION").into(),
            listen_addrs: Vec::new(),
            region: "default".into(),
            capacity: ResourcesView {
                cpu_cores: 1,
                memory_bytes: 1 << 30,
                gpus: Vec::new(),
            },
            executors: vec![ExecutorName::Wasm],
            prices: PricesView {
                base: 100,
                per_million_fuel: 10,
                per_cpu_second: 0,
            },
            uptime_ms: 0,
            gossip: GossipStats {
                accepted: 0,
                ignored: 0,
                rejected: 0,
                received_bytes: 0,
                published: 0,
                published_bytes: 0,
            },
            storage: StorageView {
                state: StorageState::Healthy,
                accepting: true,
                available_bytes: None,
                min_free_bytes: 0,
                resume_free_bytes: 0,
                reason: None,
            },
            market: MarketStats {
                jobs_in_flight: 0,
                contracts_driven: 0,
                notifications_pending: 0,
            },
        }
    }

    #[tokio::test]
    async fn online_and_offline_exports_are_identical() {
        let dir = TempDir::new().unwrap();
        let key = provider();
        let (_, ledger, task, cancel) = start_ledger(dir.path());
        append_deals(&ledger, 0..5).await;
        // The ledger routes, and a stand-in for `/v1/node` (owned by the node's API).
        let node = node_view(key.node_id());
        let router = crate::api::ledger::routes()
            .route(
                "/v1/node",
                axum::routing::get(move || async move { axum::Json(node) }),
            )
            .with_state(ledger.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let server_stop = CancellationToken::new();
        let stop = server_stop.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        let out = TempDir::new().unwrap();
        let online = Source {
            data_dir: None,
            client: ClientArgs {
                api,
                token: None,
                json: false,
            },
        };
        export(args(
            ExportFormat::Jsonl,
            &out.path().join("online.jsonl"),
            online,
        ))
        .await
        .unwrap();
        server_stop.cancel();
        server.await.unwrap();
        cancel.cancel();
        task.await.unwrap();
        drop(ledger);
        export(args(
            ExportFormat::Jsonl,
            &out.path().join("offline.jsonl"),
            offline(dir.path()),
        ))
        .await
        .unwrap();
        let online = std::fs::read(out.path().join("online.jsonl")).unwrap();
        assert_eq!(online.iter().filter(|&&b| b == b'\n').count(), 15);
        assert_eq!(
            online,
            std::fs::read(out.path().join("offline.jsonl")).unwrap()
        );
    }
}
