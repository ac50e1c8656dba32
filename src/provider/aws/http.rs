//! One HTTPS connection pool to an AWS KMS endpoint: SigV4-signed JSON requests, bounded
//! retries, and the classification of every failure into a [`ProviderErrorKind`].

use core::fmt;
use std::error::Error as _;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials as _;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use reqwest::StatusCode;
use reqwest::header::{HeaderName, HeaderValue, RETRY_AFTER};
use serde::Serialize;

use super::wire::ErrorBody;
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::provider::retry::RetryPolicy;

/// The JSON protocol's content type (AWS KMS API Reference, "Common parameters").
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
pub(super) use crate::provider::http::Answer;
use crate::provider::http::read_bounded;

/// The KMS actions byok calls (`X-Amz-Target: TrentService.<action>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    DescribeKey,
    GetPublicKey,
    Decrypt,
    CreateKey,
    CreateAlias,
    UpdateAlias,
    EnableKey,
    DisableKey,
    ScheduleKeyDeletion,
    CancelKeyDeletion,
}

impl Action {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::DescribeKey => "DescribeKey",
            Self::GetPublicKey => "GetPublicKey",
            Self::Decrypt => "Decrypt",
            Self::CreateKey => "CreateKey",
            Self::CreateAlias => "CreateAlias",
            Self::UpdateAlias => "UpdateAlias",
            Self::EnableKey => "EnableKey",
            Self::DisableKey => "DisableKey",
            Self::ScheduleKeyDeletion => "ScheduleKeyDeletion",
            Self::CancelKeyDeletion => "CancelKeyDeletion",
        }
    }
}

/// The shared client: endpoint, signing scope, credentials and pool.
pub(super) struct Connection {
    pub(super) http: reqwest::Client,
    /// `https://kms.<region>.amazonaws.com/` or the configured endpoint, with a final `/`.
    pub(super) endpoint: String,
    pub(super) region: String,
    pub(super) credentials: SharedCredentialsProvider,
    pub(super) retry: RetryPolicy,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Sends `action` with `body`, retrying transient failures within the retry policy
    /// (every KMS action byok sends is idempotent or fails harmlessly when repeated).
    pub(super) async fn call<B: Serialize>(
        &self,
        action: Action,
        body: &B,
    ) -> Result<Answer, ProviderError> {
        let body = zeroize::Zeroizing::new(serde_json::to_vec(body).map_err(|e| {
            ProviderError::new(
                K::InvalidRequest,
                format!("encoding {}: {e}", action.name()),
            )
        })?);
        self.retry.run(true, || self.once(action, &body)).await
    }

    async fn once(
        &self,
        action: Action,
        body: &[u8],
    ) -> Result<Answer, (ProviderError, Option<Duration>)> {
        let what = action.name();
        let target = format!("TrentService.{what}");
        let creds = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| (credentials_error(what, &e), None))?;
        let signed = sign_headers(
            creds,
            &self.region,
            &self.endpoint,
            &target,
            body,
            SystemTime::now(),
        )
        .map_err(|e| (e, None))?;
        let mut req = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header("x-amz-target", &target);
        for (name, value) in &signed {
            let (Ok(n), Ok(mut v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return Err((
                    ProviderError::new(
                        K::InvalidRequest,
                        "the AWS credentials hold characters an HTTP header cannot carry",
                    ),
                    None,
                ));
            };
            // The session token and the signature are credentials.
            v.set_sensitive(true);
            req = req.header(n, v);
        }
        let resp = req
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| (transport_error(what, e), None))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let header_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_owned());
        let (bytes, cut) = read_bounded(resp)
            .await
            .map_err(|e| (transport_error(what, e), None))?;
        if status.is_success() && !cut {
            return Ok(Answer { body: bytes });
        }
        let mut err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        if err.error_type.is_none() {
            err.error_type = header_type;
        }
        Err((classify_response(action, status, &err), retry_after))
    }
}

