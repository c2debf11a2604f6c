//! Measurements: the run clock, per-worker recorders (HDR histograms, a per-second series, errors
//! by kind, wrong answers by class), merging them, and the live progress line.

use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::{CLASSES, GOT_N, Verdict};
use crate::report::{fmt_int, fmt_ns};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the run started (never 0, so 0 can mean "not yet").
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// The `Instant` that [`now_ns`] value `ns` stands for.
pub fn instant_at(ns: u64) -> Instant {
    *EPOCH.get_or_init(Instant::now) + Duration::from_nanos(ns.saturating_sub(1))
}

/// Error kinds: gRPC codes 1–16 by number, then these.
pub const ERR_TIMEOUT: usize = 17;
/// No answer by the end of the phase's drain (or the stream broke with it outstanding).
pub const ERR_LOST: usize = 18;
/// Number of error kinds.
pub const ERR_KINDS: usize = 19;

/// The report name of error kind `i`.
pub fn error_name(i: usize) -> String {
    match i {
        ERR_TIMEOUT => "client timeout".into(),
        ERR_LOST => "no answer".into(),
        i => format!("{:?}", tonic::Code::from_i32(i as i32)),
    }
}

/// Latencies above this are recorded as this (60 s).
const HIGH_NS: u64 = 60_000_000_000;

/// One second of one recorder.
pub struct Second {
    /// Latencies (2 significant digits: the plot needs the shape, not the last percent).
    pub hist: Histogram<u32>,
    /// Answers with a decision.
    pub answers: u64,
    /// gRPC errors.
    pub errors: u64,
    /// Wrong answers.
    pub wrong: u64,
}

impl Second {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, HIGH_NS, 2).expect("valid histogram bounds"),
            answers: 0,
            errors: 0,
            wrong: 0,
        }
    }
}

/// Everything measured by one worker (or merged from many) in one phase.
pub struct Recorder {
    start_ns: u64,
    /// Every answer's latency in ns (3 significant digits).
    pub total: Histogram<u64>,
    /// By second since the phase started (by arrival of the answer).
    pub secs: Vec<Second>,
    /// Answers with a decision (right, late-accepted or wrong).
    pub answers: u64,
    /// Revoked tokens accepted after the revoke returned but within the propagation bound.
    pub late_accepts: u64,
    /// Errors by kind (see [`error_name`]).
    pub errors: [u64; ERR_KINDS],
    /// Wrong answers by class and by what came back.
    pub wrong: [[u64; GOT_N]; 5],
    /// A few wrong answers described (token ids, never tokens).
    pub examples: Vec<String>,
}

