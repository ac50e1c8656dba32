#!/usr/bin/env bash
# LocalStack (KMS only) on 127.0.0.1 for the AWS KMS key-provider tests — host mode, no Docker.
#
# Usage:
#   scripts/localstack.sh install          # venv (Python 3.13) + pip install localstack-core[runtime]
#   eval "$(scripts/localstack.sh start)"  # HTTPS on 127.0.0.1 with a CA of its own; prints exports
#   scripts/localstack.sh stop             # stop the server of $BYOK_LOCALSTACK_STATE_DIR
#
# Only the `export ...` lines go to stdout; every status message goes to stderr.
#
# Environment (all optional):
#   BYOK_LOCALSTACK_VENV       venv dir            (default: $HOME/.cache/byok/localstack-venv)
#   BYOK_LOCALSTACK_STATE_DIR  pid/log/cert/data   (default: $PWD/target/localstack)
#   BYOK_LOCALSTACK_PORT       gateway port        (default: 14566)
#   BYOK_LOCALSTACK_PYTHON     python for the venv (default: ~/.pyenv/versions/3.13.0/bin/python,
#                                                   else python3.13)
#
# Notes:
#   * TLS with a certificate of its own: LocalStack's built-in certificate generation fails
#     with the pyOpenSSL that pip resolves today (X509.add_extensions is gone), so the script
#     makes a throw-away CA and a server certificate for 127.0.0.1/localhost with openssl and
#     hands them over with CUSTOM_SSL_CERT_PATH. The tests trust that CA only
#     (BYOK_LOCALSTACK_CACERT), so the provider's real TLS path (rustls) is exercised.
#   * GATEWAY_SERVER=hypercorn, SERVICES=kms, DNS_ADDRESS=0 (no DNS server), PERSISTENCE=0:
#     every start is a fresh, empty KMS. `cbor2<6` because localstack-core imports an API
#     that cbor2 6 removed.
set -euo pipefail

LOCALSTACK_VERSION=2026.3.0
VENV=${BYOK_LOCALSTACK_VENV:-$HOME/.cache/byok/localstack-venv}
STATE_DIR=${BYOK_LOCALSTACK_STATE_DIR:-$PWD/target/localstack}
PORT=${BYOK_LOCALSTACK_PORT:-14566}
HEALTH_TIMEOUT_S=60

log() { printf 'localstack.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pick_python() {
    if [[ -n ${BYOK_LOCALSTACK_PYTHON:-} ]]; then echo "$BYOK_LOCALSTACK_PYTHON"; return; fi
    local p=$HOME/.pyenv/versions/3.13.0/bin/python
    if [[ -x $p ]]; then echo "$p"; return; fi
    command -v python3.13 || die "no Python 3.13 (set BYOK_LOCALSTACK_PYTHON)"
}

installed_ok() {
    [[ -x $VENV/bin/python ]] || return 1
    "$VENV/bin/python" - "$LOCALSTACK_VERSION" <<'EOF' 2>/dev/null
import sys, importlib.metadata as m
assert m.version("localstack-core") == sys.argv[1]
import rolo, hypercorn, localstack.runtime.main  # the runtime extra is present
EOF
}

cmd_install() {
    if installed_ok; then
        log "localstack-core ${LOCALSTACK_VERSION} already installed in $VENV"
        return 0
    fi
    if [[ ! -x $VENV/bin/pip ]]; then
        log "creating venv $VENV"
        mkdir -p "$(dirname "$VENV")"
        "$(pick_python)" -m venv "$VENV" >&2 || die "creating the venv failed"
    fi
    log "pip install localstack-core[runtime]==${LOCALSTACK_VERSION} 'cbor2<6' into $VENV"
    "$VENV/bin/pip" install --disable-pip-version-check -q \
        "localstack-core[runtime]==${LOCALSTACK_VERSION}" "cbor2<6" >&2
    installed_ok || die "localstack-core does not import after install"
}

pid_file() { echo "$STATE_DIR/localstack.pid"; }

running_pid() {
    local f pid
    f=$(pid_file)
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "localstack.runtime.main" || return 1
    echo "$pid"
}

make_certs() {
    local d=$STATE_DIR/tls
    mkdir -p "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=byok test CA" \
        -keyout "$d/ca.key" -out "$d/ca.pem" >/dev/null 2>&1 || die "openssl (CA) failed"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$d/server.key" -out "$d/server.csr" >/dev/null 2>&1 || die "openssl (CSR) failed"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext" -out "$d/server.crt" >/dev/null 2>&1 || die "openssl (sign) failed"
    cat "$d/server.key" "$d/server.crt" >"$d/server.pem"
}

print_env() {
    printf 'export BYOK_LOCALSTACK_ENDPOINT=%q\n' "https://127.0.0.1:$PORT"
    printf 'export BYOK_LOCALSTACK_CACERT=%q\n' "$STATE_DIR/tls/ca.pem"
}

cmd_start() {
    installed_ok || cmd_install
    mkdir -p "$STATE_DIR"
    local pid
    if pid=$(running_pid); then
        log "already running (pid $pid)"
        print_env
        return 0
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        die "127.0.0.1:$PORT is already in use (set BYOK_LOCALSTACK_PORT)"
    fi
    make_certs
    local lf=$STATE_DIR/localstack.log pf
    pf=$(pid_file)
    : >"$lf"
    log "starting LocalStack KMS at https://127.0.0.1:$PORT (log: $lf)"
    (
        cd "$STATE_DIR"
        export GATEWAY_LISTEN="127.0.0.1:$PORT" LOCALSTACK_HOST="127.0.0.1:$PORT" \
            SERVICES=kms GATEWAY_SERVER=hypercorn DNS_ADDRESS=0 PERSISTENCE=0 \
            SKIP_INFRA_DOWNLOADS=1 DISABLE_EVENTS=1 \
            FILESYSTEM_ROOT="$STATE_DIR/fs" CUSTOM_SSL_CERT_PATH="$STATE_DIR/tls/server.pem"
        setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$pf" \
            "$VENV/bin/python" -m localstack.runtime.main </dev/null >>"$lf" 2>&1 &
    )
    local start_ns deadline_ns
    start_ns=$(date +%s%N)
    deadline_ns=$((start_ns + HEALTH_TIMEOUT_S * 1000000000))
    while :; do
        if [[ -s $pf ]] && ! kill -0 "$(<"$pf")" 2>/dev/null; then
            tail -n 30 "$lf" >&2 || true
            die "LocalStack exited during start-up"
        fi
        if curl -s --max-time 2 --cacert "$STATE_DIR/tls/ca.pem" \
            "https://127.0.0.1:$PORT/_localstack/health" 2>/dev/null | grep -q '"kms": "available"'; then
            break
        fi
        if (($(date +%s%N) > deadline_ns)); then
            tail -n 30 "$lf" >&2 || true
            die "LocalStack not healthy after ${HEALTH_TIMEOUT_S}s"
        fi
        sleep 0.2
    done
    log "up (pid $(<"$pf")) in $((($(date +%s%N) - start_ns) / 1000000)) ms"
    print_env
}

cmd_stop() {
    local pid i
    if ! pid=$(running_pid); then
        rm -f "$(pid_file)"
        log "not running"
        return 0
    fi
    log "stopping (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still alive after 10s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(pid_file)"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) print_env ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
