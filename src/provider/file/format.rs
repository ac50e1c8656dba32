//! The on-disk format of a file vault (format version 1), as separate read and write halves.
//!
//! Three kinds of file, all described in `docs/FILE_VAULT.md`:
//!
//! - `vault.meta`: fixed-size, written once at creation. Magic, format version, KDF and its
//!   parameters, salt, vault id, an unkeyed checksum of those fields (tells accidental damage
//!   apart from a wrong passphrase) and a MAC under a subkey of the master key (the
//!   authenticated check value that proves the passphrase or key file right).
//! - `state` and `keys/<id>.key`: sealed records. A 30-byte header (magic, format version,
//!   generation, nonce) followed by AES-256-GCM ciphertext and tag of the body. The AAD is the
//!   header exactly as read, the file's name relative to the vault directory and the vault id,
//!   so a record cannot be truncated, altered, renamed to another file or moved to another vault
//!   without failing authentication.
//!
//! Parsing is total: any input gives a value or a [`Malformed`] reason, never a panic.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use crate::crypto::{GCM_NONCE_LEN, Gcm, fill_random};
use crate::provider::soft::{KeyEntry, Material, VaultState};
use crate::provider::{Identity, KeyType, Permissions, VaultProperties};

/// File names inside the vault directory.
pub(super) const META_FILE: &str = "vault.meta";
pub(super) const STATE_FILE: &str = "state";
pub(super) const LOCK_FILE: &str = "lock";
pub(super) const KEYS_DIR: &str = "keys";
/// Prefix of temporary files (removed when a vault opens).
pub(super) const TMP_PREFIX: &str = ".tmp-";
/// Longest string (identity name, host, region, tenant, key name) a vault file stores.
pub(super) const MAX_STR_LEN: usize = u16::MAX as usize;

const META_MAGIC: &[u8; 8] = b"BYOKMETA";
pub(super) const STATE_MAGIC: &[u8; 8] = b"BYOKSTAT";
pub(super) const KEY_MAGIC: &[u8; 8] = b"BYOKKEY1";

/// Length of `vault.meta`: fields (55) + checksum (32) + check value (32).
const META_FIELDS_LEN: usize = 8 + 2 + 1 + 4 + 4 + 4 + 16 + 16;
pub(super) const META_LEN: usize = META_FIELDS_LEN + 32 + 32;
/// Length of a sealed record's header.
const RECORD_HEADER_LEN: usize = 8 + 2 + 8 + GCM_NONCE_LEN;

/// Upper bounds on KDF parameters read from disk: a hand-edited `vault.meta` must not make
/// `open` allocate gigabytes before the check value is verified.
pub(super) const MAX_M_KIB: u32 = 1 << 20;
pub(super) const MAX_T: u32 = 64;
pub(super) const MAX_P: u32 = 64;

/// The format versions this code knows; anything else is kept as `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FormatVersion {
    V1,
    Unknown(u16),
}

impl FormatVersion {
    fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::V1,
            other => Self::Unknown(other),
        }
    }
}

const CURRENT_VERSION: u16 = 1;

/// Why a file did not parse or authenticate. The caller adds the file's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Malformed {
    /// Structure or value out of range (what is wrong, never secret).
    Bad(&'static str),
    /// A format version this code does not know.
    UnknownVersion(u16),
    /// Authentication (GCM tag) failed: truncated, altered, renamed or from another vault.
    Unauthentic,
}

impl core::fmt::Display for Malformed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Bad(why) => f.write_str(why),
            Self::UnknownVersion(v) => write!(
                f,
                "format version {v} is not supported (this library writes {CURRENT_VERSION})"
            ),
            Self::Unauthentic => f.write_str(
                "failed authentication (truncated, altered, renamed or from another vault)",
            ),
        }
    }
}

type Parsed<T> = Result<T, Malformed>;

