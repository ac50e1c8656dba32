//! Classification of every SDK failure into a [`ProviderErrorKind`], after the Key Vault REST
//! reference's error model (<https://learn.microsoft.com/rest/api/keyvault/keys/get-key/get-key#keyvaulterror>:
//! `{"error": {"code", "message", "innererror": {"code"}}}`) and the status codes of
//! <https://learn.microsoft.com/azure/key-vault/general/rest-error-codes>.

use std::time::Duration;

use azure_core::error::ErrorKind as AzKind;
use azure_core::http::headers::HeaderName;
use serde::Deserialize;

use super::transport::TimedOut;
use crate::error::{ProviderError, ProviderErrorKind as K};

/// What a request was for: the same status means different things on different operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// `GET /keys/…`, `/deletedkeys/…` and the other key-management paths.
    Key,
    /// `POST /keys/{name}/{version}/wrapkey`.
    Wrap,
    /// `POST /keys/{name}/{version}/unwrapkey`.
    Unwrap,
}

/// The most characters of Key Vault's text put into an error message.
const MAX_TEXT: usize = 400;

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: Option<String>,
    message: Option<String>,
    #[serde(rename = "innererror")]
    inner: Option<Box<ErrorDetail>>,
}

/// Printable, bounded server text: control characters folded to spaces, at most
/// [`MAX_TEXT`] characters.
fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_TEXT)
        .collect();
    if s.chars().count() > MAX_TEXT {
        out.push('…');
    }
    out
}

/// `Retry-After` in seconds, or the millisecond variants Azure services also send
/// (`retry-after-ms`, `x-ms-retry-after-ms`).
fn retry_after(h: &azure_core::http::headers::Headers) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = h
            .get_optional_str(&HeaderName::from_static(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            return Some(Duration::from_millis(ms));
        }
    }
    h.get_optional_str(&HeaderName::from_static("retry-after"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn timed_out(e: &azure_core::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if c.is::<TimedOut>() {
            return true;
        }
        if let Some(r) = c.downcast_ref::<reqwest::Error>()
            && r.is_timeout()
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The SDK error's cause chain as text (transport and credential errors carry no secrets:
/// reqwest prints the URL, never headers or bodies).
fn chain(e: &azure_core::Error) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    clean(&s)
}

/// The Key Vault error code (inner code first: it is the more specific one, e.g.
/// `KeyDisabled` under `Forbidden`), the outer code and the message of an error body.
fn codes(body: &[u8]) -> (Option<String>, Option<String>, String) {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error: Some(d) }) => (
            d.inner.as_ref().and_then(|i| i.code.clone()),
            d.code.clone(),
            d.message.as_deref().map(clean).unwrap_or_default(),
        ),
        _ => (None, None, String::new()),
    }
}

