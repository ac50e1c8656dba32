//! Streams a large object (1 GiB by default) through the sealer and straight into the opener
//! via an OS pipe, to show that memory does not grow with the object:
//!
//! ```text
//! cargo build --release --example envelope_stream
//! /usr/bin/time -v target/release/examples/envelope_stream 1024 double
//! ```
//!
//! Arguments: size in MiB (default 1024), then `double` for two layers.

use std::io::{self, Read, Write};
use std::thread;

use byok::envelope::{AccountKey, PreparedKey};
use byok::{AesKey, Envelope};

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

    let (pipe_r, pipe_w) = io::pipe()?;
    let started = std::time::Instant::now();
    let (sent_sum, got_sum, got_len) = thread::scope(|s| -> io::Result<(u64, u64, u64)> {
        let writer = s.spawn(move || -> io::Result<u64> {
            let mut w = env.seal_writer(b"example/object", pipe_w)?;
            let mut block = vec![0u8; 1 << 20];
            let mut sum = 0u64;
            let mut written = 0u64;
            while written < total {
                for (i, b) in block.iter_mut().enumerate() {
                    *b = (written as usize + i) as u8 ^ 0x5A;
                }
                let n = (total - written).min(block.len() as u64) as usize;
                sum = sum.wrapping_add(block[..n].iter().map(|&b| u64::from(b)).sum::<u64>());
                w.write_all(&block[..n])?;
                written += n as u64;
            }
            w.finish()?;
            Ok(sum)
        });
        let mut r = env.open_reader(b"example/object", pipe_r)?;
        let mut buf = vec![0u8; 256 << 10];
        let (mut sum, mut len) = (0u64, 0u64);
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sum = sum.wrapping_add(buf[..n].iter().map(|&b| u64::from(b)).sum::<u64>());
            len += n as u64;
        }
        let sent = writer
            .join()
            .map_err(|_| io::Error::other("sealer panicked"))??;
        Ok((sent, sum, len))
    })?;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(got_len, total, "length");
    assert_eq!(got_sum, sent_sum, "checksum");
    println!(
        "streamed {mib} MiB ({} layer{}) through seal -> pipe -> open in {secs:.2} s ({:.0} MiB/s), checksum ok",
        if double { 2 } else { 1 },
        if double { "s" } else { "" },
        mib as f64 / secs
    );
    Ok(())
}
