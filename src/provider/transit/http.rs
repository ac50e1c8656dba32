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

/// The largest response body read (success or error); a longer one is not read further.
pub(super) const MAX_BODY: usize = 64 * 1024;
/// The most characters of server text put into an error message.
pub(super) const MAX_TEXT: usize = 512;

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
        self.envelope_as(what)
    }

    /// The whole body parsed as `T`.
    pub(super) fn envelope_as<T: DeserializeOwned>(&self, what: &str) -> Result<T, ProviderError> {
        // serde_json's message may quote the offending value (a plaintext, a token): give only
        // its class and place, and do not keep it as the source either.
        serde_json::from_slice(&self.body).map_err(|e| {
            malformed(
                what,
                &format!(
                    "{:?} error at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )
        })
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

/// Reads at most [`MAX_BODY`] bytes of the body, chunk by chunk; `true` when there was more
/// (the rest is never read: the connection is dropped with the response). A body announced
/// as longer than the cap is not read at all.
async fn read_bounded(mut resp: reqwest::Response) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let announced = resp.content_length();
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return Ok((Vec::new(), true));
    }
    // One allocation when the length is announced: a decrypt answer holds the secret, and a
    // grown buffer would leave unwiped copies behind.
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(
        announced.map_or(4096, |n| n as usize).min(MAX_BODY),
    ));
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_BODY - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((core::mem::take(&mut *buf), true));
        }
        if buf.len() + chunk.len() > buf.capacity() {
            // Grow into a fresh buffer and wipe the old one (dropped as `Zeroizing`).
            let mut bigger = Vec::with_capacity(
                (buf.len() + chunk.len())
                    .max(2 * buf.capacity())
                    .min(MAX_BODY),
            );
            bigger.extend_from_slice(&buf);
            buf = zeroize::Zeroizing::new(bigger);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((core::mem::take(&mut *buf), false))
}

/// Server text made fit for an error message: control and bidirectional-formatting characters
/// become spaces, runs of whitespace fold to one, at most [`MAX_TEXT`] characters are kept,
/// and a text that repeats any part of the request body (an error page echoing the request,
/// which may carry the secret being wrapped) is not shown at all.
pub(super) fn server_text(raw: &str, request_body: Option<&str>) -> String {
    // Folded text, a little past the cap so that an echo straddling the cut is still seen.
    let mut out = String::new();
    let mut n = 0;
    let mut more = false;
    for c in raw.chars() {
        let c = if c.is_control() || is_format_char(c) || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if n == MAX_TEXT + ECHO_RUN {
            more = true;
            break;
        }
        out.push(c);
        n += 1;
    }
    if request_body.is_some_and(|b| echoes(&out, b)) {
        return "(the server's text is not shown: it repeats part of the request)".to_owned();
    }
    if n > MAX_TEXT || more {
        let cut = out
            .char_indices()
            .nth(MAX_TEXT)
            .map_or(out.len(), |(i, _)| i);
        out.truncate(cut);
        out.push_str(" …(truncated)");
    }
    out.trim_end().to_owned()
}

/// Zero-width and bidirectional-control characters (which can disguise a log line).
fn is_format_char(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Length of the runs compared by [`echoes`]: longer than any phrase Vault's own errors share
/// with a request body, shorter than the base64 of any secret byok wraps.
const ECHO_RUN: usize = 12;

/// Whether `text` holds a run of [`ECHO_RUN`] characters of `body`, as sent or with JSON
/// (`\`) and HTML (`&quot;`) escaping undone.
fn echoes(text: &str, body: &str) -> bool {
    if body.len() < ECHO_RUN {
        return !body.is_empty() && text.contains(body);
    }
    let unescaped = text
        .replace('\\', "")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"");
    let body_plain = body.replace('\\', "");
    [text, unescaped.as_str()].iter().any(|t| {
        let chars: Vec<(usize, char)> = t.char_indices().collect();
        (0..chars.len().saturating_sub(ECHO_RUN - 1)).any(|i| {
            let start = chars[i].0;
            let end = chars.get(i + ECHO_RUN).map_or(t.len(), |c| c.0);
            let run = &t[start..end];
            body.contains(run) || body_plain.contains(run)
        })
    })
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
fn transport_error(what: &str, e: reqwest::Error) -> ProviderError {
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
    let detail = server_text(
        &if detail.is_empty() {
            e.to_string()
        } else {
            detail
        },
        None,
    );
    ProviderError::new(kind, format!("Transit {what}: {detail}{hint}")).with_source(e)
}
