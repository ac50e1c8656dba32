//! A child forked into a new PID namespace must not repeat its parent's randomness.
//!
//! Issue 14's recipe: a program seals once (so every generator and batch is in use), then
//! forks into a new PID namespace, so that parent and child are both pid 1 and a `getpid()`
//! comparison cannot tell them apart. Each prints, in hex, a fresh `AesKey::generate`, the
//! headers of three sealed objects (their wrapped data keys come from the envelope's
//! data-key batch) and the salt and nonce of a sealed field under the same field key. The
//! test asserts that the two processes printed different values for each.
//!
//! Layout: this is a `harness = false` test whose binary is also the program. The test runs
//! `unshare --pid --fork <this binary> --fork-program` (root, or a user allowed to create
//! PID namespaces): the program starts as pid 1 of a new namespace, seals, then
//! `unshare(CLONE_NEWPID)` and `fork()` make its child pid 1 of a nested one. Where `unshare`
//! is missing or not permitted the test says why and skips — except under `CI=true`, where
//! it fails.

use std::io::Write as _;
use std::process::Command;

use byok::envelope::{AccountKey, PreparedKey};
use byok::{AesKey, Envelope};

const PROGRAM_FLAG: &str = "--fork-program";

fn main() {
    if std::env::args().any(|a| a == PROGRAM_FLAG) {
        program();
    } else {
        test();
        println!("test fork_rng ... ok");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One line of what this process draws after the fork.
fn draws(role: &str, key: &PreparedKey) -> String {
    let generated = AesKey::generate();
    let env = Envelope::new(key);
    let headers: Vec<String> = (0..3)
        .map(|i| {
            let object = env.seal(b"fork test", &[i]).expect("seal");
            let info = byok::envelope::inspect(&object).expect("inspect");
            hex(&object[..info.header_len])
        })
        .collect();
    let field = key.seal_field(b"fork/field", b"value").expect("seal field");
    // Format 2: version byte, key version (4), salt (16), nonce (12).
    let salt_and_nonce = &field[5..5 + 16 + 12];
    format!(
        "{role} pid={} aes_key={} object_headers={} field_salt_nonce={}",
        std::process::id(),
        hex(generated.expose_secret()),
        headers.join(","),
        hex(salt_and_nonce)
    )
}

fn program() {
    let account_key =
        AccountKey::new("fork-key", 1, AesKey::from_bytes([7; 32])).expect("account key");
    let key = PreparedKey::new("fork-account", &account_key).expect("prepared key");
    // Seal once before the fork: the data-key batch is filled (one key used, seven left) and
    // every generator has drawn.
    let env = Envelope::new(&key);
    env.seal(b"fork test", b"before the fork").expect("seal");
    key.seal_field(b"fork/field", b"before")
        .expect("seal field");
    let _ = AesKey::generate();

    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        eprintln!("unshare(CLONE_NEWPID) failed: {e}");
        std::process::exit(3);
    }
    match fork::fork().expect("fork") {
        fork::Fork::Child => {
            let line = draws("child", &key);
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").expect("stdout");
            out.flush().expect("stdout");
            std::process::exit(0);
        }
        fork::Fork::Parent(child) => {
            let status = fork::waitpid(child).expect("waitpid");
            let line = draws("parent", &key);
            println!("{line}");
            if status != 0 {
                eprintln!("child exited with status {status}");
                std::process::exit(4);
            }
        }
    }
}

/// Why the program cannot run here, if it cannot.
fn unshare_unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("PID namespaces are Linux only".into());
    }
    match Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .output()
    {
        Err(e) => Some(format!("cannot run `unshare` (util-linux): {e}")),
        Ok(o) if !o.status.success() => Some(format!(
            "`unshare --pid --fork` is not permitted here ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// The value of `field=` in `line`.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

fn test() {
    if let Some(why) = unshare_unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "fork_rng cannot run under CI=true: {why}"
        );
        println!("test fork_rng ... SKIPPED: {why}");
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(&exe)
        .arg(PROGRAM_FLAG)
        .output()
        .expect("run the fork program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fork program failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("fork_rng [{} backend]:\n{stdout}", byok::CRYPTO_BACKEND);
    let line = |role: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{role} ")))
            .unwrap_or_else(|| panic!("no {role} line in:\n{stdout}"))
            .to_owned()
    };
    let (parent, child) = (line("parent"), line("child"));
    // The case the recipe is about: both processes are pid 1, so a pid check cannot tell them
    // apart.
    assert_eq!(field(&parent, "pid"), "1", "{parent}");
    assert_eq!(field(&child, "pid"), "1", "{child}");
    for name in ["aes_key", "object_headers", "field_salt_nonce"] {
        assert_ne!(
            field(&parent, name),
            field(&child, name),
            "parent and child drew the same {name}"
        );
    }
    // Within each process the three objects got distinct data keys.
    for l in [&parent, &child] {
        let headers: Vec<&str> = field(l, "object_headers").split(',').collect();
        assert_eq!(headers.len(), 3);
        assert!(headers[0] != headers[1] && headers[1] != headers[2] && headers[0] != headers[2]);
    }
}
