//! The token side: one process-wide module context per library path, a logged-in session
//! pool with a permanently open anchor session, the reopen / re-login / re-find retry, and the
//! mapping of PKCS#11 return values to [`ProviderErrorKind`](crate::ProviderErrorKind).
//!
//! Everything here is synchronous and runs on the provider's blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::secret::SecretString;

/// A failure inside a token call: a raw PKCS#11 error (still to be retried or mapped) or an
/// already classified provider error.
pub(super) enum Fail {
    Token(P11Error),
    Provider(ProviderError),
}

impl From<P11Error> for Fail {
    fn from(e: P11Error) -> Self {
        Self::Token(e)
    }
}

impl From<ProviderError> for Fail {
    fn from(e: ProviderError) -> Self {
        Self::Provider(e)
    }
}

/// A loaded PKCS#11 module: one per library path per process. `C_Initialize` runs once;
/// `C_Finalize` is never called (it is process-global and would break every other user).
struct Module {
    ctx: Pkcs11,
    /// Per token (label + serial): a keyed hash of the PIN this process logged in with. Login
    /// state is per process and token, so a second `C_Login` only answers
    /// `CKR_USER_ALREADY_LOGGED_IN` and never checks the PIN; this verifier lets a second
    /// connection with a wrong PIN fail anyway.
    logins: Mutex<HashMap<String, [u8; 32]>>,
}

fn modules() -> &'static Mutex<HashMap<PathBuf, Arc<Module>>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    MODULES.get_or_init(|| Mutex::new(HashMap::new()))
}

fn load_module(path: &Path) -> Result<Arc<Module>, ProviderError> {
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut all = modules().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = all.get(&key) {
        return Ok(Arc::clone(m));
    }
    let ctx = Pkcs11::new(&key).map_err(|e| {
        ProviderError::new(
            K::Unavailable,
            format!("cannot load PKCS#11 module {}: {e}", key.display()),
        )
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(map_error(&e, "C_Initialize")),
    }
    let m = Arc::new(Module {
        ctx,
        logins: Mutex::new(HashMap::new()),
    });
    all.insert(key, Arc::clone(&m));
    Ok(m)
}

fn pin_verifier(pin: &str) -> [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        crate::crypto::fill_random(&mut k);
        k
    });
    crate::crypto::hmac_sha256(key, pin.as_bytes())
}

/// A logged-in token: the slot found by label, a session pool and handle hints.
pub(super) struct Token {
    module: Arc<Module>,
    slot: Slot,
    token_key: String,
    pin: AuthPin,
    verifier: [u8; 32],
    /// Use a login made by another component of the process (whose PIN cannot be checked).
    accept_existing_login: bool,
    idle: Mutex<Vec<Session>>,
    /// Never used for operations: it stays open so that the login persists (closing the last
    /// session of an application logs it out).
    anchor: Mutex<Option<Session>>,
    /// Private-key handle hints by (name, version). Handles are per process and change after a
    /// re-login, so a stale one triggers one re-find.
    handles: Mutex<HashMap<(String, String), ObjectHandle>>,
}

