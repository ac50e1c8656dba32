//! Key identifiers in the Key Vault URI form.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A key in a vault: the vault's host, the key's name and an optional version.
///
/// Parses and prints the URI form users paste from a cloud portal:
/// `https://<vault-host>/keys/<name>` (follows the latest version) and
/// `https://<vault-host>/keys/<name>/<version>` (pinned). Serialises as that URI.
///
/// # Equivalent spellings are one identifier
///
/// Every constructor ([`KeyId::new`], [`FromStr`], serde) normalises in one place, following
/// RFC 3986 (sections 3.1, 6.2.2 and 6.2.3), so that two spellings of the same key compare
/// and hash equal and print the same:
///
/// - the scheme is case-insensitive (`HTTPS://` is accepted) and printed as `https://`;
/// - the host is case-insensitive and printed in lower case; one trailing dot
///   (`contoso.vault.example.`) is removed;
/// - the port must be a number from 1 to 65535; leading zeros are dropped (`:08200` is
///   `:8200`); an empty port and the default port 443 are dropped altogether
///   (`https://v.example:443/keys/k` is `https://v.example/keys/k`);
/// - one trailing `/` is ignored.
///
/// # Key names are case-insensitive
///
/// Azure Key Vault key names are case-insensitive, so `…/keys/CMK` and `…/keys/cmk` name
/// the same key. A `KeyId` keeps the name in lower case (`CMK` parses, compares and prints as
/// `cmk`), and the software vaults ([`crate::provider::memory::InMemoryVault`], [`crate::provider::file::FileVault`]) look
/// names up case-insensitively (a key created as `CMK` is the key `cmk`). Backends whose
/// names are case-sensitive (OpenBao/Vault Transit, PKCS#11 labels) are reached with the
/// lower-case name: name their keys in lower case. Versions are opaque and kept as written.
///
/// ```
/// use byok::KeyId;
/// let id: KeyId = "https://contoso.vault.example/keys/tenant-a/0a1b2c".parse()?;
/// assert_eq!(id.vault(), "contoso.vault.example");
/// assert_eq!(id.name(), "tenant-a");
/// assert_eq!(id.version(), Some("0a1b2c"));
/// assert_eq!(id.to_string(), "https://contoso.vault.example/keys/tenant-a/0a1b2c");
/// # Ok::<(), byok::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId {
    vault: String,
    name: String,
    version: Option<String>,
}

impl KeyId {
    /// Builds an identifier from its parts, validating each.
    ///
    /// # Errors
    /// [`Error::InvalidKeyId`] if the vault host, name or version has characters or a length a
    /// vault would refuse.
    pub fn new(vault: &str, name: &str, version: Option<&str>) -> Result<Self, Error> {
        let shown = match version {
            Some(v) => format!("https://{vault}/keys/{name}/{v}"),
            None => format!("https://{vault}/keys/{name}"),
        };
        Self::from_parts(vault, name, version).map_err(|reason| invalid(&shown, reason))
    }

    /// The one place where identifiers are validated and normalised: every constructor
    /// (`new`, `FromStr`, serde) goes through here, so equivalent spellings give equal values.
    fn from_parts(vault: &str, name: &str, version: Option<&str>) -> Result<Self, &'static str> {
        let vault = normalize_vault(vault)?;
        check_name(name)?;
        if let Some(v) = version {
            check_version(v)?;
        }
        Ok(Self {
            vault,
            name: name.to_ascii_lowercase(),
            version: version.map(str::to_owned),
        })
    }

    /// The vault's authority in normal form: the host in lower case without a trailing dot,
    /// followed by `:<port>` only for a port other than 443 (without leading zeros), e.g.
    /// `contoso.vault.example` or `127.0.0.1:8200`.
    pub fn vault(&self) -> &str {
        &self.vault
    }

    /// The key's name, in lower case (see the type's documentation on case).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pinned version, or `None` to follow the latest.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The same key pinned at `version`.
    ///
    /// # Errors
    /// [`Error::InvalidKeyId`] if `version` is not a valid version string.
    pub fn with_version(&self, version: &str) -> Result<Self, Error> {
        Self::new(&self.vault, &self.name, Some(version))
    }

    /// The same key without a version (following the latest).
    pub fn versionless(&self) -> Self {
        Self {
            version: None,
            ..self.clone()
        }
    }
}

