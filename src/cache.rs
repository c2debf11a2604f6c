//! The sharded in-memory cache in front of the store: positive entries (the record) and short
//! negative entries (no such token), flushed by generation, invalidated by token hash.
//!
//! The cache never decides on its own whether a token is valid: the validator checks every hit
//! against the record's expiry, revocation, scopes and resource. What the cache guarantees is
//! that an invalidation wins over a fill in flight: a fill takes a [`FillTicket`] before its
//! store read and is dropped if any invalidation or flush happened since.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::record::TokenRecord;
use crate::token::TokenHash;

/// A cached record plus the hot-path bookkeeping that rides along with it.
#[derive(Debug)]
pub struct CachedRecord {
    /// What the store said.
    pub record: TokenRecord,
    /// When `last_used_at` was last queued for the store (unix seconds).
    last_used_mark: AtomicI64,
}

impl CachedRecord {
    /// Wraps a record fresh from the store.
    pub fn new(record: TokenRecord) -> Self {
        let mark = record.last_used_at;
        CachedRecord {
            record,
            last_used_mark: AtomicI64::new(mark),
        }
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

/// What the cache knows about a token hash.
#[derive(Debug)]
pub enum Lookup {
    /// The store's record (possibly revoked or expired: the caller checks).
    Hit(Arc<CachedRecord>),
    /// The store recently said there is no such token.
    Absent,
    /// Nothing usable: ask the store.
    Miss,
}

/// Taken before a store read; a fill is only cached if no invalidation happened since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillTicket(u64);

#[derive(Debug)]
enum Entry {
    Found(Arc<CachedRecord>),
    /// Monotonic nanoseconds (since the cache's origin) until which "absent" holds.
    Absent(u64),
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    entry: Entry,
}

type Shard = RwLock<HashMap<TokenHash, Slot, KeyedState>>;

/// The sharded cache.
pub struct Cache {
    shards: Box<[Shard]>,
    shard_mask: u64,
    per_shard: usize,
    generation: AtomicU64,
    /// Bumped by every invalidation and flush; fills compare it (see [`FillTicket`]).
    seq: AtomicU64,
    negative_ttl_nanos: u64,
    origin: Instant,
    hasher: KeyedState,
    evictions: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

const SHARDS: usize = 64;

impl Cache {
    /// A cache holding at most about `capacity` entries, with negative entries kept for
    /// `negative_ttl`.
    pub fn new(capacity: usize, negative_ttl: Duration) -> Self {
        let hasher = KeyedState::random();
        let shards = (0..SHARDS)
            .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
            .collect();
        Cache {
            shards,
            shard_mask: (SHARDS - 1) as u64,
            per_shard: capacity.div_ceil(SHARDS).max(1),
            generation: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            negative_ttl_nanos: u64::try_from(negative_ttl.as_nanos()).unwrap_or(u64::MAX),
            origin: Instant::now(),
            hasher,
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: &TokenHash) -> &Shard {
        // Bits 32.. pick the shard; the map itself uses the low bits and the top 7, so the two
        // choices stay independent.
        let h = self.hasher.hash_one(hash);
        &self.shards[((h >> 32) & self.shard_mask) as usize]
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Looks a token hash up.
    pub fn get(&self, hash: &TokenHash) -> Lookup {
        let generation = self.generation.load(Ordering::Acquire);
        let shard = self.shard(hash).read().unwrap_or_else(|p| p.into_inner());
        match shard.get(hash) {
            Some(slot) if slot.generation == generation => match &slot.entry {
                Entry::Found(r) => Lookup::Hit(Arc::clone(r)),
                Entry::Absent(until) if self.now_nanos() < *until => Lookup::Absent,
                Entry::Absent(_) => Lookup::Miss,
            },
            _ => Lookup::Miss,
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
    pub fn fill(
        &self,
        ticket: FillTicket,
        hash: TokenHash,
        found: Option<Arc<CachedRecord>>,
    ) -> bool {
        let entry = match found {
            Some(r) => Entry::Found(r),
            None => Entry::Absent(self.now_nanos().saturating_add(self.negative_ttl_nanos)),
        };
        let mut shard = self.shard(&hash).write().unwrap_or_else(|p| p.into_inner());
        // Checked under the shard lock: an invalidation bumps `seq` before it takes this lock
        // to remove entries, so either we see the bump here, or it removes what we insert.
        if self.is_stale(ticket) {
            return false;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            self.evict_one(&mut shard, generation);
        }
        shard.insert(hash, Slot { generation, entry });
        true
    }

    /// Makes room in a full shard: a stale entry if one is near, else an arbitrary one (the
    /// map's order is keyed-random, so this is random eviction).
    fn evict_one(&self, shard: &mut HashMap<TokenHash, Slot, KeyedState>, generation: u64) {
        let now = self.now_nanos();
        let victim = shard
            .iter()
            .take(8)
            .find(|(_, s)| {
                s.generation != generation || matches!(s.entry, Entry::Absent(u) if u <= now)
            })
            .or_else(|| shard.iter().next())
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            shard.remove(&k);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the entries for `hashes` and fails every fill in flight (revocation, rotation).
    pub fn invalidate(&self, hashes: impl IntoIterator<Item = TokenHash>) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        for h in hashes {
            self.shard(&h)
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&h);
        }
    }

    /// Forgets everything at once, without a scan: entries of older generations are misses.
    pub fn flush(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Entries held, stale generations included.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len())
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

/// A per-process random key for hashing token digests. The digest is already uniform, so a
/// keyed folded multiply is enough; the key stops anyone from grinding tokens whose digests
/// land in one bucket.
#[derive(Clone, Debug)]
pub struct KeyedState {
    k0: u64,
    k1: u64,
}

impl KeyedState {
    fn random() -> Self {
        let mut b = [0u8; 16];
        // Without OS randomness the keys are fixed; correctness holds, only collision
        // resistance against a chosen-token attacker is lost.
        let _ = getrandom::fill(&mut b);
        let (a, c) = b.split_at(8);
        KeyedState {
            k0: u64::from_le_bytes(a.try_into().unwrap_or([1; 8])) | 1,
            k1: u64::from_le_bytes(c.try_into().unwrap_or([3; 8])) | 1,
        }
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;
    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            acc: self.k0,
            k1: self.k1,
        }
    }
}

/// See [`KeyedState`].
#[derive(Debug)]
pub struct KeyedHasher {
    acc: u64,
    k1: u64,
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Hasher for KeyedHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.acc = fold(self.acc ^ x, self.k1);
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold(self.acc, self.k1.rotate_left(29) | 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;
    use crate::token::TokenKind;

    fn rec(n: u8) -> Arc<CachedRecord> {
        Arc::new(CachedRecord::new(TokenRecord {
            hash: TokenHash([n; 32]),
            token_id: format!("tok_{n}"),
            kind: TokenKind::ApiKey,
            subject: "alice".into(),
            scopes: ScopeSet::default(),
            client_id: String::new(),
            grant_id: String::new(),
            name: String::new(),
            resource: String::new(),
            created_at: 0,
            expires_at: 0,
            last_used_at: 0,
            revoked_at: 0,
            spent_at: 0,
        }))
    }

    #[test]
    fn fill_then_hit() {
        let c = Cache::new(100, Duration::from_secs(5));
        let h = TokenHash([1; 32]);
        assert!(matches!(c.get(&h), Lookup::Miss));
        assert!(c.fill(c.ticket(), h, Some(rec(1))));
        assert!(matches!(c.get(&h), Lookup::Hit(r) if r.record.token_id == "tok_1"));
    }

    #[test]
    fn negative_entries_expire() {
        let c = Cache::new(100, Duration::from_millis(30));
        let h = TokenHash([2; 32]);
        assert!(c.fill(c.ticket(), h, None));
        assert!(matches!(c.get(&h), Lookup::Absent));
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(c.get(&h), Lookup::Miss));
    }

    #[test]
    fn invalidation_beats_a_fill_in_flight() {
        let c = Cache::new(100, Duration::from_secs(5));
        let h = TokenHash([3; 32]);
        let ticket = c.ticket();
        // ... the store read happens here, then a revocation lands ...
        c.invalidate([h]);
        assert!(!c.fill(ticket, h, Some(rec(3))));
        assert!(matches!(c.get(&h), Lookup::Miss));
    }

    #[test]
    fn invalidate_removes_and_flush_forgets_everything() {
        let c = Cache::new(100, Duration::from_secs(5));
        for n in 0..10 {
            assert!(c.fill(c.ticket(), TokenHash([n; 32]), Some(rec(n))));
        }
        c.invalidate([TokenHash([0; 32])]);
        assert!(matches!(c.get(&TokenHash([0; 32])), Lookup::Miss));
        assert!(matches!(c.get(&TokenHash([1; 32])), Lookup::Hit(_)));
        let ticket = c.ticket();
        c.flush();
        assert!((0..10).all(|n| matches!(c.get(&TokenHash([n; 32])), Lookup::Miss)));
        assert!(!c.fill(ticket, TokenHash([1; 32]), Some(rec(1))));
        assert!(c.fill(c.ticket(), TokenHash([1; 32]), Some(rec(1))));
        assert!(matches!(c.get(&TokenHash([1; 32])), Lookup::Hit(_)));
    }

    #[test]
    fn capacity_is_bounded() {
        let c = Cache::new(64, Duration::from_secs(5));
        for i in 0..10_000u32 {
            c.fill(c.ticket(), TokenHash::of(&i.to_string()), None);
        }
        assert!(c.len() <= 64 + SHARDS, "len {}", c.len());
        assert!(c.evictions() > 0);
    }

    #[test]
    fn touch_is_claimed_once_per_interval() {
        let r = rec(9);
        assert!(r.claim_touch(100, 60));
        assert!(!r.claim_touch(120, 60));
        assert!(r.claim_touch(160, 60));
    }
}
