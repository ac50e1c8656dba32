//! Entry points for the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`).
//! Each panics only when it finds a bug.

use std::io::Read;
use std::sync::OnceLock;

use super::{AccountKey, Envelope, PreparedKey, format};
use crate::secret::AesKey;

/// The fixed keys of the fuzz targets (the same as the golden files': account `acct-golden`,
/// account key `ak-golden` v1 = 32 × 0x11, layer-2 key `infra-golden` v7 = 32 × 0x22).
fn keys() -> &'static (PreparedKey, PreparedKey) {
    static KEYS: OnceLock<(PreparedKey, PreparedKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let k = |id: &str, v, b| {
            AccountKey::new(id, v, AesKey::from_bytes([b; 32]))
                .and_then(|k| PreparedKey::new("acct-golden", &k))
                .unwrap_or_else(|_| unreachable!("fixed keys are valid"))
        };
        (k("ak-golden", 1, 0x11), k("infra-golden", 7, 0x22))
    })
}

fn envelope() -> Envelope<'static> {
    let (k1, k2) = keys();
    Envelope::new(k1)
        .with_layer2(k2)
        .unwrap_or_else(|_| unreachable!("same account"))
}

/// Header parsing: never panics; a parsed header re-encodes to exactly the bytes parsed, and
/// inspection agrees with the parser.
pub fn fuzz_header(data: &[u8]) {
    match format::parse(data) {
        Ok(h) => {
            let mut out = Vec::new();
            h.write_to(&mut out);
            assert_eq!(out, h.raw, "parse -> write must reproduce the header bytes");
            let info = super::inspect(data);
            assert!(info.is_ok());
            let via_reader = super::inspect_reader(data);
            assert_eq!(info.ok(), via_reader.ok());
        }
        Err(e) => {
            assert!(matches!(super::inspect(data), Err(crate::Error::Format(f)) if f == e));
        }
    }
}

/// One-shot open of arbitrary bytes with fixed keys: never panics, and anything that opens
/// opens identically through the streaming reader.
pub fn fuzz_open(data: &[u8]) {
    let env = envelope();
    let one_shot = env.open(b"golden", data);
    let mut streamed = Vec::new();
    let stream_ok = env
        .open_reader(b"golden", data)
        .and_then(|mut r| r.read_to_end(&mut streamed))
        .is_ok();
    match one_shot {
        Ok(pt) => {
            assert!(stream_ok, "one-shot opened but streaming failed");
            assert_eq!(pt, streamed);
        }
        Err(e) => {
            assert!(matches!(e, crate::Error::Decryption));
            assert!(!stream_ok, "streaming opened but one-shot failed");
        }
    }
}

/// The streaming reader on arbitrary bytes, read in sizes the input chooses. The first bytes
/// pick read sizes; if it is a real object (e.g. a mutated golden file), whatever the reader
/// yields must be a prefix of what the one-shot API returns, chunk-aligned on failure.
pub fn fuzz_stream(data: &[u8]) {
    let Some((&sizes, object)) = data.split_first() else {
        return;
    };
    let env = envelope();
    let full = env.open(b"golden", object);
    let Ok(mut reader) = env.open_reader(b"golden", object) else {
        assert!(full.is_err());
        return;
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 300];
    let mut step = 0usize;
    let ok = loop {
        let n = 1 + ((usize::from(sizes) >> (step % 8)) * 37 + step) % buf.len();
        step += 1;
        match reader.read(&mut buf[..n]) {
            Ok(0) => break true,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(_) => break false,
        }
    };
    match full {
        Ok(pt) => {
            assert!(ok);
            assert_eq!(pt, got);
        }
        Err(_) => {
            assert!(!ok, "streaming opened what one-shot refused");
            // Only whole authenticated chunks were handed out.
            if let Ok(h) = format::parse(object) {
                assert_eq!(got.len() % (1usize << h.chunk_exp), 0);
            }
        }
    }
}

/// Key identifier parsing (`KeyId`): never panics; parse → print → parse is the identity;
/// equivalent spellings of a parsed identifier compare and hash equal (see
/// `key_id::check_parser_properties`). Non-UTF-8 input is read lossily.
pub fn fuzz_key_id(data: &[u8]) {
    crate::key_id::check_parser_properties(&String::from_utf8_lossy(data));
}
