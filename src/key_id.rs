//! Key identifiers: the Key Vault URI form (Azure Key Vault and the vaults that speak its
//! shape: the software vaults, PKCS#11, Vault/OpenBao Transit) and the AWS KMS key and alias
//! ARN forms.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A key in a vault: the vault, the key's name and an optional version, in one of the forms
/// users paste from their KMS's console ([`KeyIdKind`]).
///
/// | form | text | [`vault`](Self::vault) | [`name`](Self::name) | [`version`](Self::version) |
/// | --- | --- | --- | --- | --- |
/// | Key Vault URI | `https://<host>/keys/<name>[/<version>]` | `<host>[:<port>]` | `<name>` | `<version>` or `None` |
/// | AWS key ARN | `arn:<partition>:kms:<region>:<account>:key/<key-id>` | `arn:<partition>:kms:<region>:<account>` | `<key-id>` | always `Some(<key-id>)` |
/// | AWS alias ARN | `arn:<partition>:kms:<region>:<account>:alias/<name>[@<key-id>]` | as above | `alias/<name>` | `<key-id>` the alias pointed at, or `None` |
/// | Transit path | `https://<host>/v1/<mount>/keys/<name>[/<version>]` | `<host>[:<port>]/v1/<mount>` | `<name>` (as written) | `<n>` or `None` |
///
/// The Key Vault URI form also names keys of the in-memory and file vaults, PKCS#11 tokens
/// and Vault/OpenBao Transit servers (`https://127.0.0.1:8200/keys/<name>/<version>`, the
/// mount being the provider's configuration). The Transit path form names the mount too, so
/// two mounts of one server are two vaults; a `TransitProvider` names its keys that way when
/// its `TransitConfig::vault_host` is `<host>[:<port>]/v1/<mount>`.
///
/// # Vaults: where the same-vault rule and the directory look
///
/// [`vault`](Self::vault) is the authority a provider serves, used by the same-vault rule
/// ([`crate::Policy`]'s `key_change_same_vault_only`), [`crate::provider::VaultDirectory`] and
/// [`crate::AccountManager::accounts_using`]. For AWS it is the ARN up to the account
/// (partition, region, account): a KMS key lives in exactly one account and region, the
/// credentials and endpoint of a KMS client are per partition and region, and a key policy is
/// per account — so "the same vault" keeps a tenant's key in one account and region.
///
/// # AWS keys have no versions; an alias is the rotation handle
///
/// AWS KMS does not rotate asymmetric (RSA) keys. A key ARN therefore names one key with one
/// version — its key id — and is always pinned ([`version`](Self::version) is the key id;
/// [`versionless`](Self::versionless) gives the same identifier). An alias ARN without a
/// version follows whatever key the alias points at: moving the alias to a new key is the
/// next "version", and a refresh re-wraps the account key under it. An alias pinned at a key
/// prints as `…:alias/<name>@<key-id>` (this crate's notation, like an image digest: AWS has
/// no ARN for it).
///
/// # Equivalent spellings are one identifier
///
/// Every constructor ([`KeyId::new`], [`FromStr`], serde) normalises in one place, so that
/// two spellings of the same key compare and hash equal and print the same.
///
/// For the Key Vault URI form this follows RFC 3986 (sections 3.1, 6.2.2 and 6.2.3):
///
/// - the scheme is case-insensitive (`HTTPS://` is accepted) and printed as `https://`;
/// - the host is case-insensitive and printed in lower case; one trailing dot
///   (`contoso.vault.example.`) is removed;
/// - the port must be a number from 1 to 65535; leading zeros are dropped (`:08200` is
///   `:8200`); an empty port and the default port 443 are dropped altogether
///   (`https://v.example:443/keys/k` is `https://v.example/keys/k`);
/// - one trailing `/` is ignored.
///
/// For the AWS forms (ARN format: AWS IAM User Guide, "IAM identifiers"; key ids and alias
/// names: AWS KMS Developer Guide, "Key identifiers (KeyId)"), ARNs are case-sensitive and
/// must be written in lower case up to the resource (`arn:aws:kms:us-east-1:111122223333`);
/// the account is 12 digits; key ids are UUIDs (or `mrk-` and 32 hex digits for multi-Region
/// keys), accepted in either case and printed in lower case (RFC 9562 section 4); alias names
/// are 1 to 256 characters of letters, digits, `/`, `_` and `-` after `alias/`, and kept as
/// written. [`KeyId::new`] with an AWS vault accepts the key id, `alias/<name>`, or a bare
/// alias name (`<name>` is `alias/<name>`).
///
/// # Key names are case-insensitive (Key Vault URI form)
///
/// Azure Key Vault key names are case-insensitive, so `…/keys/CMK` and `…/keys/cmk` name
/// the same key. A `KeyId` keeps the name in lower case (`CMK` parses, compares and prints as
/// `cmk`), and the software vaults ([`crate::provider::memory::InMemoryVault`], [`crate::provider::file::FileVault`]) look
/// names up case-insensitively (a key created as `CMK` is the key `cmk`). Backends whose
/// names are case-sensitive (OpenBao/Vault Transit, PKCS#11 labels) are reached with the
/// lower-case name: name their keys in lower case. Versions are opaque and kept as written.
///
/// ```
/// use byok::{KeyId, KeyIdKind};
/// let id: KeyId = "https://contoso.vault.example/keys/tenant-a/0a1b2c".parse()?;
/// assert_eq!(id.kind(), KeyIdKind::KeyVaultUri);
/// assert_eq!(id.vault(), "contoso.vault.example");
/// assert_eq!(id.name(), "tenant-a");
/// assert_eq!(id.version(), Some("0a1b2c"));
/// assert_eq!(id.to_string(), "https://contoso.vault.example/keys/tenant-a/0a1b2c");
///
/// let alias: KeyId = "arn:aws:kms:us-east-1:111122223333:alias/tenant-a".parse()?;
/// assert_eq!(alias.kind(), KeyIdKind::AwsAliasArn);
/// assert_eq!(alias.vault(), "arn:aws:kms:us-east-1:111122223333");
/// assert_eq!(alias.name(), "alias/tenant-a");
/// assert_eq!(alias.version(), None);
///
/// let key: KeyId =
///     "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab".parse()?;
/// assert_eq!(key.kind(), KeyIdKind::AwsKeyArn);
/// assert_eq!(key.name(), "1234abcd-12ab-34cd-56ef-1234567890ab");
/// assert_eq!(key.version(), Some("1234abcd-12ab-34cd-56ef-1234567890ab"));
/// assert_eq!(key.vault(), alias.vault()); // same account and region: the same vault
/// # Ok::<(), byok::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId {
    kind: KeyIdKind,
    vault: String,
    name: String,
    version: Option<String>,
}

