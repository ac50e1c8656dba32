//! A [`KeyProvider`] over a PKCS#11 token (an HSM; SoftHSM2 in the tests), feature `pkcs11`.
//!
//! Conventions (see `docs/PKCS11.md`): a key version is an RSA (or EC) key pair, or an AES
//! secret key, whose objects carry `CKA_LABEL` = key name and `CKA_ID` = version as ASCII
//! decimal (`"1"`, `"2"`, …); "latest" is the highest version whose private (or secret) key has
//! `CKA_DECRYPT = true`; disabling a version clears `CKA_DECRYPT`/`CKA_UNWRAP` on the private
//! key and `CKA_ENCRYPT`/`CKA_WRAP` on the public key; deleting a key destroys its objects (no
//! soft-delete). RSA unwrap runs on the token (`C_Decrypt` with `CKM_RSA_PKCS_OAEP`) and wrap
//! uses the public key in software; `A256KW` runs on the token both ways (`CKM_AES_KEY_WRAP`).

mod token;

use core::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, KeyType as P11KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;

use self::token::{Fail, Token};
use super::{
    AdminCapabilities, Identity, KeyOperation, KeyProperties, KeyProvider, KeySpec, KeyType,
    Permissions, VaultAdmin, VaultProperties, WrapAlgorithm, WrappedKey,
};
use crate::blocking::BlockingPool;
use crate::crypto::{OaepHash, RsaPrivate, RsaPublic};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::secret::{SecretBytes, SecretString};

/// DER of the P-256 curve OID (1.2.840.10045.3.1.7), the `CKA_EC_PARAMS` of P-256 keys.
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// What to generate.
#[derive(Clone, Copy)]
enum Gen {
    Rsa(u32),
    EcP256,
    Aes256,
}

/// How a version wraps and unwraps.
#[derive(Clone, Copy)]
enum Op {
    /// `CKM_RSA_PKCS_OAEP` with this hash (wrap in software, unwrap on the token).
    Oaep(OaepHash),
    /// `CKM_AES_KEY_WRAP` (RFC 3394) on the token, both ways.
    AesKw,
}

/// How to reach a PKCS#11 token: the module (shared library) path, the token label, the user
/// PIN, and the settings of the provider.
///
/// ```no_run
/// # async fn demo() -> Result<(), byok::ProviderError> {
/// use byok::{OaepHash, Pkcs11Config, Pkcs11Provider, SecretString};
/// let config = Pkcs11Config::new(
///     "/usr/lib/softhsm/libsofthsm2.so",
///     "byok-test",
///     SecretString::new("5678"),
/// )
/// .with_oaep_hash(OaepHash::Sha1); // SoftHSM2 only does SHA-1 OAEP
/// let hsm = Pkcs11Provider::connect(config).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pkcs11Config {
    module: PathBuf,
    token_label: String,
    pin: SecretString,
    oaep_hash: OaepHash,
    threads: usize,
    vault: Option<VaultProperties>,
    accept_existing_login: bool,
}

impl Pkcs11Config {
    /// A configuration for the token labelled `token_label` in the module at `module`, logging
    /// in as the user with `pin`. Defaults: SHA-256 OAEP, 4 worker threads, vault host
    /// `<label>.pkcs11.local`.
    pub fn new(
        module: impl Into<PathBuf>,
        token_label: impl Into<String>,
        pin: SecretString,
    ) -> Self {
        Self {
            module: module.into(),
            token_label: token_label.into(),
            pin,
            oaep_hash: OaepHash::Sha256,
            threads: 4,
            vault: None,
            accept_existing_login: false,
        }
    }

    /// Reads `BYOK_PKCS11_MODULE`, `BYOK_PKCS11_TOKEN_LABEL` and `BYOK_PKCS11_PIN` (what
    /// `scripts/softhsm-env.sh` exports), and `BYOK_PKCS11_OAEP` (`sha1` or `sha256`, default
    /// `sha256`).
    ///
    /// # Errors
    /// `InvalidRequest` naming the variable that is missing or malformed.
    pub fn from_env() -> Result<Self, ProviderError> {
        let var = |n: &str| {
            std::env::var(n).map_err(|_| {
                ProviderError::new(
                    K::InvalidRequest,
                    format!("environment variable {n} is not set"),
                )
            })
        };
        let hash = match std::env::var("BYOK_PKCS11_OAEP").as_deref() {
            Err(_) | Ok("sha256" | "SHA-256") => OaepHash::Sha256,
            Ok("sha1" | "SHA-1") => OaepHash::Sha1,
            Ok(other) => {
                return Err(ProviderError::new(
                    K::InvalidRequest,
                    format!("BYOK_PKCS11_OAEP must be sha1 or sha256, not {other:?}"),
                ));
            }
        };
        Ok(Self::new(
            var("BYOK_PKCS11_MODULE")?,
            var("BYOK_PKCS11_TOKEN_LABEL")?,
            SecretString::new(var("BYOK_PKCS11_PIN")?),
        )
        .with_oaep_hash(hash))
    }

