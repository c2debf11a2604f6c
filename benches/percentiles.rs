//! Percentile bench for the hot path (criterion reports means; budgets are about tails).
//! Times single `Validate` core operations (no gRPC) with an HDR histogram at 1M cached tokens
//! and prints p50/p90/p99/p99.9/max for every row of the budget table, plus the memory per
//! cached token. Exits non-zero when a hard budget is broken in two measurements in a row (a row
//! that breaks it once is measured again: this VM's memory latency drifts between runs).
//!
//! `cargo bench --bench percentiles` (full) or `cargo bench --bench percentiles -- --short` (CI).

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use navis_auth::validator::{Decision, Fast};
use support::{Rng, fixture, rss_bytes, validate_fast};

const CACHED: usize = 1_000_000;
const UNKNOWN: usize = 100_000;

fn pad(t: &str) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[..t.len()].copy_from_slice(t.as_bytes());
    b
}

fn tok(b: &[u8; 64]) -> &str {
    std::str::from_utf8(&b[..43]).unwrap_or("")
}

struct Row {
    name: &'static str,
    target_ns: u64,
    budget_ns: u64,
    hist: Histogram<u64>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000, 3).expect("histogram bounds")
}

/// Times `samples` calls of `op(token)`, one at a time, minus `overhead` ns (the cost of the
/// two clock reads around an empty operation, measured first). `pick(i)` chooses the i-th token
/// outside the timed region and copies it to a stack buffer, as a request that just arrived
/// would be: the timed part is the validator's work and misses, not the harness's.
fn time_ops(
    samples: usize,
    overhead: u64,
    pick: impl Fn(usize) -> [u8; 64],
    mut op: impl FnMut(&str),
) -> Histogram<u64> {
    let mut h = hist();
    let mut run = |i: usize, record: bool| {
        let buf = pick(i);
        let token = tok(&buf);
        let t = Instant::now();
        op(black_box(token));
        let ns = t.elapsed().as_nanos() as u64;
        if record {
            h.saturating_record(ns.saturating_sub(overhead).max(1));
        }
    };
    for i in 0..samples / 10 {
        run(i, false);
    }
    for i in 0..samples {
        run(i, true);
    }
    h
}

fn expect(f: Fast, want: Decision) {
    match f {
        Fast::Done(Ok(v)) => assert_eq!(v.decision, want),
        other => panic!("expected {want:?} from the cache, got {other:?}"),
    }
}

