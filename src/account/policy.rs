//! Policies: the rules that differ between services, with one preset per seed document.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::provider::Permissions;

/// An operation on an account or its data, as the application names it.
///
/// The crate's own data calls map to `DataRead`/`DataWrite` (objects) and
/// `MetadataRead`/`MetadataWrite` (sealed fields); operations the application performs without
/// the crate (listing, deleting objects, account GET) are checked with
/// [`crate::AccountManager::ensure_allowed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Operation {
    /// Read the account resource (GET).
    AccountGet,
    /// List accounts (LIST).
    AccountList,
    /// Delete the account.
    AccountDelete,
    /// Change account settings other than keys.
    AccountUpdate,
    /// Read object data (Get Blob, Copy source, streaming, …).
    DataRead,
    /// Write object data (Put Blob/Block/Page, Append, Copy destination, Set Tier, …).
    DataWrite,
    /// Read object metadata or sealed fields (Get Blob Properties/Metadata, List with metadata).
    MetadataRead,
    /// Write object metadata or sealed fields (Set Blob Metadata, Snapshot with metadata).
    MetadataWrite,
    /// Delete an object.
    DataDelete,
    /// List objects without their metadata.
    DataList,
    /// Service processing of data (encoding, streaming, analysis jobs).
    Processing,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 11] = [
        Operation::AccountGet,
        Operation::AccountList,
        Operation::AccountDelete,
        Operation::AccountUpdate,
        Operation::DataRead,
        Operation::DataWrite,
        Operation::MetadataRead,
        Operation::MetadataWrite,
        Operation::DataDelete,
        Operation::DataList,
        Operation::Processing,
    ];
}

/// A class of data, e.g. `blob`, `queue`, `blocklist-names`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DataClass(String);

impl DataClass {
    /// The class called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The class's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Display for DataClass {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether an account gets the second encryption layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DoubleEncryption {
    /// Always on (Video Analyzer, Media Services).
    Always,
    /// On where the account asks for it at creation.
    Optional,
}

/// The rules for accounts of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Policy {
    /// The preset or custom name, for messages.
    pub name: String,
    /// Allowed RSA modulus sizes for customer keys.
    pub allowed_rsa_bits: BTreeSet<u32>,
    /// The vault must have soft-delete on.
    pub require_soft_delete: bool,
    /// The vault must have purge protection on.
    pub require_purge_protection: bool,
    /// The vault must be in the account's region.
    pub require_same_region: bool,
    /// The vault must belong to the account's tenant.
    pub require_same_tenant: bool,
    /// Permissions the identity must hold (probed at configure time).
    pub required_permissions: Permissions,
    /// A key change must stay within the same vault.
    pub key_change_same_vault_only: bool,
    /// Whether an account may switch between platform and customer keys after creation.
    pub allow_source_switch: bool,
    /// Whether an account may be created directly with a customer key (Storage enables
    /// customer keys only on existing accounts).
    pub customer_key_at_creation: bool,
    /// A versionless key follows the vault's latest version (automatic rotation). When false,
    /// a versionless key is pinned to the latest version at configure time and moves only when
    /// the owner updates it.
    pub follow_latest_version: bool,
    /// Operations that still succeed while the customer key is inaccessible.
    pub allowed_while_inaccessible: BTreeSet<Operation>,
    /// Data classes that the customer key covers only if chosen when the account is created.
    pub optional_classes: BTreeSet<DataClass>,
    /// Data classes that always stay under platform keys, whatever the account's key source.
    pub platform_only_classes: BTreeSet<DataClass>,
    /// Whether data of classes *not* under the customer key (platform-only classes, optional
    /// classes not chosen at creation) stays readable and writable while the customer key is
    /// inaccessible. Storage: yes ("all data operations that are not listed … may proceed";
    /// queue and table data not chosen at creation are not under the customer key). Content
    /// Safety / AI services, Video Analyzer, Media Services: no (revoking "blocks access to
    /// all data"; a lost key disables the account). Default: no.
    #[serde(default)]
    pub platform_classes_survive_revocation: bool,
    /// Whether accounts get the second encryption layer.
    pub double_encryption: DoubleEncryption,
    /// How long an unwrapped account key may be served from cache while the provider is
    /// unreachable (and between unwraps).
    pub cache_max_age: Duration,
}