/// Classifies `e` from operation `op` (described by `what`, e.g. `unwrapkey cmk/0a1b`).
/// Returns the error and the server's `Retry-After`, if any.
pub(super) fn classify(
    what: &str,
    op: Op,
    e: &azure_core::Error,
) -> (ProviderError, Option<Duration>) {
    match e.kind() {
        AzKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let status = u16::from(*status);
            let (inner, outer, message) = raw_response
                .as_ref()
                .map(|r| codes(r.body()))
                .unwrap_or((None, None, String::new()));
            let outer = outer.or_else(|| error_code.clone());
            let wait = raw_response.as_ref().and_then(|r| retry_after(r.headers()));
            let code = inner.as_deref().or(outer.as_deref()).unwrap_or("");
            let lower = message.to_ascii_lowercase();
            let kind = match status {
                401 => K::Unavailable,
                403 if code.eq_ignore_ascii_case("KeyDisabled")
                    || lower.contains("disabled key")
                    || lower.contains("key is disabled")
                    || lower.contains("expired")
                    || lower.contains("not yet valid") =>
                {
                    K::KeyDisabled
                }
                403 => K::Forbidden,
                404 => K::KeyNotFound,
                409 => K::Conflict,
                400 if op == Op::Unwrap => K::UnwrapFailed,
                400 | 413 | 414 | 415 => K::InvalidRequest,
                408 | 504 => K::Timeout,
                429 => K::Throttled,
                _ => K::Unavailable,
            };
            let codes = match (&outer, &inner) {
                (Some(o), Some(i)) => format!(" {o}/{i}"),
                (Some(o), None) => format!(" {o}"),
                (None, Some(i)) => format!(" {i}"),
                (None, None) => String::new(),
            };
            let mut text = format!("Key Vault {what}: HTTP {status}{codes}");
            if !message.is_empty() {
                text.push_str(": ");
                text.push_str(&message);
            }
            if status == 401 {
                text.push_str(
                    " (the vault refused the service's own Entra ID token: an operator alert, \
                     not the tenant's revocation)",
                );
            }
            (ProviderError::new(kind, text), wait)
        }
        AzKind::Connection => (
            ProviderError::new(
                K::Unavailable,
                format!("Key Vault {what}: cannot connect: {}", chain(e)),
            ),
            None,
        ),
        AzKind::Io if timed_out(e) => (
            ProviderError::new(K::Timeout, format!("Key Vault {what}: {}", chain(e))),
            None,
        ),
        AzKind::Credential => (
            ProviderError::new(
                K::Unavailable,
                format!(
                    "Key Vault {what}: the service's Entra ID credential failed (an operator \
                     alert, not the tenant's revocation): {}",
                    chain(e)
                ),
            ),
            None,
        ),
        AzKind::DataConversion => (
            ProviderError::new(
                K::Unavailable,
                format!("Key Vault {what}: malformed answer: {}", chain(e)),
            ),
            None,
        ),
        _ => (
            ProviderError::new(K::Unavailable, format!("Key Vault {what}: {}", chain(e))),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::headers::Headers;
    use azure_core::http::{RawResponse, StatusCode};

    fn http(status: u16, body: &str, headers: &[(&'static str, &str)]) -> azure_core::Error {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.insert(HeaderName::from_static(k), (*v).to_owned());
        }
        azure_core::Error::with_message(
            AzKind::HttpResponse {
                status: StatusCode::from(status),
                error_code: None,
                raw_response: Some(Box::new(RawResponse::from_bytes(
                    StatusCode::from(status),
                    h,
                    body.as_bytes().to_vec(),
                ))),
            },
            "failed",
        )
    }

    #[test]
    fn documented_error_bodies_map_to_kinds() {
        // Bodies as the Key Vault REST reference and its troubleshooting pages give them.
        let disabled = r#"{"error":{"code":"Forbidden","message":"Operation unwrapKey is not allowed on a disabled key.","innererror":{"code":"KeyDisabled"}}}"#;
        let denied = r#"{"error":{"code":"Forbidden","message":"The user, group or application 'appid=x;oid=y' does not have keys unwrapKey permission on key vault 'v;location=westeurope'.","innererror":{"code":"AccessDenied"}}}"#;
        let missing = r#"{"error":{"code":"KeyNotFound","message":"A key with (name/id) cmk was not found in this key vault."}}"#;
        let bad = r#"{"error":{"code":"BadParameter","message":"The parameter is incorrect."}}"#;
        let cases: [(u16, &str, Op, K); 10] = [
            (403, disabled, Op::Unwrap, K::KeyDisabled),
            (403, denied, Op::Unwrap, K::Forbidden),
            (404, missing, Op::Key, K::KeyNotFound),
            (400, bad, Op::Unwrap, K::UnwrapFailed),
            (400, bad, Op::Wrap, K::InvalidRequest),
            (409, "", Op::Key, K::Conflict),
            (429, "", Op::Unwrap, K::Throttled),
            (500, "", Op::Unwrap, K::Unavailable),
            (503, "not json", Op::Unwrap, K::Unavailable),
            (401, "", Op::Unwrap, K::Unavailable),
        ];
        for (status, body, op, want) in cases {
            let (e, _) = classify("op", op, &http(status, body, &[]));
            assert_eq!(e.kind(), want, "{status} {body}: {e}");
            assert!(e.message().contains(&format!("HTTP {status}")), "{e}");
        }
        let (e, _) = classify("op", Op::Unwrap, &http(403, disabled, &[]));
        assert!(e.message().contains("Forbidden/KeyDisabled"), "{e}");
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_milliseconds() {
        let (_, w) = classify("op", Op::Key, &http(429, "", &[("retry-after", "7")]));
        assert_eq!(w, Some(Duration::from_secs(7)));
        let (_, w) = classify(
            "op",
            Op::Key,
            &http(
                503,
                "",
                &[("retry-after", "7"), ("x-ms-retry-after-ms", "250")],
            ),
        );
        assert_eq!(w, Some(Duration::from_millis(250)));
        let (_, w) = classify("op", Op::Key, &http(503, "", &[]));
        assert_eq!(w, None);
    }

    #[test]
    fn server_text_is_bounded_and_printable() {
        let long = format!(
            r#"{{"error":{{"code":"Forbidden","message":"{}\u0007end"}}}}"#,
            "x".repeat(5000)
        );
        let (e, _) = classify("op", Op::Key, &http(403, &long, &[]));
        assert!(e.message().len() < 1000, "{}", e.message().len());
        assert!(!e.message().contains('\u{7}'));
    }

    #[test]
    fn credential_and_connection_failures_are_transient() {
        let cred = azure_core::Error::with_message(AzKind::Credential, "AADSTS7000215");
        assert_eq!(classify("op", Op::Key, &cred).0.kind(), K::Unavailable);
        let conn = azure_core::Error::with_message(AzKind::Connection, "refused");
        assert_eq!(classify("op", Op::Key, &conn).0.kind(), K::Unavailable);
        let slow = azure_core::Error::with_error(
            AzKind::Io,
            TimedOut(Duration::from_secs(1)),
            "timed out",
        );
        assert_eq!(classify("op", Op::Key, &slow).0.kind(), K::Timeout);
    }
}
