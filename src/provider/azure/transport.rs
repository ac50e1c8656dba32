//! The SDK's HTTP transport: `azure_core`'s [`HttpClient`] over this crate's reqwest 0.12 /
//! rustls (*ring*) client, so the feature builds no second TLS stack, and so that the vault's
//! CA, timeouts, proxy choice and host pinning are this crate's settings.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::error::{Error as AzError, ErrorKind as AzKind};
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::{AsyncRawResponse, Body, HttpClient, Method, Request, StatusCode};

/// The largest response body read; Key Vault answers are a few KiB (a 4096-bit JWK is ~1 KiB).
pub(super) const MAX_BODY: usize = 256 * 1024;

/// A timeout raised by this transport (kept as the cause, so the classifier can tell a
/// timeout from a refused connection without reading text).
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
pub(super) struct TimedOut(pub(super) Duration);

/// reqwest 0.12 as the SDK's [`HttpClient`].
#[derive(Debug)]
pub(super) struct ReqwestTransport {
    pub(super) http: reqwest::Client,
    pub(super) request_timeout: Duration,
}

impl ReqwestTransport {
    pub(super) fn into_transport(self) -> azure_core::http::Transport {
        azure_core::http::Transport::new(Arc::new(self))
    }
}

fn method(m: Method) -> azure_core::Result<reqwest::Method> {
    Ok(match m {
        Method::Delete => reqwest::Method::DELETE,
        Method::Get => reqwest::Method::GET,
        Method::Head => reqwest::Method::HEAD,
        Method::Patch => reqwest::Method::PATCH,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        other => {
            return Err(AzError::with_message(
                AzKind::Other,
                format!("HTTP method {other:?} is not used by Key Vault"),
            ));
        }
    })
}

#[async_trait]
impl HttpClient for ReqwestTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut req = self
            .http
            .request(method(request.method())?, request.url().as_str());
        for (name, value) in request.headers().iter() {
            let mut v = reqwest::header::HeaderValue::from_str(value.as_str())
                .map_err(|e| AzError::with_error(AzKind::Other, e, "invalid header value"))?;
            if name.as_str().eq_ignore_ascii_case("authorization") {
                v.set_sensitive(true);
            }
            req = req.header(name.as_str(), v);
        }
        match request.body() {
            Body::Bytes(b) => {
                if !b.is_empty() {
                    req = req.body(b.clone());
                }
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(AzError::with_message(
                    AzKind::Other,
                    "streaming request bodies are not used by Key Vault key operations",
                ));
            }
        }
        let timeout = self.request_timeout;
        let exchange = async {
            let rsp = req.send().await?;
            let status = rsp.status().as_u16();
            let mut headers = Headers::new();
            for (k, v) in rsp.headers() {
                if let Ok(v) = v.to_str() {
                    headers.insert(
                        HeaderName::from(k.as_str().to_owned()),
                        HeaderValue::from(v.to_owned()),
                    );
                }
            }
            let mut body = Vec::new();
            let mut rsp = rsp;
            while let Some(chunk) = rsp.chunk().await? {
                if body.len() + chunk.len() > MAX_BODY {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(AzError::with_error(
                AzKind::Io,
                TimedOut(timeout),
                "Key Vault request timed out",
            )),
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    AzKind::Connection
                } else {
                    AzKind::Io
                };
                Err(AzError::with_error(kind, e, "Key Vault request failed"))
            }
            Ok(Ok((status, headers, body))) => Ok(AsyncRawResponse::from_bytes(
                StatusCode::from(status),
                headers,
                body,
            )),
        }
    }
}