fn set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
    items.iter().cloned().collect()
}

const ACCOUNT_OPS: [Operation; 3] = [
    Operation::AccountGet,
    Operation::AccountList,
    Operation::AccountDelete,
];

impl Policy {
    /// Start a custom policy from permissive defaults (RSA 2048/3072/4096, vault with
    /// soft-delete and purge protection, get + wrapKey + unwrapKey, versionless keys follow the
    /// latest version, switching allowed, only account GET/LIST/DELETE while inaccessible,
    /// optional double encryption, 5-minute cache).
    pub fn builder(name: &str) -> PolicyBuilder {
        PolicyBuilder(Policy {
            name: name.to_owned(),
            allowed_rsa_bits: set(&[2048, 3072, 4096]),
            require_soft_delete: true,
            require_purge_protection: true,
            require_same_region: false,
            require_same_tenant: false,
            required_permissions: Permissions::CMK,
            key_change_same_vault_only: false,
            allow_source_switch: true,
            customer_key_at_creation: true,
            follow_latest_version: true,
            allowed_while_inaccessible: set(&ACCOUNT_OPS),
            optional_classes: BTreeSet::new(),
            platform_only_classes: BTreeSet::new(),
            platform_classes_survive_revocation: false,
            double_encryption: DoubleEncryption::Optional,
            cache_max_age: Duration::from_secs(300),
        })
    }

    /// Video Analyzer: RSA 2048/3072/4096 (no EC), vault in the same region with soft-delete
    /// and purge protection, a user-assigned identity, versionless keys rotate automatically,
    /// a lost key disables the account (account GET/LIST/DELETE only), double encryption always
    /// on.
    pub fn video_analyzer() -> Policy {
        Self::same_region_double("video-analyzer")
    }

    /// Media Services: the same rules as [`video_analyzer`](Self::video_analyzer) — the two
    /// seed documents agree on every rule this crate models (key types and sizes, same region,
    /// vault protection, automatic rotation, account GET/LIST/DELETE only while the key is
    /// inaccessible, double encryption always on); only the policy's name differs, so audit
    /// trails and errors say which product's rules applied.
    pub fn media_services() -> Policy {
        Self::same_region_double("media-services")
    }

    /// The rules Video Analyzer and Media Services share, under `name`.
    fn same_region_double(name: &str) -> Policy {
        Self::builder(name)
            .require_same_region(true)
            .double_encryption(DoubleEncryption::Always)
            .build()
    }

    /// Storage: RSA 2048 only; same region and tenant; customer keys are enabled on existing
    /// accounts; pinned versions are rotated by the user; queue and table data are covered only
    /// if chosen at creation; after revocation the listed data reads and writes fail and every
    /// other operation works.
    pub fn storage() -> Policy {
        Self::builder("storage")
            .allowed_rsa_bits(&[2048])
            .require_same_region(true)
            .require_same_tenant(true)
            .customer_key_at_creation(false)
            .follow_latest_version(false)
            .allowed_while_inaccessible(&[
                Operation::AccountGet,
                Operation::AccountList,
                Operation::AccountDelete,
                Operation::AccountUpdate,
                Operation::DataDelete,
                Operation::DataList,
            ])
            .optional_classes(&["queue", "table"])
            .platform_classes_survive_revocation(true)
            .build()
    }

    /// AI services: the identity needs exactly get, wrapKey, unwrapKey; the key may only change
    /// to another key in the same vault; no switch between platform and customer keys after
    /// creation.
    pub fn ai_services() -> Policy {
        Self::builder("ai-services")
            .key_change_same_vault_only(true)
            .allow_source_switch(false)
            .build()
    }

