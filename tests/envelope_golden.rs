//! Compatibility forever: objects written by format version 1 under fixed keys, committed in
//! `tests/data/`, must open with every later version of the crate.
//!
//! Regenerate (only when deliberately adding files — changing existing ones is a breaking
//! change): `BYOK_REGEN_GOLDEN=1 cargo test --test envelope_golden`.
//!
//! Keys: account `acct-golden`; account key `ak-golden` version 1 = 32 × 0x11; layer-2 key
//! `infra-golden` version 7 = 32 × 0x22; context `golden` (the fuzz targets use the same).

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::PathBuf;

use byok::envelope::{AccountKey, PreparedKey};
use byok::{AesKey, Envelope};

fn keys() -> (PreparedKey, PreparedKey) {
    let k = |id: &str, v, b| {
        let ak = AccountKey::new(id, v, AesKey::from_bytes([b; 32])).unwrap();
        PreparedKey::new("acct-golden", &ak).unwrap()
    };
    (k("ak-golden", 1, 0x11), k("infra-golden", 7, 0x22))
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

const SMALL: &[u8] = b"The quick brown fox jumps over the lazy dog.";
const FIELD_CONTEXT: &[u8] = b"contentKeyPolicy/7/option/0";
const FIELD: &[u8] = br#"{"tokenValidationKey":"c2VjcmV0","issuer":"https://sts.example"}"#;

struct Case {
    file: &'static str,
    double: bool,
    chunk: usize,
    plaintext: Vec<u8>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            file: "envelope_v1_small.bin",
            double: false,
            chunk: 1 << 16,
            plaintext: SMALL.to_vec(),
        },
        Case {
            file: "envelope_v1_large.bin",
            double: false,
            chunk: 1024,
            plaintext: data(3 * 1024 + 500),
        },
        Case {
            file: "envelope_v1_empty.bin",
            double: false,
            chunk: 1 << 16,
            plaintext: Vec::new(),
        },
        Case {
            file: "envelope_v1_double.bin",
            double: true,
            chunk: 1024,
            plaintext: data(2 * 1024 + 100),
        },
        Case {
            file: "envelope_v1_double_empty.bin",
            double: true,
            chunk: 64,
            plaintext: Vec::new(),
        },
    ]
}

fn path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

#[test]
fn golden_objects_open() {
    let (k1, k2) = keys();
    let regen = std::env::var_os("BYOK_REGEN_GOLDEN").is_some_and(|v| v == "1");
    for case in cases() {
        let mut env = Envelope::new(&k1).with_chunk_size(case.chunk).unwrap();
        if case.double {
            env = env.with_layer2(&k2).unwrap();
        }
        if regen {
            std::fs::write(
                path(case.file),
                env.seal(b"golden", &case.plaintext).unwrap(),
            )
            .unwrap();
        }
        let obj = std::fs::read(path(case.file)).unwrap();
        // Opening needs no chunk-size setting: it is in the header.
        let opener = if case.double {
            Envelope::new(&k1).with_layer2(&k2).unwrap()
        } else {
            Envelope::new(&k1)
        };
        assert_eq!(
            opener.open(b"golden", &obj).unwrap(),
            case.plaintext,
            "{}",
            case.file
        );
        let mut streamed = Vec::new();
        opener
            .open_reader(b"golden", obj.as_slice())
            .unwrap()
            .read_to_end(&mut streamed)
            .unwrap();
        assert_eq!(streamed, case.plaintext);
        let info = byok::envelope::inspect(&obj).unwrap();
        assert_eq!(info.format_version, 1);
        assert_eq!(info.account_id, "acct-golden");
        assert_eq!(
            (info.account_key.id.as_str(), info.account_key.version),
            ("ak-golden", 1)
        );
        assert_eq!(
            info.layer2_key.map(|k| (k.id, k.version)),
            case.double.then(|| ("infra-golden".to_owned(), 7))
        );
        assert_eq!(info.chunk_size, case.chunk);
        // Holding only one layer's key yields nothing.
        if case.double {
            assert!(matches!(
                Envelope::new(&k1).open(b"golden", &obj),
                Err(byok::Error::Decryption)
            ));
        }
    }
}

#[test]
fn golden_sealed_field_v1_opens() {
    // Written by versions before sealed-field format 2; never regenerated.
    let (k1, _) = keys();
    let sealed = std::fs::read(path("field_v1.bin")).unwrap();
    assert_eq!(sealed[0], 1);
    assert_eq!(k1.open_field(FIELD_CONTEXT, &sealed).unwrap(), FIELD);
    assert_eq!(byok::envelope::field_key_version(&sealed).unwrap(), 1);
    assert!(matches!(
        k1.open_field(b"contentKeyPolicy/8/option/0", &sealed),
        Err(byok::Error::Decryption)
    ));
}

#[test]
fn golden_sealed_field_v2_opens() {
    let (k1, _) = keys();
    let regen = std::env::var_os("BYOK_REGEN_GOLDEN").is_some_and(|v| v == "1");
    if regen {
        std::fs::write(
            path("field_v2.bin"),
            k1.seal_field(FIELD_CONTEXT, FIELD).unwrap(),
        )
        .unwrap();
    }
    let sealed = std::fs::read(path("field_v2.bin")).unwrap();
    assert_eq!(sealed[0], 2);
    assert_eq!(k1.open_field(FIELD_CONTEXT, &sealed).unwrap(), FIELD);
    assert_eq!(byok::envelope::field_key_version(&sealed).unwrap(), 1);
    assert!(matches!(
        k1.open_field(b"contentKeyPolicy/8/option/0", &sealed),
        Err(byok::Error::Decryption)
    ));
}

/// Negative golden vectors (`tests/data/fail/`, listed with their expected outcome in
/// `MANIFEST.tsv`, as age's test kit does): `inspect` returns exactly the listed result, and
/// opening — one-shot, and streaming to the end — fails with the opaque `Error::Decryption`.
#[test]
fn negative_vectors_fail_as_listed() {
    let (k1, _) = keys();
    let manifest = std::fs::read_to_string(path("fail/MANIFEST.tsv")).unwrap();
    let mut checked = 0;
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut cols = line.split('\t');
        let (file, inspect, why) = (cols.next().unwrap(), cols.next().unwrap(), cols.next());
        let obj = std::fs::read(path(&format!("fail/{file}"))).unwrap();
        let inspected = match byok::envelope::inspect(&obj) {
            Ok(_) => "ok".to_owned(),
            Err(byok::Error::Format(e)) => format!("{e:?}"),
            Err(other) => panic!("{file}: inspect gave a non-format error {other:?}"),
        };
        assert_eq!(inspected, inspect, "{file} ({why:?}): inspect");
        let one_shot = Envelope::new(&k1).open(b"golden", &obj);
        assert!(
            matches!(one_shot, Err(byok::Error::Decryption)),
            "{file} ({why:?}): open gave {one_shot:?}"
        );
        let mut streamed = Vec::new();
        let result = Envelope::new(&k1)
            .open_reader(b"golden", obj.as_slice())
            .and_then(|mut r| r.read_to_end(&mut streamed))
            .map_err(byok::Error::from);
        assert!(
            matches!(result, Err(byok::Error::Decryption)),
            "{file} ({why:?}): streaming open gave {result:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 17, "every vector in the manifest was checked");
}
