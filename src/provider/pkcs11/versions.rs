//! The version model: a key is the objects labelled with its name; each version is a private
//! (or secret) key whose `CKA_ID` is its number as canonical ASCII decimals.

use super::templates::P256_OID;
use super::*;

/// One key version as found on the token (read from its private key).
pub(super) struct VersionInfo {
    pub(super) number: u64,
    pub(super) private: ObjectHandle,
    pub(super) key_type: Option<P11KeyType>,
    pub(super) decrypt: bool,
    pub(super) unwrap: bool,
    pub(super) modulus: Option<Vec<u8>>,
    pub(super) exponent: Option<Vec<u8>>,
    /// Key length in bytes (AES keys).
    pub(super) value_len: Option<u64>,
}

impl VersionInfo {
    pub(super) fn version(&self) -> String {
        self.number.to_string()
    }

    pub(super) fn is_rsa(&self) -> bool {
        self.key_type == Some(P11KeyType::RSA)
    }

    pub(super) fn is_aes(&self) -> bool {
        self.key_type == Some(P11KeyType::AES)
    }

    /// Whether the version is enabled: the one usage the provider needs of it is granted
    /// (`CKA_UNWRAP` of an AES key, `CKA_DECRYPT` of an RSA or EC private key).
    pub(super) fn enabled(&self) -> bool {
        if self.is_aes() {
            self.unwrap
        } else {
            self.decrypt
        }
    }
}

