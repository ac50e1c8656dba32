//! The vault owner's side of a token ([`VaultAdmin`]) and the provider per identity (the
//! token login is the only identity).

use super::*;

impl Inner {
    pub(super) fn admin_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates key `name` with `spec` (its first version), or with `None` adds a version of
    /// the same type as the newest one.
    pub(super) fn create(
        &self,
        name: &str,
        spec: Option<Gen>,
    ) -> Result<KeyProperties, ProviderError> {
        let _g = self.admin_lock();
        self.token.with_session(&format!("create key {name}"), |s| {
            let existing = self.versions(s, name)?;
            let plan = match (spec, existing.last()) {
                (Some(_), Some(_)) => {
                    return Err(Fail::Provider(ProviderError::new(
                        K::Conflict,
                        format!("key {name} already exists"),
                    )));
                }
                (None, None) => {
                    return Err(Fail::Provider(ProviderError::new(
                        K::KeyNotFound,
                        format!("no key {name} on the token"),
                    )));
                }
                (None, Some(last)) => {
                    let props = self.properties(s, name, last)?;
                    match props.key_type {
                        KeyType::Rsa { bits } if bits > 0 => Gen::Rsa(bits),
                        KeyType::Ec { curve } if curve == "P-256" => Gen::EcP256,
                        KeyType::Aes { bits: 256 } => Gen::Aes256,
                        other => {
                            return Err(Fail::Provider(ProviderError::new(
                                K::Unsupported,
                                format!("key {name} is {other}: no new version of it can be made"),
                            )));
                        }
                    }
                }
                (Some(plan), None) => plan,
            };
            let number = existing.last().map_or(1, |v| v.number + 1);
            Self::retrying_general_error(s, name, number, || self.generate(s, name, number, plan))?;
            let h = self.token.private_key(s, name, &number.to_string())?;
            let v = self.read_version(s, h)?.ok_or_else(|| {
                ProviderError::new(K::Unavailable, "the generated key has no version id")
            })?;
            self.properties(s, name, &v)
        })
    }
}

#[async_trait]
impl VaultAdmin for Pkcs11Provider {
    fn capabilities(&self) -> AdminCapabilities {
        AdminCapabilities {
            soft_delete: false,
            purge: false,
            access_policies: false,
            disable_version: true,
            latest_skips_disabled: true,
            import_pem: true,
            aes_keys: true,
            ec_keys: true,
            rsa_oaep_sha256: self.inner.config.oaep_hash == OaepHash::Sha256,
            rsa_oaep_sha1: true,
        }
    }

    async fn create_key(&self, name: &str, spec: KeySpec) -> Result<KeyProperties, ProviderError> {
        crate::provider::check_name(name)?;
        let plan = match spec {
            KeySpec::Rsa(bits @ (1024 | 2048 | 3072 | 4096)) => Gen::Rsa(bits),
            KeySpec::EcP256 => Gen::EcP256,
            KeySpec::Aes256 => Gen::Aes256,
            KeySpec::Rsa(bits) => {
                return Err(ProviderError::new(
                    K::InvalidRequest,
                    format!("RSA keys are 1024, 2048, 3072 or 4096 bits, not {bits}"),
                ));
            }
        };
        let name = name.to_owned();
        self.blocking(move |i| i.create(&name, Some(plan))).await
    }

    async fn import_rsa_pem(&self, name: &str, pem: &str) -> Result<KeyProperties, ProviderError> {
        crate::provider::check_name(name)?;
        let key = RsaPrivate::from_pem(pem)
            .map_err(|e| ProviderError::new(K::InvalidRequest, e.to_string()))?;
        let name = name.to_owned();
        self.blocking(move |i| {
            let _g = i.admin_lock();
            i.token.with_session(&format!("import key {name}"), |s| {
                let number = i.versions(s, &name)?.last().map_or(1, |v| v.number + 1);
                Inner::retrying_general_error(s, &name, number, || {
                    i.import(s, &name, number, &key)
                })?;
                let h = i.token.private_key(s, &name, &number.to_string())?;
                let v = i.read_version(s, h)?.ok_or_else(|| {
                    ProviderError::new(K::Unavailable, "the imported key has no version id")
                })?;
                i.properties(s, &name, &v)
            })
        })
        .await
    }

