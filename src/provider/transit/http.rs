//! One HTTP(S) connection pool to a Transit server: requests, bounded retries, and the
//! classification of every failure into a [`ProviderErrorKind`].

use core::fmt;
use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use super::RetryPolicy;
use super::wire::{Envelope, ErrorBody};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::secret::SecretString;

/// What a request is for: the same server text means different things on different paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// `GET <mount>/keys/<name>` and the other key-management paths.
    Key,
    /// `POST <mount>/encrypt/<name>`.
    Encrypt,
    /// `POST <mount>/decrypt/<name>`.
    Decrypt,
    /// `sys/…` and `auth/token/…`.
    System,
}

/// The shared client: base URL, mount and pool. Tokens are passed per request.
pub(super) struct Connection {
    pub(super) http: reqwest::Client,
    /// `<scheme>://<host>[:port]/v1/`
    pub(super) base: String,
    /// The Transit mount path, without slashes.
    pub(super) mount: String,
    pub(super) retry: RetryPolicy,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("base", &self.base)
            .field("mount", &self.mount)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// A successful answer's body (wiped on drop: a decrypt answer holds the secret).
pub(super) struct Answer {
    pub(super) body: Vec<u8>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.body);
    }
}

impl Answer {
    /// The `data` object of the body, parsed as `T`.
    pub(super) fn data<T: DeserializeOwned>(&self, what: &str) -> Result<T, ProviderError> {
        self.envelope::<T>(what)?
            .data
            .ok_or_else(|| malformed(what, "no data in the response"))
    }

    /// The whole body parsed as an envelope around `T`.
    pub(super) fn envelope<T: DeserializeOwned>(
        &self,
        what: &str,
    ) -> Result<Envelope<T>, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| malformed(what, &e.to_string()))
    }
}

fn malformed(what: &str, why: &str) -> ProviderError {
    ProviderError::new(
        K::Unavailable,
        format!("malformed Transit response to {what}: {why}"),
    )
}

impl Connection {
    /// `<mount>/<rest>`, for a path below the mount.
    pub(super) fn mount_path(&self, rest: &str) -> String {
        format!("{}/{rest}", self.mount)
    }

    /// Sends one request, retrying transient failures (only when `retry` is set) within the
    /// retry policy's bounds.
    pub(super) async fn call(
        &self,
        token: &SecretString,
        method: Method,
        path: &str,
        body: Option<String>,
        op: Op,
        retry: bool,
    ) -> Result<Answer, ProviderError> {
        // The body may carry a secret (encrypt): wipe this copy when done.
        let body = body.map(zeroize::Zeroizing::new);
        let attempts = if retry {
            self.retry.max_retries.saturating_add(1)
        } else {
            1
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .once(token, &method, path, body.as_ref().map(|b| b.as_str()), op)
                .await
            {
                Ok(a) => return Ok(a),
                Err((e, retry_after)) => {
                    if !e.is_transient() || attempt >= attempts {
                        return Err(if attempt > 1 {
                            ProviderError::new(
                                e.kind(),
                                format!("{} (after {attempt} attempts)", e.message()),
                            )
                        } else {
                            e
                        });
                    }
                    let wait = retry_after
                        .filter(|d| *d <= self.retry.max_backoff)
                        .unwrap_or_else(|| self.retry.backoff(attempt - 1));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn once(
        &self,
        token: &SecretString,
        method: &Method,
        path: &str,
        body: Option<&str>,
        op: Op,
    ) -> Result<Answer, (ProviderError, Option<Duration>)> {
        let url = format!("{}{path}", self.base);
        let mut tok = HeaderValue::from_str(token.expose_secret()).map_err(|_| {
            (
                ProviderError::new(
                    K::InvalidRequest,
                    "the Transit token holds characters an HTTP header cannot carry",
                ),
                None,
            )
        })?;
        tok.set_sensitive(true);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("X-Vault-Token", tok)
            .header("X-Vault-Request", "true");
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_owned());
        }
        let what = format!("{method} {path}");
        let resp = req
            .send()
            .await
            .map_err(|e| (transport_error(&what, &e), None))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| (transport_error(&what, &e), None))?;
        if status.is_success() {
            return Ok(Answer {
                body: bytes.to_vec(),
            });
        }
        let errors = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.errors)
            .unwrap_or_else(|_| {
                let text = String::from_utf8_lossy(&bytes);
                let text = text.trim();
                if text.is_empty() {
                    Vec::new()
                } else {
                    vec![text.chars().take(300).collect()]
                }
            });
        let kind = classify(status, &errors, op);
        let mut text = errors
            .iter()
            .map(|e| clean(e))
            .collect::<Vec<_>>()
            .join("; ");
        if text.is_empty() {
            text = status
                .canonical_reason()
                .unwrap_or("no error text")
                .to_owned();
        }
        if let Some(loc) = location.filter(|_| status.is_redirection()) {
            text = format!(
                "{text}: redirected to {loc}; byok does not follow redirects (the token would \
                 travel with them): point the provider at the active node or a load balancer"
            );
        }
        Err((
            ProviderError::new(
                kind,
                format!("Transit {what}: HTTP {}: {text}", status.as_u16()),
            ),
            retry_after,
        ))
    }
}

