//! The Transit wire format: JSON bodies, key types, versions, ciphertext strings, timestamps.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64ct::{Base64, Encoding as _};
use serde::Deserialize;
use zeroize::Zeroize;

use crate::crypto::RsaPublic;
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::provider::{KeyOperation, KeyProperties, KeySpec, KeyType, WrapAlgorithm};

/// Every success body: `{"data": …, "auth": …, "warnings": …}`.
#[derive(Deserialize)]
pub(super) struct Envelope<T> {
    pub(super) data: Option<T>,
    pub(super) auth: Option<AuthData>,
}

/// Every error body: `{"errors": […]}`.
#[derive(Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub(super) errors: Vec<String>,
}

/// `auth` of `POST auth/token/create`.
#[derive(Deserialize)]
pub(super) struct AuthData {
    pub(super) client_token: String,
    pub(super) accessor: String,
}

/// `data` of `GET <mount>/keys/<name>` (and of create, rotate, config, soft-delete).
#[derive(Deserialize, Debug)]
pub(super) struct KeyData {
    #[serde(rename = "type")]
    pub(super) key_type: String,
    #[serde(default)]
    pub(super) keys: BTreeMap<String, VersionEntry>,
    pub(super) latest_version: u64,
    #[serde(default)]
    pub(super) min_decryption_version: u64,
    #[serde(default)]
    pub(super) min_encryption_version: u64,
    #[serde(default)]
    pub(super) min_available_version: u64,
    #[serde(default)]
    pub(super) soft_deleted: bool,
    #[serde(default)]
    pub(super) derived: bool,
    #[serde(default)]
    pub(super) supports_encryption: bool,
    #[serde(default)]
    pub(super) supports_decryption: bool,
    #[serde(default)]
    pub(super) supports_signing: bool,
}

/// One entry of `keys`: an object for asymmetric keys, a Unix time for symmetric ones.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(super) enum VersionEntry {
    Unix(i64),
    Asymmetric {
        #[serde(default)]
        creation_time: Option<String>,
        #[serde(default)]
        public_key: Option<String>,
    },
}

/// `data` of `encrypt`.
#[derive(Deserialize)]
pub(super) struct EncryptData {
    pub(super) ciphertext: String,
    pub(super) key_version: u64,
}

/// `data` of `decrypt`; the base64 plaintext is wiped on drop.
#[derive(Deserialize)]
pub(super) struct DecryptData {
    pub(super) plaintext: String,
}

impl Drop for DecryptData {
    fn drop(&mut self) {
        self.plaintext.zeroize();
    }
}

/// What byok can do with a Transit key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Rsa(u32),
    Aes(u32),
    Ec(&'static str),
}

impl Kind {
    pub(super) fn parse(t: &str) -> Option<Self> {
        Some(match t {
            "rsa-2048" => Self::Rsa(2048),
            "rsa-3072" => Self::Rsa(3072),
            "rsa-4096" => Self::Rsa(4096),
            "aes128-gcm96" => Self::Aes(128),
            "aes256-gcm96" => Self::Aes(256),
            "ecdsa-p256" => Self::Ec("P-256"),
            "ecdsa-p384" => Self::Ec("P-384"),
            "ecdsa-p521" => Self::Ec("P-521"),
            "ed25519" => Self::Ec("Ed25519"),
            _ => return None,
        })
    }

    pub(super) fn key_type(self) -> KeyType {
        match self {
            Self::Rsa(bits) => KeyType::Rsa { bits },
            Self::Aes(bits) => KeyType::Aes { bits },
            Self::Ec(curve) => KeyType::Ec {
                curve: curve.to_owned(),
            },
        }
    }

    /// Whether `alg` fits this key type (`RSA-OAEP` with SHA-1 is refused separately).
    pub(super) fn fits(self, alg: WrapAlgorithm) -> bool {
        match self {
            Self::Rsa(_) => alg.is_rsa(),
            Self::Aes(bits) => alg == WrapAlgorithm::A256Kw && bits == 256,
            Self::Ec(_) => false,
        }
    }
}

/// The Transit `type` for a spec.
pub(super) fn spec_type(spec: KeySpec) -> Result<&'static str, ProviderError> {
    match spec {
        KeySpec::Rsa(2048) => Ok("rsa-2048"),
        KeySpec::Rsa(3072) => Ok("rsa-3072"),
        KeySpec::Rsa(4096) => Ok("rsa-4096"),
        KeySpec::Aes256 => Ok("aes256-gcm96"),
        KeySpec::EcP256 => Ok("ecdsa-p256"),
        other => Err(ProviderError::new(
            K::InvalidRequest,
            format!(
                "Transit cannot create a {other:?} key (RSA 2048/3072/4096, AES-256, EC P-256)"
            ),
        )),
    }
}

