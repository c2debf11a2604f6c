//! The validation pipeline: strip `Bearer` → format checks → SHA-256 → cache → (on a miss) one
//! coalesced store lookup → expiry, revocation, resource and scope checks → a [`Verdict`].
//! No gRPC types here; `grpc::validator` adapts it.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{OnceCell, mpsc};

use crate::cache::{Cache, Entry, FillTicket, Granted, Probe, View};
use crate::challenge::Reason;
use crate::clock::Clock;
use crate::revocation::Lease;
use crate::scope;
use crate::store::{Store, StoreError};
use crate::token::{self, TokenHash, TokenKind};

/// Longest `token` field accepted. Longer is a caller bug or an attack: `INVALID_ARGUMENT`.
pub const MAX_CREDENTIAL_LEN: usize = 4096;
/// Longest `resource` accepted.
pub const MAX_RESOURCE_LEN: usize = 2048;
/// `last_used_at` is written at most this often per token (seconds).
pub const TOUCH_EVERY_SECS: i64 = 60;

/// What the caller asked.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Raw token or whole `Authorization` value, as bytes (may be invalid UTF-8).
    pub credential: &'a [u8],
    /// Every scope the call needs.
    pub required_scopes: &'a [String],
    /// RFC 8707 resource the call is for; empty = not checked.
    pub resource: &'a str,
}

/// The three answers of DESIGN.md §1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pass the request.
    Allow,
    /// HTTP 401.
    Unauthenticated,
    /// HTTP 403.
    Forbidden,
}

/// Where the answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Decided from the request alone (format).
    Request,
    /// From the cache (positive or negative entry).
    Cache,
    /// From a store lookup.
    Store,
}

/// A decision with its reason and, when the token is known, its record.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Allow, 401 or 403.
    pub decision: Decision,
    /// Why.
    pub reason: Reason,
    /// What the token grants, when it is known (allowed or forbidden).
    pub record: Option<Granted>,
    /// Where the answer came from.
    pub source: Source,
}

impl Verdict {
    fn deny(reason: Reason, source: Source) -> Self {
        Verdict {
            decision: Decision::Unauthenticated,
            reason,
            record: None,
            source,
        }
    }
}