/// The form of a [`KeyId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeyIdKind {
    /// `https://<host>/keys/<name>[/<version>]`: Azure Key Vault, the software vaults,
    /// PKCS#11 tokens and Vault/OpenBao Transit.
    KeyVaultUri,
    /// `arn:<partition>:kms:<region>:<account>:key/<key-id>`: one AWS KMS key.
    AwsKeyArn,
    /// `arn:<partition>:kms:<region>:<account>:alias/<name>`: an AWS KMS alias (the key it
    /// points at is the version).
    AwsAliasArn,
    /// `https://<host>[:<port>]/v1/<mount>/keys/<name>[/<version>]`: a key of a Vault/OpenBao
    /// Transit mount, as its HTTP API names it (the mount is part of the vault; the name is
    /// case-sensitive and kept as written; versions are positive numbers).
    TransitPath,
}

impl KeyId {
    /// Builds an identifier from its parts, validating each.
    ///
    /// # Errors
    /// [`Error::InvalidKeyId`] if the vault host, name or version has characters or a length a
    /// vault would refuse.
    ///
    /// A `vault` of the form `arn:<partition>:kms:<region>:<account>` builds an AWS form:
    /// `name` is a key id (a key ARN, whose only version is its key id) or `alias/<name>` /
    /// a bare alias name (an alias ARN, pinned at the key id `version` if given).
    pub fn new(vault: &str, name: &str, version: Option<&str>) -> Result<Self, Error> {
        let shown = if is_aws_vault(vault) {
            match version {
                Some(v) => format!("{vault}:{name}@{v}"),
                None => format!("{vault}:{name}"),
            }
        } else {
            match version {
                Some(v) => format!("https://{vault}/keys/{name}/{v}"),
                None => format!("https://{vault}/keys/{name}"),
            }
        };
        Self::from_parts(vault, name, version).map_err(|reason| invalid(&shown, reason))
    }

