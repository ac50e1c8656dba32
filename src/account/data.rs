//! Data operations of an account: objects (through the envelope) and sealed fields.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::live::gate;
use super::policy::{DataClass, Operation};
use super::record::{AccountId, AccountRecord, AccountState, WrappedAccountKey};
use super::{AccountManager, Slot};
use crate::envelope::{
    Envelope, HeaderInfo, OpenHeader, OpenReader, ParsedHeader, PreparedKey, SealWriter,
    parse_header,
};
use crate::error::Error;

/// The unwrapped keys for one object: the layer-1 account-level key and, for double
/// encryption, the independent layer-2 key. Hand them to [`Envelope`] for the streaming and
/// ranged APIs; drop them when done (they are wiped with their last reference).
#[derive(Clone)]
pub struct ObjectKeys {
    layer1: Arc<PreparedKey>,
    layer2: Option<Arc<PreparedKey>>,
}

impl core::fmt::Debug for ObjectKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ObjectKeys")
            .field("account_key_id", &self.layer1.key_id())
            .field("double_encryption", &self.layer2.is_some())
            .finish_non_exhaustive()
    }
}

impl ObjectKeys {
    /// An envelope over these keys (both layers when the account has double encryption).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the two layers' keys are not independent.
    pub fn envelope(&self) -> Result<Envelope<'_>, Error> {
        layered(&self.layer1, self.layer2.as_ref())
    }
}

/// The envelope over a layer-1 key and, for double encryption, a layer-2 key.
fn layered<'k>(
    layer1: &'k PreparedKey,
    layer2: Option<&'k Arc<PreparedKey>>,
) -> Result<Envelope<'k>, Error> {
    let e = Envelope::new(layer1);
    match layer2 {
        Some(l2) => e.with_layer2(l2),
        None => Ok(e),
    }
}

/// What a data operation needs keys for.
#[derive(Clone, Copy)]
enum Want<'a> {
    /// A new object of this class.
    Write(&'a DataClass),
    /// The object whose header names these keys.
    Read {
        account_id: &'a str,
        key_id: &'a str,
        layer2_key_id: Option<&'a str>,
    },
}

impl<'a> From<&'a HeaderInfo> for Want<'a> {
    fn from(h: &'a HeaderInfo) -> Self {
        Want::Read {
            account_id: &h.account_id,
            key_id: &h.account_key.id,
            layer2_key_id: h.layer2_key.as_ref().map(|k| k.id.as_str()),
        }
    }
}

impl<'a> From<&'a ParsedHeader<'a>> for Want<'a> {
    fn from(h: &'a ParsedHeader<'a>) -> Self {
        Want::Read {
            account_id: h.account_id,
            key_id: h.layer1.key_id,
            layer2_key_id: h.layer2.as_ref().map(|k| k.key_id),
        }
    }
}

/// The gate's operation, the layer-1 slot and whether layer 2 is needed — decided from the
/// record under one read lock.
fn plan(
    rec: &AccountRecord,
    state: &AccountState,
    want: Want<'_>,
) -> Result<(Operation, Slot, bool), Error> {
    let (op, slot, layer2) = match want {
        Want::Write(class) => {
            let p = &rec.policy;
            let platform = p.platform_only_classes.contains(class)
                || (p.optional_classes.contains(class) && !rec.chosen_classes.contains(class));
            let slot = if platform {
                Slot::PlatformClass
            } else {
                Slot::Account
            };
            (Operation::DataWrite, slot, rec.double_encryption)
        }
        Want::Read {
            account_id,
            key_id,
            layer2_key_id,
        } => {
            if account_id != rec.id.as_str() {
                return Err(Error::Decryption);
            }
            let matches = |w: &Option<WrappedAccountKey>| {
                w.as_ref().is_some_and(|w| w.account_key_id == key_id)
            };
            let slot = if matches(&rec.account_key) {
                Slot::Account
            } else if matches(&rec.platform_class_key) {
                Slot::PlatformClass
            } else {
                gate(rec, state, Operation::DataRead, None)?;
                return Err(Error::Decryption);
            };
            let layer2 = match layer2_key_id {
                // An account with double encryption never wrote a single-layer object: one
                // that claims to be is refused (no downgrade by an insider holding layer 1).
                None if rec.double_encryption => return Err(Error::Decryption),
                None => false,
                Some(l2)
                    if rec
                        .infrastructure_key
                        .as_ref()
                        .is_some_and(|w| w.account_key_id == l2) =>
                {
                    true
                }
                Some(_) => return Err(Error::Decryption),
            };
            (Operation::DataRead, slot, layer2)
        }
    };
    gate(rec, state, op, Some(slot))?;
    Ok((op, slot, layer2))
}

