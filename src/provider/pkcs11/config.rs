//! [`Pkcs11Config`]: how to reach a token (module, label, PIN) and the provider's settings.

use super::*;

/// How to reach a PKCS#11 token: the module (shared library) path, the token label, the user
/// PIN, and the settings of the provider.
///
/// ```no_run
/// # async fn demo() -> Result<(), byok::ProviderError> {
/// use byok::SecretString;
/// use byok::provider::OaepHash;
/// use byok::provider::pkcs11::{Pkcs11Config, Pkcs11Provider};
/// let config = Pkcs11Config::new(
///     "/usr/lib/softhsm/libsofthsm2.so",
///     "byok-test",
///     SecretString::new("5678"),
/// )
/// .oaep_hash(OaepHash::Sha1); // SoftHSM2 only does SHA-1 OAEP
/// let hsm = Pkcs11Provider::connect(config).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pkcs11Config {
    pub(super) module: PathBuf,
    pub(super) token_label: String,
    pub(super) pin: SecretString,
    pub(super) oaep_hash: OaepHash,
    pub(super) threads: usize,
    pub(super) vault: Option<VaultProperties>,
    pub(super) accept_existing_login: bool,
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
        .oaep_hash(hash))
    }

    /// The strongest OAEP hash the token's `CKM_RSA_PKCS_OAEP` supports. `Sha256` (the
    /// default) allows `RSA-OAEP-256` and `RSA-OAEP`; `Sha1` (SoftHSM2 2.6) allows only
    /// `RSA-OAEP`, and `RSA-OAEP-256` is refused with `InvalidRequest` naming the mechanism.
    pub fn oaep_hash(mut self, hash: OaepHash) -> Self {
        self.oaep_hash = hash;
        self
    }

    /// Whether to use a token that another component of this process has already logged in
    /// to (default: no). PKCS#11 login state is per process: `C_Login` then answers "already
    /// logged in" without checking this configuration's PIN, so the provider cannot tell
    /// whether its PIN is right; by default it refuses such a token (`InvalidRequest`, naming
    /// this setting). Turn it on only when that other component is trusted with the token.
    pub fn accept_existing_login(mut self, on: bool) -> Self {
        self.accept_existing_login = on;
        self
    }

    /// Number of threads of the provider's blocking pool (PKCS#11 calls never run on the
    /// caller's executor); at least one. Each thread uses at most one session at a time.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The vault properties to report (host, region, tenant). Soft-delete and purge protection
    /// are always reported off: a token destroys objects for good.
    pub fn vault_properties(mut self, props: VaultProperties) -> Self {
        self.vault = Some(props.protection(false, false));
        self
    }

    pub(super) fn reported_properties(&self) -> VaultProperties {
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
                .protection(false, false)
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