    /// The one place where identifiers are validated and normalised: every constructor
    /// (`new`, `FromStr`, serde) goes through here, so equivalent spellings give equal values.
    fn from_parts(vault: &str, name: &str, version: Option<&str>) -> Result<Self, &'static str> {
        if is_aws_vault(vault) {
            return Self::aws_from_parts(vault, name, version);
        }
        if vault.contains(TRANSIT_API) {
            check_name(name)?;
            if let Some(v) = version {
                check_transit_version(v)?;
            }
            return Ok(Self {
                kind: KeyIdKind::TransitPath,
                vault: normalize_transit_vault(vault)?,
                // Transit key names are case-sensitive: kept as written.
                name: name.to_owned(),
                version: version.map(str::to_owned),
            });
        }
        let vault = normalize_vault(vault)?;
        check_name(name)?;
        if let Some(v) = version {
            check_version(v)?;
        }
        Ok(Self {
            kind: KeyIdKind::KeyVaultUri,
            vault,
            name: name.to_ascii_lowercase(),
            version: version.map(str::to_owned),
        })
    }

    /// The AWS half of [`from_parts`](Self::from_parts).
    fn aws_from_parts(
        vault: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Self, &'static str> {
        let vault = normalize_aws_vault(vault)?;
        let version = version.map(normalize_aws_key_id).transpose()?;
        let name = name.strip_prefix("key/").unwrap_or(name);
        if let Ok(key_id) = normalize_aws_key_id(name) {
            if version.as_ref().is_some_and(|v| *v != key_id) {
                return Err("an AWS KMS key has one version, its own key id");
            }
            return Ok(Self {
                kind: KeyIdKind::AwsKeyArn,
                vault,
                version: Some(key_id.clone()),
                name: key_id,
            });
        }
        let alias = name.strip_prefix("alias/").unwrap_or(name);
        check_aws_alias(alias)?;
        Ok(Self {
            kind: KeyIdKind::AwsAliasArn,
            vault,
            name: format!("alias/{alias}"),
            version,
        })
    }

    /// The identifier's form.
    pub fn kind(&self) -> KeyIdKind {
        self.kind
    }

    /// The vault's authority in normal form. Key Vault URI form: the host in lower case
    /// without a trailing dot, followed by `:<port>` only for a port other than 443 (without
    /// leading zeros), e.g. `contoso.vault.example` or `127.0.0.1:8200`. AWS forms: the ARN
    /// up to the account, e.g. `arn:aws:kms:us-east-1:111122223333`.
    pub fn vault(&self) -> &str {
        &self.vault
    }

    /// The key's name: in the Key Vault URI form in lower case (see the type's documentation
    /// on case); for AWS the key id or `alias/<name>`, as KMS's `KeyId` parameter takes them.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pinned version, or `None` to follow the latest. For an AWS key ARN always the key
    /// id; for an AWS alias the key id it is pinned at.
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

    /// The same key without a version (following the latest). An AWS key ARN has exactly one
    /// version and stays as it is.
    pub fn versionless(&self) -> Self {
        if self.kind == KeyIdKind::AwsKeyArn {
            return self.clone();
        }
        Self {
            version: None,
            ..self.clone()
        }
    }

    /// The ARN KMS takes as `KeyId` for this key: the key ARN, the alias ARN, or — for an
    /// alias pinned at a key id — the key ARN of that key (AWS forms only; `None` for the Key
    /// Vault URI form). Full ARNs, not bare key ids, are what cross-account use requires.
    pub fn aws_arn(&self) -> Option<String> {
        match (self.kind, &self.version) {
            (KeyIdKind::AwsKeyArn, _) | (KeyIdKind::AwsAliasArn, Some(_)) => Some(format!(
                "{}:key/{}",
                self.vault,
                self.version.as_deref().unwrap_or(&self.name)
            )),
            (KeyIdKind::AwsAliasArn, None) => Some(format!("{}:{}", self.vault, self.name)),
            _ => None,
        }
    }
}

/// What separates a Transit server's authority from its mount in a Transit path form.
const TRANSIT_API: &str = "/v1/";

