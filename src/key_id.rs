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
        check_host(vault).map_err(|reason| invalid(&shown, reason))?;
        check_name(name).map_err(|reason| invalid(&shown, reason))?;
        if let Some(v) = version {
            check_version(v).map_err(|reason| invalid(&shown, reason))?;
        }
        Ok(Self {
            vault: vault.to_ascii_lowercase(),
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
    }

    /// The vault's host (lower-case), e.g. `contoso.vault.example`.
    pub fn vault(&self) -> &str {
        &self.vault
    }

    /// The key's name.
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

fn check_host(h: &str) -> Result<(), &'static str> {
    if h.is_empty() || h.len() > 253 {
        return Err("the vault host must be 1 to 253 characters");
    }
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the vault port must be a number");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("the vault host must be a DNS name (letters, digits, '-' and '.')")
    }
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
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| invalid(s, "a key identifier starts with https://"))?;
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
        check_host(host).map_err(|r| invalid(s, r))?;
        check_name(name).map_err(|r| invalid(s, r))?;
        if let Some(v) = version {
            check_version(v).map_err(|r| invalid(s, r))?;
        }
        Ok(Self {
            vault: host.to_ascii_lowercase(),
            name: name.to_owned(),
            version: version.map(str::to_owned),
        })
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
}