impl AccountManager {
    /// Runs `f` with the cached keys for `want` — the hot path: no lock write, no system
    /// call, no store or provider call. A clock reading, the account map under a shared read
    /// lock, the record copy's deadline (an atomic) and the account's published snapshot (an
    /// atomic pointer) are all it reads. `None` when the copy is due for a re-read, a key is not cached, or the gate
    /// refuses (the slow path then decides, and audits). Revocation drops the cache and revokes
    /// the keys, so a key read here is one the state allowed, and one that stops working if
    /// the state changes while `f` runs.
    fn with_cached_keys<R>(
        &self,
        id: &AccountId,
        want: Want<'_>,
        f: impl FnOnce(&Arc<PreparedKey>, Option<&Arc<PreparedKey>>) -> R,
    ) -> Option<R> {
        let now = self.now_ns();
        let snapshot = {
            let cells = self.inner.cells.read().unwrap_or_else(|p| p.into_inner());
            let cell = cells.get(id)?;
            if now >= cell.valid_until.load(Ordering::Acquire) {
                return None;
            }
            cell.snapshot.load()
        };
        let (_, slot, layer2) = plan(&snapshot.record, &snapshot.state, want).ok()?;
        let k1 = snapshot.cached(slot, now)?;
        let k2 = if layer2 {
            Some(snapshot.cached(Slot::Infrastructure, now)?)
        } else {
            None
        };
        Some(f(k1, k2))
    }

    /// The keys for one object: from the hot path when cached, else through the state gate
    /// (audited), a record re-read when due and the account-key cache.
    async fn object_keys(&self, id: &AccountId, want: Want<'_>) -> Result<ObjectKeys, Error> {
        if let Some(keys) = self.with_cached_keys(id, want, |k1, k2| ObjectKeys {
            layer1: Arc::clone(k1),
            layer2: k2.cloned(),
        }) {
            return Ok(keys);
        }
        let cell = self.fresh_cell(id).await?;
        let planned = {
            let live = cell.read();
            plan(&live.record, live.state(), want)
        };
        let (op, slot, layer2) = match planned {
            Ok(p) => p,
            Err(e) => {
                let op = match want {
                    Want::Write(_) => Operation::DataWrite,
                    Want::Read { .. } => Operation::DataRead,
                };
                return Err(self
                    .audit_denial(&cell, op, Err(e))
                    .err()
                    .unwrap_or(Error::Decryption));
            }
        };
        let layer1 = self.slot_key(&cell, slot, slot, op).await?.prepared;
        let layer2 = if layer2 {
            Some(
                self.slot_key(&cell, Slot::Infrastructure, slot, op)
                    .await?
                    .prepared,
            )
        } else {
            None
        };
        Ok(ObjectKeys { layer1, layer2 })
    }

    /// The keys to write a new object of `class` (for [`Envelope::seal_writer`]). Checks the
    /// state gate for [`Operation::DataWrite`]. The keys stop working (every seal and chunk
    /// fails) when the account's key is revoked or the account deleted.
    ///
    /// # Errors
    /// As [`encrypt`](Self::encrypt).
    pub async fn keys_for_writing(
        &self,
        id: &AccountId,
        class: &DataClass,
    ) -> Result<ObjectKeys, Error> {
        self.object_keys(id, Want::Write(class)).await
    }

    /// The keys to read the object whose header is `header` (from [`crate::envelope::inspect`], or
    /// [`OpenHeader::info`] for streams: the two-phase open). Checks the state gate for
    /// [`Operation::DataRead`]; like [`keys_for_writing`](Self::keys_for_writing) they stop
    /// working on revocation.
    ///
    /// # Errors
    /// [`Error::Decryption`] if the header names another account or an unknown key; otherwise
    /// as [`decrypt`](Self::decrypt).
    pub async fn keys_for_reading(
        &self,
        id: &AccountId,
        header: &crate::envelope::HeaderInfo,
    ) -> Result<ObjectKeys, Error> {
        self.object_keys(id, Want::from(header)).await
    }

    /// Encrypts one object of `class` for the account, bound to `context` (object name,
    /// tenant, … — the same bytes must be given to open it). One provider unwrap per cache
    /// period, not per object.
    ///
    /// # Errors
    /// [`Error::KeyInaccessible`] (403) after revocation was observed;
    /// [`Error::Unavailable`] (503) when the provider is unreachable and no cached key is
    /// valid; [`Error::AccountNotFound`] (404); [`Error::PlatformKey`] (500) when a class
    /// under the service's own key cannot be unwrapped.
    pub async fn encrypt(
        &self,
        id: &AccountId,
        class: &DataClass,
        context: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let want = Want::Write(class);
        if let Some(sealed) =
            self.with_cached_keys(id, want, |k1, k2| layered(k1, k2)?.seal(context, plaintext))
        {
            return sealed;
        }
        self.object_keys(id, want)
            .await?
            .envelope()?
            .seal(context, plaintext)
    }

