//! Streams a large object (1 GiB by default) through the async sealer and straight into the
//! async opener via a `tokio::io::duplex` pipe on a current-thread runtime, then prints the
//! process's peak resident memory (Linux `VmHWM`), to show it does not grow with the object:
//!
//! ```text
//! cargo run --release --features tokio --example envelope_stream_async -- 1024 double
//! ```
//!
//! Arguments: size in MiB (default 1024), then `double` for two layers.

use byok::envelope::{AccountKey, PreparedKey};
use byok::{AesKey, Envelope};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let double = args.next().as_deref() == Some("double");
    let total = mib << 20;

    let k1 = PreparedKey::new("example", &AccountKey::new("ak", 1, AesKey::generate())?)?;
    let k2 = PreparedKey::new("example", &AccountKey::new("infra", 1, AesKey::generate())?)?;
    let mut env = Envelope::new(&k1);
    if double {
        env = env.with_layer2(&k2)?;
    }
    let rss_before = peak_rss_kib();

    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let started = std::time::Instant::now();
    let (sent_sum, got_sum, got_len) = rt.block_on(async {
        let (pipe_w, pipe_r) = tokio::io::duplex(256 << 10);
        let writer = async {
            let mut w = env.seal_async_writer(b"example/object", pipe_w)?;
            let mut block = vec![0u8; 1 << 20];
            let (mut sum, mut written) = (0u64, 0u64);
            while written < total {
                for (i, b) in block.iter_mut().enumerate() {
                    *b = (written as usize + i) as u8 ^ 0x5A;
                }
                let n = (total - written).min(block.len() as u64) as usize;
                sum = sum.wrapping_add(block[..n].iter().map(|&b| u64::from(b)).sum::<u64>());
                w.write_all(&block[..n]).await?;
                written += n as u64;
            }
            w.shutdown().await?;
            Ok::<_, byok::Error>(sum)
        };
        let reader = async {
            let mut r = env.open_async_reader(b"example/object", pipe_r).await?;
            let mut buf = vec![0u8; 256 << 10];
            let (mut sum, mut len) = (0u64, 0u64);
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                sum = sum.wrapping_add(buf[..n].iter().map(|&b| u64::from(b)).sum::<u64>());
                len += n as u64;
            }
            Ok::<_, byok::Error>((sum, len))
        };
        let (sent, got) = tokio::join!(writer, reader);
        let (got_sum, got_len) = got?;
        Ok::<_, byok::Error>((sent?, got_sum, got_len))
    })?;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(got_len, total, "length");
    assert_eq!(got_sum, sent_sum, "checksum");
    println!(
        "streamed {mib} MiB ({} layer{}) through async seal -> duplex -> async open on a \
         current-thread runtime in {secs:.2} s ({:.0} MiB/s), checksum ok; peak RSS {} KiB \
         (before streaming: {} KiB)",
        if double { 2 } else { 1 },
        if double { "s" } else { "" },
        mib as f64 / secs,
        peak_rss_kib().map_or("?".into(), |k| k.to_string()),
        rss_before.map_or("?".into(), |k| k.to_string()),
    );
    Ok(())
}