    /// The strongest OAEP hash the token's `CKM_RSA_PKCS_OAEP` supports. `Sha256` (the
    /// default) allows `RSA-OAEP-256` and `RSA-OAEP`; `Sha1` (SoftHSM2 2.6) allows only
    /// `RSA-OAEP`, and `RSA-OAEP-256` is refused with `InvalidRequest` naming the mechanism.
    pub fn with_oaep_hash(mut self, hash: OaepHash) -> Self {
        self.oaep_hash = hash;
        self
    }

    /// Whether to use a token that another component of this process has already logged in
    /// to (default: no). PKCS#11 login state is per process: `C_Login` then answers "already
    /// logged in" without checking this configuration's PIN, so the provider cannot tell
    /// whether its PIN is right; by default it refuses such a token (`InvalidRequest`, naming
    /// this setting). Turn it on only when that other component is trusted with the token.
    pub fn with_accept_existing_login(mut self, on: bool) -> Self {
        self.accept_existing_login = on;
        self
    }

    /// Number of threads of the provider's blocking pool (PKCS#11 calls never run on the
    /// caller's executor); at least one. Each thread uses at most one session at a time.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The vault properties to report (host, region, tenant). Soft-delete and purge protection
    /// are always reported off: a token destroys objects for good.
    pub fn with_vault_properties(mut self, props: VaultProperties) -> Self {
        self.vault = Some(props.with_protection(false, false));
        self
    }

    fn vault_properties(&self) -> VaultProperties {
        self.vault.clone().unwrap_or_else(|| {
            let mut host: String = self
                .token_label
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            host = host.trim_matches('-').to_owned();
            if host.is_empty() {
                host.push_str("token");
            }
            VaultProperties::new(&format!("{host}.pkcs11.local"), "local", "local")
                .with_protection(false, false)
        })
    }
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &self.pin)
            .field("oaep_hash", &self.oaep_hash)
            .field("threads", &self.threads)
            .field("accept_existing_login", &self.accept_existing_login)
            .finish()
    }
}

/// Keys on a PKCS#11 token: a [`KeyProvider`] (unwrap on the token, RSA wrap with the public
/// key) and the [`VaultAdmin`] surface (generate RSA/AES/EC, import RSA, rotate, disable,
/// destroy).
///
/// The token login is the identity: there are no per-identity access policies, and
/// [`VaultAdmin::provider_for`] returns a provider sharing this login. Clones share the same
/// sessions and worker threads.
#[derive(Clone)]
pub struct Pkcs11Provider {
    inner: Arc<Inner>,
}

struct Inner {
    config: Pkcs11Config,
    props: VaultProperties,
    pool: BlockingPool,
    token: Token,
    /// Serialises this process's admin changes (version numbers are picked by reading).
    admin: Mutex<()>,
}

impl fmt::Debug for Pkcs11Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Provider")
            .field("config", &self.inner.config)
            .field("host", &self.inner.props.host)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Provider {
    /// Loads the module (once per process and path; `C_Initialize` tolerates an earlier
    /// initialisation and nothing ever calls `C_Finalize`), selects the token by label, checks
    /// that it offers `CKM_RSA_PKCS_OAEP` and RSA key generation, and logs in. Runs on the
    /// provider's own threads, never on the caller's executor.
    ///
    /// # Errors
    /// `Forbidden` for a wrong or locked PIN; `InvalidRequest` when another component of the
    /// process is already logged in to the token and
    /// [`Pkcs11Config::with_accept_existing_login`] is off; `VaultNotFound` when no
    /// initialised token has the label; `Unsupported` when the token lacks the mechanisms; `Unavailable` when the module
    /// cannot be loaded or the device fails.
    pub async fn connect(config: Pkcs11Config) -> Result<Self, ProviderError> {
        let pool = BlockingPool::new("PKCS#11", config.threads)?;
        let (module, label, pin, accept) = (
            config.module.clone(),
            config.token_label.clone(),
            config.pin.clone(),
            config.accept_existing_login,
        );
        let token = pool
            .run(move || Token::connect(&module, &label, &pin, accept))
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                props: config.vault_properties(),
                config,
                pool,
                token,
                admin: Mutex::new(()),
            }),
        })
    }

    /// The OAEP hash setting.
    pub fn oaep_hash(&self) -> OaepHash {
        self.inner.config.oaep_hash
    }

    /// Number of worker threads that run the PKCS#11 calls.
    pub fn threads(&self) -> usize {
        self.inner.pool.threads()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let inner = Arc::clone(&self.inner);
        let pending = self.inner.pool.run(move || f(&inner));
        pending.await
    }
}

