//! Secret newtypes: key material and credentials that wipe themselves and never print.

use core::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length in bytes of every AES-256 key in the hierarchy (account, data, platform keys).
pub const AES_256_KEY_LEN: usize = 32;

/// An AES-256 key: 32 bytes that are wiped when dropped and never appear in `Debug` output.
///
/// There is deliberately no `Clone`: copies of key material are made explicitly with
/// [`AesKey::duplicate`], so that every copy is visible in review.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct AesKey([u8; AES_256_KEY_LEN]);

impl AesKey {
    /// Wraps existing key bytes. The caller should wipe its own copy.
    pub fn from_bytes(bytes: [u8; AES_256_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies a key out of a slice.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] if `bytes` is not exactly 32 bytes long.
    pub fn try_from_slice(bytes: &[u8]) -> Result<Self, crate::Error> {
        let arr: [u8; AES_256_KEY_LEN] = bytes.try_into().map_err(|_| {
            crate::Error::InvalidInput(format!(
                "an AES-256 key is {AES_256_KEY_LEN} bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(Self(arr))
    }

    /// A fresh random key from the crate's CSPRNG.
    pub fn generate() -> Self {
        let mut k = [0u8; AES_256_KEY_LEN];
        crate::crypto::fill_random(&mut k);
        Self(k)
    }

    /// An explicit copy of the key material.
    pub fn duplicate(&self) -> Self {
        Self(self.0)
    }

    /// The raw key bytes, for the crypto core and for providers that must hand them to a
    /// backend. Do not log or persist them unwrapped.
    pub fn expose_secret(&self) -> &[u8; AES_256_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AesKey").finish_non_exhaustive()
    }
}

/// Variable-length secret bytes (an unwrapped key as a provider returns it), wiped on drop.
/// Equality compares the contents in constant time (only the lengths may differ in time).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        crate::crypto::ct_eq(&self.0, &other.0)
    }
}

impl Eq for SecretBytes {}

impl SecretBytes {
    /// Takes ownership of secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Do not log or persist them unwrapped.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Converts into an [`AesKey`].
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] if the secret is not 32 bytes long.
    pub fn to_aes_key(&self) -> Result<AesKey, crate::Error> {
        AesKey::try_from_slice(&self.0)
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(mut v: Zeroizing<Vec<u8>>) -> Self {
        Self(core::mem::take(&mut *v))
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBytes").finish_non_exhaustive()
    }
}

/// A secret string (a PIN, a token, a passphrase), wiped on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretString(String);

impl SecretString {
    /// Takes ownership of the secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret text. Do not log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretString").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_material() {
        let k = AesKey::from_bytes([0xAB; 32]);
        let s = SecretBytes::new(vec![0xCD; 16]);
        let p = SecretString::new("hunter2-pin");
        let all = format!("{k:?} {s:?} {p:?}");
        assert!(!all.to_lowercase().contains("ab, "), "{all}");
        assert!(!all.contains("171"), "{all}");
        assert!(!all.contains("205"), "{all}");
        assert!(!all.contains("hunter2"), "{all}");
        assert_eq!(all, "AesKey { .. } SecretBytes { .. } SecretString { .. }");
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(matches!(
            AesKey::try_from_slice(&[0u8; 31]),
            Err(crate::Error::InvalidInput(_))
        ));
        assert_eq!(
            AesKey::try_from_slice(&[7u8; 32])
                .map(|k| *k.expose_secret())
                .ok(),
            Some([7u8; 32])
        );
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            AesKey::generate().expose_secret(),
            AesKey::generate().expose_secret()
        );
    }

    #[test]
    fn secret_bytes_compare_by_content() {
        let a = SecretBytes::new(vec![1, 2, 3]);
        assert_eq!(a, SecretBytes::new(vec![1, 2, 3]));
        assert_ne!(a, SecretBytes::new(vec![1, 2, 4]));
        assert_ne!(a, SecretBytes::new(vec![1, 2]));
        assert_ne!(a, SecretBytes::new(Vec::new()));
        assert_eq!(SecretBytes::new(Vec::new()), SecretBytes::new(Vec::new()));
    }
}
