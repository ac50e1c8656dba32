//! What the HTTP providers (Vault/OpenBao Transit, AWS KMS) share: response bodies read
//! within a bound and wiped after use, server text made fit for an error message (and never an
//! echo of the request, which may carry a secret), and transport failures classified.

use std::error::Error as _;

use serde::de::DeserializeOwned;

use crate::error::{ProviderError, ProviderErrorKind as K};

/// The largest response body read (success or error); a longer one is not read further.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// The most characters of server text put into an error message.
pub(crate) const MAX_TEXT: usize = 512;

/// A successful answer's body (wiped on drop: a decrypt answer holds the secret).
pub(crate) struct Answer {
    pub(crate) body: Vec<u8>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.body);
    }
}

impl Answer {
    /// The body parsed as `T`; `what` names the request in the error.
    ///
    /// # Errors
    /// `Unavailable` for a body that is not a `T`.
    pub(crate) fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, ProviderError> {
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

/// An answer that is not what the API documents.
pub(crate) fn malformed(what: &str, why: &str) -> ProviderError {
    ProviderError::new(
        K::Unavailable,
        format!("malformed response to {what}: {why}"),
    )
}

/// Reads at most [`MAX_BODY`] bytes of the body, chunk by chunk; `true` when there was more
/// (the rest is never read: the connection is dropped with the response). A body announced
/// as longer than the cap is not read at all.
pub(crate) async fn read_bounded(
    mut resp: reqwest::Response,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
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
        let cut = chunk.len() > room;
        let chunk = &chunk[..chunk.len().min(room)];
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
        buf.extend_from_slice(chunk);
        if cut {
            return Ok((core::mem::take(&mut *buf), true));
        }
    }
    Ok((core::mem::take(&mut *buf), false))
}

/// Server text made fit for an error message: control and bidirectional-formatting characters
/// become spaces, runs of whitespace fold to one, at most [`MAX_TEXT`] characters are kept,
/// and a text that repeats any part of the request body (an error page echoing the request,
/// which may carry the secret being wrapped) is not shown at all.
pub(crate) fn server_text(raw: &str, request_body: Option<&str>) -> String {
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

/// A failure before any HTTP status (refused connection, TLS, timeout) of a request to
/// `service` (`"Transit"`, `"AWS KMS"`) for `what`; `ca_setting` names the configuration that
/// trusts a private CA. Keeps the HTTP client's error as the source.
pub(crate) fn transport_error(
    service: &str,
    what: &str,
    ca_setting: &str,
    e: reqwest::Error,
) -> ProviderError {
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
    let ca_hint;
    let hint = if lower.contains("certificate") || lower.contains("unknownissuer") {
        ca_hint = format!(
            " (TLS certificate verification failed: give the provider the server's CA with \
             {ca_setting})"
        );
        ca_hint.as_str()
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
    ProviderError::new(kind, format!("{service} {what}: {detail}{hint}")).with_source(e)
}
