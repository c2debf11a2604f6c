//! The in-memory cache in front of the store: positive entries (what a token grants) and short
//! negative entries (no such token), flushed by generation, invalidated by token hash.
//!
//! Shaped for the hot path (README "Hot path"): 128 shards, each a fixed open-addressing table of
//! 64-byte, cache-line-aligned slots under an `RwLock`. A slot holds a 16-byte key (half of the
//! token's SHA-256), the facts every decision needs inline (kind, revoked, expiry, interned scope
//! set and resource), and a pointer to the response body, so a hit costs one probe into one
//! cache line and the decision runs under the read lock without touching shared reference counts.
//! Lookups probe at most [`WINDOW`] slots; a full window evicts a pseudo-random slot in it.
//!
//! The cache never decides on its own whether a token is valid: the validator checks every hit
//! against expiry, revocation, scopes and resource. An invalidation wins over a fill in flight:
//! a fill takes a [`FillTicket`] before its store read and is dropped if any invalidation or flush
//! happened since.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::clock::Clock;
use crate::record::TokenRecord;
use crate::scope::ScopeSet;
use crate::token::{TokenHash, TokenKind};

/// Slots probed per lookup.
pub const WINDOW: usize = 8;
const SHARDS: usize = 128;
/// Slots per cached token: the tables run at most ~70% full.
const SLOTS_PER_ENTRY_NUM: usize = 10;
const SLOTS_PER_ENTRY_DEN: usize = 7;

/// What a response needs about a known token, in one allocation.
#[derive(Debug)]
pub struct Granted {
    /// token id, subject, client id, resource, scopes (space separated), back to back.
    text: Box<str>,
    ends: [u16; 5],
    kind: TokenKind,
    expires_at: i64,
    last_used_mark: AtomicI64,
}

impl Granted {
    fn new(r: &TokenRecord) -> Self {
        let scopes = r.scopes.to_string();
        let parts = [&r.token_id, &r.subject, &r.client_id, &r.resource, &scopes];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u16; 5];
        for (end, p) in ends.iter_mut().zip(parts) {
            text.push_str(p);
            // Every part is bounded at creation (ids 256 B, resource 2 KiB, scopes 64 × 128 B).
            *end = u16::try_from(text.len()).unwrap_or(u16::MAX);
        }
        Granted {
            text: text.into_boxed_str(),
            ends,
            kind: r.kind,
            expires_at: r.expires_at,
            last_used_mark: AtomicI64::new(r.last_used_at),
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            usize::from(self.ends[i - 1])
        };
        self.text
            .get(start..usize::from(self.ends[i]))
            .unwrap_or_default()
    }

    /// Public token id.
    pub fn token_id(&self) -> &str {
        self.part(0)
    }
    /// Who the token acts for.
    pub fn subject(&self) -> &str {
        self.part(1)
    }
    /// OAuth client; empty for API keys.
    pub fn client_id(&self) -> &str {
        self.part(2)
    }
    /// Bound resource; empty = any.
    pub fn resource(&self) -> &str {
        self.part(3)
    }
    /// Held scopes, sorted.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.part(4).split(' ').filter(|s| !s.is_empty())
    }
    /// Token kind.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }
    /// Unix seconds; 0 = never.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// Claims the right to queue a `last_used_at` update at `now`, at most once per `every`
    /// seconds per token. Lock-free; exactly one concurrent caller wins.
    pub fn claim_touch(&self, now: i64, every: i64) -> bool {
        let prev = self.last_used_mark.load(Ordering::Relaxed);
        now - prev >= every
            && self
                .last_used_mark
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The facts a decision reads, borrowed from a slot or an [`Entry`].
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// Token kind.
    pub kind: TokenKind,
    /// Revoked (alone, with its grant or subject).
    pub revoked: bool,
    /// Unix seconds; 0 = never.
    pub expires_at: i64,
    /// Held scopes.
    pub scopes: &'a ScopeSet,
    /// Bound resource; empty = any.
    pub resource: &'a str,
    /// The response body.
    pub body: &'a Arc<Granted>,
}