/// The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token` for temporary
/// credentials) for a KMS JSON request at `time` (AWS General Reference, "Signature Version 4
/// signing process"; the signed headers are `content-type`, `host` and `x-amz-target`).
pub(super) fn sign_headers(
    creds: aws_credential_types::Credentials,
    region: &str,
    endpoint: &str,
    target: &str,
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, ProviderError> {
    let bad = |e: &dyn fmt::Display| {
        ProviderError::new(K::InvalidRequest, format!("AWS KMS {target}: signing: {e}"))
    };
    let identity = creds.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("kms")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| bad(&e))?
        .into();
    let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", target)];
    let signed = SignableRequest::new(
        "POST",
        endpoint,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .and_then(|r| sign(r, &params))
    .map_err(|e| bad(&e))?;
    let (instructions, _signature) = signed.into_parts();
    Ok(instructions
        .headers()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect())
}

/// The error for a non-success answer (also used by the unit tests with recorded answers).
pub(super) fn classify_response(
    action: Action,
    status: StatusCode,
    err: &ErrorBody,
) -> ProviderError {
    let kind = classify(action, status, err.code(), err.text());
    let mut text = server_text(err.text());
    if text.is_empty() {
        text = status
            .canonical_reason()
            .unwrap_or("no error text")
            .to_owned();
    }
    let code = match err.code() {
        "" => String::new(),
        c => format!("{}: ", server_text(c)),
    };
    ProviderError::new(
        kind,
        format!(
            "AWS KMS {}: HTTP {}: {code}{text}",
            action.name(),
            status.as_u16()
        ),
    )
}

/// Maps a KMS error to a kind (AWS KMS API Reference, the "Errors" of each action, and
/// "Common errors"). Definitive: the key is disabled (`DisabledException`), pending deletion
/// (`KMSInvalidStateException` naming it), not found, access denied, wrong key usage.
/// Transient: throttling, internal errors, dependency timeouts, 5xx — and failures of the
/// *service's own* credentials (expired token, bad signature), which are never the tenant's
/// revocation (an operator alert, not a locked account).
pub(super) fn classify(action: Action, status: StatusCode, code: &str, text: &str) -> K {
    let lower = text.to_ascii_lowercase();
    match code {
        "NotFoundException" => K::KeyNotFound,
        "DisabledException" => K::KeyDisabled,
        "KMSInvalidStateException" => {
            if lower.contains("pending deletion") || lower.contains("pendingdeletion") {
                K::KeyDeleted
            } else if lower.contains("disabled") {
                K::KeyDisabled
            } else if lower.contains("pending import") || lower.contains("pendingimport") {
                // No key material: nothing can be decrypted until the owner imports it.
                K::KeyDisabled
            } else {
                // Creating, Updating, Unavailable (a disconnected custom key store): the
                // state may change without the owner revoking anything.
                K::Unavailable
            }
        }
        "AccessDeniedException" => K::Forbidden,
        "InvalidKeyUsageException" | "UnsupportedOperationException" => K::WrongKeyType,
        "IncorrectKeyException" | "InvalidCiphertextException" => K::UnwrapFailed,
        "ThrottlingException" | "LimitExceededException" | "TooManyRequestsException" => {
            K::Throttled
        }
        "DependencyTimeoutException" => K::Timeout,
        "KMSInternalException"
        | "KeyUnavailableException"
        | "ServiceUnavailableException"
        | "InternalFailure" => K::Unavailable,
        // The service's own credentials or clock: an operator fault, not the tenant's key.
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "RequestExpired" => K::Unavailable,
        "AlreadyExistsException" => K::Conflict,
        "InvalidArnException"
        | "InvalidAliasNameException"
        | "ValidationException"
        | "InvalidGrantTokenException"
        | "SerializationException" => K::InvalidRequest,
        // LocalStack (not AWS) answers a Decrypt whose OAEP check fails with
        // `500 InternalError: exception while calling kms.Decrypt: Decryption failed`
        // where AWS says `400 InvalidCiphertextException` (docs/AWS_KMS.md).
        "InternalError"
            if action == Action::Decrypt
                && (lower.contains("decryption failed")
                    || lower.contains("ciphertext length must be")) =>
        {
            K::UnwrapFailed
        }
        _ => match status.as_u16() {
            401 | 403 => K::Forbidden,
            404 => K::KeyNotFound,
            429 => K::Throttled,
            504 => K::Timeout,
            s if s >= 500 => K::Unavailable,
            s if (300..400).contains(&s) => K::Unavailable,
            _ => K::InvalidRequest,
        },
    }
}

/// Server text made fit for an error message (see [`crate::provider::http::server_text`];
/// byok sends no plaintext to KMS, so there is no request body to guard against).
pub(super) fn server_text(raw: &str) -> String {
    crate::provider::http::server_text(raw, None)
}

/// A failure to get the service's own credentials: transient for the tenant (the service
/// cannot ask KMS at all), with the source's explanation for the operator.
fn credentials_error(
    what: &str,
    e: &aws_credential_types::provider::error::CredentialsError,
) -> ProviderError {
    let mut detail = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    ProviderError::new(
        K::Unavailable,
        format!(
            "AWS KMS {what}: the service's AWS credentials are not available ({}); this is \
             the service's fault, not the tenant's key",
            server_text(&detail)
        ),
    )
}

/// A failure before any HTTP status (see [`crate::provider::http::transport_error`]).
fn transport_error(what: &str, e: reqwest::Error) -> ProviderError {
    crate::provider::http::transport_error("AWS KMS", what, "AwsKmsConfig::ca_pem", e)
}
