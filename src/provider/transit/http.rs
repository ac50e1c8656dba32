//! One HTTP(S) connection pool to a Transit server: requests, bounded retries, and the
//! classification of every failure into a [`ProviderErrorKind`].

use core::fmt;
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

pub(super) use crate::provider::http::Answer;
use crate::provider::http::{MAX_BODY, MAX_TEXT, malformed, read_bounded, server_text};

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

/// Transit's answers: the `data` (or `auth`) object inside Vault's response envelope.
pub(super) trait TransitAnswer {
    /// The `data` object of the body, parsed as `T`.
    fn data<T: DeserializeOwned>(&self, what: &str) -> Result<T, ProviderError>;
}

impl TransitAnswer for Answer {
    fn data<T: DeserializeOwned>(&self, what: &str) -> Result<T, ProviderError> {
        self.json::<Envelope<T>>(what)?
            .data
            .ok_or_else(|| malformed(what, "no data in the response"))
    }
}

impl Connection {
    /// `<mount>/<rest>`, for a path below the mount.
    pub(super) fn mount_path(&self, rest: &str) -> String {
        format!("{}/{rest}", self.mount)
    }

    /// Sends one request, retrying transient failures (only when `retry` is set) within the
    /// retry policy's bounds. The caller owns (and wipes) the body, which may carry a secret.
    pub(super) async fn call(
        &self,
        token: &SecretString,
        method: Method,
        path: &str,
        body: Option<&str>,
        op: Op,
        retry: bool,
    ) -> Result<Answer, ProviderError> {
        self.retry
            .run(retry, || self.once(token, &method, path, body, op))
            .await
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
            .map_err(|e| (transport_error(&what, e), None))?;
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
            .map(|l| server_text(l, body));
        let (bytes, cut) = read_bounded(resp)
            .await
            .map_err(|e| (transport_error(&what, e), None))?;
        if status.is_success() {
            if cut {
                return Err((
                    ProviderError::new(
                        K::Unavailable,
                        format!(
                            "Transit {what}: the answer is larger than {} KiB (not read)",
                            MAX_BODY / 1024
                        ),
                    ),
                    None,
                ));
            }
            return Ok(Answer { body: bytes });
        }
        let errors = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) if !cut => b.errors,
            _ => {
                let text = String::from_utf8_lossy(&bytes);
                let text = text.trim();
                if text.is_empty() {
                    Vec::new()
                } else {
                    // At most what `server_text` keeps (plus room for the whitespace it folds).
                    vec![text.chars().take(MAX_TEXT * 4).collect()]
                }
            }
        };
        let kind = classify(status, &errors, op);
        let mut text = server_text(
            &errors
                .iter()
                .map(|e| clean(e))
                .collect::<Vec<_>>()
                .join("; "),
            body,
        );
        if text.is_empty() {
            text = status
                .canonical_reason()
                .unwrap_or("no error text")
                .to_owned();
        }
        if cut {
            text.push_str(&format!(
                " (the answer is larger than {} KiB; the rest was not read)",
                MAX_BODY / 1024
            ));
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

/// A failure before any HTTP status (see [`crate::provider::http::transport_error`]).
fn transport_error(what: &str, e: reqwest::Error) -> ProviderError {
    crate::provider::http::transport_error("Transit", what, "TransitConfig::ca_pem", e)
}