fn invalid(input: &str, reason: &'static str) -> Error {
    Error::InvalidKeyId {
        input: input.to_owned(),
        reason,
    }
}

/// The HTTPS default port, dropped from the normal form.
const DEFAULT_PORT: u16 = 443;

/// Validates a vault authority (`host` or `host:port`) and returns its normal form (RFC 3986
/// section 6.2.2 and 6.2.3): host in lower case, one trailing dot removed, the port as a
/// number in 1..=65535 without leading zeros, and no port at all when it is empty or 443.
pub(crate) fn normalize_vault(h: &str) -> Result<String, &'static str> {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => {
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err("the vault port must be a number");
            }
            let digits = p.trim_start_matches('0');
            match digits.parse::<u16>() {
                Ok(n) if n != 0 && digits.len() <= 5 => Some(n).filter(|&n| n != DEFAULT_PORT),
                _ => return Err("the vault port must be a number from 1 to 65535"),
            }
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err("the vault host must be 1 to 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !host.split('.').all(label_ok) {
        return Err("the vault host must be a DNS name (letters, digits, '-' and '.')");
    }
    let host = host.to_ascii_lowercase();
    Ok(match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

/// The normal form of a vault host where the caller cannot fail (vault registries and
/// properties): [`normalize_vault`]'s result, or the input in lower case when it is not a
/// valid authority (no `KeyId` can name such a vault anyway).
pub(crate) fn canonical_vault(h: &str) -> String {
    normalize_vault(h).unwrap_or_else(|_| h.to_ascii_lowercase())
}

pub(crate) fn check_name(n: &str) -> Result<(), &'static str> {
    if n.is_empty() || n.len() > 127 {
        return Err("the key name must be 1 to 127 characters");
    }
    if n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(())
    } else {
        Err("the key name may only hold letters, digits and '-'")
    }
}

fn check_version(v: &str) -> Result<(), &'static str> {
    if v.is_empty() || v.len() > 64 {
        return Err("the key version must be 1 to 64 characters");
    }
    if v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err("the key version may only hold letters and digits")
    }
}

