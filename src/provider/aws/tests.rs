//! Unit tests of the AWS KMS provider's own side: error mapping on KMS error answers (the
//! shapes of the AWS KMS API Reference, where LocalStack answers differently or not at all),
//! SigV4 signing against an independent implementation, request bodies, metadata mapping.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;

use super::http::{Action, classify_response, server_text, sign_headers};
use super::wire::{DecryptRequest, DescribeKeyResponse, ErrorBody};
use super::{AwsKmsConfig, AwsKmsProvider, kms_algorithm};
use crate::crypto::OaepHash;
use crate::error::ProviderErrorKind as K;
use crate::provider::{KeyOperation, KeyType, WrapAlgorithm};

fn answer(action: Action, status: u16, body: &str) -> crate::ProviderError {
    let err: ErrorBody = serde_json::from_str(body).unwrap_or_default();
    classify_response(action, StatusCode::from_u16(status).expect("status"), &err)
}

const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// Error answers in the `awsJson1_1` shape (`__type`, `message`), with the exception names
/// and HTTP statuses of the AWS KMS API Reference ("Errors" of Decrypt, DescribeKey and
/// GetPublicKey; "Common Errors"). Written after the reference, not captured from a live
/// account (this project has none): each is a case LocalStack does not produce or produces
/// differently.
#[test]
fn kms_errors_map_to_definitive_and_transient_kinds() {
    let cases: &[(Action, u16, String, K)] = &[
        (
            Action::Decrypt,
            400,
            format!(r#"{{"__type":"DisabledException","message":"{KEY} is disabled."}}"#),
            K::KeyDisabled,
        ),
        (
            Action::Decrypt,
            400,
            format!(
                r#"{{"__type":"KMSInvalidStateException","message":"{KEY} is pending deletion."}}"#
            ),
            K::KeyDeleted,
        ),
        (
            Action::Decrypt,
            400,
            format!(
                r#"{{"__type":"KMSInvalidStateException","message":"{KEY} is pending import."}}"#
            ),
            K::KeyDisabled,
        ),
        (
            Action::DescribeKey,
            400,
            format!(r#"{{"__type":"KMSInvalidStateException","message":"{KEY} is Creating."}}"#),
            K::Unavailable,
        ),
        (
            Action::DescribeKey,
            400,
            format!(r#"{{"__type":"NotFoundException","message":"Key '{KEY}' does not exist"}}"#),
            K::KeyNotFound,
        ),
        (
            Action::DescribeKey,
            400,
            r#"{"__type":"com.amazonaws.kms#NotFoundException","Message":"Alias arn:aws:kms:us-east-1:111122223333:alias/x is not found."}"#.to_owned(),
            K::KeyNotFound,
        ),
        // The tenant removed the service from the key policy: a revocation.
        (
            Action::Decrypt,
            400,
            format!(
                r#"{{"__type":"AccessDeniedException","message":"User: arn:aws:iam::444455556666:role/app is not authorized to perform: kms:Decrypt on resource: {KEY} because no resource-based policy allows the kms:Decrypt action"}}"#
            ),
            K::Forbidden,
        ),
        (
            Action::Decrypt,
            400,
            format!(
                r#"{{"__type":"InvalidKeyUsageException","message":"{KEY} key usage is SIGN_VERIFY which is not valid for Decrypt."}}"#
            ),
            K::WrongKeyType,
        ),
        // Real KMS refuses a block made for another key or hash; LocalStack does not.
        (
            Action::Decrypt,
            400,
            r#"{"__type":"InvalidCiphertextException","message":null}"#.to_owned(),
            K::UnwrapFailed,
        ),
        (
            Action::Decrypt,
            400,
            r#"{"__type":"IncorrectKeyException","message":"The key ID in the request does not identify a CMK that can perform this operation."}"#.to_owned(),
            K::UnwrapFailed,
        ),
        (
            Action::Decrypt,
            400,
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_owned(),
            K::Throttled,
        ),
        (
            Action::Decrypt,
            500,
            r#"{"__type":"KMSInternalException","message":"An internal error occurred."}"#
                .to_owned(),
            K::Unavailable,
        ),
        (
            Action::Decrypt,
            503,
            r#"{"__type":"DependencyTimeoutException","message":"The system timed out while trying to fulfill the request."}"#.to_owned(),
            K::Timeout,
        ),
        (
            Action::Decrypt,
            500,
            r#"{"__type":"KeyUnavailableException","message":"The request was rejected because the specified KMS key was not available."}"#.to_owned(),
            K::Unavailable,
        ),
        // The service's own credentials: never the tenant's revocation.
        (
            Action::Decrypt,
            400,
            r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#.to_owned(),
            K::Unavailable,
        ),
        (
            Action::Decrypt,
            400,
            r#"{"__type":"ExpiredTokenException","message":"The security token included in the request is expired"}"#.to_owned(),
            K::Unavailable,
        ),
        (
            Action::Decrypt,
            400,
            r#"{"__type":"InvalidSignatureException","message":"Signature expired"}"#.to_owned(),
            K::Unavailable,
        ),
        (
            Action::CreateAlias,
            400,
            r#"{"__type":"AlreadyExistsException","message":"An alias with the name arn:aws:kms:us-east-1:111122223333:alias/x already exists"}"#.to_owned(),
            K::Conflict,
        ),
        (
            Action::ScheduleKeyDeletion,
            400,
            r#"{"__type":"ValidationException","message":"PendingWindowInDays should be between 7 and 30, but it is 6"}"#.to_owned(),
            K::InvalidRequest,
        ),
        // LocalStack's answer to a Decrypt whose OAEP check fails (AWS: 400
        // InvalidCiphertextException); only for Decrypt.
        (
            Action::Decrypt,
            500,
            r#"{"__type":"InternalError","message":"exception while calling kms.Decrypt: Decryption failed"}"#.to_owned(),
            K::UnwrapFailed,
        ),
        (
            Action::DescribeKey,
            500,
            r#"{"__type":"InternalError","message":"exception while calling kms.DescribeKey: Decryption failed"}"#.to_owned(),
            K::Unavailable,
        ),
        // No JSON at all: the status decides.
        (Action::Decrypt, 502, "<html>Bad Gateway</html>".to_owned(), K::Unavailable),
        (Action::Decrypt, 504, String::new(), K::Timeout),
        (Action::Decrypt, 429, String::new(), K::Throttled),
        (Action::Decrypt, 403, String::new(), K::Forbidden),
        (Action::Decrypt, 400, "{}".to_owned(), K::InvalidRequest),
    ];
    for (action, status, body, kind) in cases {
        let e = answer(*action, *status, body);
        assert_eq!(e.kind(), *kind, "{action:?} {status} {body}: {e}");
        assert!(e.message().contains(&format!("HTTP {status}")), "{e}");
    }
    // Definitive vs transient, as the account lifecycle reads them.
    assert!(answer(Action::Decrypt, 400, &cases[0].2).is_definitive());
    assert!(answer(Action::Decrypt, 400, &cases[1].2).is_definitive());
    assert!(answer(Action::Decrypt, 400, &cases[6].2).is_definitive());
    assert!(answer(Action::Decrypt, 400, &cases[10].2).is_transient());
    assert!(answer(Action::Decrypt, 400, &cases[14].2).is_transient());
}

#[test]
fn error_text_is_bounded_and_folded() {
    let long = format!(
        r#"{{"__type":"NotFoundException","message":"{}\n\u0007{}"}}"#,
        "a".repeat(400),
        "b".repeat(400)
    );
    let e = answer(Action::DescribeKey, 400, &long);
    assert!(e.message().len() < 700, "{}", e.message().len());
    assert!(e.message().ends_with("…(truncated)"), "{e}");
    assert!(!e.message().contains('\n') && !e.message().contains('\u{7}'));
    assert_eq!(server_text("  a \t\r\n b  "), "a b");
}

/// SigV4 headers equal those of botocore 1.42.72 (the AWS SDK for Python's signer, an
/// independent implementation) for the same request, credentials (the AWS documentation's
/// example key) and time. LocalStack does not check signatures, so this is the test that
/// would catch a wrong canonical request.
#[test]
fn sigv4_matches_botocore() {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
    let body = br#"{"KeyId":"alias/x"}"#;
    for (token, signed, signature) in [
        (
            None,
            "content-type;host;x-amz-date;x-amz-target",
            "ba909e7e131fc357940c493b2f342190df923374b4b95b86b7e89bea2a2af0be",
        ),
        (
            Some("SESSIONTOKEN/EXAMPLE+"),
            "content-type;host;x-amz-date;x-amz-security-token;x-amz-target",
            "b6c6f7c1bf5b640ee5009a251320f4cd73dc55678a3d79d3cf0481a8064dd1f0",
        ),
    ] {
        let creds = aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
            None,
            "test",
        );
        let headers = sign_headers(
            creds,
            "us-east-1",
            "https://kms.us-east-1.amazonaws.com/",
            "TrentService.DescribeKey",
            body,
            time,
        )
        .expect("sign");
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            get("authorization"),
            Some(&*format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/kms/aws4_request, \
                 SignedHeaders={signed}, Signature={signature}"
            ))
        );
        assert_eq!(get("x-amz-security-token"), token);
    }
}

