//! Unwrap latency on a SoftHSM2 token next to the in-memory vault, RSA 2048/3072/4096, in one
//! group so the ratio is read from one run.
//!
//! ```text
//! cargo bench --features pkcs11 --bench pkcs11 -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Like the tests, the bench sets up its own private token (`target/softhsm-bench`) with
//! `scripts/softhsm-env.sh` and re-runs itself with `SOFTHSM2_CONF` set, unless the variables
//! are already exported.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use byok::provider::memory::InMemoryVault;
use byok::provider::pkcs11::{Pkcs11Config, Pkcs11Provider};
use byok::provider::{Identity, KeySpec, OaepHash, Permissions, VaultProperties, WrapAlgorithm};
use byok::{KeyProvider, VaultAdmin};
use criterion::{BenchmarkId, Criterion, Throughput};

fn ensure_token_env() {
    let set = |n: &str| std::env::var_os(n).is_some_and(|v| !v.is_empty());
    if [
        "SOFTHSM2_CONF",
        "BYOK_PKCS11_MODULE",
        "BYOK_PKCS11_TOKEN_LABEL",
        "BYOK_PKCS11_PIN",
    ]
    .iter()
    .all(|n| set(n))
    {
        return;
    }
    assert!(
        !set("BYOK_PKCS11_BENCH_CHILD"),
        "re-run without the SoftHSM2 variables"
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("softhsm-bench");
    let _ = std::fs::remove_dir_all(dir.join("tokens"));
    let out = Command::new("bash")
        .arg(root.join("scripts/softhsm-env.sh"))
        .arg("--print-env")
        .env("BYOK_SOFTHSM_DIR", &dir)
        .current_dir(&root)
        .output()
        .expect("run scripts/softhsm-env.sh");
    assert!(
        out.status.success(),
        "SoftHSM2 token setup failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vars: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace('\\', "")))
        .collect();
    let status = Command::new(std::env::current_exe().expect("current_exe"))
        .args(std::env::args_os().skip(1))
        .envs(vars)
        .env("BYOK_PKCS11_BENCH_CHILD", "1")
        .status()
        .expect("re-run the bench");
    std::process::exit(status.code().unwrap_or(1));
}

fn bench_unwrap(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let config = Pkcs11Config::from_env()
        .expect("BYOK_PKCS11_* variables")
        .oaep_hash(OaepHash::Sha1);
    let hsm = rt
        .block_on(Pkcs11Provider::connect(config))
        .expect("connect to the token");
    let vault = InMemoryVault::new(VaultProperties::new("bench.vault.example", "local", "t"));
    let app = Identity::new("bench");
    rt.block_on(vault.set_access(&app, Permissions::CMK))
        .expect("access");
    let mem = vault.provider(&app);

    let mut group = c.benchmark_group("unwrap");
    group.throughput(Throughput::Elements(1));
    for bits in [2048u32, 3072, 4096] {
        let name = format!("bench-{bits}");
        rt.block_on(hsm.create_key(&name, KeySpec::Rsa(bits)))
            .expect("create on token");
        rt.block_on(vault.create_key(&name, KeySpec::Rsa(bits)))
            .expect("create in memory");
        // The same algorithm on both sides: RSA-OAEP (SHA-1), what SoftHSM2 can do.
        let wt = rt
            .block_on(hsm.wrap_key(&name, None, WrapAlgorithm::RsaOaep, &[9u8; 32]))
            .expect("wrap");
        let wm = rt
            .block_on(mem.wrap_key(&name, None, WrapAlgorithm::RsaOaep, &[9u8; 32]))
            .expect("wrap");
        group.bench_with_input(BenchmarkId::new("softhsm2", bits), &wt, |b, w| {
            b.iter(|| rt.block_on(hsm.unwrap_key(black_box(w))).expect("unwrap"));
        });
        group.bench_with_input(BenchmarkId::new("in-memory", bits), &wm, |b, w| {
            b.iter(|| rt.block_on(mem.unwrap_key(black_box(w))).expect("unwrap"));
        });
    }
    group.finish();
}

fn main() {
    ensure_token_env();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_unwrap(&mut c);
    c.final_summary();
}
