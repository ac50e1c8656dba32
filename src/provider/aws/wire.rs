//! The JSON bodies of the AWS KMS API operations byok uses (AWS KMS API Reference,
//! "Actions"; protocol `awsJson1_1`: `POST /` with `X-Amz-Target: TrentService.<Action>`).

use serde::{Deserialize, Serialize};

/// `{"KeyId": …}`: DescribeKey, GetPublicKey, EnableKey, DisableKey, CancelKeyDeletion.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct KeyIdRequest<'a> {
    pub(super) key_id: &'a str,
}

/// Decrypt (asymmetric: the key and algorithm must be named).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DecryptRequest<'a> {
    pub(super) key_id: &'a str,
    pub(super) ciphertext_blob: &'a str,
    pub(super) encryption_algorithm: &'a str,
}

/// CreateKey.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateKeyRequest<'a> {
    pub(super) key_spec: &'a str,
    pub(super) key_usage: &'a str,
    pub(super) description: &'a str,
}

/// CreateAlias and UpdateAlias.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AliasRequest<'a> {
    pub(super) alias_name: &'a str,
    pub(super) target_key_id: &'a str,
}

/// ScheduleKeyDeletion.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ScheduleDeletionRequest<'a> {
    pub(super) key_id: &'a str,
    pub(super) pending_window_in_days: u32,
}

/// The answer of DescribeKey and CreateKey.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DescribeKeyResponse {
    pub(super) key_metadata: KeyMetadata,
}

/// `KeyMetadata` (the fields byok reads).
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "PascalCase")]
pub(super) struct KeyMetadata {
    pub(super) key_id: String,
    #[serde(default)]
    pub(super) key_state: Option<String>,
    #[serde(default)]
    pub(super) enabled: Option<bool>,
    #[serde(default)]
    pub(super) key_usage: Option<String>,
    /// `KeySpec`; older answers only have `CustomerMasterKeySpec`.
    #[serde(default)]
    pub(super) key_spec: Option<String>,
    #[serde(default)]
    pub(super) customer_master_key_spec: Option<String>,
    #[serde(default)]
    pub(super) encryption_algorithms: Option<Vec<String>>,
    /// Seconds since the Unix epoch (a JSON number with a fraction).
    #[serde(default)]
    pub(super) creation_date: Option<f64>,
}

impl KeyMetadata {
    /// `KeySpec`, or the deprecated `CustomerMasterKeySpec`.
    pub(super) fn spec(&self) -> &str {
        self.key_spec
            .as_deref()
            .or(self.customer_master_key_spec.as_deref())
            .unwrap_or("")
    }
}

/// The answer of GetPublicKey.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct PublicKeyResponse {
    /// DER-encoded `SubjectPublicKeyInfo` (RFC 5280), base64.
    pub(super) public_key: String,
}

/// The answer of Decrypt (the plaintext is base64; wiped by the caller).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DecryptResponse {
    pub(super) plaintext: String,
}

impl Drop for DecryptResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.plaintext);
    }
}

/// An error answer: `{"__type": "…Exception", "message": "…"}` (the `__type` may carry a
/// namespace, `com.amazonaws.kms#NotFoundException`; the message is `message` or `Message`).
#[derive(Deserialize, Default)]
pub(super) struct ErrorBody {
    #[serde(rename = "__type", default)]
    pub(super) error_type: Option<String>,
    #[serde(default)]
    pub(super) message: Option<String>,
    #[serde(rename = "Message", default)]
    pub(super) message_upper: Option<String>,
}

impl ErrorBody {
    /// The exception name without its namespace.
    pub(super) fn code(&self) -> &str {
        let t = self.error_type.as_deref().unwrap_or("");
        t.rsplit('#').next().unwrap_or(t)
    }

    pub(super) fn text(&self) -> &str {
        self.message
            .as_deref()
            .or(self.message_upper.as_deref())
            .unwrap_or("")
    }
}
