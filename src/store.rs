//! The `TokenStore` trait every store implements, its errors, and the call counter the service
//! wraps around whichever store it runs on.
//!
//! A store keeps [`TokenRecord`]s keyed by SHA-256 of the token, with indexes by token id,
//! subject and grant. Every operation that must be atomic (rotation, refresh-token spending,
//! grant and subject revocation) is one store call, so each store can make it one transaction
//! (the embedded store), or, where one transaction cannot span the data (Redis Cluster), an
//! ordered sequence of atomic steps that is safe to interrupt (see `store::redis`).

pub mod embedded;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::metrics::Metrics;

use crate::record::TokenRecord;
use crate::token::TokenHash;

/// A boxed store future: the trait is used as `dyn TokenStore`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store call failed. Cloned to every caller that shared a coalesced lookup.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer: the caller must not treat the token as
    /// invalid (G4).
    #[error("store unavailable: {0}")]
    Unavailable(Arc<str>),
    /// A record or id that must be new already exists.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// A stored value could not be decoded.
    #[error("store data is corrupt: {0}")]
    Corrupt(Arc<str>),
    /// A change that spans several steps (Redis Cluster) did part of its work, then the store
    /// failed: treat it as [`StoreError::Unavailable`] (the caller retries), but the tokens in
    /// `changed` were changed in the store and must be dropped from this replica's cache now.
    #[error("store unavailable: {cause}")]
    Incomplete {
        /// What was changed in the store before the failure.
        changed: Arc<[Changed]>,
        /// Why the rest failed.
        cause: Arc<str>,
    },
}

impl StoreError {
    /// Builds an [`StoreError::Unavailable`] from any displayable cause.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(cause.to_string().into())
    }

    /// `self`, carrying `changed` (what the failed call did change) when there is any.
    #[must_use]
    pub fn with_changed(self, changed: Vec<Changed>) -> Self {
        if changed.is_empty() {
            return self;
        }
        let cause = match self {
            StoreError::Unavailable(c) => c,
            StoreError::Incomplete { cause, .. } => cause,
            other => other.to_string().into(),
        };
        StoreError::Incomplete {
            changed: changed.into(),
            cause,
        }
    }

    /// The tokens a failed call changed anyway (see [`StoreError::Incomplete`]); empty for
    /// every other error.
    pub fn changed(&self) -> &[Changed] {
        match self {
            StoreError::Incomplete { changed, .. } => changed,
            _ => &[],
        }
    }
}

/// What a revocation applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One token, by its hash.
    Token(TokenHash),
    /// One token, by its public id.
    TokenId(String),
    /// Every token of one grant (a refresh token family).
    GrantId(String),
    /// Every token of one subject issued to one client (Connected Apps → Disconnect).
    SubjectClient {
        /// The user.
        subject: String,
        /// The OAuth client.
        client_id: String,
    },
    /// Every token of one subject.
    Subject(String),
}

/// One token a call changed: enough to drop it from every cache and to report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The store key.
    pub hash: TokenHash,
    /// The public id.
    pub token_id: String,
}

/// The outcome of presenting a refresh token.
#[derive(Debug)]
pub enum SpendOutcome {
    /// The refresh token was spent and its successors stored.
    Spent {
        /// The refresh token's record, now marked spent.
        old: Box<TokenRecord>,
        /// The new records, as given.
        issued: Vec<TokenRecord>,
    },
    /// The refresh token had already been spent: its whole grant is now revoked.
    Reused {
        /// What this call revoked.
        revoked: Vec<Changed>,
    },
    /// Unknown, expired, revoked, or refused by the successor builder.
    Refused(RefreshRefusal),
}

/// Why a refresh was refused (OAuth `invalid_grant` / `invalid_scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshRefusal {
    /// No such refresh token.
    #[error("invalid_grant: unknown refresh token")]
    Unknown,
    /// Past its expiry.
    #[error("invalid_grant: refresh token expired")]
    Expired,
    /// Revoked, alone or with its grant.
    #[error("invalid_grant: refresh token revoked")]
    Revoked,
    /// Issued to another client.
    #[error("invalid_grant: refresh token was issued to another client")]
    ClientMismatch,
    /// Asked for scopes the grant does not hold.
    #[error("invalid_scope: requested scopes exceed the grant")]
    ScopeWidened,
}