/// Server texts arrive as `1 error occurred:\n\t* permission denied\n\n`; keep the gist.
fn clean(e: &str) -> String {
    let e = e.trim();
    let e = e
        .strip_prefix("1 error occurred:")
        .map(str::trim)
        .unwrap_or(e);
    e.split('\n')
        .map(|l| l.trim().trim_start_matches("* ").trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Maps an HTTP status and the server's error texts to a kind. Definitive answers (403,
/// unknown key, soft-deleted key, version below `min_decryption_version`) are never
/// transient; a corrupted ciphertext (which Transit answers with a 500 for RSA) is
/// `UnwrapFailed`, never transient.
pub(super) fn classify(status: StatusCode, errors: &[String], op: Op) -> K {
    let text = errors.join("\n").to_ascii_lowercase();
    let has = |s: &str| text.contains(s);
    let code = status.as_u16();
    if code == 403 || code == 401 {
        return K::Forbidden;
    }
    if code == 429 {
        return K::Throttled;
    }
    if has("soft-deleted") || has("soft deleted") {
        return K::KeyDeleted;
    }
    if code == 404 {
        return if has("no handler for route") {
            K::VaultNotFound
        } else {
            K::KeyNotFound
        };
    }
    if op == Op::Decrypt
        && (has("failed to rsa decrypt")
            || has("invalid ciphertext")
            || has("message authentication failed")
            || has("decryption error"))
    {
        // "invalid ciphertext: version is too new" names a version the key does not have.
        return if has("version is too new") {
            K::KeyNotFound
        } else {
            K::UnwrapFailed
        };
    }
    if has("message too long") || has("failed to rsa encrypt") {
        return K::InvalidRequest;
    }
    if code == 504 {
        return K::Timeout;
    }
    if status.is_server_error() || status.is_redirection() || code == 412 {
        // 412: a performance standby has not caught up yet (Vault Enterprise).
        return K::Unavailable;
    }
    if has("disallowed by policy")
        || has("below minimum decryption version")
        || has("less than the minimum encryption key version")
        || has("no such key version")
    {
        return K::KeyDisabled;
    }
    if has("key not found")
        || has("could be found")
        || has("; not found")
        || has("higher than the latest key version")
        || has("version is too new")
    {
        return K::KeyNotFound;
    }
    if has("not supported for key type") || has("missing 'context'") {
        return K::WrongKeyType;
    }
    if has("already in use") {
        return K::Conflict;
    }
    K::InvalidRequest
}

/// A failure before any HTTP status: refused connection, TLS, timeout.
fn transport_error(what: &str, e: &reqwest::Error) -> ProviderError {
    let mut chain = Vec::new();
    let mut src: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if chain.last() != Some(&t) {
            chain.push(t);
        }
        src = s.source();
    }
    let detail = chain.join(": ");
    let lower = detail.to_ascii_lowercase();
    let kind = if e.is_timeout() {
        K::Timeout
    } else {
        K::Unavailable
    };
    let hint = if lower.contains("certificate") || lower.contains("unknownissuer") {
        " (TLS certificate verification failed: give the provider the server's CA with \
         TransitConfig::ca_pem)"
    } else if lower.contains("tls") || lower.contains("handshake") {
        " (TLS handshake failed)"
    } else if lower.contains("connection refused") {
        " (is the server running?)"
    } else if kind == K::Timeout {
        " (timed out)"
    } else {
        ""
    };
    let detail = if detail.is_empty() {
        e.to_string()
    } else {
        detail
    };
    ProviderError::new(kind, format!("Transit {what}: {detail}{hint}"))
}
