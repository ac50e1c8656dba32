//! Private throwaway PostgreSQL clusters for the store tests and bench.
//!
//! Life cycle: [`Cluster::start`] finds `initdb`/`pg_ctl` (on `PATH`, else the newest
//! `/usr/lib/postgresql/<version>/bin`), creates a temporary directory owned by the
//! `postgres` OS user (the server refuses to run as root; as root every server command runs
//! through `runuser -u postgres --`), runs `initdb` (trust auth, C locale) and `pg_ctl start`
//! on a free loopback port with its unix socket in that directory and `fsync=off`. Before the
//! start it launches a detached **watchdog** shell that polls this process and, once it is
//! gone, stops the cluster (`pg_ctl stop -m immediate`) and removes the directory: a Rust
//! static is never dropped at exit, so the watchdog is what stops the server when the tests
//! end, pass, panic, abort or are killed (within about 0.3 s).
//!
//! A missing PostgreSQL is a loud failure under `CI=true`; elsewhere [`shared`] returns `None`
//! and the tests say they skipped. A PostgreSQL that is installed but cannot start is always
//! a failure.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// One running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The temporary directory (data, socket, log).
    pub dir: PathBuf,
    /// The loopback TCP port.
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Where `initdb` and `pg_ctl` live, if anywhere.
pub fn find_bin() -> Option<PathBuf> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_both(&d) {
                // Through symlinks (Debian's /usr/local/bin links): pg_ctl finds `postgres`
                // next to itself.
                let real = std::fs::canonicalize(d.join("pg_ctl"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .unwrap_or(d);
                return Some(real);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_both(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static START_LOCK: Mutex<()> = Mutex::new(());

impl Cluster {
    /// Starts a fresh cluster called `label`, or `None` when PostgreSQL is not installed and
    /// this is not CI.
    ///
    /// # Panics
    /// Under `CI=true` when PostgreSQL is not installed; always when it cannot start.
    pub fn try_start(label: &str) -> Option<Cluster> {
        let Some(bin) = find_bin() else {
            assert!(
                !in_ci(),
                "PostgreSQL is not installed (no initdb/pg_ctl on PATH or under \
                 /usr/lib/postgresql/*/bin) and CI=true: the store tests need a real server. \
                 Install the Debian package `postgresql` (scripts/test.sh does)."
            );
            eprintln!("SKIPPED: PostgreSQL is not installed (install `postgresql`)");
            return None;
        };
        Some(Self::start_with(&bin, label))
    }

    /// Starts a fresh cluster called `label`.
    ///
    /// # Panics
    /// When PostgreSQL is not installed or cannot start.
    pub fn start(label: &str) -> Cluster {
        let bin = find_bin().unwrap_or_else(|| panic!("PostgreSQL is not installed"));
        Self::start_with(&bin, label)
    }

    fn start_with(bin: &Path, label: &str) -> Cluster {
        let _g = START_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!(
            "byok-pg-{}-{}-{label}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let cluster = Cluster {
            dir,
            port: free_port(),
            bin: bin.to_owned(),
            as_postgres,
        };
        if as_postgres {
            let out = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&cluster.dir)
                .output()
                .unwrap_or_else(|e| panic!("chown: {e}"));
            assert!(
                out.status.success(),
                "chown postgres {}: {}",
                cluster.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Before the start: a server left behind by a failed start is stopped too.
        cluster.spawn_watchdog();
        let data = cluster.data();
        let out = cluster.server_cmd(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        cluster.expect_ok(&out, "initdb");
        cluster.start_server();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn server_cmd(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()))
    }

    fn expect_ok(&self, out: &Output, what: &str) {
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!(
                "PostgreSQL {what} failed ({}; CI={}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n\
                 --- server.log ---\n{log}",
                out.status,
                std::env::var("CI").unwrap_or_default(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
        }
    }

    /// `pg_ctl start` (waits until it accepts connections).
    pub fn start_server(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB",
            self.port,
            self.dir.display()
        );
        let data = self.data();
        let log = self.dir.join("server.log");
        let out = self.server_cmd(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        );
        self.expect_ok(&out, "pg_ctl start");
    }

    /// `pg_ctl stop -m fast` (waits until it is down).
    pub fn stop_server(&self) {
        let data = self.data();
        let out = self.server_cmd(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-w",
                "-t",
                "60",
                "-m",
                "fast",
                "stop",
            ],
        );
        self.expect_ok(&out, "pg_ctl stop");
    }

    /// A libpq connection string for database `db` (TCP on loopback, user `postgres`).
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Runs `sql` in `db` with `psql` and returns its unaligned, tuples-only output.
    ///
    /// # Panics
    /// If psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let exe = if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(&exe)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates a fresh database named after `label` (unique in this process) and returns its
    /// connection string.
    pub fn database(&self, label: &str) -> (String, String) {
        let name = format!(
            "t{}_{}",
            COUNTER.fetch_add(1, Ordering::Relaxed),
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        (self.url(&name), name)
    }

    /// A detached shell that stops this cluster once this process has exited. It outlives
    /// this process on purpose, so it is never waited for.
    #[allow(clippy::zombie_processes)]
    fn spawn_watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if self.as_postgres {
            "runuser -u postgres -- \"$3\" -D \"$2/data\" -m immediate -w stop"
        } else {
            "\"$3\" -D \"$2/data\" -m immediate -w stop"
        };
        let script = format!(
            r#"
            while kill -0 "$1" 2>/dev/null; do sleep 0.3; done
            [ -f "$2/data/postmaster.pid" ] && {stop} >/dev/null 2>&1
            rm -rf "$2"
        "#
        );
        let spawned = Command::new("setsid")
            .args(["sh", "-c", &script, "watchdog"])
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .arg(&pg_ctl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            panic!("could not start the PostgreSQL watchdog (setsid sh): {e}");
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display()))
}

/// The cluster shared by every test of this process (started on first use), or `None` when
/// PostgreSQL is not installed outside CI.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
    SHARED.get_or_init(|| Cluster::try_start("shared")).as_ref()
}
