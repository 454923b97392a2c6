#!/usr/bin/env bash
# Coverage-guided fuzzing of suanli's decoders (docs/fuzzing.md).
#
#   scripts/fuzz.sh                 CI: build every target, run each over its committed corpus
#                                   for FUZZ_SECONDS (default 20) seconds
#   scripts/fuzz.sh run TARGET RUNS a long run: RUNS executions (e.g. 10000000) from the seeds
#                                   and the committed corpus, then minimises the corpus back
#                                   into fuzz/corpus/TARGET (FUZZ_MAX_SECONDS stops it earlier)
#   scripts/fuzz.sh seeds           rewrites fuzz/seeds from the protocol's own encoders
#
# Runs on the stable toolchain: cargo-fuzz with `--sanitizer none` passes no unstable flag, and
# libFuzzer itself is built from libfuzzer-sys's C++ sources. cargo-fuzz is installed from
# crates.io when missing; the instrumented build goes to FUZZ_TARGET_DIR (by default under
# ~/.cache/suanli, so a new clone reuses it). A crash, a timeout or an out-of-memory input fails
# the script and leaves the input under fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
TARGETS=(wire signed_documents advert checkpoint_note ledger_entry merkle_proof tiles
  http_job openai_request frame)
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/suanli/fuzz-target}"
BIN="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

# The largest input each target gets: the message's real cap where it is small, else a bound
# that still holds every kind of message of the target (longer inputs only slow the search).
max_len() {
  case "$1" in
    wire) echo 65536 ;;          # gossip cap 17 KiB; market and ledger messages up to 16 MiB
    signed_documents) echo 8192 ;;
    advert) echo 16640 ;;         # MAX_ADVERT_BYTES + framing
    checkpoint_note) echo 8192 ;; # gossiped notes are at most 2 KiB, two of them and a proof
    ledger_entry) echo 65536 ;;
    merkle_proof) echo 8192 ;;
    tiles) echo 16384 ;;
    http_job) echo 65536 ;;
    openai_request) echo 65536 ;;
    frame) echo 4096 ;;
    *) echo 4096 ;;
  esac
}

# libFuzzer's own limits, so that a slow input or a large allocation is a finding.
LIMITS=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10)

ensure_cargo_fuzz() {
  if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
  fi
}

build() {
  ensure_cargo_fuzz
  # cargo fuzz has no --locked: check the committed fuzz/Cargo.lock first.
  cargo fetch --locked --manifest-path fuzz/Cargo.toml
  (cd fuzz && cargo fuzz build --sanitizer none)
}

case "${1:-ci}" in
  ci)
    build
    seconds="${FUZZ_SECONDS:-20}"
    for target in "${TARGETS[@]}"; do
      mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
      echo "== fuzz $target (${seconds}s)"
      # A scratch copy: the committed corpus changes only through `run`.
      scratch="$(mktemp -d)"
      cp -r "fuzz/corpus/$target/." "$scratch/"
      log="$(mktemp)"
      if ! "$BIN/$target" "$scratch" "fuzz/seeds/$target" -max_total_time="$seconds" \
        -max_len="$(max_len "$target")" "${LIMITS[@]}" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $target failed; its input is under fuzz/artifacts/$target/" >&2
        exit 1
      fi
      grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' "$log" || true
      rm -rf "$scratch" "$log"
    done
    ;;
  run)
    target="${2:?target}"
    runs="${3:-10000000}"
    build
    work="fuzz/work/$target"
    mkdir -p "$work" "fuzz/corpus/$target" "fuzz/artifacts/$target"
    nice -n 10 "$BIN/$target" "$work" "fuzz/corpus/$target" "fuzz/seeds/$target" \
      -runs="$runs" ${FUZZ_MAX_SECONDS:+-max_total_time="$FUZZ_MAX_SECONDS"} -max_len="$(max_len "$target")" "${LIMITS[@]}" -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$target/"
    # Minimise into the committed corpus: the smallest set of inputs with the same coverage.
    fresh="$(mktemp -d)"
    "$BIN/$target" -merge=1 "$fresh" "fuzz/corpus/$target" "$work" "fuzz/seeds/$target" \
      -max_len="$(max_len "$target")" "${LIMITS[@]}" 2>&1 | tail -n 2
    rm -rf "fuzz/corpus/$target"
    mv "$fresh" "fuzz/corpus/$target"
    ;;
  seeds)
    cargo run --quiet --manifest-path fuzz/Cargo.toml --example seed -- fuzz/seeds
    ;;
  *)
    echo "usage: $0 [ci | run TARGET [RUNS] | seeds]" >&2
    exit 2
    ;;
esac
