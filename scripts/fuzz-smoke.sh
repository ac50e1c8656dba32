#!/usr/bin/env bash
# Builds every fuzz target as `cargo fuzz build --sanitizer none` does (coverage
# instrumentation + `--cfg fuzzing`, on the stable toolchain, without installing cargo-fuzz) and
# runs each for a short smoke run from its seeds: the targets compile against the current API and
# find nothing in RUNS inputs. A long campaign is `cargo fuzz run` (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
RUNS="${FUZZ_RUNS:-20000}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (as cargo fuzz does).
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --locked --bins -q --target "$host"
seeds="$(mktemp -d)"
trap 'rm -rf "$seeds"' EXIT
for t in header open stream key_id vault_records; do
  mkdir -p "$seeds/$t"
  case "$t" in
    header|open) cp ../tests/data/envelope_v1_*.bin ../tests/data/fail/*.bin "$seeds/$t/" ;;
    stream) for f in ../tests/data/envelope_v1_*.bin; do (printf '\x5a'; cat "$f") > "$seeds/$t/$(basename "$f")"; done ;;
    key_id) printf 'https://contoso.vault.example/keys/cmk/0a1b' > "$seeds/$t/uri" ;;
    vault_records) printf 'BYOKSTAT\x00\x01' > "$seeds/$t/state" ;;
  esac
  echo "fuzz smoke: $t ($RUNS runs)"
  "$CARGO_TARGET_DIR/$host/release/$t" -runs="$RUNS" -seed=1 "$seeds/$t" 2>&1 | tail -n 2
done
