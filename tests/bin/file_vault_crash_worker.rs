//! The child process of the file vault's crash test (`tests/file_vault_crash.rs`): opens the
//! vault, prints `READY`, then changes it in a loop, logging each change to an fsynced operation
//! log before (`B <seq> <op>`) and after it was acknowledged (`A <seq> <result>`), until the
//! parent kills it (`kill` mode) or it has done its share (`concurrent:<who>` mode).
//!
//! A binary of its own (feature `testing`, never installed for other use) so that the test
//! harness has no pseudo-test that returns early in ordinary runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use byok::VaultAdmin;
use byok::provider::file::FileVault;
use byok::provider::{Identity, Permissions};

#[path = "../file_vault_crash_common/mod.rs"]
mod common;

use common::*;

fn main() {
    let mode = std::env::var(WORKER_ENV)
        .expect("run by tests/file_vault_crash.rs, which sets BYOK_FV_WORKER");
    let dir = PathBuf::from(std::env::var("BYOK_FV_DIR").unwrap());
    let mut log = Log::open(Path::new(&std::env::var("BYOK_FV_LOG").unwrap()));
    let mut rng = Rng(std::env::var("BYOK_FV_SEED").unwrap().parse().unwrap());
    let vault = FileVault::open(&dir, &options()).unwrap();
    println!("READY");
    std::io::stdout().flush().unwrap();
    block_on(async {
        if let Some(who) = mode.strip_prefix("concurrent:") {
            while !dir.with_extension("go").exists() {
                std::thread::sleep(Duration::from_millis(1));
            }
            for j in 0..20 {
                log.line(&format!("B {j} rot shared"));
                let v = vault.rotate_key("shared").await.unwrap().version;
                log.line(&format!("A {j} {v}"));
                let id = format!("c{who}-{j}");
                log.line(&format!("B {j} grant {id} 7"));
                vault
                    .set_access(&Identity::new(&id), Permissions::CMK)
                    .await
                    .unwrap();
                log.line(&format!("A {j} ok"));
            }
            std::process::exit(0);
        }
        assert_eq!(mode, "kill");
        for seq in 0u64.. {
            match rng.below(10) {
                0..=3 => {
                    let k = format!("k{}", rng.below(KEYS as u64));
                    log.line(&format!("B {seq} rot {k}"));
                    let v = vault.rotate_key(&k).await.unwrap().version;
                    log.line(&format!("A {seq} {v}"));
                }
                4..=7 => {
                    let id = rng.below(IDENTITIES);
                    let b = rng.below(8);
                    log.line(&format!("B {seq} grant id{id} {b}"));
                    vault
                        .set_access(&Identity::new(format!("id{id}")), perms(b))
                        .await
                        .unwrap();
                    log.line(&format!("A {seq} ok"));
                }
                _ => {
                    let k = format!("k{}", rng.below(KEYS as u64));
                    let versions = vault.list_versions(&k).await.unwrap();
                    let v = &versions[rng.below(versions.len() as u64) as usize].version;
                    let on = rng.below(2);
                    log.line(&format!("B {seq} enable {k} {v} {on}"));
                    vault.set_enabled(&k, v, on == 1).await.unwrap();
                    log.line(&format!("A {seq} ok"));
                }
            }
        }
    });
}
