//! Unit tests of the Transit wire format and error classification (no server needed).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;

use super::http::{Op, classify};
use super::wire::{format_ciphertext, parse_ciphertext, parse_rfc3339, parse_version};
use super::{RetryPolicy, TransitAdmin, TransitConfig, TransitProvider, shape_fits};
use crate::error::ProviderErrorKind as K;
use crate::provider::http::{MAX_TEXT, server_text};
use crate::provider::{Identity, Permissions, WrapAlgorithm};
use crate::secret::SecretString;

fn c(status: u16, text: &str, op: Op) -> K {
    let errors = if text.is_empty() {
        Vec::new()
    } else {
        vec![text.to_owned()]
    };
    classify(StatusCode::from_u16(status).expect("status"), &errors, op)
}

#[test]
fn server_answers_are_classified_as_the_lifecycle_needs() {
    use Op::*;
    let cases = [
        (
            403,
            "1 error occurred:\n\t* permission denied\n\n",
            Decrypt,
            K::Forbidden,
        ),
        (403, "permission denied", Key, K::Forbidden),
        (404, "", Key, K::KeyNotFound),
        (
            404,
            "no handler for route \"nomount/keys/x\". route entry not found.",
            Key,
            K::VaultNotFound,
        ),
        (400, "encryption key not found", Decrypt, K::KeyNotFound),
        (400, "key not found", Key, K::KeyNotFound),
        (
            400,
            "no existing key named nope could be found",
            Key,
            K::KeyNotFound,
        ),
        (
            400,
            "refusing to use soft-deleted key",
            Decrypt,
            K::KeyDeleted,
        ),
        (
            500,
            "1 error occurred:\n\t* refusing to use soft-deleted key\n\n",
            Key,
            K::KeyDeleted,
        ),
        (
            400,
            "ciphertext or signature version is disallowed by policy (too old)",
            Decrypt,
            K::KeyDisabled,
        ),
        (400, "no such key version", Encrypt, K::KeyDisabled),
        (
            400,
            "requested version for encryption is higher than the latest key version",
            Encrypt,
            K::KeyNotFound,
        ),
        (
            400,
            "invalid ciphertext: version is too new",
            Decrypt,
            K::KeyNotFound,
        ),
        (
            500,
            "1 error occurred:\n\t* failed to RSA decrypt the ciphertext: crypto/rsa: decryption error\n\n",
            Decrypt,
            K::UnwrapFailed,
        ),
        (
            400,
            "invalid ciphertext: no prefix",
            Decrypt,
            K::UnwrapFailed,
        ),
        (400, "invalid ciphertext length", Decrypt, K::UnwrapFailed),
        (
            400,
            "cipher: message authentication failed",
            Decrypt,
            K::UnwrapFailed,
        ),
        (
            500,
            "1 error occurred:\n\t* failed to RSA encrypt the plaintext: crypto/rsa: message too long for RSA key size\n\n",
            Encrypt,
            K::InvalidRequest,
        ),
        (
            400,
            "message encryption not supported for key type ecdsa-p256",
            Encrypt,
            K::WrongKeyType,
        ),
        (
            400,
            "illegal base64 data at input byte 3",
            Encrypt,
            K::InvalidRequest,
        ),
        (429, "", Decrypt, K::Throttled),
        (500, "internal error", Decrypt, K::Unavailable),
        (502, "", Decrypt, K::Unavailable),
        (503, "Vault is sealed", Key, K::Unavailable),
        (504, "", Decrypt, K::Timeout),
        (307, "", Decrypt, K::Unavailable),
    ];
    for (status, text, op, want) in cases {
        assert_eq!(c(status, text, op), want, "{status} {text:?} {op:?}");
    }
    // Definitive answers never become transient.
    for (status, text) in [
        (403, "permission denied"),
        (400, "refusing to use soft-deleted key"),
    ] {
        assert!(!c(status, text, Op::Decrypt).is_transient());
    }
}