/// Where a presented refresh token stands, checked in the same order by every store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshState {
    /// Not spent, not revoked, not expired: it may be spent.
    Usable,
    /// Spent before: reuse, so its grant must be revoked.
    Reused,
    /// Refused without side effects.
    Refused(RefreshRefusal),
}

impl RefreshState {
    /// Classifies a refresh token's record at `now`.
    pub fn of(r: &TokenRecord, now: i64) -> Self {
        use crate::token::TokenKind;
        if r.kind != TokenKind::OAuthRefresh {
            RefreshState::Refused(RefreshRefusal::Unknown)
        } else if r.is_revoked() {
            RefreshState::Refused(RefreshRefusal::Revoked)
        } else if r.spent_at != 0 {
            RefreshState::Reused
        } else if r.is_expired(now) {
            RefreshState::Refused(RefreshRefusal::Expired)
        } else {
            RefreshState::Usable
        }
    }
}

/// Builds the successor records of a refresh token from its record, inside the store's
/// transaction; refusing leaves everything unchanged.
pub type Successors =
    Box<dyn FnOnce(&TokenRecord) -> Result<Vec<TokenRecord>, RefreshRefusal> + Send>;

/// A page of [`TokenStore::list`].
#[derive(Debug, Default)]
pub struct ListPage {
    /// The records, ordered by token id.
    pub records: Vec<TokenRecord>,
    /// The token id to continue after, when there is more.
    pub next: Option<String>,
}

impl ListPage {
    /// Adds `r`, or, when the page already holds `limit` records, notes where the next page
    /// starts and returns false (the page is complete).
    pub fn offer(&mut self, r: TokenRecord, limit: usize) -> bool {
        if self.records.len() == limit {
            self.next = self.records.last().map(|r| r.token_id.clone());
            return false;
        }
        self.records.push(r);
        true
    }
}

/// A query for [`TokenStore::list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Whose tokens.
    pub subject: String,
    /// Only this client's, when not empty.
    pub client_id: String,
    /// Include revoked, expired and spent tokens.
    pub include_inactive: bool,
    /// Continue after this token id.
    pub after: Option<String>,
    /// At most this many.
    pub limit: usize,
    /// Now, to tell expired tokens.
    pub now: i64,
}

impl ListQuery {
    /// Whether a record of the subject belongs in the answer (client filter, activity).
    pub fn matches(&self, r: &TokenRecord) -> bool {
        (self.client_id.is_empty() || r.client_id == self.client_id)
            && (self.include_inactive || r.is_active(self.now))
    }
}

/// Where token records live. Implementations: [`embedded::EmbeddedStore`] (one process, durable
/// on local disk) and, later, Redis (shared by replicas).
pub trait TokenStore: Send + Sync + 'static {
    /// The record for a token hash, revoked and expired ones included.
    fn get(&self, hash: TokenHash) -> StoreFuture<'_, Option<TokenRecord>>;
    /// The record for a public token id.
    fn get_by_id(&self, token_id: String) -> StoreFuture<'_, Option<TokenRecord>>;
    /// Stores new records atomically.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a hash or id exists already.
    fn insert(&self, records: Vec<TokenRecord>) -> StoreFuture<'_, ()>;
    /// Stores `new` and sets the old token's `expires_at` in one transaction. Returns the old
    /// record as it was, or `None` (and changes nothing) when it is missing or inactive.
    fn rotate(
        &self,
        old_id: String,
        old_expires_at: i64,
        new: TokenRecord,
        now: i64,
    ) -> StoreFuture<'_, Option<TokenRecord>>;
    /// Spends a refresh token atomically (see [`SpendOutcome`]).
    fn spend_refresh(
        &self,
        hash: TokenHash,
        now: i64,
        successors: Successors,
    ) -> StoreFuture<'_, SpendOutcome>;
    /// Marks every active token of `target` revoked at `now`; returns the tokens it changed.
    fn revoke(&self, target: RevokeTarget, now: i64) -> StoreFuture<'_, Vec<Changed>>;
    /// Lists a subject's tokens, ordered by token id.
    fn list(&self, query: ListQuery) -> StoreFuture<'_, ListPage>;
    /// Records `last_used_at` for tokens; a later time never goes backwards.
    fn touch(&self, used: Vec<(TokenHash, i64)>) -> StoreFuture<'_, ()>;
    /// Checks the store answers (readiness).
    fn ping(&self) -> StoreFuture<'_, ()>;
}

