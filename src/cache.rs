//! The in-memory cache in front of the store: positive entries (what a token grants) and short
//! negative entries (no such token), flushed by generation, invalidated by token hash.
//!
//! Shaped for the hot path (README "Hot path"): 128 shards, each a fixed open-addressing table of
//! 128-byte, 128-byte-aligned slots under an `RwLock`. A slot holds a 16-byte key (half of the
//! token's SHA-256), the facts every decision needs (kind, revoked, expiry, last-used mark) and,
//! for any record whose ids, resource and scopes fit in [`INLINE`] bytes, the whole response
//! text. A hit therefore reads one slot — two adjacent cache lines fetched together — checks
//! scopes and resource against that text, and copies it out: no pointer to chase, no shared
//! reference count touched. Longer records keep their text behind one `Arc` (one more miss).
//! Lookups probe at most [`WINDOW`] slots; a full window evicts a pseudo-random slot in it.
//!
//! The cache never decides on its own whether a token is valid: the validator checks every hit
//! against expiry, revocation, scopes and resource. An invalidation wins over a fill in flight:
//! a fill takes a [`FillTicket`] before its store read and is dropped if any invalidation or flush
//! happened since.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, RwLock};
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

/// Bytes of response text a cache slot holds inline (token id, subject, client id, resource
/// and scopes back to back). Records with more text keep it behind one shared pointer instead.
pub const INLINE: usize = 80;

/// The response text of a known token: inline when it fits, shared otherwise.
#[derive(Clone, Debug)]
enum Body {
    /// `ends[i]` is where part `i` ends in `text`.
    Inline {
        ends: [u8; 5],
        text: [u8; INLINE],
    },
    Shared(Arc<Shared>),
}

#[derive(Debug)]
struct Shared {
    /// token id, subject, client id, resource, scopes (space separated), back to back.
    text: Box<str>,
    ends: [u32; 5],
    scopes: ScopeSet,
}

const SCOPES: usize = 4;
const RESOURCE: usize = 3;

impl Body {
    fn of(r: &TokenRecord) -> Self {
        let scopes = r.scopes.to_string();
        let parts: [&str; 5] = [&r.token_id, &r.subject, &r.client_id, &r.resource, &scopes];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total <= INLINE {
            let mut text = [0u8; INLINE];
            let mut ends = [0u8; 5];
            let mut at = 0;
            for (end, p) in ends.iter_mut().zip(parts) {
                text[at..at + p.len()].copy_from_slice(p.as_bytes());
                at += p.len();
                // `at <= INLINE < 256`.
                *end = u8::try_from(at).unwrap_or(u8::MAX);
            }
            return Body::Inline { ends, text };
        }
        let mut text = String::with_capacity(total);
        let mut ends = [0u32; 5];
        for (end, p) in ends.iter_mut().zip(parts) {
            text.push_str(p);
            // Every part is bounded at creation (ids 256 B, resource 2 KiB, scopes 64 × 128 B).
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Body::Shared(Arc::new(Shared {
            text: text.into_boxed_str(),
            ends,
            scopes: r.scopes.clone(),
        }))
    }

    /// Part `i` as bytes (the hot path compares bytes; no UTF-8 check).
    #[inline]
    fn part_bytes(&self, i: usize) -> &[u8] {
        match self {
            Body::Inline { ends, text } => {
                let start = if i == 0 { 0 } else { usize::from(ends[i - 1]) };
                text.get(start..usize::from(ends[i])).unwrap_or_default()
            }
            Body::Shared(s) => {
                let start = if i == 0 { 0 } else { s.ends[i - 1] as usize };
                s.text
                    .as_bytes()
                    .get(start..s.ends[i] as usize)
                    .unwrap_or_default()
            }
        }
    }

    /// Part `i` as text. Parts were copied whole from `&str`s, so this never fails.
    fn part(&self, i: usize) -> &str {
        std::str::from_utf8(self.part_bytes(i)).unwrap_or_default()
    }

    /// Whether the token holds every scope of `required`.
    #[inline]
    fn holds_all(&self, required: &[String]) -> bool {
        match self {
            Body::Inline { .. } => {
                let held = self.part_bytes(SCOPES);
                required.iter().all(|r| {
                    held.split(|&b| b == b' ')
                        .any(|s| !s.is_empty() && s == r.as_bytes())
                })
            }
            Body::Shared(s) => s.scopes.contains_all(required),
        }
    }
}

/// What a response needs about a known token. Owned: a cache hit copies the slot's inline text
/// (one cache line it has just read) instead of sharing a reference count across cores.
#[derive(Clone, Debug)]
pub struct Granted {
    body: Body,
    kind: TokenKind,
    expires_at: i64,
}

impl Granted {
    /// Public token id.
    pub fn token_id(&self) -> &str {
        self.body.part(0)
    }
    /// Who the token acts for.
    pub fn subject(&self) -> &str {
        self.body.part(1)
    }
    /// OAuth client; empty for API keys.
    pub fn client_id(&self) -> &str {
        self.body.part(2)
    }
    /// Bound resource; empty = any.
    pub fn resource(&self) -> &str {
        self.body.part(RESOURCE)
    }
    /// Held scopes, sorted.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.body.part(SCOPES).split(' ').filter(|s| !s.is_empty())
    }
    /// Token kind.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }
    /// Unix seconds; 0 = never.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }
    /// Whether the text is held inline (no pointer to follow).
    pub fn is_inline(&self) -> bool {
        matches!(self.body, Body::Inline { .. })
    }
}