/// The key-derivation function of a vault's master key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kdf {
    /// Argon2id (version 0x13) over the passphrase with the vault's salt.
    Argon2id { m_kib: u32, t: u32, p: u32 },
    /// 32 raw bytes read from a key file.
    KeyFile,
}

/// The parsed `vault.meta`, before the check value is verified.
#[derive(Clone, Debug)]
pub(super) struct Meta {
    pub(super) kdf: Kdf,
    pub(super) salt: [u8; 16],
    pub(super) vault_id: [u8; 16],
    fields: [u8; META_FIELDS_LEN],
    check: [u8; 32],
}

impl Meta {
    pub(super) fn new(kdf: Kdf) -> Self {
        let mut salt = [0u8; 16];
        let mut vault_id = [0u8; 16];
        fill_random(&mut salt);
        fill_random(&mut vault_id);
        let (tag, m, t, p) = match kdf {
            Kdf::Argon2id { m_kib, t, p } => (1u8, m_kib, t, p),
            Kdf::KeyFile => (2u8, 0, 0, 0),
        };
        let mut w = Writer::default();
        w.raw(META_MAGIC);
        w.u16(CURRENT_VERSION);
        w.u8(tag);
        w.u32(m);
        w.u32(t);
        w.u32(p);
        w.raw(&salt);
        w.raw(&vault_id);
        let mut fields = [0u8; META_FIELDS_LEN];
        fields.copy_from_slice(&w.0);
        Self {
            kdf,
            salt,
            vault_id,
            fields,
            check: [0; 32],
        }
    }

    /// The file's bytes with the check value computed under `check_key`.
    pub(super) fn encode(&self, check_key: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_LEN);
        out.extend_from_slice(&self.fields);
        out.extend_from_slice(&checksum(&self.fields));
        out.extend_from_slice(&check_value(check_key, &self.fields));
        out
    }

    /// Parses `vault.meta`. The check value is verified separately by [`Meta::verify`] once
    /// the master key is derived.
    pub(super) fn decode(bytes: &[u8]) -> Parsed<Self> {
        let mut r = Reader::new(bytes);
        if r.take(8)? != META_MAGIC {
            return Err(Malformed::Bad("not a byok vault.meta file (bad magic)"));
        }
        if let FormatVersion::Unknown(v) = FormatVersion::from_u16(r.u16()?) {
            return Err(Malformed::UnknownVersion(v));
        }
        if bytes.len() != META_LEN {
            return Err(Malformed::Bad(
                "vault.meta has the wrong length (truncated?)",
            ));
        }
        let mut fields = [0u8; META_FIELDS_LEN];
        fields.copy_from_slice(&bytes[..META_FIELDS_LEN]);
        if checksum(&fields)[..] != bytes[META_FIELDS_LEN..META_FIELDS_LEN + 32] {
            return Err(Malformed::Bad(
                "vault.meta checksum mismatch (damaged or edited)",
            ));
        }
        let tag = r.u8()?;
        let (m, t, p) = (r.u32()?, r.u32()?, r.u32()?);
        let kdf = match tag {
            1 => {
                if !(8..=MAX_M_KIB).contains(&m)
                    || !(1..=MAX_T).contains(&t)
                    || !(1..=MAX_P).contains(&p)
                {
                    return Err(Malformed::Bad("Argon2id parameters out of range"));
                }
                Kdf::Argon2id { m_kib: m, t, p }
            }
            2 => Kdf::KeyFile,
            _ => return Err(Malformed::Bad("unknown key-derivation function")),
        };
        let salt = r.array::<16>()?;
        let vault_id = r.array::<16>()?;
        let _sha = r.take(32)?;
        let check = r.array::<32>()?;
        r.finish()?;
        Ok(Self {
            kdf,
            salt,
            vault_id,
            fields,
            check,
        })
    }

    /// Whether the check value authenticates under `check_key` (constant time).
    pub(super) fn verify(&self, check_key: &[u8; 32]) -> bool {
        crate::crypto::ct_eq_32(&check_value(check_key, &self.fields), &self.check)
    }
}

