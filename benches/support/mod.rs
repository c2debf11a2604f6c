//! Shared bench fixture: a real `Validator` (embedded store in a temp dir) whose cache holds N
//! API keys, plus unknown and malformed tokens to ask about.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use navis_auth::cache::Cache;
use navis_auth::clock::Clock;
use navis_auth::record::TokenRecord;
use navis_auth::revocation::Lease;
use navis_auth::scope::ScopeSet;
use navis_auth::store::Store;
use navis_auth::store::embedded::EmbeddedStore;
use navis_auth::token::{self, TokenKind};
use navis_auth::validator::{Fast, Request, Validator};

pub struct Fixture {
    pub validator: Arc<Validator>,
    pub tokens: Vec<String>,
    pub unknown: Vec<String>,
    pub malformed: Vec<String>,
    pub required: Vec<String>,
    _dir: tempfile::TempDir,
    _touches: tokio::sync::mpsc::Receiver<(token::TokenHash, i64)>,
}

/// Makes `n` token strings (not yet cached) and `n_unknown` unknown ones.
pub fn tokens(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            token::generate(TokenKind::ApiKey)
                .expect("rng")
                .into_exposed()
        })
        .collect()
}

pub fn empty_validator(capacity: usize) -> (Fixture, Arc<Cache>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::new(Arc::new(EmbeddedStore::open(dir.path()).expect("store")));
    // Negative entries must outlive the bench.
    let clock = Clock::coarse();
    let cache = Arc::new(Cache::new(
        capacity,
        Duration::from_secs(3600),
        clock.clone(),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel(1 << 20);
    let validator = Arc::new(Validator::new(
        Arc::clone(&cache),
        store,
        clock,
        tx,
        Lease::Always,
    ));
    let f = Fixture {
        validator,
        tokens: Vec::new(),
        unknown: Vec::new(),
        malformed: Vec::new(),
        required: vec!["mcp:read".to_owned()],
        _dir: dir,
        _touches: rx,
    };
    (f, cache)
}

/// Caches every token of `tokens` as an active read+write API key of one of 10k subjects.
pub fn fill(cache: &Cache, tokens: &[String]) {
    let scopes = ScopeSet::parse(&["mcp:read", "mcp:write"]).expect("scopes");
    for (i, t) in tokens.iter().enumerate() {
        let rec = TokenRecord {
            hash: token::TokenHash::of(t),
            token_id: token::random_id("tok_", 20).expect("rng"),
            kind: TokenKind::ApiKey,
            subject: format!("user-{}", i % 10_000),
            scopes: scopes.clone(),
            client_id: String::new(),
            grant_id: String::new(),
            name: "laptop".to_owned(),
            resource: String::new(),
            created_at: 1,
            expires_at: 0,
            // Used just now, as the tokens of a busy replica are: a hit then queues no
            // last-used update (one hit per token per minute does, through a shared channel).
            last_used_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            revoked_at: 0,
            spent_at: 0,
        };
        let entry = cache.entry(&rec);
        cache.fill(cache.ticket(), rec.hash, Some(&entry));
    }
}

/// Caches `unknown` as negative entries.
pub fn fill_negative(cache: &Cache, unknown: &[String]) {
    for t in unknown {
        cache.fill(cache.ticket(), token::TokenHash::of(t), None);
    }
}

/// Tokens with a broken checksum.
pub fn malformed(n: usize) -> Vec<String> {
    tokens(n)
        .into_iter()
        .map(|t| {
            let mut b = t.into_bytes();
            b[42] = if b[42] == b'0' { b'1' } else { b'0' };
            String::from_utf8(b).expect("ascii")
        })
        .collect()
}

/// The whole fixture: `n` cached keys, `n_unknown` negative entries, malformed tokens.
pub fn fixture(n: usize, n_unknown: usize) -> Fixture {
    let (mut f, cache) = empty_validator(n + n_unknown);
    f.tokens = tokens(n);
    f.unknown = tokens(n_unknown);
    f.malformed = malformed(1024);
    fill(&cache, &f.tokens);
    fill_negative(&cache, &f.unknown);
    f
}

/// One synchronous validation (the hot path: cache hits, negative hits, format rejects).
#[inline]
pub fn validate_fast<'a>(v: &Validator, token: &'a str, required: &'a [String]) -> Fast {
    v.fast(Request {
        credential: token.as_bytes(),
        required_scopes: required,
        resource: "",
    })
}

/// A small, fast PRNG for picking tokens (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    #[inline]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Resident set size of this process, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
