//! Criterion: the sharded cache alone (get at 1M entries, fill, invalidate, flush).

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use navis_auth::token::TokenHash;
use support::Rng;

fn bench(c: &mut Criterion) {
    let (_f, cache) = support::empty_validator(1_000_000);
    let tokens = support::tokens(1_000_000);
    support::fill(&cache, &tokens);
    let hashes: Vec<TokenHash> = tokens.iter().map(|t| TokenHash::of(t)).collect();
    let mut rng = Rng(1);
    c.bench_function("cache get, 1M entries, uniform", |b| {
        b.iter(|| black_box(cache.lookup(&hashes[rng.below(hashes.len())], |v| v.expires_at)))
    });
    c.bench_function("cache get, hot 1K", |b| {
        b.iter(|| black_box(cache.lookup(&hashes[rng.below(1000)], |v| v.expires_at)))
    });
    c.bench_function("cache invalidate one", |b| {
        b.iter(|| cache.invalidate([hashes[rng.below(hashes.len())]]))
    });
    c.bench_function("cache flush (generation bump)", |b| {
        b.iter(|| cache.flush())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