/// Unix seconds as the 32-bit mark slots keep (good until 2106).
fn mark(unix: i64) -> u32 {
    u32::try_from(unix.max(0)).unwrap_or(u32::MAX)
}

/// Claims the right to queue a `last_used_at` update at `now`, at most once per `every` seconds
/// per token. Lock-free; exactly one concurrent caller wins.
fn claim(touched: &AtomicU32, now: i64, every: i64) -> bool {
    let prev = touched.load(Ordering::Relaxed);
    let now = mark(now);
    i64::from(now) - i64::from(prev) >= every
        && touched
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
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
    body: &'a Body,
    touched: &'a AtomicU32,
}

impl View<'_> {
    /// Bound resource as bytes; empty = any.
    #[inline]
    pub fn resource(&self) -> &[u8] {
        self.body.part_bytes(RESOURCE)
    }

    /// Whether the token holds every scope of `required`.
    #[inline]
    pub fn holds_all(&self, required: &[String]) -> bool {
        self.body.holds_all(required)
    }

    /// Claims the right to queue a `last_used_at` update at `now` (once per `every` seconds).
    #[inline]
    pub fn claim_touch(&self, now: i64, every: i64) -> bool {
        claim(self.touched, now, every)
    }

    /// An owned copy of what the response needs.
    #[inline]
    pub fn grant(&self) -> Granted {
        Granted {
            body: self.body.clone(),
            kind: self.kind,
            expires_at: self.expires_at,
        }
    }
}

/// A store record turned into cache form.
#[derive(Debug)]
pub struct Entry {
    kind: TokenKind,
    revoked: bool,
    expires_at: i64,
    body: Body,
    touched: AtomicU32,
}

impl Clone for Entry {
    fn clone(&self) -> Self {
        Entry {
            kind: self.kind,
            revoked: self.revoked,
            expires_at: self.expires_at,
            body: self.body.clone(),
            touched: AtomicU32::new(self.touched.load(Ordering::Relaxed)),
        }
    }
}

impl Entry {
    /// Cache form of a store record.
    pub fn new(r: &TokenRecord) -> Self {
        Entry {
            kind: r.kind,
            revoked: r.is_revoked(),
            expires_at: r.expires_at,
            body: Body::of(r),
            touched: AtomicU32::new(mark(r.last_used_at)),
        }
    }