#[test]
fn versions_and_ciphertexts() {
    assert_eq!(parse_version("1"), Some(1));
    assert_eq!(parse_version("42"), Some(42));
    for bad in [
        "",
        "0",
        "01",
        "-1",
        "v1",
        "1.0",
        "latest",
        "99999999999999999999",
    ] {
        assert_eq!(parse_version(bad), None, "{bad}");
    }
    let s = format_ciphertext(3, &[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(s, "vault:v3:3q2+7w==");
    assert_eq!(
        parse_ciphertext(&s),
        Some((3, vec![0xde, 0xad, 0xbe, 0xef]))
    );
    for bad in [
        "",
        "vault:v0:AAAA",
        "vault:vx:AAAA",
        "vault:v1",
        "vault:v1:!!",
        "v1:AAAA",
    ] {
        assert_eq!(parse_ciphertext(bad), None, "{bad}");
    }
}

#[test]
fn rfc3339_timestamps() {
    let t = parse_rfc3339("2026-11-24T13:41:21.189905898Z").expect("parse");
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after epoch");
    assert_eq!(d.as_secs(), 1_795_527_681);
    assert_eq!(d.subsec_nanos(), 189_905_898);
    assert_eq!(
        parse_rfc3339("1970-01-01T01:00:00+01:00"),
        Some(SystemTime::UNIX_EPOCH)
    );
    assert_eq!(
        parse_rfc3339("2000-03-01T00:00:00.5Z"),
        Some(SystemTime::UNIX_EPOCH + Duration::new(951_868_800, 500_000_000))
    );
    for bad in [
        "",
        "2026-13-01T00:00:00Z",
        "2026-11-24 13:41:21",
        "2026-11-24T13:41:21.Z",
        "yesterday",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
}

#[test]
fn policies_grant_exactly_the_permissions() {
    let all = TransitAdmin::policy_hcl("transit", None, Permissions::CMK);
    assert!(all.contains("path \"transit/keys/+\" {\n  capabilities = [\"read\"]"));
    assert!(all.contains("path \"transit/encrypt/+\" {\n  capabilities = [\"update\"]"));
    assert!(all.contains("path \"transit/decrypt/+\" {\n  capabilities = [\"update\"]"));
    assert!(!all.contains("create"));
    let wrap_only = TransitAdmin::policy_hcl(
        "kms",
        Some(&["a", "b"]),
        Permissions {
            get: false,
            wrap_key: true,
            unwrap_key: false,
        },
    );
    assert_eq!(wrap_only.matches("path").count(), 2, "{wrap_only}");
    assert!(wrap_only.contains("kms/encrypt/a") && wrap_only.contains("kms/encrypt/b"));
    let none = TransitAdmin::policy_hcl("transit", None, Permissions::NONE);
    assert!(none.contains("deny"), "{none}");
    assert_eq!(
        TransitAdmin::policy_name(&Identity::new("app-1")),
        "byok-app-1"
    );
    let odd = TransitAdmin::policy_name(&Identity::new("App/1"));
    assert!(
        odd.starts_with("byok-_pp_1-") && odd.len() == "byok-_pp_1-".len() + 8,
        "{odd}"
    );
    assert_ne!(odd, TransitAdmin::policy_name(&Identity::new("app/1")));
}

#[test]
fn backoff_is_bounded_and_grows() {
    let r = RetryPolicy::new(5, Duration::from_millis(100), Duration::from_millis(300));
    for n in 0..40 {
        assert!(r.backoff(n) <= Duration::from_millis(300));
    }
    assert!(
        r.backoff(0) >= Duration::from_millis(75) && r.backoff(0) <= Duration::from_millis(125)
    );
    assert_eq!(RetryPolicy::none().backoff(3), Duration::ZERO);
}

#[test]
fn shapes_of_wrapped_blobs() {
    assert!(shape_fits(
        WrapAlgorithm::RsaOaep256,
        &[0; 256],
        32,
        Some(256)
    ));
    assert!(!shape_fits(WrapAlgorithm::RsaOaep256, &[0; 60], 32, None));
    assert!(shape_fits(WrapAlgorithm::RsaOaep256, &[0; 512], 32, None));
    assert!(shape_fits(WrapAlgorithm::A256Kw, &[0; 60], 32, None));
    assert!(!shape_fits(WrapAlgorithm::A256Kw, &[0; 256], 32, None));
}

#[test]
fn config_never_prints_the_token_and_derives_the_host() {
    let cfg = TransitConfig::new("http://127.0.0.1:18200/", SecretString::new("s.topsecret"))
        .allow_insecure_http(true);
    assert!(!format!("{cfg:?}").contains("topsecret"));
    let p = TransitProvider::new(cfg.clone()).expect("provider");
    assert_eq!(p.vault_host(), "127.0.0.1:18200");
    assert!(!format!("{p:?}").contains("topsecret"));
    let admin = TransitAdmin::new(cfg.clone()).expect("admin");
    assert!(!format!("{admin:?}").contains("topsecret"));
    let named = TransitProvider::new(cfg.clone().vault_host("Vault.Example")).expect("named");
    assert_eq!(named.vault_host(), "vault.example");
    let https = TransitProvider::new(TransitConfig::new(
        "https://vault.example",
        SecretString::new("t"),
    ))
    .expect("https");
    assert_eq!(https.vault_host(), "vault.example");
    for bad in ["ftp://x", "not a url", ""] {
        let e =
            TransitProvider::new(TransitConfig::new(bad, SecretString::new("t"))).expect_err(bad);
        assert_eq!(e.kind(), K::InvalidRequest, "{bad}");
    }
    let e = TransitProvider::new(
        cfg.ca_pem("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"),
    )
    .expect_err("bad ca");
    assert_eq!(e.kind(), K::InvalidRequest);
}

#[test]
fn plain_http_is_refused_unless_opted_in() {
    for addr in ["http://127.0.0.1:18200", "HTTP://vault.example:8200"] {
        let cfg = TransitConfig::new(addr, SecretString::new("t"));
        let e = TransitProvider::new(cfg.clone()).expect_err(addr);
        assert_eq!(e.kind(), K::InvalidRequest, "{e}");
        assert!(e.message().contains("allow_insecure_http(true)"), "{e}");
        let e = TransitAdmin::new(cfg.clone()).expect_err(addr);
        assert!(e.message().contains("allow_insecure_http"), "{e}");
        TransitProvider::new(cfg.allow_insecure_http(true)).expect("opted in");
    }
    TransitProvider::new(TransitConfig::new(
        "https://vault.example",
        SecretString::new("t"),
    ))
    .expect("https needs no opt-in");
    let e = TransitProvider::new(
        TransitConfig::new("https://vault.example", SecretString::new("t")).proxy("::not a url"),
    )
    .expect_err("bad proxy");
    assert_eq!(e.kind(), K::InvalidRequest, "{e}");
}

#[test]
fn an_address_no_key_id_can_name_is_refused_with_the_workaround() {
    for addr in [
        "https://[::1]:8200",
        "http://[::1]:8200",
        "https://[2001:db8::1]",
    ] {
        let cfg = TransitConfig::new(addr, SecretString::new("t")).allow_insecure_http(true);
        let host = addr.split("//").nth(1).unwrap_or_default();
        match crate::KeyId::new(host, "k", None) {
            // Should key identifiers learn IPv6 literals, the address becomes fine.
            Ok(_) => {
                TransitProvider::new(cfg.clone()).expect("a nameable host");
            }
            Err(_) => {
                let e = TransitProvider::new(cfg.clone()).expect_err(addr);
                assert_eq!(e.kind(), K::InvalidRequest, "{e}");
                assert!(e.message().contains("TransitConfig::vault_host"), "{e}");
                let e = TransitAdmin::new(cfg.clone()).expect_err(addr);
                assert!(e.message().contains("DNS name"), "{e}");
            }
        }
        // The workaround: a name for key identifiers.
        let p = TransitProvider::new(cfg.vault_host("vault6.internal")).expect("named");
        assert_eq!(p.vault_host(), "vault6.internal");
        crate::KeyId::new(p.vault_host(), "k", None).expect("nameable");
    }
}

#[test]
fn server_text_is_bounded_printable_and_never_echoes_the_request() {
    let long = "x".repeat(5_000_000);
    let t = server_text(&long, None);
    assert!(t.chars().count() <= MAX_TEXT + 20, "{}", t.len());
    assert!(t.ends_with("(truncated)"));
    let t = server_text("bad\u{1b}[31m red\r\nline\u{202e}evil\0end\t", None);
    assert!(
        !t.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{t:?}"
    );
    assert_eq!(t, "bad [31m red line evil end");
    let body = r#"{"plaintext":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","key_version":1}"#;
    for echo in [
        format!("<html>bad gateway for {body}</html>"),
        "upstream said: AAECAwQFBgcICQoL".to_owned(),
        body.replace('"', "&quot;"),
        body.replace('/', "\\/").replace('"', "\\\""),
    ] {
        let t = server_text(&echo, Some(body));
        assert!(!t.contains("AAECAwQF"), "{t}");
        assert!(t.contains("not shown"), "{t}");
    }
    // Vault's own texts pass.
    for ok in [
        "permission denied",
        "encryption key not found",
        "refusing to use soft-deleted key",
    ] {
        assert_eq!(server_text(ok, Some(body)), ok);
    }
}