impl Recorder {
    /// An empty recorder for a phase that started at `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        Self {
            start_ns,
            total: Histogram::new_with_bounds(1, HIGH_NS, 3).expect("valid histogram bounds"),
            secs: Vec::new(),
            answers: 0,
            late_accepts: 0,
            errors: [0; ERR_KINDS],
            wrong: [[0; GOT_N]; 5],
            examples: Vec::new(),
        }
    }

    fn second(&mut self, at_ns: u64) -> &mut Second {
        let k = (at_ns.saturating_sub(self.start_ns) / 1_000_000_000) as usize;
        while self.secs.len() <= k {
            self.secs.push(Second::new());
        }
        &mut self.secs[k]
    }

    /// Records an answer judged `v`, `latency_ns` after it was (meant to be) sent.
    /// `describe` is called only for the first few wrong answers.
    pub fn answer(
        &mut self,
        v: Verdict,
        class: usize,
        latency_ns: u64,
        at_ns: u64,
        describe: impl FnOnce() -> String,
    ) {
        if let Verdict::Error(code) = v {
            let kind = if (1..=16).contains(&code) { code } else { 2 };
            self.error(kind as usize, at_ns, 1);
            return;
        }
        let lat = latency_ns.clamp(1, HIGH_NS);
        self.total.saturating_record(lat);
        self.answers += 1;
        let s = self.second(at_ns);
        s.hist.saturating_record(lat);
        s.answers += 1;
        match v {
            Verdict::Wrong(got) => {
                s.wrong += 1;
                self.wrong[class][got as usize] += 1;
                if self.examples.len() < 5 {
                    self.examples.push(describe());
                }
            }
            Verdict::LateAccept => self.late_accepts += 1,
            Verdict::Right | Verdict::Error(_) => {}
        }
    }

    /// Records `n` errors of kind `kind`.
    pub fn error(&mut self, kind: usize, at_ns: u64, n: u64) {
        self.errors[kind.min(ERR_KINDS - 1)] += n;
        self.second(at_ns).errors += n;
    }

    /// Adds `o` (same phase) into this one.
    pub fn merge(&mut self, o: &Recorder) {
        let _ = self.total.add(&o.total);
        while self.secs.len() < o.secs.len() {
            self.secs.push(Second::new());
        }
        for (a, b) in self.secs.iter_mut().zip(&o.secs) {
            let _ = a.hist.add(&b.hist);
            a.answers += b.answers;
            a.errors += b.errors;
            a.wrong += b.wrong;
        }
        self.answers += o.answers;
        self.late_accepts += o.late_accepts;
        for (a, b) in self.errors.iter_mut().zip(o.errors) {
            *a += b;
        }
        for (ra, rb) in self.wrong.iter_mut().zip(&o.wrong) {
            for (a, b) in ra.iter_mut().zip(rb) {
                *a += b;
            }
        }
        for e in &o.examples {
            if self.examples.len() < 5 {
                self.examples.push(e.clone());
            }
        }
    }

    /// All errors.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// All wrong answers.
    pub fn wrong_total(&self) -> u64 {
        self.wrong.iter().flatten().sum()
    }

    /// Wrong answers as `(class, got, count)` rows.
    pub fn wrong_rows(&self) -> Vec<(usize, usize, u64)> {
        let mut rows = Vec::new();
        for (c, row) in self.wrong.iter().enumerate() {
            for (g, n) in row.iter().enumerate() {
                if *n > 0 {
                    rows.push((c, g, *n));
                }
            }
        }
        rows
    }

    /// The per-second series; `end_ns` trims the rate of the last, partial second.
    pub fn series(&self, end_ns: u64) -> Vec<SecondSummary> {
        let span = end_ns.saturating_sub(self.start_ns);
        self.secs
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let covered =
                    (span.saturating_sub(k as u64 * 1_000_000_000) as f64 / 1e9).clamp(0.05, 1.0);
                let q = |p: f64| {
                    if s.hist.is_empty() {
                        0.0
                    } else {
                        s.hist.value_at_quantile(p) as f64 / 1e3
                    }
                };
                SecondSummary {
                    second: k as u64,
                    answers: s.answers,
                    rate: s.answers as f64 / covered,
                    p50_us: q(0.5),
                    p99_us: q(0.99),
                    max_us: if s.hist.is_empty() {
                        0.0
                    } else {
                        s.hist.max() as f64 / 1e3
                    },
                    errors: s.errors,
                    wrong: s.wrong,
                }
            })
            .collect()
    }
}

/// One second of a phase, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct SecondSummary {
    /// Seconds since the phase started.
    pub second: u64,
    /// Answers that arrived in this second.
    pub answers: u64,
    /// Answers per second (the last, partial second scaled to its length).
    pub rate: f64,
    /// Latency percentiles and maximum, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Maximum, microseconds.
    pub max_us: f64,
    /// gRPC errors.
    pub errors: u64,
    /// Wrong answers.
    pub wrong: u64,
}

/// The recorders of one phase: one shard per worker where workers are long-lived (no contention
/// on the hot path), a few shared ones for open loop's per-request tasks.
pub struct PhaseStats {
    /// When the phase started ([`now_ns`]).
    pub start_ns: u64,
    shards: Vec<Mutex<Recorder>>,
}

