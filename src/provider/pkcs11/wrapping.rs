//! Wrapping and unwrapping on the token: RSA-OAEP (wrap in software with the public key,
//! unwrap on the token) and AES key wrap (RFC 3394) both ways.

use super::versions::parse_version;
use super::*;

/// How a version wraps and unwraps.
#[derive(Clone, Copy)]
pub(super) enum Op {
    /// `CKM_RSA_PKCS_OAEP` with this hash (wrap in software, unwrap on the token).
    Oaep(OaepHash),
    /// `CKM_AES_KEY_WRAP` (RFC 3394) on the token, both ways.
    AesKw,
}

fn oaep_mechanism(hash: OaepHash) -> Mechanism<'static> {
    let (h, mgf) = match hash {
        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(h, mgf, PkcsOaepSource::empty()))
}

pub(super) fn mechanism_name(hash: OaepHash) -> &'static str {
    match hash {
        OaepHash::Sha1 => "CKM_RSA_PKCS_OAEP (CKM_SHA_1, CKG_MGF1_SHA1)",
        OaepHash::Sha256 => "CKM_RSA_PKCS_OAEP (CKM_SHA256, CKG_MGF1_SHA256)",
    }
}

impl Inner {
    /// Refuses an algorithm the key or the token's OAEP setting cannot do.
    pub(super) fn check_algorithm(
        &self,
        name: &str,
        v: &VersionInfo,
        alg: WrapAlgorithm,
    ) -> Result<Op, Fail> {
        let hash = match alg {
            WrapAlgorithm::A256Kw if v.is_aes() => return Ok(Op::AesKw),
            WrapAlgorithm::RsaOaep256 if v.is_rsa() => OaepHash::Sha256,
            WrapAlgorithm::RsaOaep if v.is_rsa() => OaepHash::Sha1,
            _ => {
                let what = if v.is_rsa() {
                    "an RSA key"
                } else if v.is_aes() {
                    "an AES key"
                } else {
                    "neither an RSA nor an AES key"
                };
                return Err(Fail::Provider(ProviderError::new(
                    K::WrongKeyType,
                    format!(
                        "key {name} version {} is {what} and cannot do {alg}",
                        v.number
                    ),
                )));
            }
        };
        if hash == OaepHash::Sha256 && self.config.oaep_hash == OaepHash::Sha1 {
            return Err(Fail::Provider(ProviderError::new(
                K::InvalidRequest,
                format!(
                    "{alg} needs {} which this token does not support (provider setting: \
                     SHA-1 OAEP only); use RSA-OAEP",
                    mechanism_name(OaepHash::Sha256)
                ),
            )));
        }
        Ok(Op::Oaep(hash))
    }

    /// `C_WrapKey` with `CKM_AES_KEY_WRAP` of `key` (a temporary session object) under `kek`.
    pub(super) fn aes_wrap(
        &self,
        s: &Session,
        kek: ObjectHandle,
        key: &[u8],
    ) -> Result<Vec<u8>, Fail> {
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(P11KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Value(key.to_vec()),
        ];
        let tmp = s.create_object(&template);
        for a in &mut template {
            if let Attribute::Value(v) = a {
                zeroize::Zeroize::zeroize(v);
            }
        }
        let tmp = tmp?;
        let r = s.wrap_key(&Mechanism::AesKeyWrap, kek, tmp);
        let _ = s.destroy_object(tmp);
        Ok(r?)
    }