/// A store record turned into cache form (scopes and resource interned).
#[derive(Clone, Debug)]
pub struct Entry {
    kind: TokenKind,
    revoked: bool,
    expires_at: i64,
    scopes: Arc<ScopeSet>,
    resource: Option<Arc<str>>,
    body: Arc<Granted>,
}

impl Entry {
    /// The decision view of this entry.
    pub fn view(&self) -> View<'_> {
        View {
            kind: self.kind,
            revoked: self.revoked,
            expires_at: self.expires_at,
            scopes: &self.scopes,
            resource: self.resource.as_deref().unwrap_or(""),
            body: &self.body,
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Probe<R> {
    /// A positive entry; `R` is what the caller computed from its [`View`].
    Hit(R),
    /// The store recently said there is no such token.
    Absent,
    /// Nothing usable: ask the store.
    Miss,
}

/// Taken before a store read; a fill is only cached if no invalidation happened since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillTicket(u64);

const EMPTY: u8 = 0;
const TOMBSTONE: u8 = 1;
const FOUND: u8 = 2;
const ABSENT: u8 = 3;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    key: u128,
    generation: u32,
    state: u8,
    kind: u8,
    revoked: bool,
    /// FOUND: token expiry (unix s, 0 = never). ABSENT: monotonic deadline (ns).
    expires_at: i64,
    scopes: Option<Arc<ScopeSet>>,
    resource: Option<Arc<str>>,
    body: Option<Arc<Granted>>,
}

#[derive(Debug)]
struct Table {
    slots: Vec<Slot>,
    used: usize,
}

/// Interns scope sets and resources so slots share them (filled on the miss path only).
#[derive(Debug, Default)]
struct Interner {
    scopes: HashMap<ScopeSet, Arc<ScopeSet>>,
    resources: HashMap<String, Arc<str>>,
}

const INTERN_MAX: usize = 100_000;

/// The sharded cache.
pub struct Cache {
    shards: Box<[RwLock<Table>]>,
    generation: AtomicU64,
    /// Bumped by every invalidation and flush; fills compare it (see [`FillTicket`]).
    seq: AtomicU64,
    negative_ttl_nanos: u64,
    clock: Clock,
    k0: u64,
    k1: u64,
    evictions: AtomicU64,
    interner: Mutex<Interner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

#[inline]
fn key_of(h: &TokenHash) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.0[..16]);
    u128::from_le_bytes(b)
}

fn kind_code(k: TokenKind) -> u8 {
    match k {
        TokenKind::ApiKey => 1,
        TokenKind::OAuthAccess => 2,
        TokenKind::OAuthRefresh => 3,
    }
}

fn kind_from(c: u8) -> TokenKind {
    match c {
        2 => TokenKind::OAuthAccess,
        3 => TokenKind::OAuthRefresh,
        _ => TokenKind::ApiKey,
    }
}

