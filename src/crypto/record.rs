//! Sealed records: AES-256-GCM under a fresh random nonce, the nonce carried at the end of a
//! plaintext header that is authenticated with the body (the file vault's `state` and key
//! files), and 32-byte check values (HKDF-SHA-256, RFC 5869). The record layouts — magic,
//! version, generation, what the associated data binds — belong to their users; only the
//! sealing is here.

use zeroize::Zeroizing;

use super::{GCM_NONCE_LEN, Gcm, fill_random, hkdf_sha256};

/// Seals `body`: returns `header || nonce || ciphertext || tag` with a fresh 96-bit nonce, the
/// associated data being `aad(header || nonce)` (the whole plaintext header, and whatever the
/// caller binds to it).
pub(crate) fn seal_record(
    gcm: &Gcm,
    mut header: Vec<u8>,
    aad: impl FnOnce(&[u8]) -> Vec<u8>,
    body: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; GCM_NONCE_LEN];
    fill_random(&mut nonce);
    header.extend_from_slice(&nonce);
    let ct = gcm.seal(&nonce, &aad(&header), body);
    header.extend_from_slice(&ct);
    header
}

/// Opens a record sealed by [`seal_record`] whose header (ending with the nonce) is the first
/// `header_len` bytes of `sealed`.
///
/// # Errors
/// `Err(())` when `sealed` is shorter than the header or does not authenticate.
pub(crate) fn open_record(
    gcm: &Gcm,
    sealed: &[u8],
    header_len: usize,
    aad: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<Zeroizing<Vec<u8>>, ()> {
    if header_len < GCM_NONCE_LEN || sealed.len() < header_len {
        return Err(());
    }
    let (header, ct) = sealed.split_at(header_len);
    let mut nonce = [0u8; GCM_NONCE_LEN];
    nonce.copy_from_slice(&header[header_len - GCM_NONCE_LEN..]);
    gcm.open(&nonce, &aad(header), ct).map_err(|_| ())
}

/// An unkeyed 32-byte checksum of `data` under the public `label` (HKDF-SHA-256 with the label
/// as salt: a plain hash through the one hash primitive providers use).
pub(crate) fn checksum(label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf_sha256(label, data, &[b"v1"], &mut out);
    out
}

/// A 32-byte MAC of `data` under `key` (HKDF-SHA-256 keyed by `key`: its extract step is
/// HMAC-SHA-256(key, data)), for the purpose named by `info`.
pub(crate) fn check_value(key: &[u8; 32], data: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf_sha256(key, data, &[info], &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::AesKey;

    #[test]
    fn records_open_only_as_sealed() {
        let gcm = Gcm::new(&AesKey::from_bytes([9; 32]));
        let bind = |h: &[u8]| [h, b"file-a"].concat();
        let sealed = seal_record(&gcm, b"HDR".to_vec(), bind, b"body");
        let header_len = 3 + GCM_NONCE_LEN;
        assert_eq!(&sealed[..3], b"HDR");
        assert_eq!(
            open_record(&gcm, &sealed, header_len, bind)
                .as_deref()
                .map(Vec::as_slice),
            Ok(&b"body"[..])
        );
        // Another binding, a flipped header byte or body byte, a short input: refused.
        assert!(open_record(&gcm, &sealed, header_len, |h| [h, b"file-b"].concat()).is_err());
        for i in [0, header_len - 1, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(
                open_record(&gcm, &bad, header_len, bind).is_err(),
                "byte {i}"
            );
        }
        assert!(open_record(&gcm, &sealed[..5], header_len, bind).is_err());
        assert!(open_record(&gcm, &sealed, 3, bind).is_err());
    }
}