/// The unkeyed checksum of `vault.meta`'s fields.
fn checksum(fields: &[u8]) -> [u8; 32] {
    crate::crypto::checksum(b"byok vault.meta checksum", fields)
}

/// The check value: a MAC of the fields that only the right master key reproduces.
fn check_value(check_key: &[u8; 32], fields: &[u8]) -> [u8; 32] {
    crate::crypto::check_value(check_key, fields, b"byok vault.meta check value v1")
}

/// Seals `body` as a record of kind `magic` at `generation`, bound to `file_name` and
/// `vault_id` (the sealing itself is the crypto core's [`crate::crypto::seal_record`]).
pub(super) fn seal_record(
    gcm: &Gcm,
    magic: &[u8; 8],
    generation: u64,
    file_name: &str,
    vault_id: &[u8; 16],
    body: &[u8],
) -> Vec<u8> {
    let mut header = Writer::default();
    header.raw(magic);
    header.u16(CURRENT_VERSION);
    header.u64(generation);
    crate::crypto::seal_record(gcm, header.0, |h| record_aad(h, file_name, vault_id), body)
}

/// Opens a record of kind `magic`: returns its generation and body.
fn open_record(
    gcm: &Gcm,
    magic: &[u8; 8],
    file_name: &str,
    vault_id: &[u8; 16],
    bytes: &[u8],
) -> Parsed<(u64, Zeroizing<Vec<u8>>)> {
    let mut r = Reader::new(bytes);
    if r.take(8).map_err(|_| Malformed::Bad("truncated header"))? != magic {
        return Err(Malformed::Bad("bad magic (not this kind of vault file)"));
    }
    if let FormatVersion::Unknown(v) = FormatVersion::from_u16(r.u16()?) {
        return Err(Malformed::UnknownVersion(v));
    }
    let generation = r.u64()?;
    r.array::<GCM_NONCE_LEN>()?;
    let body = crate::crypto::open_record(gcm, bytes, RECORD_HEADER_LEN, |h| {
        record_aad(h, file_name, vault_id)
    })
    .map_err(|()| Malformed::Unauthentic)?;
    Ok((generation, body))
}

/// What a record's authentication binds: its header, the file's name and the vault's id (a
/// record moved to another file or vault does not open).
fn record_aad(header: &[u8], file_name: &str, vault_id: &[u8; 16]) -> Vec<u8> {
    let mut w = Writer::default();
    w.raw(header);
    // File names are the vault's own short constants and `keys/<32 hex>.key`.
    let n = u16::try_from(file_name.len()).unwrap_or(u16::MAX);
    w.u16(n);
    w.raw(file_name.as_bytes());
    w.raw(vault_id);
    w.0
}

/// A key version's file id: 16 random bytes, the file is `keys/<hex>.key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct FileId(pub(super) [u8; 16]);

impl FileId {
    pub(super) fn random() -> Self {
        let mut b = [0u8; 16];
        fill_random(&mut b);
        Self(b)
    }

    /// The file's name relative to the vault directory (also its AAD).
    pub(super) fn rel_path(&self) -> String {
        format!("{KEYS_DIR}/{}.key", crate::util::hex(&self.0))
    }

    /// Parses a file name in `keys/` (`<32 hex>.key`).
    pub(super) fn from_file_name(name: &str) -> Option<Self> {
        let hex = name.strip_suffix(".key")?;
        let b = crate::util::unhex(hex)?;
        Some(Self(b.try_into().ok()?))
    }
}

/// Where each version's material lives: key name → version → file.
pub(super) type FileMap = BTreeMap<String, BTreeMap<String, FileId>>;

/// A version as the state file describes it (material not loaded).
pub(super) struct StateVersion {
    pub(super) version: String,
    pub(super) enabled: bool,
    pub(super) created: SystemTime,
    pub(super) key_type: KeyType,
    pub(super) file: FileId,
}