    /// The decision view of this entry.
    pub fn view(&self) -> View<'_> {
        View {
            kind: self.kind,
            revoked: self.revoked,
            expires_at: self.expires_at,
            body: &self.body,
            touched: &self.touched,
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

const TEXT_WORDS: usize = INLINE / 8;
/// Tries a reader makes before treating a slot under constant rewriting as a miss.
const READ_TRIES: usize = 4;

/// One cache entry in two adjacent cache lines (the pair the CPU's adjacent-line prefetcher
/// fetches together): key, decision facts, last-used mark and, for most tokens, the whole
/// response text.
///
/// Readers take no lock and write nothing: every field is an atomic word read with plain loads,
/// and `seq` (a per-slot sequence lock) tells them whether what they read is one consistent
/// version. Writers hold their shard's lock, make `seq` odd, write, and make it even again. So two
/// cores validating at once never bounce a lock's cache line between them.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot {
    /// Even: stable. Odd: a writer is changing the slot.
    seq: AtomicU32,
    /// Unix seconds of the last queued `last_used_at` update.
    touched: AtomicU32,
    key_lo: AtomicU64,
    key_hi: AtomicU64,
    /// generation (bits 0–31), state (32–39), kind (40–47), revoked (48), shared body (49).
    meta: AtomicU64,
    /// FOUND: token expiry (unix s, 0 = never). ABSENT: monotonic deadline (ns).
    expires_at: AtomicI64,
    /// Where each of the five inline text parts ends, a byte each.
    ends: AtomicU64,
    text: [AtomicU64; TEXT_WORDS],
}

/// What a reader copied out of a slot.
struct Snapshot {
    meta: u64,
    expires_at: i64,
    ends: u64,
    text: [u64; TEXT_WORDS],
}

const REVOKED_BIT: u64 = 1 << 48;
const SHARED_BIT: u64 = 1 << 49;

fn meta_state(meta: u64) -> u8 {
    (meta >> 32) as u8
}

impl Slot {
    /// The slot's state and key, read without the sequence check (enough to skip a slot: a torn
    /// read at worst turns a hit into a miss, and a miss asks the store).
    #[inline]
    fn peek(&self) -> (u8, u128) {
        let meta = self.meta.load(Ordering::Relaxed);
        let key = u128::from(self.key_lo.load(Ordering::Relaxed))
            | (u128::from(self.key_hi.load(Ordering::Relaxed)) << 64);
        (meta_state(meta), key)
    }

    /// A consistent copy of the slot if it still holds `key`.
    #[inline]
    fn read(&self, key: u128) -> Option<Snapshot> {
        for _ in 0..READ_TRIES {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let key_lo = self.key_lo.load(Ordering::Relaxed);
            let key_hi = self.key_hi.load(Ordering::Relaxed);
            let snap = Snapshot {
                meta: self.meta.load(Ordering::Relaxed),
                expires_at: self.expires_at.load(Ordering::Relaxed),
                ends: self.ends.load(Ordering::Relaxed),
                text: std::array::from_fn(|i| self.text[i].load(Ordering::Relaxed)),
            };
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                let same = u128::from(key_lo) | (u128::from(key_hi) << 64) == key;
                return same.then_some(snap);
            }
        }
        None
    }

    /// Rewrites the slot; the caller holds the shard's write lock.
    fn write(&self, key: u128, meta: u64, expires_at: i64, touched: u32, inline: Option<&Body>) {
        let q = self.seq.load(Ordering::Relaxed);
        self.seq.store(q.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.key_lo.store(key as u64, Ordering::Relaxed);
        self.key_hi.store((key >> 64) as u64, Ordering::Relaxed);
        self.meta.store(meta, Ordering::Relaxed);
        self.expires_at.store(expires_at, Ordering::Relaxed);
        self.touched.store(touched, Ordering::Relaxed);
        if let Some(Body::Inline { ends, text }) = inline {
            let mut e = [0u8; 8];
            e[..5].copy_from_slice(ends);
            self.ends.store(u64::from_le_bytes(e), Ordering::Relaxed);
            for (w, chunk) in self.text.iter().zip(text.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                w.store(u64::from_le_bytes(b), Ordering::Relaxed);
            }
        }
        self.seq.store(q.wrapping_add(2), Ordering::Release);
    }
}

/// What a shard's writers share: the lock that orders them, the count of live slots, and the
/// bodies too long to inline (read under the same lock, off the common path).
#[derive(Debug, Default)]
struct Writers {
    used: usize,
    shared: HashMap<u128, Arc<Shared>>,
}

#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    slots: Box<[Slot]>,
    writers: RwLock<Writers>,
}

