//! The service's own Transit credential: a token (renewed before it expires) or an AppRole
//! login (renewed, and logged in again when its token runs out), and the one question a 403
//! raises: is our credential invalid (a service-side fault, transient) or does the policy deny
//! this key (definitive)?
//!
//! Nothing runs in the background: the lifecycle advances on use (a token within half its
//! lease of expiry is renewed before the request that finds it so), and
//! [`super::TransitProvider::renew_credential`] lets the application drive it from its own
//! timer (e.g. for a provider idle longer than its token's lease).

use core::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;

use super::http::TransitAnswer as _;
use super::http::{Answer, Connection, Op};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::secret::SecretString;

/// How the service authenticates to the server.
#[derive(Clone)]
pub(super) enum Credential {
    /// A token handed over by the operator (renewed when renewable).
    Token(SecretString),
    /// AppRole: `POST auth/<mount>/login` with a role id and a secret id.
    AppRole {
        mount: String,
        role_id: SecretString,
        secret_id: SecretString,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(…)"),
            Self::AppRole { mount, .. } => write!(f, "AppRole {{ mount: {mount:?}, … }}"),
        }
    }
}

/// What is known of the current token's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    /// Not looked up yet.
    Unchecked,
    /// The lookup failed (not permitted, or the server did not answer): used as it is (a 403
    /// will tell whether it still works), looked up again from `recheck` on.
    Unknown { recheck: Instant },
    /// The token does not expire (a root or periodic token without TTL).
    Forever,
    /// Expires at `at`; `period` is the lease a renewal asks for.
    Expires {
        at: Instant,
        period: Duration,
        renewable: bool,
    },
}

struct State {
    token: Option<SecretString>,
    lease: Lease,
}

/// One credential and its current token, shared by every provider (clone) that uses it.
pub(super) struct Auth {
    cred: Credential,
    state: Mutex<State>,
    /// Serialises renewals and logins (one at a time; the others wait and reuse the result).
    refresh: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("credential", &self.cred)
            .field("lease", &self.lock().lease)
            .finish_non_exhaustive()
    }
}

/// `data` of `auth/token/lookup-self`.
#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    creation_ttl: u64,
    #[serde(default)]
    renewable: bool,
}

