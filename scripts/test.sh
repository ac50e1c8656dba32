#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (SoftHSM2 for the
# PKCS#11 provider, OpenBao for the Transit provider; each test binary sets up and tears down
# its own token or server), then runs every test with every feature.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v softhsm2-util >/dev/null 2>&1; then
  echo "test.sh: installing softhsm2" >&2
  (apt-get install -y -qq softhsm2 >/dev/null 2>&1) || { apt-get update -qq && apt-get install -y -qq softhsm2 >/dev/null; }
fi
bash scripts/openbao.sh install >&2

exec cargo test --all-features "$@"