/// One key version as found on the token (read from its private key).
struct VersionInfo {
    number: u64,
    private: ObjectHandle,
    key_type: Option<P11KeyType>,
    decrypt: bool,
    unwrap: bool,
    modulus: Option<Vec<u8>>,
    exponent: Option<Vec<u8>>,
    /// Key length in bytes (AES keys).
    value_len: Option<u64>,
}

impl VersionInfo {
    fn version(&self) -> String {
        self.number.to_string()
    }

    fn is_rsa(&self) -> bool {
        self.key_type == Some(P11KeyType::RSA)
    }

    fn is_aes(&self) -> bool {
        self.key_type == Some(P11KeyType::AES)
    }

    /// Whether the version is enabled: the one usage the provider needs of it is granted
    /// (`CKA_UNWRAP` of an AES key, `CKA_DECRYPT` of an RSA or EC private key).
    fn enabled(&self) -> bool {
        if self.is_aes() {
            self.unwrap
        } else {
            self.decrypt
        }
    }
}

/// `CKA_ID` → version number: only canonical ASCII decimals (no leading zero) are versions.
fn parse_version(id: &[u8]) -> Option<u64> {
    let s = core::str::from_utf8(id).ok()?;
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

fn oaep_mechanism(hash: OaepHash) -> Mechanism<'static> {
    let (h, mgf) = match hash {
        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(h, mgf, PkcsOaepSource::empty()))
}

fn mechanism_name(hash: OaepHash) -> &'static str {
    match hash {
        OaepHash::Sha1 => "CKM_RSA_PKCS_OAEP (CKM_SHA_1, CKG_MGF1_SHA1)",
        OaepHash::Sha256 => "CKM_RSA_PKCS_OAEP (CKM_SHA256, CKG_MGF1_SHA256)",
    }
}

impl Inner {
    fn label(name: &str) -> Attribute {
        Attribute::Label(name.as_bytes().to_vec())
    }

