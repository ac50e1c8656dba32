#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (SoftHSM2 for the
# PKCS#11 provider, OpenSSL for interop tests, OpenBao for the Transit provider, LocalStack
# for the AWS KMS provider, PostgreSQL for the PostgreSQL account store; each test binary sets up and tears down its own token,
# server or cluster), then runs the whole suite once per crypto backend: with every feature
# (the aws-lc backend) and with every feature but `aws-lc` (the RustCrypto backend). Both
# runs always happen; the script prints each run's summary and fails if either failed.
# Extra arguments go to both `cargo test` runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# SoftHSM2 (PKCS#11 tests) and OpenSSL (file-vault interop tests) from Debian's packages.
need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# PostgreSQL server binaries (tests/pg_support runs initdb + pg_ctl in a temporary directory;
# Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH).
if ! { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 \
  && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}" >&2
  (apt-get install -y -qq "${need[@]}" >/dev/null 2>&1) || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
bash scripts/openbao.sh install >&2
# LocalStack (KMS only, host mode) into ~/.cache/byok/localstack-venv; needs Python 3.13
# (the machine's pyenv 3.13.0, else python3.13) and openssl for its certificate.
bash scripts/localstack.sh install >&2

# Every fuzz target builds against the current API and survives a short smoke run.
bash scripts/fuzz-smoke.sh

# Every feature of Cargo.toml's [features] table except `default` and `aws-lc`.
rustcrypto_features=$(awk '/^\[features\]/{f=1; next} /^\[/{f=0} f && /^[a-z0-9_-]+ *=/{print $1}' Cargo.toml \
  | grep -vx -e default -e aws-lc | paste -sd, -)

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
status=0
run() {
  local name=$1; shift
  echo "== test.sh: $name backend: cargo test $*" >&2
  local start=$SECONDS rc=0
  cargo test "$@" 2>&1 | tee "$log_dir/$name.log" || rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" > "$log_dir/$name.status"
  [ "$rc" -eq 0 ] || status=1
}
run aws-lc --all-features "$@"
run rustcrypto --features "$rustcrypto_features" "$@"

echo
echo "== test.sh summary"
for name in aws-lc rustcrypto; do
  awk -v n="$name" '/^test result:/ {
      for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i }
      b++ }
    END { printf "%s backend: %d test binaries, %d passed, %d failed, %d ignored\n", n, b, p, f, g }' \
    "$log_dir/$name.log"
  cat "$log_dir/$name.status"
  grep -E "^test .* FAILED$|^test fork_rng \.\.\. SKIPPED" "$log_dir/$name.log" || true
done
exit "$status"