    /// Content Safety: RSA 2048 only; same region and tenant; versions are updated by the user;
    /// customer keys can be disabled (back to platform keys); blocklist names always stay under
    /// platform keys.
    pub fn content_safety() -> Policy {
        Self::builder("content-safety")
            .allowed_rsa_bits(&[2048])
            .require_same_region(true)
            .require_same_tenant(true)
            .follow_latest_version(false)
            .platform_only_classes(&["blocklist-names"])
            .build()
    }

    /// Whether `op` may run while the customer key is inaccessible.
    pub fn allows_while_inaccessible(&self, op: Operation) -> bool {
        self.allowed_while_inaccessible.contains(&op)
    }
}

/// Builds a custom [`Policy`].
#[derive(Clone, Debug)]
pub struct PolicyBuilder(Policy);

impl PolicyBuilder {
    /// Allowed RSA sizes.
    pub fn allowed_rsa_bits(mut self, bits: &[u32]) -> Self {
        self.0.allowed_rsa_bits = set(bits);
        self
    }
    /// Vault soft-delete and purge protection requirements.
    pub fn require_vault_protection(mut self, soft_delete: bool, purge_protection: bool) -> Self {
        self.0.require_soft_delete = soft_delete;
        self.0.require_purge_protection = purge_protection;
        self
    }
    /// Same-region requirement.
    pub fn require_same_region(mut self, on: bool) -> Self {
        self.0.require_same_region = on;
        self
    }
    /// Same-tenant requirement.
    pub fn require_same_tenant(mut self, on: bool) -> Self {
        self.0.require_same_tenant = on;
        self
    }
    /// Permissions probed at configure time.
    pub fn required_permissions(mut self, p: Permissions) -> Self {
        self.0.required_permissions = p;
        self
    }
    /// Key changes must stay in the same vault.
    pub fn key_change_same_vault_only(mut self, on: bool) -> Self {
        self.0.key_change_same_vault_only = on;
        self
    }
    /// Whether switching between platform and customer keys after creation is allowed.
    pub fn allow_source_switch(mut self, on: bool) -> Self {
        self.0.allow_source_switch = on;
        self
    }
    /// Whether accounts may be created with a customer key.
    pub fn customer_key_at_creation(mut self, on: bool) -> Self {
        self.0.customer_key_at_creation = on;
        self
    }
    /// Whether versionless keys follow the latest version.
    pub fn follow_latest_version(mut self, on: bool) -> Self {
        self.0.follow_latest_version = on;
        self
    }
    /// Operations that survive an inaccessible key.
    pub fn allowed_while_inaccessible(mut self, ops: &[Operation]) -> Self {
        self.0.allowed_while_inaccessible = set(ops);
        self
    }
    /// Classes covered by the customer key only if chosen at creation.
    pub fn optional_classes(mut self, classes: &[&str]) -> Self {
        self.0.optional_classes = classes.iter().map(|c| DataClass::new(*c)).collect();
        self
    }
    /// Classes that always stay under platform keys.
    pub fn platform_only_classes(mut self, classes: &[&str]) -> Self {
        self.0.platform_only_classes = classes.iter().map(|c| DataClass::new(*c)).collect();
        self
    }
    /// Whether classes outside the customer key stay available while it is inaccessible.
    pub fn platform_classes_survive_revocation(mut self, on: bool) -> Self {
        self.0.platform_classes_survive_revocation = on;
        self
    }
    /// Double encryption setting.
    pub fn double_encryption(mut self, d: DoubleEncryption) -> Self {
        self.0.double_encryption = d;
        self
    }
    /// Maximum age of a cached account key.
    pub fn cache_max_age(mut self, d: Duration) -> Self {
        self.0.cache_max_age = d;
        self
    }
    /// The policy.
    pub fn build(self) -> Policy {
        self.0
    }
}