    /// `C_UnwrapKey` with `CKM_AES_KEY_WRAP` into a temporary session object, read back.
    pub(super) fn aes_unwrap(
        &self,
        s: &Session,
        kek: ObjectHandle,
        wrapped: &[u8],
    ) -> Result<SecretBytes, Fail> {
        let tmp = s.unwrap_key(
            &Mechanism::AesKeyWrap,
            kek,
            wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(P11KeyType::GENERIC_SECRET),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                // Without it the object defaults to non-extractable and CKA_VALUE is withheld.
                Attribute::Extractable(true),
            ],
        )?;
        let attrs = s.get_attributes(tmp, &[AttributeType::Value]);
        let _ = s.destroy_object(tmp);
        attrs?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(SecretBytes::new(v)),
                _ => None,
            })
            .ok_or_else(|| {
                Fail::Provider(ProviderError::new(
                    K::Unavailable,
                    "the token did not return the unwrapped key",
                ))
            })
    }

    pub(super) fn wrap(
        &self,
        name: &str,
        version: Option<&str>,
        alg: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        crate::provider::check_wrap_input(key)?;
        if alg == WrapAlgorithm::A256Kw && (key.len() < 16 || !key.len().is_multiple_of(8)) {
            return Err(ProviderError::new(
                K::InvalidRequest,
                "A256KW wraps secrets of 16 bytes or more, in multiples of 8",
            ));
        }
        let (v, hash, public, done) =
            self.token
                .with_session(&format!("wrap with key {name}"), |s| {
                    let v = self.resolve(s, name, version)?;
                    if !v.enabled() {
                        return Err(Fail::Provider(ProviderError::new(
                            K::KeyDisabled,
                            format!("version {} of key {name} is disabled", v.number),
                        )));
                    }
                    match self.check_algorithm(name, &v, alg)? {
                        Op::AesKw => {
                            let ct = self.aes_wrap(s, v.private, key)?;
                            Ok((v.version(), OaepHash::Sha256, None, Some(ct)))
                        }
                        Op::Oaep(hash) => {
                            let public = self.public_key(s, name, &v)?;
                            Ok((v.version(), hash, public, None))
                        }
                    }
                })?;
        if let Some(ciphertext) = done {
            return Ok(WrappedKey {
                key_name: name.to_owned(),
                key_version: v,
                algorithm: alg,
                ciphertext,
            });
        }
        let Some(public) = public else {
            return Err(ProviderError::new(
                K::Unavailable,
                format!("the token did not disclose the public key of {name} version {v}"),
            ));
        };
        let ciphertext = public
            .encrypt_oaep(hash, key, b"")
            .map_err(|e| ProviderError::new(K::InvalidRequest, e.to_string()))?;
        Ok(WrappedKey {
            key_name: name.to_owned(),
            key_version: v,
            algorithm: alg,
            ciphertext,
        })
    }

    pub(super) fn unwrap(&self, w: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        let name = w.key_name.as_str();
        let version = w.key_version.as_str();
        let what = format!("unwrap with key {name} version {version}");
        self.token.with_session(&what, |s| {
            if parse_version(version.as_bytes()).is_none() {
                return Err(Fail::Provider(ProviderError::new(
                    K::KeyNotFound,
                    format!("key {name} has no version {version:?}"),
                )));
            }
            let h = self.token.private_key(s, name, version)?;
            let key_type = s
                .get_attributes(h, &[AttributeType::KeyType])?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::KeyType(t) => Some(t),
                    _ => None,
                });
            let info = VersionInfo {
                number: 0,
                private: h,
                key_type,
                decrypt: true,
                unwrap: true,
                modulus: None,
                exponent: None,
                value_len: None,
            };
            let hash = match self.check_algorithm(name, &info, w.algorithm)? {
                Op::AesKw => return self.aes_unwrap(s, info.private, &w.ciphertext),
                Op::Oaep(hash) => hash,
            };
            let mech = oaep_mechanism(hash);
            match s.decrypt(&mech, info.private, &w.ciphertext) {
                Ok(pt) => Ok(SecretBytes::new(pt)),
                Err(
                    e @ cryptoki::error::Error::Pkcs11(
                        cryptoki::error::RvError::ArgumentsBad
                        | cryptoki::error::RvError::MechanismInvalid
                        | cryptoki::error::RvError::MechanismParamInvalid,
                        _,
                    ),
                ) => Err(Fail::Provider(token::map_error(
                    &e,
                    &format!("{what}: the token refused {}", mechanism_name(hash)),
                ))),
                Err(e) => Err(Fail::Token(e)),
            }
        })
    }
}