/// What the progress line shows for one second.
pub struct Live {
    /// Answers in that second.
    pub answers: u64,
    /// Its p99, ns.
    pub p99_ns: u64,
    /// Errors since the phase started.
    pub errors: u64,
    /// Wrong answers since the phase started.
    pub wrong: u64,
}

impl PhaseStats {
    /// `shards` recorders for a phase starting at `start_ns`.
    pub fn new(start_ns: u64, shards: usize) -> Arc<Self> {
        Arc::new(Self {
            start_ns,
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Recorder::new(start_ns)))
                .collect(),
        })
    }

    /// Shard `i` (modulo the shard count), locked.
    pub fn shard(&self, i: usize) -> MutexGuard<'_, Recorder> {
        self.shards[i % self.shards.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every shard merged.
    pub fn merged(&self) -> Recorder {
        let mut out = Recorder::new(self.start_ns);
        for i in 0..self.shards.len() {
            out.merge(&self.shard(i));
        }
        out
    }

    /// Second `k` across shards, and the totals so far.
    pub fn live(&self, k: usize) -> Live {
        let mut hist: Histogram<u32> =
            Histogram::new_with_bounds(1, HIGH_NS, 2).expect("valid histogram bounds");
        let mut live = Live {
            answers: 0,
            p99_ns: 0,
            errors: 0,
            wrong: 0,
        };
        for i in 0..self.shards.len() {
            let r = self.shard(i);
            if let Some(s) = r.secs.get(k) {
                live.answers += s.answers;
                let _ = hist.add(&s.hist);
            }
            live.errors += r.error_total();
            live.wrong += r.wrong_total();
        }
        if !hist.is_empty() {
            live.p99_ns = hist.value_at_quantile(0.99);
        }
        live
    }
}

/// Prints one progress line per second for a running phase: rewritten in place on a terminal,
/// plain lines otherwise. Abort the handle when the phase ends.
pub fn spawn_progress(
    label: String,
    stats: Arc<PhaseStats>,
    tty: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = instant_at(stats.start_ns);
        for k in 0usize.. {
            let at = start + Duration::from_secs(k as u64 + 1) + Duration::from_millis(50);
            tokio::time::sleep_until(at.into()).await;
            let l = stats.live(k);
            let line = format!(
                "{label}  t={:>3}s  {:>9} req/s  p99 {:>8}  errors {}  wrong {}",
                k + 1,
                fmt_int(l.answers),
                fmt_ns(l.p99_ns),
                fmt_int(l.errors),
                fmt_int(l.wrong),
            );
            let mut err = std::io::stderr().lock();
            if tty {
                let _ = write!(err, "\r\x1b[2K{line}");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
        }
    })
}

/// Exact percentiles of a small sample (propagation delays), nearest-rank.
pub fn exact_quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Class names in index order (for reports).
pub fn class_name(i: usize) -> &'static str {
    CLASSES[i].name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Got;

    #[test]
    fn recorders_merge_and_series_add_up() {
        let mut a = Recorder::new(1);
        let mut b = Recorder::new(1);
        for i in 0..1000u64 {
            a.answer(Verdict::Right, 0, 1000 + i, 1 + i * 1_000_000, String::new);
            b.answer(
                Verdict::Wrong(Got::Forbidden),
                0,
                2000,
                1_500_000_000,
                || "x".into(),
            );
        }
        b.error(ERR_LOST, 1_500_000_000, 3);
        a.merge(&b);
        assert_eq!(a.answers, 2000);
        assert_eq!(a.wrong_total(), 1000);
        assert_eq!(a.examples.len(), 5);
        assert_eq!(a.error_total(), 3);
        let s = a.series(2_000_000_001);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].answers, 1000);
        assert_eq!(s[1].wrong, 1000);
        assert_eq!(s[1].errors, 3);
        assert_eq!(error_name(14), "Unavailable");
        assert_eq!(exact_quantile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(exact_quantile(&[1, 2, 3, 4], 0.99), Some(4));
    }
}