impl KeyData {
    pub(super) fn kind(&self, name: &str) -> Result<Kind, ProviderError> {
        Kind::parse(&self.key_type).ok_or_else(|| {
            ProviderError::new(
                K::WrongKeyType,
                format!(
                    "Transit key {name} has type {}, which byok cannot use",
                    self.key_type
                ),
            )
        })
    }

    /// Fails with `KeyDeleted` while the key is soft-deleted.
    pub(super) fn live(&self, name: &str) -> Result<(), ProviderError> {
        if self.soft_deleted {
            Err(ProviderError::new(
                K::KeyDeleted,
                format!("Transit key {name} is soft-deleted"),
            ))
        } else {
            Ok(())
        }
    }

    /// The oldest version that still exists (older ones were trimmed).
    pub(super) fn oldest(&self) -> u64 {
        self.min_available_version.max(1)
    }

    /// The version `v` names, if the key has it.
    pub(super) fn version(&self, name: &str, v: &str) -> Result<u64, ProviderError> {
        parse_version(v)
            .filter(|n| (self.oldest()..=self.latest_version).contains(n))
            .ok_or_else(|| {
                ProviderError::new(K::KeyNotFound, format!("key {name} has no version {v:?}"))
            })
    }

    /// Versions below `min_decryption_version` are what "disabled" means on Transit.
    pub(super) fn enabled(&self, v: u64) -> bool {
        v >= self.min_decryption_version
    }

    pub(super) fn operations(&self) -> Vec<KeyOperation> {
        let mut ops = Vec::new();
        if self.supports_encryption {
            ops.extend([KeyOperation::WrapKey, KeyOperation::Encrypt]);
        }
        if self.supports_decryption {
            ops.extend([KeyOperation::UnwrapKey, KeyOperation::Decrypt]);
        }
        if self.supports_signing {
            ops.extend([KeyOperation::Sign, KeyOperation::Verify]);
        }
        ops
    }

    /// Properties of version `v` (which must exist). A version below
    /// `min_decryption_version` is not listed by the server: it is reported disabled, created
    /// at the Unix epoch, without a public key.
    pub(super) fn properties(
        &self,
        vault: &str,
        name: &str,
        v: u64,
    ) -> Result<KeyProperties, ProviderError> {
        let kind = self.kind(name)?;
        let entry = self.keys.get(&v.to_string());
        let (created, pem) = match entry {
            Some(VersionEntry::Unix(secs)) => (unix_time(*secs), None),
            Some(VersionEntry::Asymmetric {
                creation_time,
                public_key,
            }) => (
                creation_time
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                public_key.as_deref(),
            ),
            None => (SystemTime::UNIX_EPOCH, None),
        };
        let public_key = match (kind, pem) {
            (Kind::Rsa(_), Some(pem)) if !pem.is_empty() => {
                Some(RsaPublic::from_pem(pem).map_err(|e| {
                    ProviderError::new(
                        K::Unavailable,
                        format!("Transit returned an unreadable public key for {name} v{v}: {e}"),
                    )
                })?)
            }
            _ => None,
        };
        Ok(KeyProperties {
            vault: vault.to_owned(),
            name: name.to_owned(),
            version: v.to_string(),
            key_type: kind.key_type(),
            enabled: self.enabled(v),
            operations: self.operations(),
            created,
            public_key,
        })
    }
}

/// A Transit version number: decimal, no sign, no leading zero, at least 1.
pub(super) fn parse_version(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    v.parse().ok()
}

/// `vault:v<N>:<base64>` → `(N, raw bytes)`.
pub(super) fn parse_ciphertext(s: &str) -> Option<(u64, Vec<u8>)> {
    let rest = s.strip_prefix("vault:v")?;
    let (v, b64) = rest.split_once(':')?;
    Some((parse_version(v)?, Base64::decode_vec(b64).ok()?))
}

/// `(N, raw bytes)` → `vault:v<N>:<base64>`.
pub(super) fn format_ciphertext(v: u64, raw: &[u8]) -> String {
    format!("vault:v{v}:{}", Base64::encode_string(raw))
}

pub(super) fn b64(raw: &[u8]) -> String {
    Base64::encode_string(raw)
}

pub(super) fn unb64(s: &str) -> Option<Vec<u8>> {
    Base64::decode_vec(s).ok()
}

fn unix_time(secs: i64) -> SystemTime {
    u64::try_from(secs)
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Parses the RFC 3339 UTC timestamps Transit writes (`2026-11-24T13:41:21.189905898Z`;
/// numeric offsets are accepted too).
pub(super) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: core::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let d = |c: &u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
            let secs = (d(h1)? * 10 + d(h2)?) * 3600 + (d(m1)? * 10 + d(m2)?) * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}