impl FromStr for KeyId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        // Schemes are case-insensitive (RFC 3986 section 3.1).
        let rest = match (s.get(..8), s.get(8..)) {
            (Some(scheme), Some(rest)) if scheme.eq_ignore_ascii_case("https://") => rest,
            _ => return Err(invalid(s, "a key identifier starts with https://")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['?', '#', '@', ' ']) {
            return Err(invalid(
                s,
                "a key identifier has no query, fragment or user part",
            ));
        }
        let mut parts = rest.split('/');
        let host = parts.next().unwrap_or_default();
        if parts.next() != Some("keys") {
            return Err(invalid(s, "the path must be /keys/<name>[/<version>]"));
        }
        let name = parts
            .next()
            .ok_or_else(|| invalid(s, "the key name is missing"))?;
        let version = parts.next();
        if parts.next().is_some() {
            return Err(invalid(s, "the path must be /keys/<name>[/<version>]"));
        }
        Self::from_parts(host, name, version).map_err(|r| invalid(s, r))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}/keys/{}", self.vault, self.name)?;
        if let Some(v) = &self.version {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The parser's properties, checked for `input` (used by the fuzz target `key_id` and by the
/// unit tests over generated strings). Panics only on a bug:
///
/// - parsing never panics;
/// - parse → print → parse is the identity, and printing is a fixed point;
/// - the parts rebuild the same identifier through [`KeyId::new`];
/// - equivalent spellings (scheme and host case, name case, `:443`, trailing dot, leading
///   zeros of the port, a trailing slash) parse to an equal identifier with an equal hash.
#[cfg(any(test, fuzzing))]
pub(crate) fn check_parser_properties(input: &str) {
    use std::hash::{BuildHasher, RandomState};
    let Ok(id) = input.parse::<KeyId>() else {
        return;
    };
    let hasher = RandomState::new();
    let printed = id.to_string();
    let again: KeyId = printed
        .parse()
        .unwrap_or_else(|e| panic!("{input:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(again, id, "parse -> print -> parse changed {input:?}");
    assert_eq!(again.to_string(), printed, "printing is not a fixed point");
    assert_eq!(hasher.hash_one(&again), hasher.hash_one(&id));
    let rebuilt = KeyId::new(id.vault(), id.name(), id.version())
        .unwrap_or_else(|e| panic!("the parts of {printed:?} do not rebuild it: {e}"));
    assert_eq!(rebuilt, id);
    let (host, port) = match id.vault().rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.to_owned()),
        None => (id.vault().to_owned(), "443".to_owned()),
    };
    let tail = match id.version() {
        Some(v) => format!("{}/{v}", id.name().to_ascii_uppercase()),
        None => id.name().to_ascii_uppercase(),
    };
    for spelling in [
        format!("HTTPS://{}:{port}/keys/{tail}", host.to_ascii_uppercase()),
        format!("hTTpS://{host}.:00{port}/keys/{tail}/"),
        format!("https://{host}.:{port}/keys/{tail}"),
    ] {
        let other: KeyId = spelling
            .parse()
            .unwrap_or_else(|e| panic!("{spelling:?}, a spelling of {printed:?}, fails: {e}"));
        assert_eq!(other, id, "{spelling:?} differs from {printed:?}");
        assert_eq!(hasher.hash_one(&other), hasher.hash_one(&id));
        assert_eq!(other.to_string(), printed);
    }
}

impl TryFrom<String> for KeyId {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_round_trips() {
        for s in [
            "https://contoso.vault.azure.net/keys/cmk",
            "https://contoso.vault.azure.net/keys/cmk/78deebed173b48e48f55abf87ed4cf71",
            "https://127.0.0.1:8200/keys/a-b-c/3",
        ] {
            let id: KeyId = s.parse().expect(s);
            assert_eq!(id.to_string(), s);
            let json = serde_json::to_string(&id).expect("json");
            assert_eq!(json, format!("\"{s}\""));
            let back: KeyId = serde_json::from_str(&json).expect("back");
            assert_eq!(back, id);
        }
        let id: KeyId = "https://Contoso.Vault.Example/keys/k/"
            .parse()
            .expect("trailing slash");
        assert_eq!(id.vault(), "contoso.vault.example");
        assert_eq!(id.version(), None);
        assert_eq!(id.with_version("7").expect("v").version(), Some("7"));
        assert_eq!(id.with_version("7").expect("v").versionless(), id);
    }

    #[test]
    fn malformed_uris_are_clear_errors() {
        for s in [
            "",
            "http://v.example/keys/k",
            "https://v.example/secrets/k",
            "https://v.example/keys/",
            "https://v.example/keys/k/1/extra",
            "https://v.example/keys/bad_name",
            "https://v.example/keys/k/v-1",
            "https:///keys/k",
            "https://v.example/keys/k?api-version=7.4",
            "https://-bad.example/keys/k",
            "https://v.example:port/keys/k",
            "https://v.example:0/keys/k",
            "https://v.example:000/keys/k",
            "https://v.example:65536/keys/k",
            "https://v.example:99999/keys/k",
            "https://v.example:-1/keys/k",
            "https://v.example:+8200/keys/k",
            "https://v.example../keys/k",
            "https://./keys/k",
            "https://:8200/keys/k",
            "httpsx//v.example/keys/k",
        ] {
            match s.parse::<KeyId>() {
                Err(Error::InvalidKeyId { input, reason }) => {
                    assert_eq!(input, s);
                    assert!(!reason.is_empty());
                }
                other => panic!("{s:?} gave {other:?}"),
            }
        }
        assert!(serde_json::from_str::<KeyId>("\"https://v.example/nope\"").is_err());
    }

    #[test]
    fn equivalent_spellings_are_one_key() {
        use std::collections::HashSet;
        let canonical: KeyId = "https://contoso.vault.example/keys/cmk".parse().expect("c");
        let mut set = HashSet::new();
        for s in [
            "https://contoso.vault.example/keys/cmk",
            "https://contoso.vault.example:443/keys/cmk",
            "https://contoso.vault.example:0443/keys/cmk",
            "https://contoso.vault.example:/keys/cmk",
            "HTTPS://Contoso.Vault.Example/keys/cmk",
            "https://contoso.vault.example./keys/cmk",
            "https://contoso.vault.example.:443/keys/CMK/",
            "https://contoso.vault.example/keys/Cmk",
        ] {
            let id: KeyId = s.parse().expect(s);
            assert_eq!(id, canonical, "{s}");
            assert_eq!(id.to_string(), "https://contoso.vault.example/keys/cmk");
            set.insert(id);
        }
        assert_eq!(set.len(), 1);
        let a: KeyId = "https://v.example:08200/keys/k".parse().expect("a");
        let b: KeyId = "https://v.example:8200/keys/k".parse().expect("b");
        assert_eq!(a, b);
        assert_eq!(a.vault(), "v.example:8200");
        assert_eq!(a.to_string(), "https://v.example:8200/keys/k");
        for port in ["1", "65535"] {
            let s = format!("https://v.example:{port}/keys/k");
            assert_eq!(s.parse::<KeyId>().expect(&s).to_string(), s);
        }
        // `new` normalises the same way as parsing.
        let n = KeyId::new("Contoso.Vault.Example.:443", "CMK", None).expect("new");
        assert_eq!(n, canonical);
        for bad in ["v.example:0", "v.example:99999"] {
            assert!(
                matches!(KeyId::new(bad, "k", None), Err(Error::InvalidKeyId { .. })),
                "{bad}"
            );
        }
        // Versions are opaque: kept as written.
        let v: KeyId = "https://v.example/keys/k/AbC".parse().expect("v");
        assert_eq!(v.version(), Some("AbC"));
        // serde goes through the same normalisation.
        let j: KeyId = serde_json::from_str("\"HTTPS://V.example:443/keys/K\"").expect("json");
        assert_eq!(j.to_string(), "https://v.example/keys/k");
        assert_eq!(
            serde_json::to_string(&j).expect("ser"),
            "\"https://v.example/keys/k\""
        );
    }

    /// A small deterministic generator (xorshift) of strings near the grammar: pieces of
    /// valid identifiers mixed with bytes that break them.
    fn generated(n: usize) -> Vec<String> {
        const PIECES: &[&str] = &[
            "https://",
            "HTTPS://",
            "hTtPs://",
            "http://",
            "/keys/",
            "/KEYS/",
            "/",
            ".",
            ":",
            ":443",
            ":0",
            ":08200",
            ":65535",
            ":65536",
            ":99999",
            "v",
            "vault",
            "Contoso",
            "example",
            "-",
            "cmk",
            "CMK",
            "a1",
            "7",
            "0",
            "ab12",
            "?",
            "#",
            "@",
            " ",
            "%2F",
            "é",
            "\u{0}",
            "[::1]",
            "127.0.0.1",
            "..",
            "_",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = String::new();
            if i % 2 == 0 {
                // Mostly well-formed: scheme, host, optional port, path, optional version.
                s.push_str(PIECES[(next() % 3) as usize]);
                for _ in 0..=(next() % 3) {
                    s.push_str(PIECES[15 + (next() % 5) as usize]);
                    s.push('.');
                }
                s.push_str("example");
                if next() % 2 == 0 {
                    s.push('.');
                }
                if next() % 2 == 0 {
                    s.push_str(PIECES[9 + (next() % 6) as usize]);
                }
                s.push_str("/keys/");
                s.push_str(PIECES[20 + (next() % 6) as usize]);
                if next() % 2 == 0 {
                    s.push('/');
                    s.push_str(PIECES[23 + (next() % 3) as usize]);
                }
                if next() % 4 == 0 {
                    s.push('/');
                }
            } else {
                for _ in 0..(next() % 12) {
                    s.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                }
            }
            out.push(s);
        }
        out
    }

    #[test]
    fn parser_properties_hold_over_generated_strings() {
        let inputs = generated(5000);
        let parsed = inputs.iter().filter(|s| s.parse::<KeyId>().is_ok()).count();
        // The generator must exercise the accepting paths, not only the refusals.
        assert!(parsed > 1000, "only {parsed} of {} parsed", inputs.len());
        for s in &inputs {
            check_parser_properties(s);
            if let Ok(id) = s.parse::<KeyId>() {
                let json = serde_json::to_string(&id).expect("json");
                assert_eq!(serde_json::from_str::<KeyId>(&json).expect("back"), id);
            }
        }
    }
}