/// `auth` of a login or of `auth/token/renew-self`.
#[derive(Deserialize)]
struct AuthInfo {
    #[serde(default)]
    client_token: Option<String>,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct AuthEnvelope {
    auth: Option<AuthInfo>,
}

/// How long a token whose lookup failed is used before the lookup is tried again.
const RECHECK: Duration = Duration::from_secs(60);

/// A token is renewed (or, for AppRole, replaced) once less than half its lease is left.
fn due(at: Instant, period: Duration, now: Instant) -> bool {
    at.saturating_duration_since(now) <= period / 2
}

impl Auth {
    pub(super) fn new(cred: Credential) -> Arc<Self> {
        let token = match &cred {
            Credential::Token(t) => Some(t.clone()),
            Credential::AppRole { .. } => None,
        };
        Arc::new(Self {
            cred,
            state: Mutex::new(State {
                token,
                lease: Lease::Unchecked,
            }),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_approle(&self) -> bool {
        matches!(self.cred, Credential::AppRole { .. })
    }

    /// The current token, if any (for calls that need none, like `sys/health`).
    pub(super) fn peek(&self) -> SecretString {
        self.lock()
            .token
            .clone()
            .unwrap_or_else(|| SecretString::new(""))
    }

    /// The token to use now, when nothing needs doing first.
    fn usable(&self, now: Instant) -> Option<SecretString> {
        let s = self.lock();
        let t = s.token.clone()?;
        match s.lease {
            Lease::Unchecked => None,
            Lease::Unknown { recheck } if now >= recheck => None,
            Lease::Unknown { .. } | Lease::Forever => Some(t),
            Lease::Expires {
                at,
                period,
                renewable,
            } => {
                if (renewable || self.is_approle()) && due(at, period, now) {
                    None
                } else {
                    Some(t)
                }
            }
        }
    }

    /// The token to send: looked up on first use, renewed when due, (re-)logged in for
    /// AppRole. A renewal that fails keeps the token (it may still be valid); a login that
    /// fails is the service's fault, reported transient.
    pub(super) async fn token(&self, conn: &Connection) -> Result<SecretString, ProviderError> {
        if let Some(t) = self.usable(Instant::now()) {
            return Ok(t);
        }
        let _g = self.refresh.lock().await;
        if let Some(t) = self.usable(Instant::now()) {
            return Ok(t);
        }
        self.advance(conn, false).await
    }

    /// Renews now (or logs in again), whether due or not; the remaining lifetime after it
    /// (`None`: no expiry, or unknown).
    pub(super) async fn renew_now(
        &self,
        conn: &Connection,
    ) -> Result<Option<Duration>, ProviderError> {
        let _g = self.refresh.lock().await;
        self.advance(conn, true).await?;
        Ok(match self.lock().lease {
            Lease::Expires { at, .. } => Some(at.saturating_duration_since(Instant::now())),
            _ => None,
        })
    }

    /// One step of the lifecycle, under the refresh lock.
    async fn advance(&self, conn: &Connection, force: bool) -> Result<SecretString, ProviderError> {
        let (token, lease) = {
            let s = self.lock();
            (s.token.clone(), s.lease)
        };
        let now = Instant::now();
        match (token, lease) {
            (Some(t), Lease::Unchecked | Lease::Unknown { .. }) => {
                let lease = match self.lookup(conn, &t).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(error = %e, "Transit token lookup-self failed; using the token as it is");
                        Lease::Unknown {
                            recheck: Instant::now() + RECHECK,
                        }
                    }
                };
                self.set(&t, lease);
                let due_now = match lease {
                    Lease::Expires {
                        at,
                        period,
                        renewable: true,
                    } => force || due(at, period, Instant::now()),
                    _ => false,
                };
                if due_now {
                    return self.renew(conn, t, lease).await;
                }
                Ok(t)
            }
            (
                Some(t),
                l @ Lease::Expires {
                    at,
                    renewable: true,
                    ..
                },
            ) if at > now => self.renew(conn, t, l).await,
            (Some(t), Lease::Forever) if !force || !self.is_approle() => Ok(t),
            (Some(t), Lease::Expires { .. }) if !self.is_approle() => Ok(t),
            _ => self.login(conn).await,
        }
    }

    fn set(&self, token: &SecretString, lease: Lease) {
        let mut s = self.lock();
        if s.token.as_ref().map(SecretString::expose_secret) == Some(token.expose_secret()) {
            s.lease = lease;
        }
    }

    /// `GET auth/token/lookup-self` (one attempt).
    async fn lookup(
        &self,
        conn: &Connection,
        token: &SecretString,
    ) -> Result<Lease, ProviderError> {
        let ans = conn
            .call(
                token,
                Method::GET,
                "auth/token/lookup-self",
                None,
                Op::System,
                false,
            )
            .await?;
        let d: LookupData = ans.data("token lookup-self")?;
        Ok(if d.ttl == 0 {
            Lease::Forever
        } else {
            Lease::Expires {
                at: Instant::now() + Duration::from_secs(d.ttl),
                period: Duration::from_secs(d.creation_ttl.max(d.ttl)),
                renewable: d.renewable,
            }
        })
    }

    /// `POST auth/token/renew-self` for another `period`. A renewal that does not extend the
    /// lease (the token reached its max TTL) marks it not renewable; AppRole then logs in
    /// again when it is due.
    async fn renew(
        &self,
        conn: &Connection,
        token: SecretString,
        lease: Lease,
    ) -> Result<SecretString, ProviderError> {
        let Lease::Expires { at, period, .. } = lease else {
            return Ok(token);
        };
        let body =
            serde_json::json!({ "increment": format!("{}s", period.as_secs().max(1)) }).to_string();
        let r = conn
            .call(
                &token,
                Method::POST,
                "auth/token/renew-self",
                Some(&body),
                Op::System,
                false,
            )
            .await
            .and_then(|a| auth_info(&a, "token renew-self"));
        match r {
            Ok(info) => {
                let new_at = Instant::now() + Duration::from_secs(info.lease_duration);
                let extended = new_at > at + Duration::from_secs(1);
                tracing::debug!(
                    lease_s = info.lease_duration,
                    extended,
                    "renewed the Transit token"
                );
                self.set(
                    &token,
                    Lease::Expires {
                        at: new_at.max(at),
                        period,
                        renewable: info.renewable && extended,
                    },
                );
                if !extended && self.is_approle() {
                    return self.login(conn).await;
                }
                Ok(token)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the Transit token");
                if self.is_approle() {
                    return self.login(conn).await;
                }
                if !e.is_transient() {
                    // Not renewable after all (or not permitted): stop trying.
                    self.set(
                        &token,
                        Lease::Expires {
                            at,
                            period,
                            renewable: false,
                        },
                    );
                }
                Ok(token)
            }
        }
    }

    /// AppRole login (transient failures retried; a lost answer only leaves an unused token
    /// behind). A static token cannot log in: the current one is returned.
    async fn login(&self, conn: &Connection) -> Result<SecretString, ProviderError> {
        let Credential::AppRole {
            mount,
            role_id,
            secret_id,
        } = &self.cred
        else {
            return Ok(self.peek());
        };
        let body = zeroize::Zeroizing::new(
            serde_json::json!({
                "role_id": role_id.expose_secret(),
                "secret_id": secret_id.expose_secret(),
            })
            .to_string(),
        );
        let path = format!("auth/{mount}/login");
        let r = conn
            .call(
                &SecretString::new(""),
                Method::POST,
                &path,
                Some(&body),
                Op::System,
                true,
            )
            .await
            .and_then(|a| auth_info(&a, "AppRole login"));
        let info = match r {
            Ok(i) => i,
            Err(e) => {
                let err = credential_fault(&format!("AppRole login failed: {}", e.message()));
                tracing::error!(error = %err, "the service's Transit credential does not work");
                return Err(err);
            }
        };
        let Some(tok) = info.client_token.filter(|t| !t.is_empty()) else {
            return Err(credential_fault("AppRole login returned no token"));
        };
        let token = SecretString::new(tok);
        let lease = if info.lease_duration == 0 {
            Lease::Forever
        } else {
            let period = Duration::from_secs(info.lease_duration);
            Lease::Expires {
                at: Instant::now() + period,
                period,
                renewable: info.renewable,
            }
        };
        tracing::debug!(
            lease_s = info.lease_duration,
            "logged in to Transit with AppRole"
        );
        *self.lock() = State {
            token: Some(token.clone()),
            lease,
        };
        Ok(token)
    }

    /// After a 403 with `token`: `Ok(None)` when the token itself is fine (lookup-self works,
    /// so the policy denies: the 403 stands), `Ok(Some(new))` when AppRole logged in again
    /// (retry with `new`), `Err` (transient) when the service's own credential is invalid
    /// or cannot be checked — never the tenant's fault.
    pub(super) async fn after_forbidden(
        &self,
        conn: &Connection,
        token: &SecretString,
        denied: &ProviderError,
        may_login: bool,
    ) -> Result<Option<SecretString>, ProviderError> {
        match self.lookup(conn, token).await {
            Ok(lease) => {
                self.set(token, lease);
                Ok(None)
            }
            Err(e) if e.kind() == K::Forbidden => {
                if self.is_approle() && may_login {
                    let _g = self.refresh.lock().await;
                    let current = self.lock().token.clone();
                    if let Some(c) = current
                        && c.expose_secret() != token.expose_secret()
                    {
                        // Another request logged in meanwhile.
                        return Ok(Some(c));
                    }
                    return self.login(conn).await.map(Some);
                }
                let err = credential_fault(&format!(
                    "the service's own token was refused (auth/token/lookup-self: {}) after {}",
                    e.message(),
                    denied.message()
                ));
                tracing::error!(error = %err, "the service's Transit credential is invalid");
                Err(err)
            }
            Err(e) => {
                let err = ProviderError::new(
                    K::Unavailable,
                    format!(
                        "{}; the service's own token could not be checked (auth/token/lookup-self: \
                         {}), so this is not taken as the tenant's denial",
                        denied.message(),
                        e.message()
                    ),
                );
                tracing::warn!(error = %err, "a Transit 403 could not be attributed");
                Err(err)
            }
        }
    }
}

fn auth_info(a: &Answer, what: &str) -> Result<AuthInfo, ProviderError> {
    a.json::<AuthEnvelope>(what)?.auth.ok_or_else(|| {
        ProviderError::new(K::Unavailable, format!("Transit {what} returned no auth"))
    })
}

/// The service's own credential does not work: transient (a service-side fault an operator
/// must fix; the tenant's key is not in question).
fn credential_fault(detail: &str) -> ProviderError {
    ProviderError::new(
        K::Unavailable,
        format!(
            "Transit: the service's own credential is invalid ({detail}); this is a fault of \
             the service's configuration (expired, revoked or unrenewable token, or a bad \
             AppRole secret id), not of the tenant's key: renew or replace the credential"
        ),
    )
}