#[test]
fn decrypt_names_the_key_arn_and_the_oaep_hash() {
    assert_eq!(
        kms_algorithm(WrapAlgorithm::RsaOaep256).expect("256"),
        ("RSAES_OAEP_SHA_256", OaepHash::Sha256)
    );
    assert_eq!(
        kms_algorithm(WrapAlgorithm::RsaOaep).expect("sha1"),
        ("RSAES_OAEP_SHA_1", OaepHash::Sha1)
    );
    assert_eq!(
        kms_algorithm(WrapAlgorithm::A256Kw)
            .expect_err("aes")
            .kind(),
        K::WrongKeyType
    );
    let body = serde_json::to_string(&DecryptRequest {
        key_id: KEY,
        ciphertext_blob: "AAEC",
        encryption_algorithm: "RSAES_OAEP_SHA_1",
    })
    .expect("json");
    assert_eq!(
        body,
        format!(
            r#"{{"KeyId":"{KEY}","CiphertextBlob":"AAEC","EncryptionAlgorithm":"RSAES_OAEP_SHA_1"}}"#
        )
    );
}

fn provider() -> AwsKmsProvider {
    AwsKmsProvider::new(
        AwsKmsConfig::new(
            "arn:aws:kms:us-west-2:111122223333",
            aws_credential_types::Credentials::new("a", "b", None, None, "t"),
        )
        .expect("config"),
    )
    .expect("provider")
}

