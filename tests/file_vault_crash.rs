//! Crash and multi-process tests of the file vault.
//!
//! The child process is the `file_vault_crash_worker` binary (`tests/bin/`, built with the
//! `testing` feature). It appends a `B <seq> <op>` line to an operation log (fsynced) before each change and an
//! `A <seq> <result>` line (fsynced) after the change was acknowledged, so the parent knows
//! every acknowledged change and the one change that may have been in flight when it died.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use byok::provider::file::FileVault;
use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm, WrappedKey};
use byok::{KeyProvider, ProviderErrorKind as K, VaultAdmin};

#[path = "file_vault_crash_common/mod.rs"]
mod common;

use common::*;

fn fresh_dir(tag: &str) -> PathBuf {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("file_vault_crash");
    fs::create_dir_all(&base).unwrap();
    base.join(format!("{tag}-{}-{t}", std::process::id()))
}

/// Kills the child if the parent panics.
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a worker and waits until it has opened the vault.
fn spawn_worker(
    mode: &str,
    dir: &Path,
    log: &Path,
    seed: u64,
) -> (Reaper, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_file_vault_crash_worker"))
        .env(WORKER_ENV, mode)
        .env("BYOK_FV_DIR", dir)
        .env("BYOK_FV_LOG", log)
        .env("BYOK_FV_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let reaper = Reaper(Some(child));
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "the worker exited before opening the vault");
        if line.trim_end() == "READY" {
            break;
        }
    }
    (reaper, out)
}

// ---------------------------------------------------------------------------------------------
// The parent side.

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Rotate(String),
    Grant(String, u64),
    Enable(String, String, bool),
}

/// Parses complete log lines: acknowledged ops with their results, and the op
/// begun but not acknowledged (at most one: the child is sequential).
fn parse_log(text: &str) -> (Vec<(Op, String)>, Option<Op>) {
    let mut acked = Vec::new();
    let mut pending: Option<(String, Op)> = None;
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break; // torn last line: the kill landed inside the log write
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["B", seq, rest @ ..] => {
                assert!(pending.is_none(), "two ops in flight: {line}");
                let op = match rest {
                    ["rot", k] => Op::Rotate((*k).to_owned()),
                    ["grant", id, b] => Op::Grant((*id).to_owned(), b.parse().unwrap()),
                    ["enable", k, v, on] => {
                        Op::Enable((*k).to_owned(), (*v).to_owned(), *on == "1")
                    }
                    _ => panic!("bad log line {line}"),
                };
                pending = Some(((*seq).to_owned(), op));
            }
            ["A", seq, result] => {
                let (s, op) = pending.take().expect("ack without begin");
                assert_eq!(&s, seq);
                acked.push((op, (*result).to_owned()));
            }
            _ => panic!("bad log line {line:?}"),
        }
    }
    (acked, pending.map(|(_, op)| op))
}

/// What the parent knows must be in the vault.
#[derive(Default)]
struct Model {
    /// Highest version of each key.
    versions: BTreeMap<String, u64>,
    /// Enabled flag of each version (absent = enabled, as created).
    enabled: BTreeMap<(String, String), bool>,
    /// Permission bits of each identity (absent = no policy).
    grants: BTreeMap<String, u64>,
}

fn temp_files(dir: &Path) -> usize {
    [dir.to_path_buf(), dir.join("keys")]
        .iter()
        .flat_map(|d| fs::read_dir(d).unwrap())
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .count()
}

fn assert_private(dir: &Path) {
    let check = |p: &Path, want: u32| {
        let m = fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, want, "{} is {m:o}", p.display());
    };
    check(dir, 0o700);
    check(&dir.join("keys"), 0o700);
    for d in [dir.to_path_buf(), dir.join("keys")] {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                check(&p, 0o600);
            }
        }
    }
}

/// The permission bits `who` actually has, probed through a provider.
async fn probe_bits(vault: &FileVault, who: &str, blob: &WrappedKey) -> u64 {
    let p = vault.provider(&Identity::new(who));
    let allowed = |e: Option<K>| e != Some(K::Forbidden);
    let get = allowed(
        p.key_properties("probe", None)
            .await
            .err()
            .map(|e| e.kind()),
    );
    let wrap = allowed(
        p.wrap_key("probe", None, WrapAlgorithm::A256Kw, &[1; 32])
            .await
            .err()
            .map(|e| e.kind()),
    );
    let unwrap = allowed(p.unwrap_key(blob).await.err().map(|e| e.kind()));
    u64::from(get) | u64::from(wrap) << 1 | u64::from(unwrap) << 2
}