/// Counts calls into the store by operation, so tests and metrics can see what reached it.
#[derive(Debug, Default)]
pub struct StoreCalls {
    gets: AtomicU64,
    writes: AtomicU64,
    pings: AtomicU64,
    errors: AtomicU64,
}

impl StoreCalls {
    /// Lookups by hash (the hot path's misses).
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }
    /// Admin and bookkeeping calls.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
    /// Calls that failed.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Indexes into [`crate::metrics::STORE_OPS`].
#[derive(Clone, Copy, Debug)]
enum Op {
    Get = 0,
    GetById = 1,
    Insert = 2,
    Rotate = 3,
    SpendRefresh = 4,
    Revoke = 5,
    List = 6,
    Touch = 7,
    Ping = 8,
}

/// A store with call counting and metrics around it. Every part of the service talks to this.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn TokenStore>,
    calls: Arc<StoreCalls>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Wraps a store (no metrics: tools and tests).
    pub fn new(inner: Arc<dyn TokenStore>) -> Self {
        Store {
            inner,
            calls: Arc::default(),
            metrics: None,
        }
    }

    /// Wraps a store, recording every call in `metrics`.
    pub fn with_metrics(inner: Arc<dyn TokenStore>, metrics: Arc<Metrics>) -> Self {
        Store {
            metrics: Some(metrics),
            ..Store::new(inner)
        }
    }

    /// The call counters.
    pub fn calls(&self) -> &Arc<StoreCalls> {
        &self.calls
    }

    async fn counted<T>(&self, op: Op, f: StoreFuture<'_, T>) -> Result<T, StoreError> {
        let counter = match op {
            Op::Get => &self.calls.gets,
            Op::Ping => &self.calls.pings,
            _ => &self.calls.writes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let r = f.await;
        if r.is_err() {
            self.calls.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = &self.metrics {
            m.store_call(op as usize, started.elapsed(), r.is_ok());
        }
        r
    }

    /// See [`TokenStore::get`].
    ///
    /// # Errors
    /// As the store fails.
    pub async fn get(&self, hash: TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        self.counted(Op::Get, self.inner.get(hash)).await
    }

    /// See [`TokenStore::get_by_id`].
    ///
    /// # Errors
    /// As the store fails.
    pub async fn get_by_id(&self, id: String) -> Result<Option<TokenRecord>, StoreError> {
        self.counted(Op::GetById, self.inner.get_by_id(id)).await
    }

    /// See [`TokenStore::insert`].
    ///
    /// # Errors
    /// As the store fails.
    pub async fn insert(&self, records: Vec<TokenRecord>) -> Result<(), StoreError> {
        self.counted(Op::Insert, self.inner.insert(records)).await
    }

    /// See [`TokenStore::rotate`].
    ///
    /// # Errors
    /// As the store fails.
    pub async fn rotate(
        &self,
        old_id: String,
        old_expires_at: i64,
        new: TokenRecord,
        now: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let f = self.inner.rotate(old_id, old_expires_at, new, now);
        self.counted(Op::Rotate, f).await
    }

    /// See [`TokenStore::spend_refresh`].
    ///
    /// # Errors
    /// As the store fails.
    pub async fn spend_refresh(
        &self,
        hash: TokenHash,
        now: i64,
        successors: Successors,
    ) -> Result<SpendOutcome, StoreError> {
        let f = self.inner.spend_refresh(hash, now, successors);
        self.counted(Op::SpendRefresh, f).await
    }

    /// See [`TokenStore::revoke`].
    ///
    /// # Errors
    /// As the store fails.
    pub async fn revoke(&self, target: RevokeTarget, now: i64) -> Result<Vec<Changed>, StoreError> {
        self.counted(Op::Revoke, self.inner.revoke(target, now))
            .await
    }

    /// See [`TokenStore::list`].
    ///
    /// # Errors
    /// As the store fails.
    pub async fn list(&self, query: ListQuery) -> Result<ListPage, StoreError> {
        self.counted(Op::List, self.inner.list(query)).await
    }

    /// See [`TokenStore::touch`].
    ///
    /// # Errors
    /// As the store fails.
    pub async fn touch(&self, used: Vec<(TokenHash, i64)>) -> Result<(), StoreError> {
        self.counted(Op::Touch, self.inner.touch(used)).await
    }

    /// See [`TokenStore::ping`].
    ///
    /// # Errors
    /// As the store fails.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.counted(Op::Ping, self.inner.ping()).await
    }
}