/// `<authority>/v1/<mount>`: the authority normalised like [`normalize_vault`], the mount path
/// kept as written (Vault/OpenBao mount paths are case-sensitive): one or more segments of
/// letters, digits, `-`, `_` and `.`, none of them `keys` (which ends the mount in the text).
fn normalize_transit_vault(vault: &str) -> Result<String, &'static str> {
    let Some((authority, mount)) = vault.split_once(TRANSIT_API) else {
        return Err("a Transit vault is <host>[:<port>]/v1/<mount>");
    };
    let authority = normalize_vault(authority)?;
    let mount = mount.strip_suffix('/').unwrap_or(mount);
    let segment_ok = |m: &str| {
        !m.is_empty()
            && m != "keys"
            && m != "."
            && m != ".."
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if mount.is_empty() || mount.len() > 128 || !mount.split('/').all(segment_ok) {
        return Err("the Transit mount is 1 to 128 characters of path segments \
                    (letters, digits, '-', '_', '.'; not 'keys')");
    }
    Ok(format!("{authority}{TRANSIT_API}{mount}"))
}

/// A Transit key version: a positive decimal number without leading zeros.
fn check_transit_version(v: &str) -> Result<(), &'static str> {
    if !v.is_empty()
        && v.len() <= 10
        && !v.starts_with('0')
        && v.bytes().all(|b| b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err("a Transit key version is a positive number")
    }
}

/// Whether `vault` is meant as an AWS KMS vault (`arn:` prefix, any case).
fn is_aws_vault(vault: &str) -> bool {
    vault
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("arn:"))
}

/// Validates `arn:<partition>:kms:<region>:<account>` (IAM User Guide, "IAM identifiers":
/// ARNs are case-sensitive; partitions `aws`, `aws-cn`, `aws-us-gov`, …; 12-digit accounts)
/// and returns it unchanged.
fn normalize_aws_vault(vault: &str) -> Result<String, &'static str> {
    let mut parts = vault.split(':');
    let (Some("arn"), Some(partition), Some("kms"), Some(region), Some(account), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err("an AWS KMS ARN starts arn:<partition>:kms:<region>:<account>: (lower case)");
    };
    let lower = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !(partition == "aws" || partition.starts_with("aws-") && partition.len() <= 16)
        || !lower(partition)
    {
        return Err("the ARN partition must be aws or aws-<name> (aws-cn, aws-us-gov, …)");
    }
    if region.is_empty()
        || region.len() > 32
        || !lower(region)
        || region.starts_with('-')
        || region.ends_with('-')
    {
        return Err("the ARN region must be an AWS Region code such as us-east-1");
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the ARN account must be 12 digits");
    }
    Ok(vault.to_owned())
}

/// A KMS key id: a UUID (8-4-4-4-12 hex digits) or a multi-Region key id (`mrk-` and 32 hex
/// digits), returned in lower case (RFC 9562 section 4: UUIDs are read in either case and
/// written in lower case).
fn normalize_aws_key_id(id: &str) -> Result<String, &'static str> {
    const BAD: &str = "an AWS KMS key id is a UUID or mrk- and 32 hex digits";
    let lower = id.to_ascii_lowercase();
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = lower.strip_prefix("mrk-") {
        return if rest.len() == 32 && hex(rest) {
            Ok(lower)
        } else {
            Err(BAD)
        };
    }
    let groups: Vec<&str> = lower.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens == [8, 4, 4, 4, 12] && groups.iter().all(|g| hex(g)) {
        Ok(lower)
    } else {
        Err(BAD)
    }
}