/// A request that could not be answered at all.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ValidateError {
    /// The request itself is bad (oversized token, malformed scope): gRPC `INVALID_ARGUMENT`.
    #[error("{0}")]
    InvalidArgument(&'static str),
    /// The store could not answer and nothing safe is cached: gRPC `UNAVAILABLE`, never 401.
    #[error("token store unavailable")]
    Unavailable(#[source] StoreError),
}

/// The outcome of the synchronous part of validation.
#[derive(Debug)]
pub enum Fast {
    /// Answered without the store.
    Done(Result<Verdict, ValidateError>),
    /// Needs a store lookup for this hash.
    Lookup(TokenHash),
}

type FlightResult = Result<Option<Entry>, StoreError>;

/// One store lookup that concurrent misses for the same token share.
struct Flight {
    ticket: FillTicket,
    cell: OnceCell<FlightResult>,
}

/// The validator: cache, store, clock and the `last_used_at` queue.
pub struct Validator {
    cache: Arc<Cache>,
    store: Store,
    clock: Clock,
    inflight: DashMap<TokenHash, Arc<Flight>>,
    touches: mpsc::Sender<(TokenHash, i64)>,
    lease: Lease,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Validator {
    /// A validator over `cache` and `store`. `touches` receives `(hash, unix time)` for tokens
    /// whose `last_used_at` should be written (see [`run_touch_flusher`]).
    pub fn new(
        cache: Arc<Cache>,
        store: Store,
        clock: Clock,
        touches: mpsc::Sender<(TokenHash, i64)>,
        lease: Lease,
    ) -> Self {
        Validator {
            cache,
            store,
            clock,
            inflight: DashMap::new(),
            touches,
            lease,
        }
    }

    /// The cache, for invalidation and flushes.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Validates a request, reading the store on a cache miss.
    ///
    /// # Errors
    /// [`ValidateError::InvalidArgument`] for a bad request, [`ValidateError::Unavailable`] when
    /// the store cannot answer.
    pub async fn validate(&self, req: Request<'_>) -> Result<Verdict, ValidateError> {
        match self.fast(req) {
            Fast::Done(r) => r,
            Fast::Lookup(hash) => self.lookup(hash, req).await,
        }
    }

    /// Everything that needs no store: request checks, format checks, cache hits.
    pub fn fast(&self, req: Request<'_>) -> Fast {
        if req.credential.len() > MAX_CREDENTIAL_LEN {
            return Fast::Done(Err(ValidateError::InvalidArgument(
                "token is longer than 4096 bytes",
            )));
        }
        if req.resource.len() > MAX_RESOURCE_LEN {
            return Fast::Done(Err(ValidateError::InvalidArgument(
                "resource is longer than 2048 bytes",
            )));
        }
        if let Err(e) = scope::check_all(req.required_scopes) {
            return Fast::Done(Err(ValidateError::InvalidArgument(match e {
                scope::ScopeError::TooMany => "required_scopes has more than 64 entries",
                _ => "required_scopes holds a scope that is not an RFC 6749 scope token",
            })));
        }
        // Most callers send the bare token: parse it directly, and only look for a scheme when
        // that fails on the length or prefix.
        let parsed = match token::parse(req.credential) {
            Err(token::Malformed::Length | token::Malformed::Prefix) => {
                token::strip_bearer(req.credential).and_then(token::parse)
            }
            direct => direct,
        };
        let parsed = match parsed {
            Ok(p) => p,
            Err(m) => return Fast::Done(Ok(Verdict::deny(Reason::Malformed(m), Source::Request))),
        };
        if parsed.kind() == TokenKind::OAuthRefresh {
            return Fast::Done(Ok(Verdict::deny(Reason::RefreshToken, Source::Request)));
        }
        let hash = parsed.hash();
        // Past the lease this replica cannot vouch for its cache: ask the store (G2).
        if !self.lease.fresh() {
            return Fast::Lookup(hash);
        }
        match self
            .cache
            .lookup(&hash, |v| self.decide(&hash, v, req, Source::Cache))
        {
            Probe::Hit(verdict) => Fast::Done(Ok(verdict)),
            Probe::Absent => Fast::Done(Ok(Verdict::deny(Reason::Unknown, Source::Cache))),
            Probe::Miss => Fast::Lookup(hash),
        }
    }

    /// The store part: one coalesced lookup per token, then the same checks as a hit.
    ///
    /// # Errors
    /// [`ValidateError::Unavailable`] when the store cannot answer.
    pub async fn lookup(
        &self,
        hash: TokenHash,
        req: Request<'_>,
    ) -> Result<Verdict, ValidateError> {
        let found = self
            .coalesced_get(hash)
            .await
            .map_err(ValidateError::Unavailable)?;
        Ok(match found {
            Some(entry) => self.decide(&hash, entry.view(), req, Source::Store),
            None => Verdict::deny(Reason::Unknown, Source::Store),
        })
    }

    async fn coalesced_get(&self, hash: TokenHash) -> FlightResult {
        let ticket = self.cache.ticket();
        // Join a flight only if it started after the latest invalidation, so a revocation that
        // returned before this call can never be answered by a read from before it.
        let flight = {
            let mut slot = self.inflight.entry(hash).or_insert_with(|| {
                Arc::new(Flight {
                    ticket,
                    cell: OnceCell::new(),
                })
            });
            if slot.ticket != ticket {
                *slot = Arc::new(Flight {
                    ticket,
                    cell: OnceCell::new(),
                });
            }
            Arc::clone(&slot)
        };
        let result = flight
            .cell
            .get_or_init(|| async {
                let found = self.store.get(hash).await?.map(|r| self.cache.entry(&r));
                // Errors are never cached; answers are, unless an invalidation landed meanwhile.
                if !self.cache.fill(flight.ticket, hash, found.as_ref()) {
                    // A revocation raced this read: read again so that it wins.
                    return Ok(self.store.get(hash).await?.map(|r| self.cache.entry(&r)));
                }
                Ok(found)
            })
            .await
            .clone();
        self.inflight
            .remove_if(&hash, |_, f| Arc::ptr_eq(f, &flight));
        result
    }

    #[inline]
    fn decide(&self, hash: &TokenHash, v: View<'_>, req: Request<'_>, source: Source) -> Verdict {
        let now = self.clock.now();
        let reason = if v.kind == TokenKind::OAuthRefresh {
            Reason::RefreshToken
        } else if v.revoked {
            Reason::Revoked
        } else if v.expires_at != 0 && now >= v.expires_at {
            Reason::Expired
        } else if !resource_matches(v.resource(), req.resource.as_bytes()) {
            Reason::WrongResource
        } else if !v.holds_all(req.required_scopes) {
            Reason::InsufficientScope
        } else {
            Reason::Ok
        };
        let decision = match reason {
            Reason::Ok => {
                if v.claim_touch(now, TOUCH_EVERY_SECS) {
                    // Full queue: skip this update; the next use a minute later retries.
                    let _ = self.touches.try_send((*hash, now));
                }
                Decision::Allow
            }
            Reason::InsufficientScope => Decision::Forbidden,
            _ => Decision::Unauthenticated,
        };
        let record = matches!(decision, Decision::Allow | Decision::Forbidden).then(|| v.grant());
        Verdict {
            decision,
            reason,
            record,
            source,
        }
    }
}

/// A token bound to a resource is valid only for that resource (trailing `/` ignored); a token
/// bound to none is valid for any, and a request naming none checks nothing.
fn resource_matches(bound: &[u8], requested: &[u8]) -> bool {
    fn trim(mut b: &[u8]) -> &[u8] {
        while let [rest @ .., b'/'] = b {
            b = rest;
        }
        b
    }
    bound.is_empty() || requested.is_empty() || trim(bound) == trim(requested)
}

/// Writes queued `last_used_at` updates to the store in batches, every `interval`, until `stop`
/// turns true or the queue closes; then writes what is left and returns.
pub async fn run_touch_flusher(
    store: Store,
    mut rx: mpsc::Receiver<(TokenHash, i64)>,
    interval: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut pending: std::collections::HashMap<TokenHash, i64> = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((h, t)) => { pending.insert(h, t); }
                None => break,
            },
            _ = tick.tick() => flush_touches(&store, &mut pending).await,
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    while let Ok((h, t)) = rx.try_recv() {
        pending.insert(h, t);
    }
    flush_touches(&store, &mut pending).await;
    tracing::debug!("last-used flusher stopped");
}

async fn flush_touches(store: &Store, pending: &mut std::collections::HashMap<TokenHash, i64>) {
    if pending.is_empty() {
        return;
    }
    let batch: Vec<_> = pending.drain().collect();
    let n = batch.len();
    if let Err(e) = store.touch(batch).await {
        // last_used_at is informational: losing one batch is better than retrying forever.
        tracing::warn!(error = %e, tokens = n, "could not record last-used times");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::record::TokenRecord;
    use crate::scope::ScopeSet;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{
        Changed, ListPage, ListQuery, RevokeTarget, SpendOutcome, StoreFuture, Successors,
        TokenStore,
    };

    /// The real embedded store behind a switchable delay and outage, to put lookups in flight
    /// for as long as a test needs and to see what an outage does.
    struct Faulty {
        inner: EmbeddedStore,
        delay_ms: AtomicU64,
        down: AtomicBool,
    }

    impl Faulty {
        fn gate<'a, T: Send + 'a>(&'a self, f: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
            Box::pin(async move {
                let d = self.delay_ms.load(Ordering::Relaxed);
                if d > 0 {
                    tokio::time::sleep(Duration::from_millis(d)).await;
                }
                if self.down.load(Ordering::Relaxed) {
                    return Err(StoreError::unavailable("store is down (test)"));
                }
                f.await
            })
        }
    }

    impl TokenStore for Faulty {
        fn get(&self, h: TokenHash) -> StoreFuture<'_, Option<TokenRecord>> {
            self.gate(self.inner.get(h))
        }
        fn get_by_id(&self, id: String) -> StoreFuture<'_, Option<TokenRecord>> {
            self.inner.get_by_id(id)
        }
        fn insert(&self, r: Vec<TokenRecord>) -> StoreFuture<'_, ()> {
            self.inner.insert(r)
        }
        fn rotate(
            &self,
            a: String,
            b: i64,
            c: TokenRecord,
            d: i64,
        ) -> StoreFuture<'_, Option<TokenRecord>> {
            self.inner.rotate(a, b, c, d)
        }
        fn spend_refresh(
            &self,
            h: TokenHash,
            n: i64,
            s: Successors,
        ) -> StoreFuture<'_, SpendOutcome> {
            self.inner.spend_refresh(h, n, s)
        }
        fn revoke(&self, t: RevokeTarget, n: i64) -> StoreFuture<'_, Vec<Changed>> {
            self.inner.revoke(t, n)
        }
        fn list(&self, q: ListQuery) -> StoreFuture<'_, ListPage> {
            self.inner.list(q)
        }
        fn touch(&self, u: Vec<(TokenHash, i64)>) -> StoreFuture<'_, ()> {
            self.inner.touch(u)
        }
        fn ping(&self) -> StoreFuture<'_, ()> {
            self.inner.ping()
        }
    }

    struct Rig {
        v: Arc<Validator>,
        faulty: Arc<Faulty>,
        store: Store,
        clock: Clock,
        _dir: tempfile::TempDir,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(Faulty {
            inner: EmbeddedStore::open(dir.path()).unwrap(),
            delay_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
        });
        let store = Store::new(faulty.clone());
        let clock = Clock::manual(1_000_000);
        let (tx, _rx) = mpsc::channel(16);
        let cache = Arc::new(Cache::new(1000, Duration::from_secs(5), clock.clone()));
        let v = Arc::new(Validator::new(
            cache,
            store.clone(),
            clock.clone(),
            tx,
            Lease::Always,
        ));
        Rig {
            v,
            faulty,
            store,
            clock,
            _dir: dir,
        }
    }

    async fn key(r: &Rig, expires_at: i64) -> String {
        let secret = token::generate(TokenKind::ApiKey).unwrap();
        r.store
            .insert(vec![TokenRecord {
                hash: secret.hash(),
                token_id: token::random_id("tok_", 20).unwrap(),
                kind: TokenKind::ApiKey,
                subject: "alice".into(),
                scopes: ScopeSet::parse(&["mcp:read"]).unwrap(),
                client_id: String::new(),
                grant_id: String::new(),
                name: String::new(),
                resource: String::new(),
                created_at: r.clock.now(),
                expires_at,
                last_used_at: 0,
                revoked_at: 0,
                spent_at: 0,
            }])
            .await
            .unwrap();
        secret.into_exposed()
    }

    fn ask(t: &str) -> Request<'_> {
        Request {
            credential: t.as_bytes(),
            required_scopes: &[],
            resource: "",
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_store_lookup() {
        let r = rig();
        let t = key(&r, 0).await;
        r.faulty.delay_ms.store(100, Ordering::Relaxed);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (v, t) = (Arc::clone(&r.v), t.clone());
            tasks.spawn(async move { v.validate(ask(&t)).await.unwrap().decision });
        }
        while let Some(d) = tasks.join_next().await {
            assert_eq!(d.unwrap(), Decision::Allow);
        }
        assert_eq!(r.store.calls().gets(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_during_a_fill_wins() {
        let r = rig();
        let t = key(&r, 0).await;
        r.faulty.delay_ms.store(150, Ordering::Relaxed);
        let (v, t2) = (Arc::clone(&r.v), t.clone());
        let fill = tokio::spawn(async move { v.validate(ask(&t2)).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(30)).await;
        // The lookup is in flight: revoke in the store and invalidate, as the admin path does.
        let changed = r
            .store
            .revoke(RevokeTarget::Token(TokenHash::of(&t)), r.clock.now())
            .await
            .unwrap();
        r.v.cache().invalidate(changed.iter().map(|c| c.hash));
        let first = fill.await.unwrap();
        assert_eq!(
            first.decision,
            Decision::Unauthenticated,
            "re-read after the race"
        );
        r.faulty.delay_ms.store(0, Ordering::Relaxed);
        let again = r.v.validate(ask(&t)).await.unwrap();
        assert_eq!(again.reason, Reason::Revoked);
    }

    #[tokio::test]
    async fn expiry_is_checked_on_every_cache_hit() {
        let r = rig();
        let now = r.clock.now();
        let t = key(&r, now + 10).await;
        assert_eq!(r.v.validate(ask(&t)).await.unwrap().source, Source::Store);
        let hit = r.v.validate(ask(&t)).await.unwrap();
        assert_eq!((hit.decision, hit.source), (Decision::Allow, Source::Cache));
        r.clock.advance(10);
        let late = r.v.validate(ask(&t)).await.unwrap();
        assert_eq!((late.reason, late.source), (Reason::Expired, Source::Cache));
    }

    #[tokio::test]
    async fn a_store_outage_is_unavailable_never_unauthenticated_and_never_cached() {
        let r = rig();
        let t = key(&r, 0).await;
        let unknown = token::generate(TokenKind::ApiKey).unwrap().into_exposed();
        r.faulty.down.store(true, Ordering::Relaxed);
        for tok in [&t, &unknown] {
            let e = r.v.validate(ask(tok)).await.unwrap_err();
            assert!(matches!(e, ValidateError::Unavailable(_)), "{e:?}");
        }
        r.faulty.down.store(false, Ordering::Relaxed);
        assert_eq!(
            r.v.validate(ask(&t)).await.unwrap().decision,
            Decision::Allow
        );
        assert_eq!(
            r.v.validate(ask(&unknown)).await.unwrap().reason,
            Reason::Unknown
        );
        // Cached answers keep working through an outage.
        r.faulty.down.store(true, Ordering::Relaxed);
        assert_eq!(
            r.v.validate(ask(&t)).await.unwrap().decision,
            Decision::Allow
        );
    }
}