impl Cache {
    /// A cache for about `capacity` tokens, negative entries kept `negative_ttl`, reading time
    /// from `clock`.
    pub fn new(capacity: usize, negative_ttl: Duration, clock: Clock) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        let slots = (per_shard * SLOTS_PER_ENTRY_NUM / SLOTS_PER_ENTRY_DEN).max(WINDOW);
        let shards = (0..SHARDS)
            .map(|_| {
                let mut v = Vec::new();
                v.resize_with(slots, Slot::default);
                RwLock::new(Table { slots: v, used: 0 })
            })
            .collect();
        let mut keys = [0u8; 16];
        // Without OS randomness the keys are fixed: correctness holds, only resistance to
        // chosen-token bucket grinding is lost.
        let _ = getrandom::fill(&mut keys);
        let (a, b) = keys.split_at(8);
        Cache {
            shards,
            generation: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            negative_ttl_nanos: u64::try_from(negative_ttl.as_nanos()).unwrap_or(u64::MAX),
            clock,
            k0: u64::from_le_bytes(a.try_into().unwrap_or([1; 8])) | 1,
            k1: u64::from_le_bytes(b.try_into().unwrap_or([3; 8])) | 1,
            evictions: AtomicU64::new(0),
            interner: Mutex::new(Interner::default()),
        }
    }

    /// Shard and home slot of a key. The key is already a uniform digest; the per-process keys
    /// stop anyone grinding tokens into one window.
    #[inline]
    fn place(&self, key: u128) -> (usize, u64) {
        let h = fold((key as u64) ^ self.k0, ((key >> 64) as u64) ^ self.k1);
        ((h >> 57) as usize & (SHARDS - 1), h)
    }

    #[inline]
    fn home(h: u64, n: usize) -> usize {
        // Multiply-shift range reduction: any table size, no modulo.
        ((u128::from(h as u32 as u64) * n as u128) >> 32) as usize
    }

    /// Looks a token up; on a positive entry runs `f` on it under the read lock (so nothing is
    /// cloned unless `f` clones it).
    #[inline]
    pub fn lookup<R>(&self, hash: &TokenHash, f: impl FnOnce(View<'_>) -> R) -> Probe<R> {
        let key = key_of(hash);
        let (shard, h) = self.place(key);
        let generation = self.generation.load(Ordering::Acquire) as u32;
        let table = self.shards[shard].read().unwrap_or_else(|p| p.into_inner());
        let n = table.slots.len();
        let mut i = Self::home(h, n);
        for _ in 0..WINDOW.min(n) {
            let s = &table.slots[i];
            if s.state == EMPTY {
                return Probe::Miss;
            }
            if s.key == key && s.state != TOMBSTONE {
                if s.generation != generation {
                    return Probe::Miss;
                }
                if s.state == ABSENT {
                    let live = self.clock.mono_nanos() < s.expires_at as u64;
                    return if live { Probe::Absent } else { Probe::Miss };
                }
                return match (&s.scopes, &s.body) {
                    (Some(scopes), Some(body)) => Probe::Hit(f(View {
                        kind: kind_from(s.kind),
                        revoked: s.revoked,
                        expires_at: s.expires_at,
                        scopes,
                        resource: s.resource.as_deref().unwrap_or(""),
                        body,
                    })),
                    _ => Probe::Miss,
                };
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        Probe::Miss
    }

    /// Turns a store record into cache form, interning its scope set and resource.
    pub fn entry(&self, r: &TokenRecord) -> Entry {
        let mut interner = self.interner.lock().unwrap_or_else(|p| p.into_inner());
        if interner.scopes.len() + interner.resources.len() > INTERN_MAX {
            *interner = Interner::default();
        }
        let scopes = Arc::clone(
            interner
                .scopes
                .entry(r.scopes.clone())
                .or_insert_with(|| Arc::new(r.scopes.clone())),
        );
        let resource = (!r.resource.is_empty()).then(|| {
            Arc::clone(
                interner
                    .resources
                    .entry(r.resource.clone())
                    .or_insert_with(|| Arc::from(r.resource.as_str())),
            )
        });
        drop(interner);
        Entry {
            kind: r.kind,
            revoked: r.is_revoked(),
            expires_at: r.expires_at,
            scopes,
            resource,
            body: Arc::new(Granted::new(r)),
        }
    }

    /// Takes a ticket before reading the store for a fill.
    pub fn ticket(&self) -> FillTicket {
        FillTicket(self.seq.load(Ordering::Acquire))
    }

    /// Whether an invalidation or flush happened since `ticket` was taken.
    pub fn is_stale(&self, ticket: FillTicket) -> bool {
        self.seq.load(Ordering::Acquire) != ticket.0
    }

    /// Caches what the store said for `hash` (`None`: no such token), unless an invalidation
    /// happened since `ticket`. Returns whether it was cached.
    pub fn fill(&self, ticket: FillTicket, hash: TokenHash, found: Option<&Entry>) -> bool {
        let key = key_of(&hash);
        let (shard, h) = self.place(key);
        let mut table = self.shards[shard]
            .write()
            .unwrap_or_else(|p| p.into_inner());
        // Checked under the shard lock: an invalidation bumps `seq` before it takes this lock
        // to remove entries, so either we see the bump here, or it removes what we insert.
        if self.is_stale(ticket) {
            return false;
        }
        let generation = self.generation.load(Ordering::Acquire) as u32;
        let now = self.clock.mono_nanos();
        let n = table.slots.len();
        let home = Self::home(h, n);
        let mut target = None;
        let mut free = None;
        for d in 0..WINDOW.min(n) {
            let i = (home + d) % n;
            let s = &table.slots[i];
            if s.state == EMPTY {
                free.get_or_insert(i);
                break;
            }
            if s.key == key && s.state != TOMBSTONE {
                target = Some(i);
                break;
            }
            let reusable = s.state == TOMBSTONE
                || s.generation != generation
                || (s.state == ABSENT && s.expires_at as u64 <= now);
            if reusable {
                free.get_or_insert(i);
            }
        }
        let i = match (target, free) {
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) => {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                (home + (h >> 40) as usize % WINDOW.min(n)) % n
            }
        };
        let was_live = matches!(table.slots[i].state, FOUND | ABSENT);
        table.slots[i] = match found {
            Some(e) => Slot {
                key,
                generation,
                state: FOUND,
                kind: kind_code(e.kind),
                revoked: e.revoked,
                expires_at: e.expires_at,
                scopes: Some(Arc::clone(&e.scopes)),
                resource: e.resource.clone(),
                body: Some(Arc::clone(&e.body)),
            },
            None => Slot {
                key,
                generation,
                state: ABSENT,
                expires_at: i64::try_from(now.saturating_add(self.negative_ttl_nanos))
                    .unwrap_or(i64::MAX),
                ..Slot::default()
            },
        };
        if !was_live {
            table.used += 1;
        }
        true
    }

    /// Drops the entries for `hashes` and fails every fill in flight (revocation, rotation).
    pub fn invalidate(&self, hashes: impl IntoIterator<Item = TokenHash>) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        for hash in hashes {
            let key = key_of(&hash);
            let (shard, h) = self.place(key);
            let mut table = self.shards[shard]
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let n = table.slots.len();
            let home = Self::home(h, n);
            for d in 0..WINDOW.min(n) {
                let i = (home + d) % n;
                let s = &table.slots[i];
                if s.state == EMPTY {
                    break;
                }
                if s.key == key && s.state != TOMBSTONE {
                    table.slots[i] = Slot {
                        state: TOMBSTONE,
                        ..Slot::default()
                    };
                    table.used -= 1;
                    break;
                }
            }
        }
    }

    /// Forgets everything at once, without a scan: entries of older generations are misses.
    pub fn flush(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Slots in use (entries of older generations included until reused).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).used)
            .sum()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;

    fn rec(n: u8) -> TokenRecord {
        TokenRecord {
            hash: TokenHash([n; 32]),
            token_id: format!("tok_{n}"),
            kind: TokenKind::ApiKey,
            subject: "alice".into(),
            scopes: ScopeSet::parse(&["mcp:read mcp:write"]).unwrap(),
            client_id: "claude".into(),
            grant_id: String::new(),
            name: String::new(),
            resource: "https://mcp.example".into(),
            created_at: 0,
            expires_at: 77,
            last_used_at: 0,
            revoked_at: 0,
            spent_at: 0,
        }
    }

    fn cache(cap: usize, neg: Duration) -> (Cache, Clock) {
        let clock = Clock::manual(1_000);
        (Cache::new(cap, neg, clock.clone()), clock)
    }

    fn hit(c: &Cache, h: &TokenHash) -> Option<String> {
        match c.lookup(h, |v| v.body.token_id().to_owned()) {
            Probe::Hit(id) => Some(id),
            _ => None,
        }
    }

    #[test]
    fn fill_then_hit_with_every_fact() {
        let (c, _) = cache(100, Duration::from_secs(5));
        let h = TokenHash([1; 32]);
        assert!(matches!(c.lookup(&h, |_| ()), Probe::Miss));
        let e = c.entry(&rec(1));
        assert!(c.fill(c.ticket(), h, Some(&e)));
        let facts = c.lookup(&h, |v| {
            (
                v.kind,
                v.revoked,
                v.expires_at,
                v.scopes.to_string(),
                v.resource.to_owned(),
                v.body.subject().to_owned(),
                v.body.client_id().to_owned(),
                v.body.scopes().collect::<Vec<_>>().join(","),
            )
        });
        let Probe::Hit(f) = facts else {
            panic!("hit expected")
        };
        assert_eq!(f.0, TokenKind::ApiKey);
        assert!(!f.1);
        assert_eq!(f.2, 77);
        assert_eq!(f.3, "mcp:read mcp:write");
        assert_eq!(f.4, "https://mcp.example");
        assert_eq!((f.5.as_str(), f.6.as_str()), ("alice", "claude"));
        assert_eq!(f.7, "mcp:read,mcp:write");
    }

    #[test]
    fn negative_entries_expire_on_the_clock() {
        let (c, clock) = cache(100, Duration::from_secs(5));
        let h = TokenHash([2; 32]);
        assert!(c.fill(c.ticket(), h, None));
        assert!(matches!(c.lookup(&h, |_| ()), Probe::Absent));
        clock.advance(6);
        assert!(matches!(c.lookup(&h, |_| ()), Probe::Miss));
    }

    #[test]
    fn invalidation_beats_a_fill_in_flight() {
        let (c, _) = cache(100, Duration::from_secs(5));
        let h = TokenHash([3; 32]);
        let ticket = c.ticket();
        // ... the store read happens here, then a revocation lands ...
        c.invalidate([h]);
        assert!(!c.fill(ticket, h, Some(&c.entry(&rec(3)))));
        assert!(matches!(c.lookup(&h, |_| ()), Probe::Miss));
    }

    #[test]
    fn invalidate_removes_and_flush_forgets_everything() {
        let (c, _) = cache(100, Duration::from_secs(5));
        for n in 0..10 {
            assert!(c.fill(c.ticket(), TokenHash([n; 32]), Some(&c.entry(&rec(n)))));
        }
        assert_eq!(c.len(), 10);
        c.invalidate([TokenHash([0; 32])]);
        assert_eq!(c.len(), 9);
        assert!(hit(&c, &TokenHash([0; 32])).is_none());
        assert_eq!(hit(&c, &TokenHash([1; 32])).as_deref(), Some("tok_1"));
        let ticket = c.ticket();
        c.flush();
        assert!((0..10).all(|n| hit(&c, &TokenHash([n; 32])).is_none()));
        assert!(!c.fill(ticket, TokenHash([1; 32]), Some(&c.entry(&rec(1)))));
        assert!(c.fill(c.ticket(), TokenHash([1; 32]), Some(&c.entry(&rec(1)))));
        assert_eq!(hit(&c, &TokenHash([1; 32])).as_deref(), Some("tok_1"));
    }

    #[test]
    fn entries_behind_a_tombstone_stay_reachable() {
        // A tiny cache forces every key into one shard window's worth of slots.
        let (c, _) = cache(1, Duration::from_secs(5));
        let hashes: Vec<TokenHash> = (0..3).map(|i| TokenHash::of(&i.to_string())).collect();
        for (i, h) in hashes.iter().enumerate() {
            assert!(c.fill(c.ticket(), *h, Some(&c.entry(&rec(i as u8)))));
        }
        c.invalidate([hashes[0]]);
        for h in &hashes[1..] {
            // Either found, or (when they landed in other shards) found there.
            assert!(hit(&c, h).is_some());
        }
    }

    #[test]
    fn capacity_is_bounded() {
        let (c, _) = cache(1000, Duration::from_secs(5));
        for i in 0..50_000u32 {
            c.fill(c.ticket(), TokenHash::of(&i.to_string()), None);
        }
        let slots_total: usize = c.shards.iter().map(|s| s.read().unwrap().slots.len()).sum();
        assert!(c.len() <= slots_total, "len {}", c.len());
        assert!(c.evictions() > 0);
        // The most recent fill is always findable.
        assert!(matches!(
            c.lookup(&TokenHash::of("49999"), |_| ()),
            Probe::Absent
        ));
    }

    #[test]
    fn touch_is_claimed_once_per_interval() {
        let g = Granted::new(&rec(9));
        assert!(g.claim_touch(100, 60));
        assert!(!g.claim_touch(120, 60));
        assert!(g.claim_touch(160, 60));
    }

    #[test]
    fn slots_are_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }
}