    /// Decrypts an object written by [`encrypt`](Self::encrypt) (or a streaming writer).
    ///
    /// # Errors
    /// [`Error::Decryption`] for anything tampered, truncated, from another account or
    /// opened with another context; otherwise as [`encrypt`](Self::encrypt).
    pub async fn decrypt(
        &self,
        id: &AccountId,
        context: &[u8],
        object: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let header = parse_header(object).map_err(|_| Error::Decryption)?;
        let want = Want::from(&header);
        if let Some(opened) = self.with_cached_keys(id, want, |k1, k2| {
            layered(k1, k2)?.open_parsed(context, object, &header)
        }) {
            return opened;
        }
        self.object_keys(id, want)
            .await?
            .envelope()?
            .open_parsed(context, object, &header)
    }

    /// A streaming writer for a new object of `class` into `sink` (memory bounded by about
    /// two chunks). Call `finish` on it.
    ///
    /// # Errors
    /// As [`encrypt`](Self::encrypt); [`Error::Io`] for an error of `sink` writing the
    /// header.
    pub async fn encrypt_writer<W: Write>(
        &self,
        id: &AccountId,
        class: &DataClass,
        context: &[u8],
        sink: W,
    ) -> Result<SealWriter<W>, Error> {
        let keys = self.keys_for_writing(id, class).await?;
        keys.envelope()?
            .seal_writer(context, sink)
            .map_err(Error::from_io)
    }

    /// A streaming reader of the object that starts at the current position of `source`
    /// (any [`Read`]: a request body, a pipe; no `Seek`). The header is read once
    /// ([`OpenHeader`]), the keys it names are looked up, and the body is opened from the
    /// same reader; it never hands out bytes of a chunk before that chunk authenticates.
    /// The object extends to the end of `source`: bound it with `source.take(object_len)`
    /// if more follows.
    ///
    /// # Errors
    /// [`Error::Io`] for an error of `source` while reading the header; otherwise as
    /// [`decrypt`](Self::decrypt).
    pub async fn decrypt_reader<R: Read>(
        &self,
        id: &AccountId,
        context: &[u8],
        source: R,
    ) -> Result<OpenReader<R>, Error> {
        let header = OpenHeader::read(source).map_err(crate::envelope::opaque_header_error)?;
        let keys = self.keys_for_reading(id, header.info()).await?;
        header.open(&keys.envelope()?, context)
    }

    /// A streaming reader of plaintext bytes `range` of the object that starts at the current
    /// position of `source` and extends to its end (use [`Bounded`](crate::envelope::Bounded) if more
    /// follows): the header is read once, the reader seeks to the chunk that holds
    /// `range.start` and reads on chunk by chunk, only the covering chunks read and
    /// authenticated, never the whole range in memory. Damage outside those chunks is not
    /// detected by a ranged read.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the range is reversed or ends past the plaintext;
    /// [`Error::Io`] for an error of `source`; otherwise as [`decrypt`](Self::decrypt).
    /// Reading the result fails as [`OpenReader`] does.
    pub async fn decrypt_range<R: Read + Seek>(
        &self,
        id: &AccountId,
        context: &[u8],
        source: R,
        range: std::ops::Range<u64>,
    ) -> Result<std::io::Take<OpenReader<R>>, Error> {
        let mut r = self.decrypt_reader(id, context, source).await?;
        let len = r.plaintext_len().map_err(Error::from_io)?;
        if range.start > range.end || range.end > len {
            return Err(Error::InvalidInput(format!(
                "range {}..{} outside the object's {len} bytes",
                range.start, range.end
            )));
        }
        if !range.is_empty() {
            r.seek(SeekFrom::Start(range.start))
                .map_err(Error::from_io)?;
        }
        Ok(r.take(range.end - range.start))
    }

