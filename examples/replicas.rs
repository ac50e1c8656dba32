//! Two replicas of a service over PostgreSQL: one observes that a tenant revoked its key, the
//! other refuses the tenant's data within milliseconds — told by `LISTEN`/`NOTIFY`, not by
//! its own `record_max_age` (2 s by default).
//!
//! Run: `DATABASE_URL='host=localhost user=postgres dbname=byok' cargo run --features postgres
//! --example replicas` (the store creates its table; the account is left as a tombstone).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use byok::account::{DataClass, NewAccount, PlatformKey};
use byok::provider::memory::InMemoryVault;
use byok::provider::{
    Identity, KeySpec, Permissions, VaultDirectory, VaultProperties, WrapAlgorithm,
};
use byok::store::{AccountStore, ChangeListener, PostgresAccountStore, StoreChange};
use byok::{AccountId, AccountManager, Error, KeyId, KeySource, Policy, VaultAdmin};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "set DATABASE_URL to a PostgreSQL database, e.g.\n  \
             DATABASE_URL='host=localhost user=postgres dbname=byok' \
             cargo run --features postgres --example replicas"
        );
        std::process::exit(2);
    };

    // The service's platform key, and the tenant's vault with a key the service may use.
    let service = Identity::new("service");
    let platform = InMemoryVault::new(VaultProperties::new("platform.internal", "eu", "op"));
    platform.create_key("platform-kek", KeySpec::Aes256).await?;
    platform.set_access(&service, Permissions::CMK).await?;
    let tenant = InMemoryVault::new(VaultProperties::new(
        "contoso.vault.example",
        "eu",
        "contoso",
    ));
    tenant.create_key("cmk", KeySpec::Rsa(2048)).await?;
    let uami = Identity::new("uami-contoso");
    tenant.set_access(&uami, Permissions::CMK).await?;
    let directory = Arc::new(VaultDirectory::new());
    directory.add_vault("contoso.vault.example", Arc::new(tenant.clone()));
    let platform_key = PlatformKey::new(
        Arc::new(platform.provider(&service)),
        "platform-kek",
        WrapAlgorithm::A256Kw,
    );

    // Two replicas, each with its own connection pool; B also listens for change hints.
    let a = AccountManager::builder(platform_key.clone(), directory.clone())
        .store(Arc::new(PostgresAccountStore::connect(&url).await?))
        .build();
    let b_store = Arc::new(PostgresAccountStore::connect(&url).await?);
    let listening = Arc::new(Listening::default());
    let weak: Weak<dyn ChangeListener> = Arc::downgrade(&listening) as Weak<dyn ChangeListener>;
    b_store.subscribe(weak);
    let b = AccountManager::builder(platform_key, directory)
        .store(b_store)
        .build();
    listening.0.notified().await; // B's LISTEN is in place

    // A creates the tenant's account under the tenant's key and writes an object; B reads it.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let id = AccountId::new(format!("contoso-{nanos}"))?;
    let key: KeyId = "https://contoso.vault.example/keys/cmk".parse()?;
    a.create_account(
        NewAccount::new(id.clone(), "eu", "contoso", Policy::ai_services())
            .key_source(KeySource::customer(key, uami.clone())),
    )
    .await?;
    let blob = DataClass::new("blob");
    let object = a.encrypt(&id, &blob, b"doc-1", b"hello").await?;
    b.decrypt(&id, b"doc-1", &object).await?;
    println!("A wrote an object for {id}; B read it (B's account key is now cached)");

    // The tenant revokes the service's access. A's probe observes it and commits it.
    tenant.remove_identity(&uami).await?;
    let started = Instant::now();
    match a.probe(&id).await {
        Err(e) => println!("tenant revoked access; A's check says: {e}"),
        Ok(state) => return Err(format!("A's check still says {state}").into()),
    }

    // B still has the key in cache; it refuses as soon as the change hint arrives.
    loop {
        match b.decrypt(&id, b"doc-1", &object).await {
            Err(e @ Error::KeyInaccessible { .. }) => {
                println!(
                    "B refused {:.1} ms after A's check began: {e} (HTTP {})",
                    started.elapsed().as_secs_f64() * 1e3,
                    e.http_status()
                );
                break;
            }
            Ok(_) if started.elapsed() < Duration::from_secs(5) => tokio::task::yield_now().await,
            other => return Err(format!("B: {other:?}").into()),
        }
    }

    a.delete_account(&id).await?;
    Ok(())
}

/// Wakes `main` when B's store has its listening connection up (it then sends `Unknown`).
#[derive(Default)]
struct Listening(Notify);

impl ChangeListener for Listening {
    fn changed(&self, change: StoreChange) {
        if change == StoreChange::Unknown {
            self.0.notify_one();
        }
    }
}