/// A key as the state file describes it.
pub(super) struct StateKey {
    pub(super) name: String,
    pub(super) deleted_at: Option<SystemTime>,
    pub(super) next: u64,
    pub(super) versions: Vec<StateVersion>,
}

/// The decoded `state` body.
pub(super) struct StateRecord {
    pub(super) generation: u64,
    pub(super) props: VaultProperties,
    pub(super) access: BTreeMap<Identity, Permissions>,
    pub(super) keys: Vec<StateKey>,
}

/// Encodes and seals the state at `generation`.
pub(super) fn write_state(
    gcm: &Gcm,
    vault_id: &[u8; 16],
    generation: u64,
    state: &VaultState,
    files: &FileMap,
) -> Parsed<Vec<u8>> {
    let mut w = Writer::default();
    let p = &state.props;
    w.str(&p.host)?;
    w.bool(p.soft_delete);
    w.u32(p.retention_days);
    w.bool(p.purge_protection);
    w.str(&p.region)?;
    w.str(&p.tenant)?;
    w.u32(len_u32(state.access.len())?);
    for (who, perm) in &state.access {
        w.str(who.as_str())?;
        w.u8(u8::from(perm.get) | u8::from(perm.wrap_key) << 1 | u8::from(perm.unwrap_key) << 2);
    }
    w.u32(len_u32(state.keys.len())?);
    for (name, e) in &state.keys {
        w.str(name)?;
        match e.deleted_at {
            None => w.u8(0),
            Some(t) => {
                w.u8(1);
                w.time(t)?;
            }
        }
        w.u64(e.next);
        w.u32(len_u32(e.versions.len())?);
        for v in &e.versions {
            w.str(&v.version)?;
            w.bool(v.enabled);
            w.time(v.created)?;
            w.key_type(&v.material.key_type());
            let id = files
                .get(name)
                .and_then(|m| m.get(&v.version))
                .ok_or(Malformed::Bad("a version has no key file"))?;
            w.raw(&id.0);
        }
    }
    Ok(seal_record(
        gcm,
        STATE_MAGIC,
        generation,
        STATE_FILE,
        vault_id,
        &w.0,
    ))
}

/// Opens and decodes the state file's bytes.
pub(super) fn read_state(gcm: &Gcm, vault_id: &[u8; 16], bytes: &[u8]) -> Parsed<StateRecord> {
    let (generation, body) = open_record(gcm, STATE_MAGIC, STATE_FILE, vault_id, bytes)?;
    let mut r = Reader::new(&body);
    let host = r.str()?;
    let soft_delete = r.bool()?;
    let retention_days = r.u32()?;
    let purge_protection = r.bool()?;
    let region = r.str()?;
    let tenant = r.str()?;
    let props = VaultProperties {
        host,
        soft_delete,
        retention_days,
        purge_protection,
        region,
        tenant,
    };
    let mut access = BTreeMap::new();
    for _ in 0..r.u32()? {
        let who = Identity::new(r.str()?);
        let bits = r.u8()?;
        if bits > 7 {
            return Err(Malformed::Bad("invalid permission bits"));
        }
        let perm = Permissions {
            get: bits & 1 != 0,
            wrap_key: bits & 2 != 0,
            unwrap_key: bits & 4 != 0,
        };
        if access.insert(who, perm).is_some() {
            return Err(Malformed::Bad("duplicate identity"));
        }
    }
    let mut keys: Vec<StateKey> = Vec::new();
    for _ in 0..r.u32()? {
        let name = r.str()?;
        if keys.last().is_some_and(|k| k.name >= name) {
            return Err(Malformed::Bad("keys out of order or duplicated"));
        }
        let deleted_at = match r.u8()? {
            0 => None,
            1 => Some(r.time()?),
            _ => return Err(Malformed::Bad("invalid deletion flag")),
        };
        let next = r.u64()?;
        let mut versions: Vec<StateVersion> = Vec::new();
        for _ in 0..r.u32()? {
            let version = r.str()?;
            if versions.iter().any(|v| v.version == version) {
                return Err(Malformed::Bad("duplicate version"));
            }
            versions.push(StateVersion {
                version,
                enabled: r.bool()?,
                created: r.time()?,
                key_type: r.key_type()?,
                file: FileId(r.array::<16>()?),
            });
        }
        keys.push(StateKey {
            name,
            deleted_at,
            next,
            versions,
        });
    }
    r.finish()?;
    Ok(StateRecord {
        generation,
        props,
        access,
        keys,
    })
}

