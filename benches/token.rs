//! Criterion: token format and hashing (strip `Bearer`, parse + CRC32 check, SHA-256).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use navis_auth::token::{self, TokenHash, TokenKind};

fn bench(c: &mut Criterion) {
    let good = token::generate(TokenKind::ApiKey)
        .expect("rng")
        .into_exposed();
    let header = format!("Bearer {good}");
    let mut bad = good.clone().into_bytes();
    bad[42] = if bad[42] == b'0' { b'1' } else { b'0' };
    c.bench_function("parse valid token", |b| {
        b.iter(|| token::parse(black_box(good.as_bytes())).is_ok())
    });
    c.bench_function("parse bad checksum", |b| {
        b.iter(|| token::parse(black_box(&bad)).is_err())
    });
    c.bench_function("strip Bearer + parse", |b| {
        b.iter(|| {
            token::strip_bearer(black_box(header.as_bytes()))
                .and_then(token::parse)
                .is_ok()
        })
    });
    c.bench_function("sha256 of a token", |b| {
        b.iter(|| TokenHash::of(black_box(&good)))
    });
    c.bench_function("generate token", |b| {
        b.iter(|| token::generate(TokenKind::ApiKey))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
