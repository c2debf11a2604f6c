//! Revocation fan-out: every change that must stop a token (revocation, rotation, refresh reuse)
//! goes through [`Revocations::publish`], which drops the tokens from this replica's cache and,
//! with a shared store, tells every other replica.

use std::sync::Arc;

use crate::cache::Cache;
use crate::store::Changed;

/// How much one revocation covers (a metric label and a log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One token.
    Token,
    /// One grant, or every grant of a subject + client.
    Grant,
    /// Every token of a subject.
    Subject,
    /// A token's record changed (rotation shortened its life).
    Update,
}

impl Granularity {
    /// Stable name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Granularity::Token => "token",
            Granularity::Grant => "grant",
            Granularity::Subject => "subject",
            Granularity::Update => "update",
        }
    }
}

/// Publishes invalidations. With the embedded store the feed is in-process: the only replica is
/// this one.
#[derive(Clone, Debug)]
pub struct Revocations {
    cache: Arc<Cache>,
}

impl Revocations {
    /// A feed that applies to `cache`.
    pub fn new(cache: Arc<Cache>) -> Self {
        Revocations { cache }
    }

    /// Applies a change that the store has already committed.
    pub fn publish(&self, granularity: Granularity, changed: &[Changed]) {
        if changed.is_empty() {
            return;
        }
        self.cache.invalidate(changed.iter().map(|c| c.hash));
        for c in changed {
            tracing::info!(token_id = %c.token_id, granularity = granularity.as_str(), "token invalidated");
        }
    }
}