/// The sharded cache.
pub struct Cache {
    shards: Box<[Shard]>,
    generation: AtomicU64,
    /// Bumped by every invalidation and flush; fills compare it (see [`FillTicket`]).
    seq: AtomicU64,
    negative_ttl_nanos: u64,
    clock: Clock,
    k0: u64,
    k1: u64,
    evictions: AtomicU64,
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

fn write_lock(l: &RwLock<Writers>) -> std::sync::RwLockWriteGuard<'_, Writers> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn read_lock(l: &RwLock<Writers>) -> std::sync::RwLockReadGuard<'_, Writers> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    /// A cache for about `capacity` tokens, negative entries kept `negative_ttl`, reading time
    /// from `clock`.
    pub fn new(capacity: usize, negative_ttl: Duration, clock: Clock) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        let slots = (per_shard * SLOTS_PER_ENTRY_NUM / SLOTS_PER_ENTRY_DEN).max(WINDOW);
        let shards = (0..SHARDS)
            .map(|_| Shard {
                slots: (0..slots).map(|_| Slot::default()).collect(),
                writers: RwLock::new(Writers::default()),
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

    /// Looks a token up without taking a lock; on a positive entry runs `f` on a consistent copy
    /// of it.
    #[inline]
    pub fn lookup<R>(&self, hash: &TokenHash, f: impl FnOnce(View<'_>) -> R) -> Probe<R> {
        let key = key_of(hash);
        let (shard, h) = self.place(key);
        let generation = self.generation.load(Ordering::Acquire) as u32;
        let shard = &self.shards[shard];
        let n = shard.slots.len();
        let mut i = Self::home(h, n);
        for _ in 0..WINDOW.min(n) {
            let slot = &shard.slots[i];
            let (state, k) = slot.peek();
            if state == EMPTY {
                return Probe::Miss;
            }
            if k == key && state != TOMBSTONE {
                let Some(snap) = slot.read(key) else {
                    return Probe::Miss;
                };
                if snap.meta as u32 != generation {
                    return Probe::Miss;
                }
                return match meta_state(snap.meta) {
                    ABSENT => {
                        if self.clock.mono_nanos() < snap.expires_at as u64 {
                            Probe::Absent
                        } else {
                            Probe::Miss
                        }
                    }
                    FOUND => {
                        let body = if snap.meta & SHARED_BIT == 0 {
                            let mut text = [0u8; INLINE];
                            for (chunk, w) in text.chunks_exact_mut(8).zip(snap.text) {
                                chunk.copy_from_slice(&w.to_le_bytes());
                            }
                            let e = snap.ends.to_le_bytes();
                            Body::Inline {
                                ends: [e[0], e[1], e[2], e[3], e[4]],
                                text,
                            }
                        } else {
                            match read_lock(&shard.writers).shared.get(&key) {
                                Some(s) => Body::Shared(Arc::clone(s)),
                                None => return Probe::Miss,
                            }
                        };
                        Probe::Hit(f(View {
                            kind: kind_from((snap.meta >> 40) as u8),
                            revoked: snap.meta & REVOKED_BIT != 0,
                            expires_at: snap.expires_at,
                            body: &body,
                            touched: &slot.touched,
                        }))
                    }
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

    /// Turns a store record into cache form.
    pub fn entry(&self, r: &TokenRecord) -> Entry {
        Entry::new(r)
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
        let shard = &self.shards[shard];
        let mut writers = write_lock(&shard.writers);
        // Checked under the shard lock: an invalidation bumps `seq` before it takes this lock
        // to remove entries, so either we see the bump here, or it removes what we insert.
        if self.is_stale(ticket) {
            return false;
        }
        let generation = self.generation.load(Ordering::Acquire) as u32;
        let now = self.clock.mono_nanos();
        let n = shard.slots.len();
        let home = Self::home(h, n);
        let mut target = None;
        let mut free = None;
        for d in 0..WINDOW.min(n) {
            let i = (home + d) % n;
            let s = &shard.slots[i];
            let meta = s.meta.load(Ordering::Relaxed);
            let (state, k) = s.peek();
            if state == EMPTY {
                free.get_or_insert(i);
                break;
            }
            if k == key && state != TOMBSTONE {
                target = Some(i);
                break;
            }
            let reusable = state == TOMBSTONE
                || meta as u32 != generation
                || (state == ABSENT && s.expires_at.load(Ordering::Relaxed) as u64 <= now);
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
        let slot = &shard.slots[i];
        let (old_state, old_key) = slot.peek();
        if slot.meta.load(Ordering::Relaxed) & SHARED_BIT != 0 {
            writers.shared.remove(&old_key);
        }
        let base = u64::from(generation);
        match found {
            Some(e) => {
                let mut meta = base
                    | u64::from(FOUND) << 32
                    | u64::from(kind_code(e.kind)) << 40
                    | if e.revoked { REVOKED_BIT } else { 0 };
                if let Body::Shared(s) = &e.body {
                    meta |= SHARED_BIT;
                    writers.shared.insert(key, Arc::clone(s));
                }
                let touched = e.touched.load(Ordering::Relaxed);
                slot.write(key, meta, e.expires_at, touched, Some(&e.body));
            }
            None => {
                let deadline =
                    i64::try_from(now.saturating_add(self.negative_ttl_nanos)).unwrap_or(i64::MAX);
                slot.write(key, base | u64::from(ABSENT) << 32, deadline, 0, None);
            }
        }
        if !matches!(old_state, FOUND | ABSENT) {
            writers.used += 1;
        }
        true
    }

    /// Drops the entries for `hashes` and fails every fill in flight (revocation, rotation).
    pub fn invalidate(&self, hashes: impl IntoIterator<Item = TokenHash>) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        for hash in hashes {
            let key = key_of(&hash);
            let (shard, h) = self.place(key);
            let shard = &self.shards[shard];
            let mut writers = write_lock(&shard.writers);
            let n = shard.slots.len();
            let home = Self::home(h, n);
            for d in 0..WINDOW.min(n) {
                let i = (home + d) % n;
                let s = &shard.slots[i];
                let (state, k) = s.peek();
                if state == EMPTY {
                    break;
                }
                if k == key && state != TOMBSTONE {
                    if s.meta.load(Ordering::Relaxed) & SHARED_BIT != 0 {
                        writers.shared.remove(&key);
                    }
                    s.write(0, u64::from(TOMBSTONE) << 32, 0, 0, None);
                    writers.used -= 1;
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
        self.shards.iter().map(|s| read_lock(&s.writers).used).sum()
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
        match c.lookup(h, |v| v.grant().token_id().to_owned()) {
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
            let g = v.grant();
            (
                v.kind,
                v.revoked,
                v.expires_at,
                v.holds_all(&["mcp:write".to_owned(), "mcp:read".to_owned()])
                    && !v.holds_all(&["mcp".to_owned()]),
                String::from_utf8(v.resource().to_vec()).unwrap(),
                g.subject().to_owned(),
                g.client_id().to_owned(),
                g.scopes().collect::<Vec<_>>().join(","),
            )
        });
        let Probe::Hit(f) = facts else {
            panic!("hit expected")
        };
        assert_eq!(f.0, TokenKind::ApiKey);
        assert!(!f.1);
        assert_eq!(f.2, 77);
        assert!(f.3);
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
        let slots_total: usize = c.shards.iter().map(|s| s.slots.len()).sum();
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
        let e = Entry::new(&rec(9));
        assert!(e.view().claim_touch(100, 60));
        assert!(!e.view().claim_touch(120, 60));
        assert!(e.view().claim_touch(160, 60));
    }

    #[test]
    fn long_records_spill_to_a_shared_body_with_the_same_answers() {
        let mut r = rec(4);
        r.resource = format!("https://mcp.example/{}", "r".repeat(200));
        r.scopes = ScopeSet::parse(&["mcp:read mcp:write extra:one extra:two"]).unwrap();
        let (c, _) = cache(100, Duration::from_secs(5));
        let short = Entry::new(&rec(5));
        assert!(short.view().grant().is_inline());
        assert!(c.fill(c.ticket(), r.hash, Some(&c.entry(&r))));
        let Probe::Hit((g, all, missing)) = c.lookup(&r.hash, |v| {
            (
                v.grant(),
                v.holds_all(&["extra:two".to_owned(), "mcp:read".to_owned()]),
                v.holds_all(&["mcp:admin".to_owned()]),
            )
        }) else {
            panic!("hit expected")
        };
        assert!(!g.is_inline());
        assert!(all && !missing);
        assert_eq!(g.resource(), r.resource);
        assert_eq!(g.token_id(), "tok_4");
        assert_eq!(
            g.scopes().collect::<Vec<_>>(),
            ["extra:one", "extra:two", "mcp:read", "mcp:write"]
        );
    }

    #[test]
    fn scope_match_is_whole_words() {
        let e = Entry::new(&rec(6));
        let v = e.view();
        assert!(v.holds_all(&[]));
        assert!(!v.holds_all(&["mcp:rea".to_owned()]));
        assert!(!v.holds_all(&["read mcp".to_owned()]));
        assert!(!v.holds_all(&[String::new()]));
    }

    #[test]
    fn readers_never_see_a_torn_slot_while_writers_rewrite_it() {
        // Every record's text names its own number; a reader that mixed two versions of a slot
        // would see a token id and subject that disagree, or a key with another record's text.
        let (c, _) = cache(4, Duration::from_secs(5));
        // Two versions of each token (ids, subject and revoked all differ), so a rewrite changes
        // every word of the slot.
        let recs: Vec<[TokenRecord; 2]> = (0..16u8)
            .map(|n| {
                [0u8, 1].map(|v| {
                    let mut r = rec(n);
                    r.token_id = format!("tok_{n}_{v}");
                    r.subject = format!("subject-{n}-{v}-{}", "x".repeat(usize::from(v) * 9));
                    r.revoked_at = i64::from(v);
                    r
                })
            })
            .collect();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let r = &recs[i % recs.len()][(i / 16) % 2];
                    if i.is_multiple_of(5) {
                        c.invalidate([r.hash]);
                    } else {
                        c.fill(c.ticket(), r.hash, Some(&c.entry(r)));
                    }
                    i = i.wrapping_add(1);
                }
            });
            // Stops the writer even when an assertion below fails.
            struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&stop);
            let mut hits = 0;
            for round in 0..300_000usize {
                let pair = &recs[round % recs.len()];
                if let Probe::Hit((id, subject, revoked)) = c.lookup(&pair[0].hash, |v| {
                    let g = v.grant();
                    (g.token_id().to_owned(), g.subject().to_owned(), v.revoked)
                }) {
                    hits += 1;
                    let r = &pair[usize::from(revoked)];
                    assert_eq!(
                        (id.as_str(), subject.as_str()),
                        (r.token_id.as_str(), r.subject.as_str())
                    );
                }
            }
            assert!(hits > 0, "the reader never hit");
        });
    }

    #[test]
    fn slots_are_two_cache_lines() {
        assert_eq!(std::mem::size_of::<Slot>(), 128);
    }
}