/// What a key file holds, after opening.
pub(super) struct KeyRecord {
    pub(super) name: String,
    pub(super) version: String,
    pub(super) material: Material,
}

/// Encodes and seals one version's material as the file `id`.
pub(super) fn write_key(
    gcm: &Gcm,
    vault_id: &[u8; 16],
    id: FileId,
    name: &str,
    version: &str,
    created: SystemTime,
    material: &Material,
) -> Parsed<Vec<u8>> {
    let secret: Zeroizing<Vec<u8>> = match material {
        Material::Rsa(k) => k
            .to_pkcs8_der()
            .map_err(|_| Malformed::Bad("RSA key did not encode"))?,
        Material::Aes(k) => Zeroizing::new(k.expose_secret().to_vec()),
        Material::Ec(k) => Zeroizing::new(k.to_vec()),
    };
    // Sized up front: the buffer never reallocates, so no copy of the key is left behind in
    // a freed allocation (the whole buffer is wiped when `body` drops).
    let mut w = Writer(Vec::with_capacity(
        64 + name.len() + version.len() + secret.len(),
    ));
    w.str(name)?;
    w.str(version)?;
    w.time(created)?;
    w.key_type(&material.key_type());
    w.bytes(&secret)?;
    let body = Zeroizing::new(w.0);
    Ok(seal_record(
        gcm,
        KEY_MAGIC,
        0,
        &id.rel_path(),
        vault_id,
        &body,
    ))
}

/// Opens a key file's bytes and rebuilds its material.
pub(super) fn read_key(
    gcm: &Gcm,
    vault_id: &[u8; 16],
    id: FileId,
    bytes: &[u8],
) -> Parsed<(KeyRecord, KeyType)> {
    let (_, body) = open_record(gcm, KEY_MAGIC, &id.rel_path(), vault_id, bytes)?;
    let mut r = Reader::new(&body);
    let name = r.str()?;
    let version = r.str()?;
    let _created = r.time()?;
    let key_type = r.key_type()?;
    let secret = r.take_u32_len()?;
    r.finish()?;
    let material = match &key_type {
        KeyType::Rsa { bits } => {
            let k = crate::crypto::RsaPrivate::from_pkcs8_der(secret)
                .map_err(|_| Malformed::Bad("RSA key material does not parse"))?;
            if k.bits() != *bits as usize {
                return Err(Malformed::Bad("RSA key size does not match its record"));
            }
            Material::Rsa(std::sync::Arc::new(k))
        }
        KeyType::Aes { .. } => Material::Aes(std::sync::Arc::new(
            crate::secret::AesKey::try_from_slice(secret)
                .map_err(|_| Malformed::Bad("AES key material has the wrong length"))?,
        )),
        KeyType::Ec { .. } => {
            let arr: [u8; 32] = secret
                .try_into()
                .map_err(|_| Malformed::Bad("EC key material has the wrong length"))?;
            Material::Ec(std::sync::Arc::new(Zeroizing::new(arr)))
        }
    };
    Ok((
        KeyRecord {
            name,
            version,
            material,
        },
        key_type,
    ))
}

