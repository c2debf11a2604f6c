//! Criterion: the whole `Validate` core (no gRPC) at 1M cached tokens.

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use support::{Rng, fixture, validate_fast};

fn bench(c: &mut Criterion) {
    let f = fixture(1_000_000, 100_000);
    let req = f.required.clone();
    let mut rng = Rng(3);
    c.bench_function("validate: hit, uniform over 1M", |b| {
        b.iter(|| {
            black_box(validate_fast(
                &f.validator,
                &f.tokens[rng.below(f.tokens.len())],
                &req,
            ))
        })
    });
    c.bench_function("validate: hit, hot 1K", |b| {
        b.iter(|| {
            black_box(validate_fast(
                &f.validator,
                &f.tokens[rng.below(1000)],
                &req,
            ))
        })
    });
    c.bench_function("validate: negative hit", |b| {
        b.iter(|| {
            black_box(validate_fast(
                &f.validator,
                &f.unknown[rng.below(f.unknown.len())],
                &req,
            ))
        })
    });
    c.bench_function("validate: malformed", |b| {
        b.iter(|| {
            black_box(validate_fast(
                &f.validator,
                &f.malformed[rng.below(f.malformed.len())],
                &req,
            ))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