    fn read_version(&self, s: &Session, h: ObjectHandle) -> Result<Option<VersionInfo>, Fail> {
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
    fn versions(&self, s: &Session, name: &str) -> Result<Vec<VersionInfo>, Fail> {
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
    fn resolve(&self, s: &Session, name: &str, version: Option<&str>) -> Result<VersionInfo, Fail> {
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
    fn public_key(
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

    fn properties(&self, s: &Session, name: &str, v: &VersionInfo) -> Result<KeyProperties, Fail> {
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

    /// Refuses an algorithm the key or the token's OAEP setting cannot do.
    fn check_algorithm(&self, name: &str, v: &VersionInfo, alg: WrapAlgorithm) -> Result<Op, Fail> {
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
    fn aes_wrap(&self, s: &Session, kek: ObjectHandle, key: &[u8]) -> Result<Vec<u8>, Fail> {
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
    fn aes_unwrap(
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

    fn wrap(
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

    fn unwrap(&self, w: &WrappedKey) -> Result<SecretBytes, ProviderError> {
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

    /// Generates version `number` of `name` on the token.
    fn generate(&self, s: &Session, name: &str, number: u64, plan: Gen) -> Result<(), Fail> {
        let id = number.to_string().into_bytes();
        let bits = match plan {
            Gen::Rsa(bits) => bits,
            Gen::EcP256 => return self.generate_ec(s, name, id),
            Gen::Aes256 => {
                s.generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Self::label(name),
                        Attribute::Id(id),
                        Attribute::ValueLen(32u64.into()),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Modifiable(true),
                        // Only what the provider does with it: AES key wrap (RFC 3394).
                        Attribute::Encrypt(false),
                        Attribute::Decrypt(false),
                        Attribute::Wrap(true),
                        Attribute::Unwrap(true),
                    ],
                )?;
                return Ok(());
            }
        };
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Self::label(name),
            Attribute::Id(id.clone()),
            Attribute::ModulusBits(u64::from(bits).into()),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            // Wrapping is RSA-OAEP encryption (done locally with the public key).
            Attribute::Encrypt(true),
            Attribute::Wrap(false),
            Attribute::Verify(false),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Self::label(name),
            Attribute::Id(id),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(true),
            // Unwrapping is RSA-OAEP decryption (C_Decrypt), nothing else.
            Attribute::Decrypt(true),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
        ];
        s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
        Ok(())
    }

    /// An EC P-256 key pair: held only so that policies can see and refuse it. `CKA_DECRYPT`
    /// is set (and cleared to disable it) like on RSA keys, so the convention holds for it.
    fn generate_ec(&self, s: &Session, name: &str, id: Vec<u8>) -> Result<(), Fail> {
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Self::label(name),
            Attribute::Id(id.clone()),
            Attribute::EcParams(P256_OID.to_vec()),
            Attribute::Verify(true),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Self::label(name),
            Attribute::Id(id),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(true),
            Attribute::Sign(true),
            Attribute::Decrypt(true),
        ];
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
        Ok(())
    }

    /// `op` (a generation or import of version `number` of `name`), tried up to three times on
    /// `CKR_GENERAL_ERROR`: SoftHSM 2.6 with the file object store now and then fails an
    /// object creation that runs while other sessions touch token objects. Leftovers of a
    /// failed attempt are destroyed first.
    fn retrying_general_error(
        s: &Session,
        name: &str,
        number: u64,
        op: impl Fn() -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op() {
                Err(Fail::Token(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::GeneralError,
                    _,
                ))) if attempt < 3 => {
                    let id = number.to_string().into_bytes();
                    for h in s.find_objects(&[Self::label(name), Attribute::Id(id)])? {
                        let _ = s.destroy_object(h);
                    }
                }
                other => return other,
            }
        }
    }

    /// Imports `key` as version `number` of `name` (private and public objects). On failure
    /// destroys whatever the token left behind (SoftHSM keeps half-built objects).
    fn import(&self, s: &Session, name: &str, number: u64, key: &RsaPrivate) -> Result<(), Fail> {
        let Some([n, e, d, p, q, dp, dq, qinv]) = key.crt_components() else {
            return Err(Fail::Provider(ProviderError::new(
                K::InvalidRequest,
                "only two-prime RSA keys with CRT values can be imported",
            )));
        };
        let id = number.to_string().into_bytes();
        let private = vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(P11KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(true),
            Attribute::Decrypt(true),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Self::label(name),
            Attribute::Id(id.clone()),
            Attribute::Modulus(n.to_vec()),
            Attribute::PublicExponent(e.to_vec()),
            Attribute::PrivateExponent(d.to_vec()),
            Attribute::Prime1(p.to_vec()),
            Attribute::Prime2(q.to_vec()),
            Attribute::Exponent1(dp.to_vec()),
            Attribute::Exponent2(dq.to_vec()),
            Attribute::Coefficient(qinv.to_vec()),
        ];
        let public = [
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(P11KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(false),
            Self::label(name),
            Attribute::Id(id.clone()),
            Attribute::Modulus(n.to_vec()),
            Attribute::PublicExponent(e.to_vec()),
            Attribute::Encrypt(true),
            Attribute::Wrap(false),
            Attribute::Verify(false),
        ];
        let r = s
            .create_object(&private)
            .and_then(|_| s.create_object(&public));
        // The template held copies of the private components; wipe them.
        for a in private {
            if let Attribute::PrivateExponent(mut v)
            | Attribute::Prime1(mut v)
            | Attribute::Prime2(mut v)
            | Attribute::Exponent1(mut v)
            | Attribute::Exponent2(mut v)
            | Attribute::Coefficient(mut v) = a
            {
                zeroize::Zeroize::zeroize(&mut v);
            }
        }
        if let Err(err) = r {
            if let Ok(left) = s.find_objects(&[Self::label(name), Attribute::Id(id)]) {
                for h in left {
                    let _ = s.destroy_object(h);
                }
            }
            let mut pe = token::map_error(&err, &format!("import of key {name}"));
            if pe.kind() == K::InvalidRequest {
                pe = ProviderError::new(
                    K::Unsupported,
                    format!("the token refused the import: {}", pe.message()),
                );
            }
            return Err(Fail::Provider(pe));
        }
        Ok(())
    }

    fn admin_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates key `name` with `spec` (its first version), or with `None` adds a version of
    /// the same type as the newest one.
    fn create(&self, name: &str, spec: Option<Gen>) -> Result<KeyProperties, ProviderError> {
        let _g = self.admin_lock();
        self.token.with_session(&format!("create key {name}"), |s| {
            let existing = self.versions(s, name)?;
            let plan = match (spec, existing.last()) {
                (Some(_), Some(_)) => {
                    return Err(Fail::Provider(ProviderError::new(
                        K::Conflict,
                        format!("key {name} already exists"),
                    )));
                }
                (None, None) => {
                    return Err(Fail::Provider(ProviderError::new(
                        K::KeyNotFound,
                        format!("no key {name} on the token"),
                    )));
                }
                (None, Some(last)) => {
                    let props = self.properties(s, name, last)?;
                    match props.key_type {
                        KeyType::Rsa { bits } if bits > 0 => Gen::Rsa(bits),
                        KeyType::Ec { curve } if curve == "P-256" => Gen::EcP256,
                        KeyType::Aes { bits: 256 } => Gen::Aes256,
                        other => {
                            return Err(Fail::Provider(ProviderError::new(
                                K::Unsupported,
                                format!("key {name} is {other}: no new version of it can be made"),
                            )));
                        }
                    }
                }
                (Some(plan), None) => plan,
            };
            let number = existing.last().map_or(1, |v| v.number + 1);
            Self::retrying_general_error(s, name, number, || self.generate(s, name, number, plan))?;
            let h = self.token.private_key(s, name, &number.to_string())?;
            let v = self.read_version(s, h)?.ok_or_else(|| {
                ProviderError::new(K::Unavailable, "the generated key has no version id")
            })?;
            self.properties(s, name, &v)
        })
    }
}

#[async_trait]
impl KeyProvider for Pkcs11Provider {
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        Ok(self.inner.props.clone())
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        let (name, version) = (name.to_owned(), version.map(str::to_owned));
        self.blocking(move |i| {
            i.token
                .with_session(&format!("properties of key {name}"), |s| {
                    let v = i.resolve(s, &name, version.as_deref())?;
                    i.properties(s, &name, &v)
                })
        })
        .await
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        let (name, version) = (name.to_owned(), version.map(str::to_owned));
        let key = SecretBytes::new(key.to_vec());
        self.blocking(move |i| i.wrap(&name, version.as_deref(), algorithm, key.expose_secret()))
            .await
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        let w = wrapped.clone();
        self.blocking(move |i| i.unwrap(&w)).await
    }
}

#[async_trait]
impl VaultAdmin for Pkcs11Provider {
    fn capabilities(&self) -> AdminCapabilities {
        AdminCapabilities {
            soft_delete: false,
            purge: false,
            access_policies: false,
            disable_version: true,
            import_pem: true,
            aes_keys: true,
            ec_keys: true,
            rsa_oaep_sha256: self.inner.config.oaep_hash == OaepHash::Sha256,
            rsa_oaep_sha1: true,
        }
    }

    async fn create_key(&self, name: &str, spec: KeySpec) -> Result<KeyProperties, ProviderError> {
        crate::provider::check_name(name)?;
        let plan = match spec {
            KeySpec::Rsa(bits @ (1024 | 2048 | 3072 | 4096)) => Gen::Rsa(bits),
            KeySpec::EcP256 => Gen::EcP256,
            KeySpec::Aes256 => Gen::Aes256,
            KeySpec::Rsa(bits) => {
                return Err(ProviderError::new(
                    K::InvalidRequest,
                    format!("RSA keys are 1024, 2048, 3072 or 4096 bits, not {bits}"),
                ));
            }
        };
        let name = name.to_owned();
        self.blocking(move |i| i.create(&name, Some(plan))).await
    }

    async fn import_rsa_pem(&self, name: &str, pem: &str) -> Result<KeyProperties, ProviderError> {
        crate::provider::check_name(name)?;
        let key = RsaPrivate::from_pem(pem)
            .map_err(|e| ProviderError::new(K::InvalidRequest, e.to_string()))?;
        let name = name.to_owned();
        self.blocking(move |i| {
            let _g = i.admin_lock();
            i.token.with_session(&format!("import key {name}"), |s| {
                let number = i.versions(s, &name)?.last().map_or(1, |v| v.number + 1);
                Inner::retrying_general_error(s, &name, number, || {
                    i.import(s, &name, number, &key)
                })?;
                let h = i.token.private_key(s, &name, &number.to_string())?;
                let v = i.read_version(s, h)?.ok_or_else(|| {
                    ProviderError::new(K::Unavailable, "the imported key has no version id")
                })?;
                i.properties(s, &name, &v)
            })
        })
        .await
    }

    async fn rotate_key(&self, name: &str) -> Result<KeyProperties, ProviderError> {
        let name = name.to_owned();
        self.blocking(move |i| i.create(&name, None)).await
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        let name = name.to_owned();
        self.blocking(move |i| {
            i.token
                .with_session(&format!("versions of key {name}"), |s| {
                    let all = i.versions(s, &name)?;
                    if all.is_empty() {
                        return Err(Fail::Provider(ProviderError::new(
                            K::KeyNotFound,
                            format!("no key {name} on the token"),
                        )));
                    }
                    all.iter().map(|v| i.properties(s, &name, v)).collect()
                })
        })
        .await
    }

    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError> {
        let (name, version) = (name.to_owned(), version.to_owned());
        self.blocking(move |i| {
            let _g = i.admin_lock();
            i.token.with_session(
                &format!("enable/disable key {name} version {version}"),
                |s| {
                    let v = i.resolve(s, &name, Some(&version))?;
                    if v.is_aes() {
                        s.update_attributes(
                            v.private,
                            &[
                                Attribute::Wrap(enabled),
                                Attribute::Unwrap(enabled),
                                // Never granted (keys of earlier versions had them).
                                Attribute::Encrypt(false),
                                Attribute::Decrypt(false),
                            ],
                        )?;
                        return Ok(());
                    }
                    s.update_attributes(
                        v.private,
                        &[Attribute::Decrypt(enabled), Attribute::Unwrap(false)],
                    )?;
                    let publics = s.find_objects(&[
                        Attribute::Class(ObjectClass::PUBLIC_KEY),
                        Inner::label(&name),
                        Attribute::Id(version.as_bytes().to_vec()),
                    ])?;
                    for h in publics {
                        s.update_attributes(
                            h,
                            &[Attribute::Encrypt(enabled), Attribute::Wrap(false)],
                        )?;
                    }
                    Ok(())
                },
            )
        })
        .await
    }

    async fn delete_key(&self, name: &str) -> Result<(), ProviderError> {
        let name = name.to_owned();
        self.blocking(move |i| {
            let _g = i.admin_lock();
            let r = i.token.with_session(&format!("delete key {name}"), |s| {
                let all = i.token.find(s, &[Inner::label(&name)])?;
                if all.is_empty() {
                    return Err(Fail::Provider(ProviderError::new(
                        K::KeyNotFound,
                        format!("no key {name} on the token"),
                    )));
                }
                for h in all {
                    s.destroy_object(h)?;
                }
                Ok(())
            });
            i.token.forget_key(&name);
            r
        })
        .await
    }

    async fn recover_key(&self, name: &str) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::KeyNotFound,
            format!("no soft-deleted key {name}: a PKCS#11 token destroys keys for good"),
        ))
    }

    async fn purge_key(&self, name: &str) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::KeyNotFound,
            format!("no soft-deleted key {name}: a PKCS#11 token destroys keys for good"),
        ))
    }

    async fn set_access(
        &self,
        _identity: &Identity,
        _permissions: Permissions,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::Unsupported,
            "a PKCS#11 token has no per-identity access policies (the token login is the identity)",
        ))
    }

    async fn remove_identity(&self, _identity: &Identity) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::Unsupported,
            "a PKCS#11 token has no identities besides its login",
        ))
    }

    async fn provider_for(
        &self,
        _identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        Ok(Arc::new(self.clone()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_canonical_decimals() {
        assert_eq!(parse_version(b"1"), Some(1));
        assert_eq!(parse_version(b"42"), Some(42));
        for bad in [
            &b""[..],
            b"01",
            b"-1",
            b"1a",
            b"\x01",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_pin() {
        let c = Pkcs11Config::new("/x.so", "Label 1", SecretString::new("pin-1234-secret"));
        let s = format!("{c:?}");
        assert!(!s.contains("pin-1234-secret"), "{s}");
        assert_eq!(c.vault_properties().host, "label-1.pkcs11.local");
        assert!(!c.vault_properties().soft_delete);
    }
}