/// An alias name after `alias/` (AWS KMS Developer Guide, "Create aliases": 1 to 256
/// characters in all, letters, digits, `/`, `_` and `-`).
fn check_aws_alias(alias: &str) -> Result<(), &'static str> {
    if alias.is_empty() || alias.len() + "alias/".len() > 256 {
        return Err("an AWS KMS alias name is 1 to 256 characters with its alias/ prefix");
    }
    if alias.starts_with('/') || alias.ends_with('/') || alias.contains("//") {
        return Err("an AWS KMS alias name has no empty segment");
    }
    if alias
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
    {
        Ok(())
    } else {
        Err("an AWS KMS alias name may only hold letters, digits, '/', '_' and '-'")
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
    if h.contains(TRANSIT_API) {
        return normalize_transit_vault(h).unwrap_or_else(|_| h.to_owned());
    }
    if is_aws_vault(h) {
        return normalize_aws_vault(h).unwrap_or_else(|_| h.to_owned());
    }
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
        if s.starts_with("arn:") {
            return parse_aws(s);
        }
        // Schemes are case-insensitive (RFC 3986 section 3.1).
        let rest = match (s.get(..8), s.get(8..)) {
            (Some(scheme), Some(rest)) if scheme.eq_ignore_ascii_case("https://") => rest,
            _ => {
                return Err(invalid(
                    s,
                    "a key identifier starts with https:// or arn:<partition>:kms:",
                ));
            }
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
        let mut after_host = parts.clone();
        if after_host.next() == Some("v1") {
            // Transit path form: /v1/<mount…>/keys/<name>[/<version>].
            let mut mount = Vec::new();
            for seg in after_host.by_ref() {
                if seg == "keys" {
                    break;
                }
                mount.push(seg);
            }
            let name = after_host.next().ok_or_else(|| {
                invalid(s, "the path must be /v1/<mount>/keys/<name>[/<version>]")
            })?;
            let version = after_host.next();
            if after_host.next().is_some() || mount.is_empty() {
                return Err(invalid(
                    s,
                    "the path must be /v1/<mount>/keys/<name>[/<version>]",
                ));
            }
            let vault = format!("{host}{TRANSIT_API}{}", mount.join("/"));
            return Self::from_parts(&vault, name, version).map_err(|r| invalid(s, r));
        }
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

/// Parses `arn:<partition>:kms:<region>:<account>:key/<key-id>` and
/// `…:alias/<name>[@<key-id>]`.
fn parse_aws(s: &str) -> Result<KeyId, Error> {
    let mut colons = s.match_indices(':').map(|(i, _)| i);
    let Some(end) = colons.nth(4) else {
        return Err(invalid(
            s,
            "an AWS KMS ARN is arn:<partition>:kms:<region>:<account>:<key/… or alias/…>",
        ));
    };
    let (vault, resource) = (&s[..end], &s[end + 1..]);
    let (name, version) = match resource.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (resource, None),
    };
    let parts = if let Some(id) = name.strip_prefix("key/") {
        if version.is_some() {
            return Err(invalid(
                s,
                "a key ARN has no @version: the key is its only version",
            ));
        }
        if normalize_aws_key_id(id).is_err() {
            return Err(invalid(
                s,
                "an AWS KMS key id is a UUID or mrk- and 32 hex digits",
            ));
        }
        KeyId::aws_from_parts(vault, id, None)
    } else if name.starts_with("alias/") {
        KeyId::aws_from_parts(vault, name, version)
    } else {
        return Err(invalid(
            s,
            "an AWS KMS ARN names key/<key-id> or alias/<name>",
        ));
    };
    parts.map_err(|r| invalid(s, r))
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            KeyIdKind::AwsKeyArn => return write!(f, "{}:key/{}", self.vault, self.name),
            KeyIdKind::AwsAliasArn => {
                write!(f, "{}:{}", self.vault, self.name)?;
                if let Some(v) = &self.version {
                    write!(f, "@{v}")?;
                }
                return Ok(());
            }
            KeyIdKind::KeyVaultUri | KeyIdKind::TransitPath => {}
        }
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
    if id.kind() == KeyIdKind::TransitPath {
        // Scheme and authority case, :443, a trailing slash; the name's case matters.
        let (authority, mount) = id.vault().split_once(TRANSIT_API).unwrap_or_default();
        let port = if authority.contains(':') { "" } else { ":443" };
        let tail = match id.version() {
            Some(v) => format!("{}/{v}", id.name()),
            None => id.name().to_owned(),
        };
        let spelling = format!(
            "HTTPS://{}{port}/v1/{mount}/keys/{tail}/",
            authority.to_ascii_uppercase()
        );
        let other: KeyId = spelling
            .parse()
            .unwrap_or_else(|e| panic!("{spelling:?}, a spelling of {printed:?}, fails: {e}"));
        assert_eq!(other, id, "{spelling:?} differs from {printed:?}");
        assert_eq!(hasher.hash_one(&other), hasher.hash_one(&id));
        assert_eq!(other.to_string(), printed);
        if id.name().bytes().any(|b| b.is_ascii_lowercase()) {
            let upper: KeyId = format!(
                "https://{}/keys/{}",
                id.vault(),
                id.name().to_ascii_uppercase()
            )
            .parse()
            .unwrap_or_else(|e| panic!("upper-case name of {printed:?} fails: {e}"));
            assert_ne!(upper, id, "Transit names are case-sensitive");
        }
        return;
    }
    if id.kind() != KeyIdKind::KeyVaultUri {
        // AWS: key ids in upper case are the same key.
        let upper = match id.kind() {
            KeyIdKind::AwsKeyArn => {
                format!("{}:key/{}", id.vault(), id.name().to_ascii_uppercase())
            }
            _ => match id.version() {
                Some(v) => format!("{}:{}@{}", id.vault(), id.name(), v.to_ascii_uppercase()),
                None => printed.clone(),
            },
        };
        let other: KeyId = upper
            .parse()
            .unwrap_or_else(|e| panic!("{upper:?}, a spelling of {printed:?}, fails: {e}"));
        assert_eq!(other, id, "{upper:?} differs from {printed:?}");
        assert_eq!(hasher.hash_one(&other), hasher.hash_one(&id));
        assert_eq!(other.to_string(), printed);
        assert_eq!(id.versionless().versionless(), id.versionless());
        return;
    }
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
                s.push_str(if next() % 4 == 0 {
                    "/v1/transit/keys/"
                } else {
                    "/keys/"
                });
                s.push_str(PIECES[20 + (next() % 6) as usize]);
                if next() % 2 == 0 {
                    s.push('/');
                    s.push_str(PIECES[23 + (next() % 3) as usize]);
                }
                if next() % 4 == 0 {
                    s.push('/');
                }
            } else if i % 4 == 1 {
                // AWS forms, mostly well-formed.
                const AWS: &[&str] = &[
                    "arn:aws:kms:us-east-1:111122223333:",
                    "arn:aws-cn:kms:cn-north-1:111122223333:",
                    "arn:aws:kms:us-east-1:11112222333:",
                    "key/",
                    "alias/",
                    "1234abcd-12ab-34cd-56ef-1234567890ab",
                    "1234ABCD-12ab-34cd-56ef-1234567890AB",
                    "mrk-1234abcd12ab34cd56ef1234567890ab",
                    "tenant-a",
                    "a/b_c",
                    "@",
                    "/",
                    ".",
                ];
                s.push_str(AWS[(next() % 3) as usize]);
                s.push_str(AWS[3 + (next() % 2) as usize]);
                for _ in 0..=(next() % 2) {
                    s.push_str(AWS[5 + (next() % 8) as usize]);
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

    const ACCT: &str = "arn:aws:kms:us-east-1:111122223333";
    const UUID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn aws_forms_parse_print_and_round_trip() {
        for (s, kind, name, version) in [
            (
                format!("{ACCT}:key/{UUID}"),
                KeyIdKind::AwsKeyArn,
                UUID.to_owned(),
                Some(UUID),
            ),
            (
                format!("{ACCT}:key/mrk-1234abcd12ab34cd56ef1234567890ab"),
                KeyIdKind::AwsKeyArn,
                "mrk-1234abcd12ab34cd56ef1234567890ab".to_owned(),
                Some("mrk-1234abcd12ab34cd56ef1234567890ab"),
            ),
            (
                format!("{ACCT}:alias/Tenant_A/cmk-1"),
                KeyIdKind::AwsAliasArn,
                "alias/Tenant_A/cmk-1".to_owned(),
                None,
            ),
            (
                format!("{ACCT}:alias/tenant-a@{UUID}"),
                KeyIdKind::AwsAliasArn,
                "alias/tenant-a".to_owned(),
                Some(UUID),
            ),
            (
                format!("arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/{UUID}"),
                KeyIdKind::AwsKeyArn,
                UUID.to_owned(),
                Some(UUID),
            ),
        ] {
            let id: KeyId = s.parse().expect(&s);
            assert_eq!(id.kind(), kind, "{s}");
            assert_eq!(id.name(), name);
            assert_eq!(id.version(), version);
            assert_eq!(id.to_string(), s);
            let json = serde_json::to_string(&id).expect("json");
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<KeyId>(&json).expect("back"), id);
            assert_eq!(
                KeyId::new(id.vault(), id.name(), id.version()).expect("new"),
                id
            );
            check_parser_properties(&s);
        }
        let alias: KeyId = format!("{ACCT}:alias/a").parse().expect("alias");
        assert_eq!(alias.vault(), ACCT);
        assert_eq!(
            alias.aws_arn().as_deref(),
            Some(&*format!("{ACCT}:alias/a"))
        );
        let pinned = alias.with_version(&UUID.to_ascii_uppercase()).expect("pin");
        assert_eq!(pinned.version(), Some(UUID));
        assert_eq!(pinned.to_string(), format!("{ACCT}:alias/a@{UUID}"));
        assert_eq!(
            pinned.aws_arn().as_deref(),
            Some(&*format!("{ACCT}:key/{UUID}"))
        );
        assert_eq!(pinned.versionless(), alias);
        // `new` takes a bare alias name, `alias/<name>`, a key id or `key/<key-id>`.
        assert_eq!(KeyId::new(ACCT, "a", None).expect("bare"), alias);
        assert_eq!(KeyId::new(ACCT, "alias/a", None).expect("alias/"), alias);
        let key = KeyId::new(ACCT, &UUID.to_ascii_uppercase(), None).expect("key id");
        assert_eq!(key.to_string(), format!("{ACCT}:key/{UUID}"));
        assert_eq!(
            KeyId::new(ACCT, &format!("key/{UUID}"), None).expect("key/"),
            key
        );
        // A key ARN is its own only version.
        assert_eq!(key.versionless(), key);
        assert_eq!(key.with_version(UUID).expect("same"), key);
        assert!(matches!(
            key.with_version("2234abcd-12ab-34cd-56ef-1234567890ab"),
            Err(Error::InvalidKeyId { .. })
        ));
        assert_eq!(key.aws_arn(), Some(key.to_string()));
        let uri: KeyId = "https://v.example/keys/k".parse().expect("uri");
        assert_eq!(uri.kind(), KeyIdKind::KeyVaultUri);
        assert_eq!(uri.aws_arn(), None);
        // The vault is partition + region + account: another region is another vault.
        let other: KeyId = format!("arn:aws:kms:eu-west-1:111122223333:key/{UUID}")
            .parse()
            .expect("eu");
        assert_ne!(other.vault(), key.vault());
        assert_eq!(canonical_vault(ACCT), ACCT);
    }

    #[test]
    fn malformed_arns_are_clear_errors() {
        for s in [
            "arn:aws:kms:us-east-1:111122223333".to_owned(),
            "arn:aws:kms:us-east-1:111122223333:".to_owned(),
            format!("arn:aws:s3:us-east-1:111122223333:key/{UUID}"),
            format!("ARN:AWS:KMS:us-east-1:111122223333:key/{UUID}"),
            format!("arn:aws:kms:US-EAST-1:111122223333:key/{UUID}"),
            format!("arn:aws:kms:us-east-1:11112222333:key/{UUID}"),
            format!("arn:aws:kms:us-east-1:1111222233334:key/{UUID}"),
            format!("arn:aws:kms:us-east-1:11112222333a:key/{UUID}"),
            format!("arn:gcp:kms:us-east-1:111122223333:key/{UUID}"),
            format!("arn:aws:kms::111122223333:key/{UUID}"),
            "arn:aws:kms:us-east-1:111122223333:key/1234".to_owned(),
            "arn:aws:kms:us-east-1:111122223333:key/alias/x".to_owned(),
            format!("arn:aws:kms:us-east-1:111122223333:key/{UUID}@{UUID}"),
            "arn:aws:kms:us-east-1:111122223333:key/mrk-12".to_owned(),
            "arn:aws:kms:us-east-1:111122223333:alias/".to_owned(),
            "arn:aws:kms:us-east-1:111122223333:alias/a b".to_owned(),
            "arn:aws:kms:us-east-1:111122223333:alias/a.b".to_owned(),
            "arn:aws:kms:us-east-1:111122223333:alias/a//b".to_owned(),
            "arn:aws:kms:us-east-1:111122223333:alias/a@7".to_owned(),
            format!(
                "arn:aws:kms:us-east-1:111122223333:alias/{}",
                "a".repeat(251)
            ),
            "arn:aws:kms:us-east-1:111122223333:secret/x".to_owned(),
            "arn:aws:kms:us-east-1:111122223333:alias/a:b".to_owned(),
        ] {
            match s.parse::<KeyId>() {
                Err(Error::InvalidKeyId { input, reason }) => {
                    assert_eq!(input, s);
                    assert!(!reason.is_empty());
                }
                other => panic!("{s:?} gave {other:?}"),
            }
        }
        // The longest alias name AWS allows (256 characters with `alias/`) parses.
        let longest = format!("{ACCT}:alias/{}", "a".repeat(250));
        assert!(longest.parse::<KeyId>().is_ok());
        assert!(matches!(
            KeyId::new("arn:aws:kms:us-east-1:1", "k", None),
            Err(Error::InvalidKeyId { .. })
        ));
    }

    #[test]
    fn transit_paths_name_the_mount_and_keep_the_name() {
        for (s, vault, name, version) in [
            (
                "https://127.0.0.1:8200/v1/transit/keys/Tenant-A",
                "127.0.0.1:8200/v1/transit",
                "Tenant-A",
                None,
            ),
            (
                "https://vault.example/v1/tenants/eu_1/transit/keys/cmk/12",
                "vault.example/v1/tenants/eu_1/transit",
                "cmk",
                Some("12"),
            ),
        ] {
            let id: KeyId = s.parse().expect(s);
            assert_eq!(id.kind(), KeyIdKind::TransitPath);
            assert_eq!(
                (id.vault(), id.name(), id.version()),
                (vault, name, version)
            );
            assert_eq!(id.to_string(), s);
            assert_eq!(KeyId::new(vault, name, version).expect("new"), id);
            let json = serde_json::to_string(&id).expect("json");
            assert_eq!(serde_json::from_str::<KeyId>(&json).expect("back"), id);
            check_parser_properties(s);
        }
        let a: KeyId = "HTTPS://Vault.Example:443/v1/transit/keys/k/"
            .parse()
            .expect("a");
        assert_eq!(a.to_string(), "https://vault.example/v1/transit/keys/k");
        assert_eq!(a.with_version("3").expect("v").version(), Some("3"));
        // Another mount of the same server is another vault; the URI form is a third.
        let b: KeyId = "https://vault.example/v1/transit2/keys/k"
            .parse()
            .expect("b");
        let c: KeyId = "https://vault.example/keys/k".parse().expect("c");
        assert_ne!(a.vault(), b.vault());
        assert_ne!(a.vault(), c.vault());
        assert_eq!(canonical_vault("Vault.Example:443/v1/transit"), a.vault());
        for bad in [
            "https://vault.example/v1/keys/k",
            "https://vault.example/v1/transit/keys/",
            "https://vault.example/v1/transit/keys/k/0",
            "https://vault.example/v1/transit/keys/k/01",
            "https://vault.example/v1/transit/keys/k/v2",
            "https://vault.example/v1/transit/keys/k/1/x",
            "https://vault.example/v1/tr%20ansit/keys/k",
            "https://vault.example/v1//keys/k",
            "https://vault.example/v1/../keys/k",
            "https://vault.example/v1/transit",
            "https://vault.example/v1/transit/keys/bad_name",
        ] {
            assert!(
                matches!(bad.parse::<KeyId>(), Err(Error::InvalidKeyId { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn parser_properties_hold_over_generated_strings() {
        let inputs = generated(5000);
        let parsed = inputs.iter().filter(|s| s.parse::<KeyId>().is_ok()).count();
        // The generator must exercise the accepting paths, not only the refusals.
        assert!(parsed > 1000, "only {parsed} of {} parsed", inputs.len());
        let aws = inputs
            .iter()
            .filter_map(|s| s.parse::<KeyId>().ok())
            .filter(|k| k.kind() != KeyIdKind::KeyVaultUri)
            .count();
        assert!(aws > 200, "only {aws} AWS forms parsed");
        let transit = inputs
            .iter()
            .filter_map(|s| s.parse::<KeyId>().ok())
            .filter(|k| k.kind() == KeyIdKind::TransitPath)
            .count();
        assert!(transit > 100, "only {transit} Transit paths parsed");
        for s in &inputs {
            check_parser_properties(s);
            if let Ok(id) = s.parse::<KeyId>() {
                let json = serde_json::to_string(&id).expect("json");
                assert_eq!(serde_json::from_str::<KeyId>(&json).expect("back"), id);
            }
        }
    }
}
