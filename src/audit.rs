//! Audit events: every wrap, unwrap, state change, key-version change and denied operation.
//!
//! Events name who, which account, which key and version, what, the outcome and when — and
//! never carry key material (they hold no field that could).

use core::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::account::policy::Operation;
use crate::account::record::StateKind;
use crate::provider::Identity;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuditAction {
    /// The account key was wrapped under a key.
    Wrap,
    /// The account key was unwrapped with a key.
    Unwrap,
    /// A probe of the key's accessibility.
    Probe,
    /// The account moved between lifecycle states.
    StateChange {
        /// The previous state.
        from: StateKind,
        /// The new state.
        to: StateKind,
    },
    /// The key (or key version) protecting the account key changed.
    KeyChange {
        /// Previous key, as a key identifier or `platform`.
        from: String,
        /// New key.
        to: String,
    },
    /// An operation was refused (inaccessible key, deleted account, policy).
    Denied {
        /// The operation that was refused.
        operation: Operation,
    },
    /// The account was created.
    Created,
    /// The account was deleted and its wrapped key destroyed.
    Deleted,
}

/// How it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuditOutcome {
    /// It worked.
    Success,
    /// It failed; the text is the error kind and message (never secrets).
    Failure(String),
}

/// One audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// When.
    pub time: SystemTime,
    /// The identity that reached the vault, where one did.
    pub identity: Option<Identity>,
    /// The account.
    pub account: String,
    /// The key involved (`https://…/keys/name/version`, or `platform:<name>/<version>`).
    pub key: Option<String>,
    /// What happened.
    pub action: AuditAction,
    /// The outcome.
    pub outcome: AuditOutcome,
}

/// Where audit events go.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Records one event. Must not block for long; must not fail the operation.
    fn record(&self, event: &AuditEvent);
}

/// Keeps events in memory (tests, small deployments).
#[derive(Debug, Default)]
pub struct MemoryAuditSink(Mutex<Vec<AuditEvent>>);

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, event: &AuditEvent) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
    }
}

/// Emits each event as a `tracing` event at INFO (failures and denials at WARN) with target
/// `byok::audit`.
#[derive(Debug, Default, Clone, Copy)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a stateless unit value, and it stays one"
)]
pub struct TracingAuditSink;

impl AuditSink for TracingAuditSink {
    fn record(&self, e: &AuditEvent) {
        let identity = e.identity.as_ref().map(Identity::as_str).unwrap_or("-");
        let key = e.key.as_deref().unwrap_or("-");
        let action = format!("{:?}", e.action);
        match &e.outcome {
            AuditOutcome::Success if !matches!(e.action, AuditAction::Denied { .. }) => {
                tracing::info!(target: "byok::audit", account = %e.account, identity, key, action, "ok");
            }
            AuditOutcome::Success => {
                tracing::warn!(target: "byok::audit", account = %e.account, identity, key, action, "denied");
            }
            AuditOutcome::Failure(why) => {
                tracing::warn!(target: "byok::audit", account = %e.account, identity, key, action, error = %why, "failed");
            }
        }
    }
}
