//! Where the AWS KMS provider's credentials come from.
//!
//! The provider takes any [`ProvideCredentials`] (the trait of `aws-credential-types`, the
//! crate every AWS Rust SDK credential source implements): pass `aws-config`'s default chain
//! (environment, shared profile files, web identity, SSO, ECS and EC2 instance metadata)
//! to get everything the AWS SDKs do, without byok depending on it. Built in are the two
//! sources that need no network: [`EnvironmentCredentials`] and static
//! [`aws_credential_types::Credentials`] (which implement the trait themselves).

use std::fmt;

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};

/// Credentials from the standard environment variables, read on every call (so a rotated
/// value is picked up): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, for temporary
/// credentials, `AWS_SESSION_TOKEN` (AWS SDKs and Tools Reference Guide, "Environment
/// variables"). The values never appear in `Debug` output or errors.
#[derive(Clone, Copy, Default)]
pub struct EnvironmentCredentials {
    _private: (),
}

impl EnvironmentCredentials {
    /// The environment source.
    pub fn new() -> Self {
        Self::default()
    }

    fn load() -> Result<Credentials, CredentialsError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(CredentialsError::not_loaded(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set",
            ));
        };
        Ok(Credentials::new(
            id.trim(),
            secret.trim(),
            var("AWS_SESSION_TOKEN").map(|t| t.trim().to_owned()),
            None,
            "byok-environment",
        ))
    }
}

impl fmt::Debug for EnvironmentCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvironmentCredentials")
            .finish_non_exhaustive()
    }
}

impl ProvideCredentials for EnvironmentCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(Self::load())
    }
}