    async fn rotate_key(&self, name: &str) -> Result<KeyProperties, ProviderError> {
        let name = name.to_owned();
        self.blocking(move |i| i.create(&name, None)).await
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        let name = name.to_owned();
        self.blocking(move |i| {
            i.token
                .with_session(&format!("versions of key {name}"), |s| {
                    let all = i.versions(s, &name)?;
                    if all.is_empty() {
                        return Err(Fail::Provider(ProviderError::new(
                            K::KeyNotFound,
                            format!("no key {name} on the token"),
                        )));
                    }
                    all.iter().map(|v| i.properties(s, &name, v)).collect()
                })
        })
        .await
    }

    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError> {
        let (name, version) = (name.to_owned(), version.to_owned());
        self.blocking(move |i| {
            let _g = i.admin_lock();
            i.token.with_session(
                &format!("enable/disable key {name} version {version}"),
                |s| {
                    let v = i.resolve(s, &name, Some(&version))?;
                    if v.is_aes() {
                        s.update_attributes(
                            v.private,
                            &[
                                Attribute::Wrap(enabled),
                                Attribute::Unwrap(enabled),
                                // Never granted (keys of earlier versions had them).
                                Attribute::Encrypt(false),
                                Attribute::Decrypt(false),
                            ],
                        )?;
                        return Ok(());
                    }
                    s.update_attributes(
                        v.private,
                        &[Attribute::Decrypt(enabled), Attribute::Unwrap(false)],
                    )?;
                    let publics = s.find_objects(&[
                        Attribute::Class(ObjectClass::PUBLIC_KEY),
                        Inner::label(&name),
                        Attribute::Id(version.as_bytes().to_vec()),
                    ])?;
                    for h in publics {
                        s.update_attributes(
                            h,
                            &[Attribute::Encrypt(enabled), Attribute::Wrap(false)],
                        )?;
                    }
                    Ok(())
                },
            )
        })
        .await
    }

    async fn delete_key(&self, name: &str) -> Result<(), ProviderError> {
        let name = name.to_owned();
        self.blocking(move |i| {
            let _g = i.admin_lock();
            let r = i.token.with_session(&format!("delete key {name}"), |s| {
                let all = i.token.find(s, &[Inner::label(&name)])?;
                if all.is_empty() {
                    return Err(Fail::Provider(ProviderError::new(
                        K::KeyNotFound,
                        format!("no key {name} on the token"),
                    )));
                }
                for h in all {
                    s.destroy_object(h)?;
                }
                Ok(())
            });
            i.token.forget_key(&name);
            r
        })
        .await
    }

    async fn recover_key(&self, name: &str) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::KeyNotFound,
            format!("no soft-deleted key {name}: a PKCS#11 token destroys keys for good"),
        ))
    }

    async fn purge_key(&self, name: &str) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::KeyNotFound,
            format!("no soft-deleted key {name}: a PKCS#11 token destroys keys for good"),
        ))
    }

    async fn set_access(
        &self,
        _identity: &Identity,
        _permissions: Permissions,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::Unsupported,
            "a PKCS#11 token has no per-identity access policies (the token login is the identity)",
        ))
    }

    async fn remove_identity(&self, _identity: &Identity) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::Unsupported,
            "a PKCS#11 token has no identities besides its login",
        ))
    }
}

/// The token login is the only identity: every identity gets this provider.
#[async_trait]
impl crate::provider::ProviderFactory for Pkcs11Provider {
    async fn provider_for(
        &self,
        _identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        Ok(Arc::new(self.clone()))
    }
}