impl Token {
    /// Loads the module (once per process), finds the token by label, opens the anchor
    /// session and logs in.
    pub(super) fn connect(
        module: &Path,
        label: &str,
        pin: &SecretString,
        accept_existing_login: bool,
    ) -> Result<Self, ProviderError> {
        let module = load_module(module)?;
        let ctx = &module.ctx;
        let mut found = None;
        for slot in ctx
            .get_slots_with_token()
            .map_err(|e| map_error(&e, "C_GetSlotList"))?
        {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| map_error(&e, "C_GetTokenInfo"))?;
            if info.token_initialized() && info.label() == label {
                found = Some((slot, format!("{label}/{}", info.serial_number())));
                break;
            }
        }
        let Some((slot, token_key)) = found else {
            return Err(ProviderError::new(
                K::VaultNotFound,
                format!("no initialised PKCS#11 token labelled {label:?}"),
            ));
        };
        let mechs = ctx
            .get_mechanism_list(slot)
            .map_err(|e| map_error(&e, "C_GetMechanismList"))?;
        for (m, name) in [
            (
                cryptoki::mechanism::MechanismType::RSA_PKCS_OAEP,
                "CKM_RSA_PKCS_OAEP",
            ),
            (
                cryptoki::mechanism::MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
            ),
        ] {
            if !mechs.contains(&m) {
                return Err(ProviderError::new(
                    K::Unsupported,
                    format!("token {label:?} does not offer {name}"),
                ));
            }
        }
        let token = Self {
            module,
            slot,
            token_key,
            pin: AuthPin::from(pin.expose_secret()),
            verifier: pin_verifier(pin.expose_secret()),
            accept_existing_login,
            idle: Mutex::new(Vec::new()),
            anchor: Mutex::new(None),
            handles: Mutex::new(HashMap::new()),
        };
        let anchor = token.open_session()?;
        *token.anchor.lock().unwrap_or_else(|p| p.into_inner()) = Some(anchor);
        Ok(token)
    }

    /// Opens a read-write session and makes sure the application is logged in with our PIN.
    fn open_session(&self) -> Result<Session, ProviderError> {
        let s = self
            .module
            .ctx
            .open_rw_session(self.slot)
            .map_err(|e| map_error(&e, "C_OpenSession"))?;
        self.login(&s)?;
        Ok(s)
    }

    /// `C_Login` as the user. Never retried on a wrong PIN (real HSMs lock the PIN).
    fn login(&self, s: &Session) -> Result<(), ProviderError> {
        let mine = self.verifier;
        match s.login(UserType::User, Some(&self.pin)) {
            Ok(()) => {
                self.module
                    .logins
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(self.token_key.clone(), mine);
                Ok(())
            }
            Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                let logins = self.module.logins.lock().unwrap_or_else(|p| p.into_inner());
                match logins.get(&self.token_key) {
                    Some(v) if !crate::crypto::ct_eq(v, &mine) => Err(ProviderError::new(
                        K::Forbidden,
                        "PIN incorrect (the token is already logged in with another PIN in this \
                         process)",
                    )),
                    Some(_) => Ok(()),
                    // Logged in by another component: this PIN was never checked.
                    None if self.accept_existing_login => Ok(()),
                    None => Err(ProviderError::new(
                        K::InvalidRequest,
                        "the token is already logged in by another component of this process, \
                         so this PIN cannot be checked; set \
                         Pkcs11Config::accept_existing_login(true) if that component is \
                         trusted with the token",
                    )),
                }
            }
            Err(e) => Err(map_error(&e, "C_Login")),
        }
    }

    fn checkout(&self) -> Result<Session, ProviderError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(s) => Ok(s),
            None => self.open_session(),
        }
    }

    fn checkin(&self, s: Session) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    /// Runs `f` on a pooled logged-in session. On a closed session, a lost login or a stale
    /// object handle it reopens / logs in again / forgets the handle hints and retries once;
    /// every other error is mapped with `what` naming the operation.
    pub(super) fn with_session<T>(
        &self,
        what: &str,
        f: impl Fn(&Session) -> Result<T, Fail>,
    ) -> Result<T, ProviderError> {
        let mut s = self.checkout()?;
        // Each recovery is tried at most once per call; they can chain (a logout elsewhere
        // makes the cached handle stale, and the re-find then finds we are logged out).
        let (mut reopened, mut relogged, mut refound) = (false, false, false);
        loop {
            match f(&s) {
                Ok(v) => {
                    self.checkin(s);
                    return Ok(v);
                }
                Err(Fail::Provider(e)) => {
                    self.checkin(s);
                    return Err(e);
                }
                Err(Fail::Token(e)) => {
                    let rv = match &e {
                        P11Error::Pkcs11(rv, _) => Some(*rv),
                        _ => None,
                    };
                    let broken = matches!(
                        rv,
                        Some(
                            RvError::SessionHandleInvalid
                                | RvError::SessionClosed
                                | RvError::DeviceRemoved
                                | RvError::TokenNotPresent
                                | RvError::DeviceError
                                | RvError::CryptokiNotInitialized
                        )
                    );
                    match rv {
                        Some(RvError::SessionHandleInvalid | RvError::SessionClosed)
                            if !reopened =>
                        {
                            reopened = true;
                            drop(s);
                            s = self.open_session()?;
                            continue;
                        }
                        Some(RvError::UserNotLoggedIn) if !relogged => {
                            relogged = true;
                            self.forget_handles();
                            match self.login(&s) {
                                Ok(()) => continue,
                                Err(le) => {
                                    self.checkin(s);
                                    return Err(le);
                                }
                            }
                        }
                        Some(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid)
                            if !refound =>
                        {
                            refound = true;
                            self.forget_handles();
                            continue;
                        }
                        _ => {}
                    }
                    if !broken {
                        self.checkin(s);
                    }
                    return Err(map_error(&e, what));
                }
            }
        }
    }

    fn forget_handles(&self) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Forgets the hints for `name` (after the admin changed or destroyed its objects).
    pub(super) fn forget_key(&self, name: &str) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _), _| n != name);
    }

    /// Finds objects; an empty answer while the session is not logged in (private objects are
    /// then invisible) becomes `UserNotLoggedIn`, so the retry logs in again instead of
    /// reporting a missing key.
    pub(super) fn find(
        &self,
        s: &Session,
        template: &[Attribute],
    ) -> Result<Vec<ObjectHandle>, Fail> {
        let found = s.find_objects(template)?;
        if found.is_empty() {
            let state = s.get_session_info()?.session_state();
            if !matches!(state, SessionState::RwUser | SessionState::RoUser) {
                return Err(Fail::Token(P11Error::Pkcs11(
                    RvError::UserNotLoggedIn,
                    Function::FindObjects,
                )));
            }
        }
        Ok(found)
    }

    /// The key object of `name` at `version`: its private key, or its secret key for AES
    /// (hint first, then a search).
    pub(super) fn private_key(
        &self,
        s: &Session,
        name: &str,
        version: &str,
    ) -> Result<ObjectHandle, Fail> {
        let key = (name.to_owned(), version.to_owned());
        if let Some(h) = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(*h);
        }
        let mut found = Vec::new();
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
            found = self.find(
                s,
                &[
                    Attribute::Class(class),
                    Attribute::Label(name.as_bytes().to_vec()),
                    Attribute::Id(version.as_bytes().to_vec()),
                ],
            )?;
            if !found.is_empty() {
                break;
            }
        }
        let Some(h) = found.first().copied() else {
            return Err(Fail::Provider(ProviderError::new(
                K::KeyNotFound,
                format!("key {name} has no version {version} on the token"),
            )));
        };
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, h);
        Ok(h)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // Close the pooled sessions before the anchor, so the anchor is the last to go. Never
        // C_Finalize: other providers in the process may use the same module.
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        drop(self.anchor.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// Maps a PKCS#11 error to the crate's kinds: definitive (the key really is unusable),
/// transient (the device may come back), or a fault of the request. `what` names the
/// operation (and the mechanism where one is involved); the message never carries secrets and
/// uses the short return-value name instead of cryptoki's paragraph of spec text.
pub(super) fn map_error(e: &P11Error, what: &str) -> ProviderError {
    let (rv, f) = match e {
        P11Error::Pkcs11(rv, f) => (*rv, *f),
        P11Error::LibraryLoading(err) => {
            return ProviderError::new(K::Unavailable, format!("{what}: {err}"));
        }
        other => {
            return ProviderError::new(K::Unavailable, format!("{what}: {other:?}"));
        }
    };
    use RvError as R;
    let kind = match rv {
        R::KeyFunctionNotPermitted => K::KeyDisabled,
        R::ObjectHandleInvalid | R::KeyHandleInvalid => K::KeyNotFound,
        R::PinIncorrect
        | R::PinLocked
        | R::PinExpired
        | R::PinInvalid
        | R::PinLenRange
        | R::UserNotLoggedIn
        | R::UserPinNotInitialized
        | R::UserTypeInvalid => K::Forbidden,
        R::KeyTypeInconsistent => K::WrongKeyType,
        R::EncryptedDataInvalid | R::EncryptedDataLenRange | R::DataInvalid | R::DataLenRange => {
            K::UnwrapFailed
        }
        // SoftHSM reports a bad OAEP ciphertext as a general error at C_Decrypt.
        R::GeneralError if matches!(f, Function::Decrypt | Function::UnwrapKey) => K::UnwrapFailed,
        R::WrappedKeyInvalid | R::WrappedKeyLenRange => K::UnwrapFailed,
        R::ArgumentsBad
        | R::MechanismInvalid
        | R::MechanismParamInvalid
        | R::KeySizeRange
        | R::TemplateIncomplete
        | R::TemplateInconsistent
        | R::AttributeValueInvalid
        | R::AttributeTypeInvalid
        | R::AttributeReadOnly
        | R::ActionProhibited => K::InvalidRequest,
        // Device gone, sessions lost, memory, library state: the token may come back.
        _ => K::Unavailable,
    };
    ProviderError::new(kind, format!("{what}: token returned {rv:?} at {f:?}"))
        .with_source(P11Error::Pkcs11(rv, f))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mapping_classifies_like_the_table_in_docs() {
        let m = |rv, f| map_error(&P11Error::Pkcs11(rv, f), "op").kind();
        assert_eq!(
            m(RvError::KeyFunctionNotPermitted, Function::DecryptInit),
            K::KeyDisabled
        );
        assert_eq!(
            m(RvError::ObjectHandleInvalid, Function::DecryptInit),
            K::KeyNotFound
        );
        assert_eq!(m(RvError::PinIncorrect, Function::Login), K::Forbidden);
        // The token's return value stays reachable as the cause.
        let e = map_error(
            &P11Error::Pkcs11(RvError::PinIncorrect, Function::Login),
            "op",
        );
        let source = std::error::Error::source(&e).expect("the PKCS#11 error is the source");
        assert!(
            matches!(
                source.downcast_ref::<P11Error>(),
                Some(P11Error::Pkcs11(RvError::PinIncorrect, Function::Login))
            ),
            "{source:?}"
        );
        assert_eq!(m(RvError::PinLocked, Function::Login), K::Forbidden);
        assert_eq!(m(RvError::GeneralError, Function::Decrypt), K::UnwrapFailed);
        assert_eq!(
            m(RvError::EncryptedDataInvalid, Function::Decrypt),
            K::UnwrapFailed
        );
        assert_eq!(
            m(RvError::ArgumentsBad, Function::DecryptInit),
            K::InvalidRequest
        );
        assert_eq!(
            m(RvError::MechanismParamInvalid, Function::DecryptInit),
            K::InvalidRequest
        );
        for rv in [
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::DeviceError,
            RvError::SessionHandleInvalid,
        ] {
            assert!(m(rv, Function::Decrypt).is_transient(), "{rv:?}");
        }
        let e = map_error(
            &P11Error::Pkcs11(RvError::ArgumentsBad, Function::DecryptInit),
            "unwrap with CKM_RSA_PKCS_OAEP(SHA-256)",
        );
        assert!(e.message().contains("CKM_RSA_PKCS_OAEP"), "{e}");
        assert!(e.message().contains("ArgumentsBad"), "{e}");
    }
}