/// Checks the reopened vault against the model and the log, then folds the in-flight op's
/// outcome (committed or not, both are correct) into the model.
async fn verify_round(
    vault: &FileVault,
    model: &mut Model,
    acked: &[(Op, String)],
    in_flight: Option<&Op>,
    blob: &WrappedKey,
) -> bool {
    for (op, result) in acked {
        match op {
            Op::Rotate(k) => {
                let v: u64 = result.parse().unwrap();
                let max = model.versions.get_mut(k).unwrap();
                assert_eq!(
                    v,
                    *max + 1,
                    "an acknowledged rotation of {k} skipped or reused"
                );
                *max = v;
            }
            Op::Grant(id, b) => {
                model.grants.insert(id.clone(), *b);
            }
            Op::Enable(k, v, on) => {
                model.enabled.insert((k.clone(), v.clone()), *on);
            }
        }
    }
    let mut in_flight_committed = false;
    for i in 0..KEYS {
        let k = format!("k{i}");
        let listed = vault.list_versions(&k).await.unwrap();
        let nums: Vec<u64> = listed.iter().map(|p| p.version.parse().unwrap()).collect();
        let n = nums.len() as u64;
        assert_eq!(
            nums,
            (1..=n).collect::<Vec<_>>(),
            "versions of {k} have a gap"
        );
        let want = model.versions[&k];
        if n == want + 1 && in_flight == Some(&Op::Rotate(k.clone())) {
            in_flight_committed = true;
        } else {
            assert_eq!(n, want, "versions of {k}: {n} on disk, {want} acknowledged");
        }
        model.versions.insert(k.clone(), n);
        for p in &listed {
            let slot = (k.clone(), p.version.clone());
            let want = model.enabled.get(&slot).copied().unwrap_or(true);
            if p.enabled != want {
                assert_eq!(
                    in_flight,
                    Some(&Op::Enable(k.clone(), p.version.clone(), p.enabled)),
                    "{k} v{} enabled={} but {want} was acknowledged",
                    p.version,
                    p.enabled
                );
                in_flight_committed = true;
            }
            model.enabled.insert(slot, p.enabled);
        }
    }
    for i in 0..IDENTITIES {
        let id = format!("id{i}");
        let got = probe_bits(vault, &id, blob).await;
        let want = model.grants.get(&id).copied().unwrap_or(0);
        if got != want {
            assert_eq!(
                in_flight,
                Some(&Op::Grant(id.clone(), got)),
                "{id} has {got:03b} but {want:03b} was acknowledged"
            );
            in_flight_committed = true;
        }
        model.grants.insert(id, got);
    }
    let owner = vault.provider(&Identity::new("owner"));
    assert_eq!(
        owner.unwrap_key(blob).await.unwrap().expose_secret(),
        &[7; 32]
    );
    in_flight_committed
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_change() {
    let start = Instant::now();
    let dir = fresh_dir("kill");
    let log_path = dir.with_extension("log");
    let mut model = Model::default();
    let blob = block_on(async {
        let vault = FileVault::create(
            &dir,
            VaultProperties::new("kill.example", "r", "t"),
            &options(),
        )
        .unwrap();
        for i in 0..KEYS {
            vault
                .create_key(&format!("k{i}"), KeySpec::Aes256)
                .await
                .unwrap();
            model.versions.insert(format!("k{i}"), 1);
        }
        vault.create_key("probe", KeySpec::Aes256).await.unwrap();
        vault
            .set_access(&Identity::new("owner"), Permissions::CMK)
            .await
            .unwrap();
        vault
            .provider(&Identity::new("owner"))
            .wrap_key("probe", None, WrapAlgorithm::A256Kw, &[7; 32])
            .await
            .unwrap()
    });
    let mut rng = Rng(seed());
    let mut offset = 0;
    let (mut acked_total, mut mid_write, mut unacked_committed, mut in_flight_rounds) =
        (0, 0, 0, 0);
    for round in 0..KILL_ROUNDS {
        let (mut reaper, out) = spawn_worker("kill", &dir, &log_path, rng.next() | 1);
        // Anywhere from right after open to several changes in.
        std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        let child = reaper.0.as_mut().unwrap();
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        // Killed by our SIGKILL, not dead of its own failure (a worker that panics on a vault
        // error exits with a status instead).
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "round {round}: the worker ended on its own: {status}"
        );
        reaper.0 = None;
        drop(out);
        if temp_files(&dir) > 0 {
            mid_write += 1;
        }
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let end = text.rfind('\n').map_or(0, |i| i + 1).max(offset);
        let (acked, in_flight) = parse_log(&text[offset..end]);
        let vault = FileVault::open(&dir, &options())
            .unwrap_or_else(|e| panic!("round {round}: the vault does not open: {e}"));
        assert_eq!(temp_files(&dir), 0, "round {round}: temporary files remain");
        assert_private(&dir);
        acked_total += acked.len();
        if in_flight.is_some() {
            in_flight_rounds += 1;
        }
        if block_on(verify_round(
            &vault,
            &mut model,
            &acked,
            in_flight.as_ref(),
            &blob,
        )) {
            unacked_committed += 1;
        }
        // Drop a torn last line (the kill landed inside the log write): the op it belonged
        // to counts as in flight, and the next worker appends after whole lines only.
        OpenOptions::new()
            .write(true)
            .open(&log_path)
            .and_then(|f| f.set_len(end as u64))
            .ok();
        offset = end;
    }
    eprintln!(
        "kill test: {KILL_ROUNDS} SIGKILLs in {:?}; {acked_total} acknowledged changes all present; \
         {in_flight_rounds} kills with a change in flight ({unacked_committed} of them committed \
         but unacknowledged); {mid_write} kills left temporary files, all removed on reopen; \
         final versions {:?}",
        start.elapsed(),
        model.versions
    );
    // Loose: the count depends on the machine's fsync latency; a few hundred is typical.
    assert!(acked_total >= 50, "too few changes were exercised");
    assert!(mid_write > 0, "no kill landed inside a write");
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_file(&log_path).unwrap();
}