/// Builds a vault state from a state record, loading each version's material with `load`
/// (called with the name as recorded). Key names are case-insensitive: a vault written before
/// they were (a name with capitals) is read under the lower-case name; two recorded names that
/// differ only in case are refused through `clash`.
pub(super) fn assemble<E>(
    rec: StateRecord,
    mut load: impl FnMut(&str, &StateVersion) -> Result<Material, E>,
    clash: impl FnOnce(&str) -> E,
) -> Result<(VaultState, FileMap), E> {
    let mut state = VaultState::new(rec.props);
    state.access = rec.access;
    let mut files = FileMap::new();
    let mut seen = std::collections::BTreeSet::new();
    if let Some(k) = rec
        .keys
        .iter()
        .find(|k| !seen.insert(k.name.to_ascii_lowercase()))
    {
        return Err(clash(&k.name));
    }
    for k in rec.keys {
        let folded = k.name.to_ascii_lowercase();
        let mut entry = KeyEntry {
            versions: Vec::with_capacity(k.versions.len()),
            deleted_at: k.deleted_at,
            next: k.next,
        };
        for v in &k.versions {
            let material = load(&k.name, v)?;
            files
                .entry(folded.clone())
                .or_default()
                .insert(v.version.clone(), v.file);
            entry.versions.push(crate::provider::soft::Version {
                version: v.version.clone(),
                material,
                enabled: v.enabled,
                created: v.created,
            });
        }
        state.keys.insert(folded, entry);
    }
    Ok((state, files))
}

fn len_u32(n: usize) -> Parsed<u32> {
    u32::try_from(n).map_err(|_| Malformed::Bad("too many entries"))
}

/// The write half: appends fields.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    fn u16(&mut self, v: u16) {
        self.raw(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.raw(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.raw(&v.to_be_bytes());
    }
    /// A string: u16 length, UTF-8 bytes. A longer string is refused, never truncated (the
    /// vault checks lengths at its API first, see `MAX_STR_LEN`).
    fn str(&mut self, s: &str) -> Parsed<()> {
        let n = u16::try_from(s.len())
            .map_err(|_| Malformed::Bad("a string is longer than 65535 bytes"))?;
        self.u16(n);
        self.raw(s.as_bytes());
        Ok(())
    }
    fn bytes(&mut self, b: &[u8]) -> Parsed<()> {
        self.u32(len_u32(b.len())?);
        self.raw(b);
        Ok(())
    }
    fn time(&mut self, t: SystemTime) -> Parsed<()> {
        let d = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| Malformed::Bad("a time before 1970"))?;
        self.u64(d.as_secs());
        self.u32(d.subsec_nanos());
        Ok(())
    }
    fn key_type(&mut self, k: &KeyType) {
        match k {
            KeyType::Rsa { bits } => {
                self.u8(1);
                self.u32(*bits);
            }
            KeyType::Aes { bits } => {
                self.u8(2);
                self.u32(*bits);
            }
            KeyType::Ec { .. } => {
                self.u8(3);
                self.u32(256);
            }
        }
    }
}