    /// [`encrypt_writer`](Self::encrypt_writer) for async services (feature `tokio`): an
    /// [`AsyncWrite`](tokio::io::AsyncWrite) sealer into `sink`, no blocking, memory bounded
    /// by one chunk, backpressure passed through. Shut it down at the end
    /// (`AsyncWriteExt::shutdown`): that writes the final chunk.
    ///
    /// # Errors
    /// As [`encrypt`](Self::encrypt). Errors of `sink` come from the writes.
    #[cfg(feature = "tokio")]
    pub async fn encrypt_async_writer<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        id: &AccountId,
        class: &DataClass,
        context: &[u8],
        sink: W,
    ) -> Result<crate::envelope::AsyncSealWriter<W>, Error> {
        let keys = self.keys_for_writing(id, class).await?;
        keys.envelope()?.seal_async_writer(context, sink)
    }

    /// [`decrypt_reader`](Self::decrypt_reader) for async services (feature `tokio`): reads
    /// the header of the object at the current position of `source` (to its end; bound it
    /// with `AsyncReadExt::take` if more follows), looks up its keys and returns the
    /// [`AsyncRead`](tokio::io::AsyncRead) opener of the body.
    ///
    /// # Errors
    /// As [`decrypt_reader`](Self::decrypt_reader).
    #[cfg(feature = "tokio")]
    pub async fn decrypt_async_reader<R: tokio::io::AsyncRead + Unpin>(
        &self,
        id: &AccountId,
        context: &[u8],
        source: R,
    ) -> Result<crate::envelope::AsyncOpenReader<R>, Error> {
        let header = OpenHeader::read_async(source)
            .await
            .map_err(crate::envelope::opaque_header_error)?;
        let keys = self.keys_for_reading(id, header.info()).await?;
        header.open_async(&keys.envelope()?, context)
    }

    /// Seals a small value (access policy, resource metadata, input URL, token-validation
    /// key) under a subkey of the account key, bound to `field_context` and the account.
    ///
    /// # Errors
    /// As [`encrypt`](Self::encrypt) for [`Operation::MetadataWrite`]; [`Error::InvalidInput`]
    /// for an oversized value.
    pub async fn seal_field(
        &self,
        id: &AccountId,
        field_context: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>, Error> {
        self.field_key(id, Operation::MetadataWrite)
            .await?
            .seal_field(field_context, value)
    }

    /// Opens a value sealed by [`seal_field`](Self::seal_field).
    ///
    /// # Errors
    /// [`Error::Decryption`] for another field, account or tampering; otherwise as
    /// [`decrypt`](Self::decrypt) for [`Operation::MetadataRead`].
    pub async fn open_field(
        &self,
        id: &AccountId,
        field_context: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, Error> {
        self.field_key(id, Operation::MetadataRead)
            .await?
            .open_field(field_context, sealed)
    }

    /// The account key for sealed fields, after the gate for `op`.
    async fn field_key(&self, id: &AccountId, op: Operation) -> Result<Arc<PreparedKey>, Error> {
        let cell = self.fresh_cell(id).await?;
        let gate = cell.read().gate(op, Some(Slot::Account));
        self.audit_denial(&cell, op, gate)?;
        Ok(self
            .slot_key(&cell, Slot::Account, Slot::Account, op)
            .await?
            .prepared)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::account::policy::{DoubleEncryption, Policy};
    use crate::account::{NewAccount, PlatformKey};
    use crate::provider::VaultDirectory;
    use crate::provider::memory::InMemoryVault;
    use crate::provider::{
        Identity, KeySpec, Permissions, VaultAdmin, VaultProperties, WrapAlgorithm,
    };

    async fn platform_key(name: &str) -> PlatformKey {
        let v = InMemoryVault::new(VaultProperties::new(&format!("{name}.internal"), "r", "op"));
        v.create_key(name, KeySpec::Aes256).await.expect("key");
        let id = Identity::new("svc");
        v.set_access(&id, Permissions::CMK).await.expect("grant");
        PlatformKey::new(Arc::new(v.provider(&id)), name, WrapAlgorithm::A256Kw)
    }

    #[tokio::test]
    async fn a_double_encryption_account_refuses_single_layer_objects() {
        let m = AccountManager::builder(
            platform_key("platform").await,
            Arc::new(VaultDirectory::new()),
        )
        .infrastructure_key(platform_key("infra").await)
        .build();
        let id = AccountId::new("de").expect("id");
        let policy = Policy::builder("de")
            .double_encryption(DoubleEncryption::Always)
            .build();
        m.create_account(NewAccount::new(id.clone(), "r", "t", policy))
            .await
            .expect("create");
        let class = DataClass::new("blob");
        let keys = m.keys_for_writing(&id, &class).await.expect("keys");
        // An insider with the layer-1 key writes a single-layer object for the account.
        let downgraded = Envelope::new(&keys.layer1).seal(b"o", b"x").expect("seal");
        assert!(matches!(
            m.decrypt(&id, b"o", &downgraded).await,
            Err(Error::Decryption)
        ));
        let proper = m.encrypt(&id, &class, b"o", b"x").await.expect("encrypt");
        assert_eq!(m.decrypt(&id, b"o", &proper).await.expect("decrypt"), b"x");
    }
}