#[test]
fn two_processes_rotate_and_grant_concurrently() {
    let dir = fresh_dir("two");
    block_on(async {
        let vault = FileVault::create(
            &dir,
            VaultProperties::new("two.example", "r", "t"),
            &options(),
        )
        .unwrap();
        vault.create_key("shared", KeySpec::Aes256).await.unwrap();
        vault.create_key("probe", KeySpec::Aes256).await.unwrap();
    });
    let logs: Vec<PathBuf> = (0..2)
        .map(|i| dir.with_extension(format!("log{i}")))
        .collect();
    let mut workers: Vec<_> = (0..2)
        .map(|i| spawn_worker(&format!("concurrent:{i}"), &dir, &logs[i], 1))
        .collect();
    // An in-process handle reads while they write: it must never see a half-written state.
    let reader = FileVault::open(&dir, &options()).unwrap();
    fs::write(dir.with_extension("go"), b"").unwrap();
    let mut seen = 0;
    for (reaper, _) in &mut workers {
        let child = reaper.0.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "a worker failed: {status}");
                break;
            }
            let n = block_on(reader.list_versions("shared")).unwrap().len();
            assert!(n >= seen, "versions went from {seen} to {n}");
            seen = n;
            std::thread::sleep(Duration::from_millis(2));
        }
        reaper.0 = None;
    }
    let mut versions = BTreeSet::new();
    let mut grants = Vec::new();
    for log in &logs {
        let (acked, in_flight) = parse_log(&fs::read_to_string(log).unwrap());
        assert!(in_flight.is_none());
        assert_eq!(acked.len(), 40);
        for (op, result) in acked {
            match op {
                Op::Rotate(_) => assert!(
                    versions.insert(result.parse::<u64>().unwrap()),
                    "version {result} handed out twice"
                ),
                Op::Grant(id, _) => grants.push(id),
                Op::Enable(..) => unreachable!(),
            }
        }
        fs::remove_file(log).unwrap();
    }
    assert_eq!(versions, (2..=41).collect::<BTreeSet<u64>>());
    block_on(async {
        let vault = FileVault::open(&dir, &options()).unwrap();
        let listed = vault.list_versions("shared").await.unwrap();
        assert_eq!(listed.len(), 41);
        assert_eq!(grants.len(), 40);
        for id in grants {
            let p = vault.provider(&Identity::new(&id));
            p.key_properties("probe", None)
                .await
                .unwrap_or_else(|e| panic!("grant of {id} lost: {e}"));
        }
        // The reading handle caught up too.
        assert_eq!(reader.list_versions("shared").await.unwrap().len(), 41);
    });
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_file(dir.with_extension("go")).unwrap();
}