/// The read half: bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Parsed<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(Malformed::Bad("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Parsed<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Parsed<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> Parsed<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed::Bad("invalid boolean")),
        }
    }
    fn u16(&mut self) -> Parsed<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Parsed<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Parsed<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> Parsed<String> {
        let n = usize::from(self.u16()?);
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed::Bad("invalid UTF-8"))
    }
    fn take_u32_len(&mut self) -> Parsed<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn time(&mut self) -> Parsed<SystemTime> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(Malformed::Bad("invalid time"));
        }
        SystemTime::UNIX_EPOCH
            .checked_add(Duration::new(secs, nanos))
            .ok_or(Malformed::Bad("invalid time"))
    }
    fn key_type(&mut self) -> Parsed<KeyType> {
        let tag = self.u8()?;
        let bits = self.u32()?;
        match (tag, bits) {
            (1, 1024 | 2048 | 3072 | 4096) => Ok(KeyType::Rsa { bits }),
            (2, 256) => Ok(KeyType::Aes { bits }),
            (3, 256) => Ok(KeyType::Ec {
                curve: "P-256".into(),
            }),
            _ => Err(Malformed::Bad("unknown key type")),
        }
    }
    fn finish(&self) -> Parsed<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Malformed::Bad("trailing bytes"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::secret::AesKey;
    use std::sync::Arc;

    fn gcm() -> Gcm {
        Gcm::new(&AesKey::from_bytes([9; 32]))
    }

    fn sample() -> (VaultState, FileMap) {
        let mut st = VaultState::new(VaultProperties::new("h.example", "r", "t"));
        let now = SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 5);
        st.add_version(
            "k1",
            Material::Aes(Arc::new(AesKey::from_bytes([1; 32]))),
            now,
            true,
        )
        .unwrap();
        st.add_version(
            "k1",
            Material::Aes(Arc::new(AesKey::from_bytes([2; 32]))),
            now,
            false,
        )
        .unwrap();
        st.set_enabled("k1", "1", false).unwrap();
        st.add_version(
            "ec",
            Material::Ec(Arc::new(Zeroizing::new([3; 32]))),
            now,
            true,
        )
        .unwrap();
        st.delete("ec", now).unwrap();
        st.access.insert(
            Identity::new("app"),
            Permissions {
                get: true,
                wrap_key: false,
                unwrap_key: true,
            },
        );
        let mut files = FileMap::new();
        for (n, e) in &st.keys {
            for v in &e.versions {
                files
                    .entry(n.clone())
                    .or_default()
                    .insert(v.version.clone(), FileId::random());
            }
        }
        (st, files)
    }

    #[test]
    fn names_with_capitals_from_earlier_versions_load_folded_and_clashes_are_refused() {
        let (mut st, _) = sample();
        // As an earlier version could record it: a name with capitals.
        let entry = st.keys.remove("k1").unwrap();
        st.keys.insert("K1-Tenant".to_owned(), entry);
        let files: FileMap = st
            .keys
            .iter()
            .map(|(n, e)| {
                let m = e
                    .versions
                    .iter()
                    .map(|v| (v.version.clone(), FileId::random()))
                    .collect();
                (n.clone(), m)
            })
            .collect();
        let id = [7u8; 16];
        let bytes = write_state(&gcm(), &id, 1, &st, &files).unwrap();
        let rec = read_state(&gcm(), &id, &bytes).unwrap();
        let mut asked = Vec::new();
        let (back, files2) = assemble(
            rec,
            |n, v| {
                asked.push(n.to_owned());
                Ok::<_, String>(
                    st.keys[n].versions[v.version.parse::<usize>().unwrap() - 1]
                        .material
                        .clone(),
                )
            },
            |n| format!("clash {n}"),
        )
        .unwrap();
        assert!(back.keys.contains_key("k1-tenant") && !back.keys.contains_key("K1-Tenant"));
        assert!(files2.contains_key("k1-tenant"));
        assert!(
            asked.iter().any(|n| n == "K1-Tenant"),
            "key files are read by the recorded name"
        );
        // Two recorded names that differ only in case cannot both be kept.
        let mut st2 = st.clone();
        let dup = st2.keys["ec"].clone();
        st2.keys.insert("EC".to_owned(), dup);
        let mut files3 = files.clone();
        files3.insert("EC".to_owned(), files["ec"].clone());
        let bytes = write_state(&gcm(), &id, 2, &st2, &files3).unwrap();
        let rec = read_state(&gcm(), &id, &bytes).unwrap();
        let e = assemble(
            rec,
            |_, _| Err::<Material, _>("load".to_owned()),
            |n| format!("clash {n}"),
        )
        .err()
        .unwrap();
        assert!(e.starts_with("clash"), "{e}");
    }

    #[test]
    fn state_round_trips_and_every_bit_flip_is_detected() {
        let (st, files) = sample();
        let id = [7u8; 16];
        let bytes = write_state(&gcm(), &id, 42, &st, &files).unwrap();
        let rec = read_state(&gcm(), &id, &bytes).unwrap();
        assert_eq!(rec.generation, 42);
        assert_eq!(rec.props, st.props);
        assert_eq!(rec.access, st.access);
        let mut mats = BTreeMap::new();
        for (n, e) in &st.keys {
            for v in &e.versions {
                mats.insert((n.clone(), v.version.clone()), v.material.clone());
            }
        }
        let (back, files2) = assemble(
            rec,
            |n, v| {
                mats.get(&(n.to_owned(), v.version.clone()))
                    .cloned()
                    .ok_or(())
            },
            |_| (),
        )
        .unwrap();
        assert_eq!(files2, files);
        assert_eq!(back.keys.len(), 2);
        let k1 = &back.keys["k1"];
        assert_eq!(k1.next, 2);
        assert!(!k1.versions[0].enabled && k1.versions[1].enabled);
        assert!(back.keys["ec"].deleted_at.is_some());
        // Re-encoding what was read gives a record that reads back the same.
        let again = write_state(&gcm(), &id, 42, &back, &files2).unwrap();
        assert_eq!(again.len(), bytes.len());
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(read_state(&gcm(), &id, &b).is_err(), "bit {bit}");
        }
        for n in 0..bytes.len() {
            assert!(read_state(&gcm(), &id, &bytes[..n]).is_err(), "len {n}");
        }
        assert_eq!(
            read_state(&gcm(), &[8; 16], &bytes).err(),
            Some(Malformed::Unauthentic),
            "another vault's id"
        );
    }

    #[test]
    fn key_file_is_bound_to_its_name() {
        let id = [7u8; 16];
        let a = FileId::random();
        let m = Material::Aes(Arc::new(AesKey::from_bytes([5; 32])));
        let bytes = write_key(&gcm(), &id, a, "k", "3", SystemTime::now(), &m).unwrap();
        let (rec, kt) = read_key(&gcm(), &id, a, &bytes).unwrap();
        assert_eq!((rec.name.as_str(), rec.version.as_str()), ("k", "3"));
        assert_eq!(kt, KeyType::Aes { bits: 256 });
        assert_eq!(
            read_key(&gcm(), &id, FileId::random(), &bytes).err(),
            Some(Malformed::Unauthentic)
        );
        assert_eq!(FileId::from_file_name(&a.rel_path()[5..]), Some(a));
        assert_eq!(FileId::from_file_name("x.key"), None);
    }

    /// Parsing is total: mutated and random inputs give an error or a value, never a panic.
    #[test]
    fn parsers_are_total() {
        let meta = Meta::new(Kdf::KeyFile).encode(&[1; 32]);
        let (st, files) = sample();
        let id = [7u8; 16];
        let state = write_state(&gcm(), &id, 1, &st, &files).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            for base in [&meta, &state] {
                let mut b = base.clone();
                match next() % 3 {
                    0 => b.truncate((next() % (b.len() as u64 + 1)) as usize),
                    1 => {
                        let i = (next() % b.len() as u64) as usize;
                        b[i] = next() as u8;
                    }
                    _ => b = (0..next() % 200).map(|_| next() as u8).collect(),
                }
                let _ = Meta::decode(&b);
                let _ = read_state(&gcm(), &id, &b);
                let _ = read_key(&gcm(), &id, FileId([0; 16]), &b);
            }
        }
    }

    #[test]
    fn meta_round_trip_and_unknown_version() {
        let meta = Meta::new(Kdf::Argon2id {
            m_kib: 64,
            t: 1,
            p: 1,
        });
        let ck = [3u8; 32];
        let bytes = meta.encode(&ck);
        assert_eq!(bytes.len(), META_LEN);
        let back = Meta::decode(&bytes).unwrap();
        assert!(back.verify(&ck));
        assert!(!back.verify(&[4u8; 32]));
        assert_eq!(back.salt, meta.salt);
        let mut v2 = bytes.clone();
        v2[9] = 2;
        assert_eq!(Meta::decode(&v2).err(), Some(Malformed::UnknownVersion(2)));
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(matches!(Meta::decode(&flipped), Err(Malformed::Bad(_))));
        assert!(Meta::decode(&bytes[..50]).is_err());
    }
}
