//! The fuzz entry point for the file vault's record codecs (`--cfg fuzzing`, as cargo-fuzz
//! builds; also run over generated inputs by a unit test). Panics only when it finds a bug.

use super::format::{
    FileId, KEY_MAGIC, Meta, STATE_FILE, STATE_MAGIC, read_key, read_state, seal_record,
};
use crate::crypto::Gcm;
use crate::secret::AesKey;

/// Vault files from arbitrary bytes: `vault.meta` parsing and check-value verification, the
/// state file and a key file as read from disk, and — since those are sealed, so arbitrary
/// bytes rarely pass the AEAD — the decoders behind it, fed `data` as an authentic record body.
/// None may panic; every refusal is a typed `Malformed`.
#[cfg_attr(not(fuzzing), allow(unreachable_pub))]
pub fn fuzz_vault_records(data: &[u8]) {
    if let Ok(meta) = Meta::decode(data) {
        let _ = meta.verify(&[7; 32]);
    }
    let gcm = Gcm::new(&AesKey::from_bytes([0x33; 32]));
    let vault_id = [0x44; 16];
    let file = FileId([0x55; 16]);
    let _ = read_state(&gcm, &vault_id, data);
    let _ = read_key(&gcm, &vault_id, file, data);
    let state = seal_record(&gcm, STATE_MAGIC, 1, STATE_FILE, &vault_id, data);
    let _ = read_state(&gcm, &vault_id, &state);
    let key = seal_record(&gcm, KEY_MAGIC, 1, &file.rel_path(), &vault_id, data);
    let _ = read_key(&gcm, &vault_id, file, &key);
}

#[cfg(test)]
mod tests {
    /// The fuzz entry over 20 000 seeded inputs: random bytes and bodies that start like the
    /// real encodings (length-prefixed strings, small counts), so the decoders get past their
    /// first fields.
    #[test]
    fn vault_record_decoders_never_panic() {
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for i in 0..20_000 {
            let len = (next() % 300) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 && len > 8 {
                // A plausible prefix: a short string, then small numbers.
                data[0] = 0;
                data[1] = (next() % 8) as u8;
                for b in data.iter_mut().skip(10).step_by(4) {
                    *b %= 4;
                }
            }
            super::fuzz_vault_records(&data);
        }
    }
}