/// The DescribeKey answer for an RSA key of the AWS KMS API Reference's DescribeKey
/// examples (disabled, with the deprecated `CustomerMasterKeySpec` beside `KeySpec`).
#[test]
fn describe_key_metadata_maps_to_properties() {
    let doc = r#"{"KeyMetadata":{"AWSAccountId":"111122223333",
        "Arn":"arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "CreationDate":1571767572.317,"CustomerMasterKeySpec":"RSA_2048","Enabled":false,
        "EncryptionAlgorithms":["RSAES_OAEP_SHA_1","RSAES_OAEP_SHA_256"],
        "KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","KeyManager":"CUSTOMER",
        "KeySpec":"RSA_2048","KeyState":"Disabled","KeyUsage":"ENCRYPT_DECRYPT",
        "MultiRegion":false,"Origin":"AWS_KMS","Description":""}}"#;
    let m = serde_json::from_str::<DescribeKeyResponse>(doc)
        .expect("parse")
        .key_metadata;
    let p = provider();
    let props = p.properties("alias/cmk", &m).expect("props");
    assert_eq!(props.version, "1234abcd-12ab-34cd-56ef-1234567890ab");
    assert_eq!(props.name, "alias/cmk");
    assert_eq!(props.vault, "arn:aws:kms:us-west-2:111122223333");
    assert_eq!(props.key_type, KeyType::Rsa { bits: 2048 });
    assert!(!props.enabled);
    assert!(props.operations.contains(&KeyOperation::UnwrapKey));
    assert_eq!(
        props.created,
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(1_571_767_572.317)
    );
    assert_eq!(
        props.key_id().expect("key id").to_string(),
        "arn:aws:kms:us-west-2:111122223333:alias/cmk@1234abcd-12ab-34cd-56ef-1234567890ab"
    );
    // Pending deletion is a definitive KeyDeleted; a sign-only key cannot wrap.
    let pending = doc.replace(
        r#""KeyState":"Disabled""#,
        r#""KeyState":"PendingDeletion""#,
    );
    let m = serde_json::from_str::<DescribeKeyResponse>(&pending)
        .expect("parse")
        .key_metadata;
    assert_eq!(
        p.properties("alias/cmk", &m).expect_err("deleted").kind(),
        K::KeyDeleted
    );
    let ec = doc
        .replace(r#""KeySpec":"RSA_2048""#, r#""KeySpec":"ECC_NIST_P256""#)
        .replace("ENCRYPT_DECRYPT", "SIGN_VERIFY")
        .replace(r#""KeyState":"Disabled""#, r#""KeyState":"Enabled""#);
    let m = serde_json::from_str::<DescribeKeyResponse>(&ec)
        .expect("parse")
        .key_metadata;
    let props = p.properties("alias/ec", &m).expect("props");
    assert!(props.enabled);
    assert!(!props.operations.contains(&KeyOperation::WrapKey));
}

#[test]
fn names_and_versions_that_name_no_key() {
    let p = provider();
    // A key id asked at another key id's "version": that key has no such version.
    let e = p
        .key_id(
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            Some("2234abcd-12ab-34cd-56ef-1234567890ab"),
        )
        .expect_err("other version");
    assert_eq!(e.kind(), K::KeyNotFound);
    assert_eq!(
        p.key_id("alias/a", Some("7"))
            .expect_err("not a key id")
            .kind(),
        K::KeyNotFound
    );
    assert_eq!(
        p.key_id("bad name!", None).expect_err("bad").kind(),
        K::InvalidRequest
    );
    assert_eq!(
        p.key_id("cmk", None)
            .expect("bare alias")
            .aws_arn()
            .as_deref(),
        Some("arn:aws:kms:us-west-2:111122223333:alias/cmk")
    );
    // Configs refuse vaults that are not AWS ARNs, and report the partition's endpoint.
    assert!(
        AwsKmsConfig::new(
            "v.example",
            crate::provider::aws::EnvironmentCredentials::new()
        )
        .is_err()
    );
    let cn = AwsKmsConfig::new(
        "arn:aws-cn:kms:cn-north-1:111122223333",
        crate::provider::aws::EnvironmentCredentials::new(),
    )
    .expect("cn");
    assert!(format!("{cn:?}").contains("https://kms.cn-north-1.amazonaws.com.cn/"));
}
