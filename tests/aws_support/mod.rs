//! A real LocalStack (KMS only) for the AWS KMS tests and bench, started with
//! `scripts/localstack.sh` on a free loopback port with its own state directory.
//!
//! Life cycle: [`shared`] runs `scripts/localstack.sh start` once per test process (which
//! installs `localstack-core` into `~/.cache/byok/localstack-venv` on first use, serves HTTPS
//! on 127.0.0.1 with a throw-away CA and waits for KMS to be available), then launches a
//! detached **watchdog** shell that runs `scripts/localstack.sh stop` and removes the state
//! directory as soon as this process is gone (a Rust static is never dropped at exit).
//!
//! A server that cannot be started is a test failure with the script's output (under
//! `CI=true` and outside CI alike): these tests never skip.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// LocalStack's default account; the region is the one requests are signed for.
pub const ACCOUNT: &str = "000000000000";
pub const REGION: &str = "us-east-1";

/// The running server.
#[derive(Debug)]
pub struct Server {
    /// `https://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The CA (PEM) that signed the server's certificate.
    pub ca_pem: String,
    pub state_dir: PathBuf,
}

impl Server {
    /// The vault ARN of LocalStack's account and region.
    pub fn vault(&self) -> String {
        format!("arn:aws:kms:{REGION}:{ACCOUNT}")
    }
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

fn start() -> Server {
    let dir = manifest_dir();
    let state_dir = dir
        .join("target/localstack-tests")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&state_dir);
    std::fs::create_dir_all(&state_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", state_dir.display()));
    spawn_watchdog(&state_dir);
    let out = Command::new("bash")
        .args(["scripts/localstack.sh", "start"])
        .current_dir(dir)
        .env("BYOK_LOCALSTACK_STATE_DIR", &state_dir)
        .env("BYOK_LOCALSTACK_PORT", free_port().to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/localstack.sh: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!(
            "could not start LocalStack (CI={}): scripts/localstack.sh exited with {}.\n\
             The AWS KMS tests need a real KMS emulator: `scripts/localstack.sh install` needs \
             Python 3.13 and pip access to PyPI (localstack-core[runtime], cbor2<6).\n\
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
            .unwrap_or_else(|| {
                panic!("scripts/localstack.sh printed no {name}:\n{stdout}\n{stderr}")
            })
    };
    let endpoint = var("BYOK_LOCALSTACK_ENDPOINT");
    let ca = var("BYOK_LOCALSTACK_CACERT");
    let ca_pem =
        std::fs::read_to_string(&ca).unwrap_or_else(|e| panic!("reading the CA {ca}: {e}"));
    Server {
        endpoint,
        ca_pem,
        state_dir,
    }
}

/// A detached shell that stops the server of `state_dir` once this process has exited.
#[allow(clippy::zombie_processes)]
fn spawn_watchdog(state_dir: &Path) {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.3; done
        BYOK_LOCALSTACK_STATE_DIR="$2" bash scripts/localstack.sh stop >/dev/null 2>&1
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
        panic!("could not start the LocalStack watchdog (setsid sh): {e}");
    }
}

/// The server shared by every test of this process (started on first use).
pub fn shared() -> &'static Server {
    static SHARED: OnceLock<Server> = OnceLock::new();
    SHARED.get_or_init(start)
}