fn main() {
    let short = std::env::args().any(|a| a == "--short");
    let samples = if short { 300_000 } else { 3_000_000 };

    // Memory: the token strings exist before the baseline; the growth is the cache alone (its
    // preallocated tables plus whatever a fill allocates), on a second, identical validator.
    let f = fixture(CACHED, UNKNOWN);
    let mem_tokens = support::tokens(CACHED);
    let rss0 = rss_bytes();
    let (mem_fixture, mem_cache) = support::empty_validator(CACHED);
    support::fill(&mem_cache, &mem_tokens);
    let rss1 = rss_bytes();
    let per_token = (rss1.saturating_sub(rss0)) as f64 / CACHED as f64;
    drop(mem_tokens);
    drop(mem_fixture);
    drop(mem_cache);

    // The clock reads around each sample cost more than some operations here (a system call on
    // VMs without a vDSO clock): measure that cost and take its median off every sample.
    let calibration = time_ops(
        samples,
        0,
        |_| [b'a'; 64],
        |t| {
            black_box(t);
        },
    );
    let overhead = calibration.value_at_quantile(0.5);
    let v = Arc::clone(&f.validator);
    let req = f.required.clone();
    // The bench's own token list, contiguous (one cache line per token, not a String header plus
    // a heap block), so the measurement is the validator's misses, not the harness's.
    let flat: Vec<[u8; 64]> = f.tokens.iter().map(|t| pad(t)).collect();
    let flat_unknown: Vec<[u8; 64]> = f.unknown.iter().map(|t| pad(t)).collect();

    let bad: Vec<[u8; 64]> = f.malformed.iter().map(|t| pad(t)).collect();
    // One measurement of every row (fresh random orders each time).
    let measure = |seed: u64| -> Vec<Row> {
        let mut rows = Vec::new();

        let mut rng = Rng(seed);
        let order: Vec<usize> = (0..samples).map(|_| rng.below(CACHED)).collect();
        let h = time_ops(
            samples,
            overhead,
            |i| flat[order[i % order.len()]],
            |t| {
                black_box(validate_fast(&v, t, &req));
            },
        );
        rows.push(Row {
            name: "cache hit, uniform over 1M, scope held",
            target_ns: 400,
            budget_ns: 1000,
            hist: h,
        });

        let hot: Vec<usize> = (0..samples).map(|_| rng.below(1000)).collect();
        let h = time_ops(
            samples,
            overhead,
            |i| flat[hot[i % hot.len()]],
            |t| {
                black_box(validate_fast(&v, t, &req));
            },
        );
        rows.push(Row {
            name: "cache hit, hot set of 1K",
            target_ns: 200,
            budget_ns: 1000,
            hist: h,
        });

        let h = time_ops(
            samples,
            overhead,
            |i| bad[i % bad.len()],
            |t| {
                black_box(validate_fast(&v, t, &req));
            },
        );
        rows.push(Row {
            name: "malformed (bad checksum) rejected",
            target_ns: 60,
            budget_ns: 100,
            hist: h,
        });

        let neg: Vec<usize> = (0..samples).map(|_| rng.below(UNKNOWN)).collect();
        let h = time_ops(
            samples,
            overhead,
            |i| flat_unknown[neg[i % neg.len()]],
            |t| {
                black_box(validate_fast(&v, t, &req));
            },
        );
        rows.push(Row {
            name: "negative-cache hit (unknown token)",
            target_ns: 400,
            budget_ns: 1000,
            hist: h,
        });

        // Both cores at once, uniform hits; one histogram per thread, merged.
        let single_p99 = rows[0].hist.value_at_quantile(0.99);
        let merged = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2u64)
                .map(|t| {
                    let (v, flat, req) = (&v, &flat, &req);
                    s.spawn(move || {
                        let mut rng = Rng(seed + 7 + t);
                        let order: Vec<usize> = (0..samples).map(|_| rng.below(CACHED)).collect();
                        time_ops(
                            samples,
                            overhead,
                            |i| flat[order[i]],
                            |t| {
                                black_box(validate_fast(v, t, req));
                            },
                        )
                    })
                })
                .collect();
            let mut m = hist();
            for h in handles {
                m.add(h.join().expect("thread")).expect("merge");
            }
            m
        });
        let contention_target = single_p99 * 5 / 4;
        rows.push(Row {
            name: "both cores validating at once",
            target_ns: contention_target,
            budget_ns: 1000,
            hist: merged,
        });

        rows
    };

    // Sanity: the rows measured what they say.
    expect(validate_fast(&v, &f.tokens[0], &req), Decision::Allow);
    expect(
        validate_fast(&v, &f.unknown[0], &req),
        Decision::Unauthenticated,
    );
    expect(
        validate_fast(&v, &f.malformed[0], &req),
        Decision::Unauthenticated,
    );

    // This VM's memory latency drifts between runs by more than the margin under the 1 µs
    // budget, so a row whose hard budget is broken is measured once more, and fails only when
    // it breaks it again. Both measurements are printed.
    let first = measure(42);
    let broke = |rows: &[Row]| -> Vec<&'static str> {
        rows.iter()
            .filter(|r| r.hist.value_at_quantile(0.99) >= r.budget_ns)
            .map(|r| r.name)
            .collect()
    };
    print_table(&first, samples, short, "measurement 1");
    let mut broken = broke(&first);
    if !broken.is_empty() {
        eprintln!("hard budget broken in measurement 1: {broken:?}; measuring again");
        let second = measure(4242);
        print_table(&second, samples, short, "measurement 2");
        let again = broke(&second);
        broken.retain(|n| again.contains(n));
    }
    let mem_verdict = if per_token <= 320.0 {
        "meets target"
    } else {
        "over target"
    };
    println!(
        "{:<42} {:>6.0} bytes per cached token (target <= 320)  {mem_verdict}",
        "memory (RSS growth at 1M tokens)", per_token
    );
    println!(
        "(clock-read overhead per sample: p50 {overhead} ns, p99 {} ns, subtracted at its median; \
         a sample's true cost is within the overhead's spread of what is shown)",
        calibration.value_at_quantile(0.99)
    );
    if !broken.is_empty() {
        eprintln!("hard budget broken in both measurements: {broken:?}");
        std::process::exit(1);
    }
}

fn print_table(rows: &[Row], samples: usize, short: bool, label: &str) {
    println!(
        "\nnavis-auth hot path, {label}: {samples} samples per row, {CACHED} cached tokens \
         (+{UNKNOWN} negative), {} mode",
        if short { "short" } else { "full" }
    );
    println!(
        "{:<42} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8}  verdict",
        "case", "p50", "p90", "p99", "p99.9", "max", "target", "budget"
    );
    for r in rows {
        let q = |x: f64| r.hist.value_at_quantile(x);
        let p99 = q(0.99);
        let verdict = if p99 >= r.budget_ns {
            "BROKEN BUDGET"
        } else if p99 > r.target_ns {
            "within budget, over target"
        } else {
            "meets target"
        };
        println!(
            "{:<42} {:>5}ns {:>5}ns {:>5}ns {:>6}ns {:>6}ns {:>6}ns {:>6}ns  {verdict}",
            r.name,
            q(0.5),
            q(0.9),
            p99,
            q(0.999),
            r.hist.max(),
            r.target_ns,
            r.budget_ns
        );
    }
}