/// `CKA_ID` → version number: only canonical ASCII decimals (no leading zero) are versions.
pub(super) fn parse_version(id: &[u8]) -> Option<u64> {
    let s = core::str::from_utf8(id).ok()?;
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

impl Inner {
    pub(super) fn label(name: &str) -> Attribute {
        Attribute::Label(name.as_bytes().to_vec())
    }

    pub(super) fn read_version(
        &self,
        s: &Session,
        h: ObjectHandle,
    ) -> Result<Option<VersionInfo>, Fail> {
        let attrs = s.get_attributes(
            h,
            &[
                AttributeType::Id,
                AttributeType::KeyType,
                AttributeType::Decrypt,
                AttributeType::Unwrap,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )?;
        let mut v = VersionInfo {
            number: 0,
            private: h,
            key_type: None,
            decrypt: false,
            unwrap: false,
            modulus: None,
            exponent: None,
            value_len: None,
        };
        let mut number = None;
        for a in attrs {
            match a {
                Attribute::Id(id) => number = parse_version(&id),
                Attribute::KeyType(t) => v.key_type = Some(t),
                Attribute::Decrypt(b) => v.decrypt = b,
                Attribute::Unwrap(b) => v.unwrap = b,
                Attribute::Modulus(m) => v.modulus = Some(m),
                Attribute::PublicExponent(e) => v.exponent = Some(e),
                _ => {}
            }
        }
        if v.is_aes() {
            // Separately: CKA_VALUE_LEN is not an attribute of RSA/EC private keys.
            for a in s.get_attributes(h, &[AttributeType::ValueLen])? {
                if let Attribute::ValueLen(n) = a {
                    v.value_len = Some(*n);
                }
            }
        }
        Ok(number.map(|n| VersionInfo { number: n, ..v }))
    }

    /// Every version of `name`, oldest first (empty if there is none).
    pub(super) fn versions(&self, s: &Session, name: &str) -> Result<Vec<VersionInfo>, Fail> {
        let mut handles = self.token.find(
            s,
            &[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Self::label(name),
            ],
        )?;
        handles.extend(self.token.find(
            s,
            &[Attribute::Class(ObjectClass::SECRET_KEY), Self::label(name)],
        )?);
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            if let Some(v) = self.read_version(s, h)? {
                out.push(v);
            }
        }
        out.sort_by_key(|v| v.number);
        Ok(out)
    }

    /// Resolves `version` (the latest enabled one when `None`), without checking `enabled`
    /// for a pinned version.
    pub(super) fn resolve(
        &self,
        s: &Session,
        name: &str,
        version: Option<&str>,
    ) -> Result<VersionInfo, Fail> {
        let not_found = |what: String| Fail::Provider(ProviderError::new(K::KeyNotFound, what));
        match version {
            Some(v) => {
                if parse_version(v.as_bytes()).is_none() {
                    return Err(not_found(format!("key {name} has no version {v:?}")));
                }
                let h = self.token.private_key(s, name, v)?;
                self.read_version(s, h)?
                    .ok_or_else(|| not_found(format!("key {name} has no version {v}")))
            }
            None => {
                let all = self.versions(s, name)?;
                if all.is_empty() {
                    return Err(not_found(format!("no key {name} on the token")));
                }
                all.into_iter()
                    .rev()
                    .find(VersionInfo::enabled)
                    .ok_or_else(|| {
                        Fail::Provider(ProviderError::new(
                            K::KeyDisabled,
                            format!("key {name} has no enabled version"),
                        ))
                    })
            }
        }
    }

    /// The public key of a version: from the private key's public attributes, else from the
    /// public-key object.
    pub(super) fn public_key(
        &self,
        s: &Session,
        name: &str,
        v: &VersionInfo,
    ) -> Result<Option<RsaPublic>, Fail> {
        if !v.is_rsa() {
            return Ok(None);
        }
        if let (Some(n), Some(e)) = (&v.modulus, &v.exponent)
            && let Ok(k) = RsaPublic::from_components(n, e)
        {
            return Ok(Some(k));
        }
        let found = self.token.find(
            s,
            &[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Self::label(name),
                Attribute::Id(v.version().into_bytes()),
            ],
        )?;
        let Some(h) = found.first() else {
            return Ok(None);
        };
        let (mut n, mut e) = (None, None);
        for a in s.get_attributes(*h, &[AttributeType::Modulus, AttributeType::PublicExponent])? {
            match a {
                Attribute::Modulus(m) => n = Some(m),
                Attribute::PublicExponent(x) => e = Some(x),
                _ => {}
            }
        }
        Ok(match (n, e) {
            (Some(n), Some(e)) => RsaPublic::from_components(&n, &e).ok(),
            _ => None,
        })
    }

    pub(super) fn properties(
        &self,
        s: &Session,
        name: &str,
        v: &VersionInfo,
    ) -> Result<KeyProperties, Fail> {
        let public_key = self.public_key(s, name, v)?;
        let key_type = match v.key_type {
            Some(t) if t == P11KeyType::RSA => KeyType::Rsa {
                bits: public_key
                    .as_ref()
                    .map(|k| k.bits())
                    .or_else(|| v.modulus.as_ref().map(|m| m.len() * 8))
                    .and_then(|b| u32::try_from(b).ok())
                    .unwrap_or(0),
            },
            Some(t) if t == P11KeyType::EC => KeyType::Ec {
                curve: match s.get_attributes(v.private, &[AttributeType::EcParams]) {
                    Ok(a) if a.contains(&Attribute::EcParams(P256_OID.to_vec())) => "P-256".into(),
                    _ => "unknown".into(),
                },
            },
            Some(t) if t == P11KeyType::AES => KeyType::Aes {
                bits: v
                    .value_len
                    .and_then(|n| u32::try_from(n * 8).ok())
                    .unwrap_or(0),
            },
            _ => KeyType::Ec {
                curve: "unknown".into(),
            },
        };
        let mut operations = Vec::new();
        if v.is_rsa() {
            if v.decrypt {
                // Unwrapping is an RSA-OAEP decryption on the token.
                operations.extend([
                    KeyOperation::WrapKey,
                    KeyOperation::UnwrapKey,
                    KeyOperation::Encrypt,
                    KeyOperation::Decrypt,
                ]);
            }
        } else if v.is_aes() {
            if v.unwrap {
                operations.extend([KeyOperation::WrapKey, KeyOperation::UnwrapKey]);
            }
        } else if v.decrypt {
            operations.extend([KeyOperation::Sign, KeyOperation::Verify]);
        }
        Ok(KeyProperties {
            vault: self.props.host.clone(),
            name: name.to_owned(),
            version: v.version(),
            key_type,
            enabled: v.enabled(),
            operations,
            // PKCS#11 has no creation time (CKA_START_DATE is optional, day-precision and
            // not readable through SoftHSM 2.6 + cryptoki): reported as unknown (the epoch).
            created: SystemTime::UNIX_EPOCH,
            public_key,
        })
    }
}
