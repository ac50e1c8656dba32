#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (SoftHSM2 for the
# PKCS#11 provider, OpenSSL for interop tests, OpenBao for the Transit provider, LocalStack
# for the AWS KMS provider, PostgreSQL for the PostgreSQL account store; each test binary sets up and tears down its own token,
# server or cluster), then runs every test with every feature.
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

exec cargo test --all-features "$@"
