//! The report: figures per phase, navis-auth / empty-RPC ratios, propagation and server-side
//! figures, the pass/fail verdict; printed as a table (stdout) and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::check::{CLASSES, Got};
use crate::cli::{Mode, PhaseSpec};
use crate::driver::{PhaseOutcome, SendLag};
use crate::metrics::{LOOKUP_METRIC, ServerMetrics};
use crate::propagation::PropagationSummary;
use crate::stats::{SecondSummary, class_name, error_name};

/// What a phase ran against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TargetKind {
    /// The service under test.
    #[serde(rename = "navis-auth")]
    NavisAuth,
    /// The built-in empty Validator.
    #[serde(rename = "empty-rpc")]
    Empty,
}

impl TargetKind {
    /// Table name.
    pub fn name(self) -> &'static str {
        match self {
            Self::NavisAuth => "navis-auth",
            Self::Empty => "empty-RPC",
        }
    }
}

/// A finished phase and what it was.
pub struct PhaseResult {
    /// Its target.
    pub target: TargetKind,
    /// Its spec.
    pub spec: PhaseSpec,
    /// Its measurements.
    pub outcome: PhaseOutcome,
}

/// The run's settings, as reported (no secrets).
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// Scenario name, if any.
    pub scenario: Option<String>,
    /// Generator seed (rerun with `--seed` for the same traffic).
    pub seed: u64,
    /// Validator address.
    pub target: String,
    /// TokenAdmin address used to provision.
    pub admin: String,
    /// TokenAdmin address used to revoke.
    pub revoke_target: String,
    /// Whether the harness started the server.
    pub spawned_server: bool,
    /// Closed-loop callers.
    pub concurrency: u32,
    /// HTTP/2 connections.
    pub connections: u32,
    /// Streams.
    pub streams: u32,
    /// Window per stream.
    pub window: u32,
    /// Batch per stream send.
    pub batch: u32,
    /// API keys provisioned.
    pub keys: u32,
    /// OAuth access tokens provisioned.
    pub oauth: u32,
    /// Read-only share, percent.
    pub read_only_percent: u32,
    /// Mix weights.
    pub mix: String,
    /// Popularity.
    pub popularity: String,
    /// Revocations during the run.
    pub revocations: u32,
    /// Propagation bound, ms.
    pub propagation_bound_ms: f64,
    /// Open-loop timeout / drain limit, s.
    pub timeout_s: f64,
}

/// Latency figures, µs.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Worst.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// A wrong-answer row.
#[derive(Clone, Debug, Serialize)]
pub struct WrongRow {
    /// Traffic class.
    pub class: String,
    /// What was right.
    pub expected: String,
    /// What came back.
    pub got: String,
    /// How many.
    pub count: u64,
}

/// One phase, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// `navis-auth` or `empty-rpc`.
    pub target: TargetKind,
    /// `closed:5s`, `open:3s@2000`, …
    pub phase: String,
    /// Its mode.
    pub mode: Mode,
    /// Planned length, s.
    pub duration_s: f64,
    /// Open-loop arrival rate.
    pub rate: Option<u32>,
    /// Start, seconds after the first phase started.
    pub offset_s: f64,
    /// Actual length until the last answer, s.
    pub elapsed_s: f64,
    /// Answers plus errors.
    pub requests: u64,
    /// Answers with a decision.
    pub answers: u64,
    /// Answers per second.
    pub achieved_rps: f64,
    /// Client-side latency (open loop: from the intended send time).
    pub latency_us: Latency,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// All errors.
    pub error_total: u64,
    /// Wrong answers.
    pub wrong: Vec<WrongRow>,
    /// All wrong answers.
    pub wrong_total: u64,
    /// Revoked tokens accepted within the propagation bound.
    pub late_accepts: u64,
    /// A few wrong answers, by token id.
    pub examples: Vec<String>,
    /// Open loop: how late the scheduler sent.
    pub send_lag: Option<SendLag>,
    /// Per second.
    pub series: Vec<SecondSummary>,
}

/// navis-auth against the empty service for the same phase.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// The phase.
    pub phase: String,
    /// navis-auth answers/s.
    pub navis_rps: f64,
    /// Empty service answers/s.
    pub empty_rps: f64,
    /// navis / empty throughput (closed loop and stream only: open loop runs at a fixed rate).
    pub throughput_ratio: Option<f64>,
    /// navis-auth p99, µs.
    pub navis_p99_us: f64,
    /// Empty service p99, µs.
    pub empty_p99_us: f64,
    /// navis / empty p99.
    pub p99_ratio: f64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `navis-auth-load`.
    pub tool: &'static str,
    /// Harness version.
    pub version: &'static str,
    /// Unix time the run started.
    pub started_unix_s: u64,
    /// Settings.
    pub settings: Settings,
    /// Phases in run order.
    pub phases: Vec<PhaseReport>,
    /// navis-auth / empty-RPC, when `--baseline` ran.
    pub ratios: Vec<Ratio>,
    /// Revocations during the run.
    pub propagation: Option<PropagationSummary>,
    /// Server-side figures from `/metrics`.
    pub server_metrics: Option<ServerMetrics>,
    /// All wrong answers (phases, pollers, never-refused tokens).
    pub wrong_total: u64,
    /// All errors.
    pub error_total: u64,
    /// Whether the run passed.
    pub passed: bool,
    /// Why not.
    pub failures: Vec<String>,
}

fn latency(rec: &crate::stats::Recorder) -> Latency {
    let h = &rec.total;
    let q = |p: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(p) as f64 / 1e3
        }
    };
    Latency {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: if h.is_empty() {
            0.0
        } else {
            h.max() as f64 / 1e3
        },
        mean: if h.is_empty() { 0.0 } else { h.mean() / 1e3 },
    }
}

fn phase_report(r: &PhaseResult, first_start: u64) -> PhaseReport {
    let o = &r.outcome;
    let elapsed_s = (o.end_ns.saturating_sub(o.start_ns) as f64 / 1e9).max(1e-9);
    let rec = &o.rec;
    let errors = rec
        .errors
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (error_name(i), *n))
        .collect();
    let wrong = rec
        .wrong_rows()
        .into_iter()
        .map(|(c, g, n)| WrongRow {
            class: class_name(c).into(),
            expected: if r.target == TargetKind::Empty {
                "ALLOW (the empty service's fixed answer)".into()
            } else {
                CLASSES[c].expected().into()
            },
            got: Got::name(g).into(),
            count: n,
        })
        .collect();
    PhaseReport {
        target: r.target,
        phase: r.spec.label(),
        mode: r.spec.mode,
        duration_s: r.spec.duration.as_secs_f64(),
        rate: r.spec.rate,
        offset_s: o.start_ns.saturating_sub(first_start) as f64 / 1e9,
        elapsed_s,
        requests: rec.answers + rec.error_total(),
        answers: rec.answers,
        achieved_rps: rec.answers as f64 / elapsed_s,
        latency_us: latency(rec),
        errors,
        error_total: rec.error_total(),
        wrong,
        wrong_total: rec.wrong_total(),
        late_accepts: rec.late_accepts,
        examples: rec.examples.clone(),
        send_lag: o.send_lag.clone(),
        series: rec.series(o.end_ns),
    }
}

impl Report {
    /// Builds the report and its verdict. `extra_failures` come from outside the phases (server
    /// died, run interrupted).
    pub fn build(
        settings: Settings,
        started_unix_s: u64,
        results: &[PhaseResult],
        propagation: Option<PropagationSummary>,
        server_metrics: Option<ServerMetrics>,
        allow_errors: bool,
        extra_failures: Vec<String>,
    ) -> Self {
        let first = results
            .iter()
            .map(|r| r.outcome.start_ns)
            .min()
            .unwrap_or(0);
        let phases: Vec<PhaseReport> = results.iter().map(|r| phase_report(r, first)).collect();
        let ratios = ratios(&phases);
        let prop_wrong = propagation.as_ref().map_or(0, PropagationSummary::wrong);
        let prop_errors = propagation.as_ref().map_or(0, PropagationSummary::errors);
        let wrong_total = phases.iter().map(|p| p.wrong_total).sum::<u64>() + prop_wrong;
        let error_total = phases.iter().map(|p| p.error_total).sum::<u64>() + prop_errors;
        let mut failures = extra_failures;
        if wrong_total > 0 {
            failures.push(format!("{} wrong answer(s)", fmt_int(wrong_total)));
        }
        if error_total > 0 && !allow_errors {
            failures.push(format!(
                "{} gRPC error(s) (--allow-errors to tolerate them)",
                fmt_int(error_total)
            ));
        }
        for p in &phases {
            if p.answers == 0 {
                failures.push(format!("{} {}: no answer at all", p.target.name(), p.phase));
            }
        }
        if results.is_empty() {
            failures.push("no phase ran".into());
        }
        Self {
            tool: "navis-auth-load",
            version: env!("CARGO_PKG_VERSION"),
            started_unix_s,
            settings,
            phases,
            ratios,
            propagation,
            server_metrics,
            wrong_total,
            error_total,
            passed: failures.is_empty(),
            failures,
        }
    }

    /// The JSON file's text.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The table printed at the end.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "navis-auth-load {}{}  seed {}  target {}{}",
            self.version,
            s.scenario
                .as_ref()
                .map(|n| format!("  scenario {n}"))
                .unwrap_or_default(),
            s.seed,
            s.target,
            if s.spawned_server { " (spawned)" } else { "" },
        );
        let _ = writeln!(
            out,
            "load: {} callers / {} connections (closed), {} streams x window {} (stream); {} API keys + {} OAuth tokens ({}% read-only); mix {}; popularity {}",
            s.concurrency,
            s.connections,
            s.streams,
            s.window,
            s.keys,
            s.oauth,
            s.read_only_percent,
            s.mix,
            s.popularity
        );
        out.push('\n');
        let header = [
            "target", "phase", "requests", "rate/s", "p50", "p90", "p99", "p99.9", "max", "errors",
            "wrong",
        ];
        let rows: Vec<Vec<String>> = self
            .phases
            .iter()
            .map(|p| {
                let l = &p.latency_us;
                vec![
                    p.target.name().to_owned(),
                    p.phase.clone(),
                    fmt_int(p.requests),
                    fmt_int(p.achieved_rps.round() as u64),
                    fmt_us(l.p50),
                    fmt_us(l.p90),
                    fmt_us(l.p99),
                    fmt_us(l.p999),
                    fmt_us(l.max),
                    fmt_int(p.error_total),
                    fmt_int(p.wrong_total),
                ]
            })
            .collect();
        out.push_str(&grid(&header, &rows));
        out.push('\n');

        // Errors and wrong answers, by phase.
        let mut any = false;
        for p in &self.phases {
            for (kind, n) in &p.errors {
                any = true;
                let _ = writeln!(
                    out,
                    "error        {} {}: {kind} x{}",
                    p.target.name(),
                    p.phase,
                    fmt_int(*n)
                );
            }
            for w in &p.wrong {
                any = true;
                let _ = writeln!(
                    out,
                    "WRONG        {} {}: {} expected {}, got {}: x{}",
                    p.target.name(),
                    p.phase,
                    w.class,
                    w.expected,
                    w.got,
                    fmt_int(w.count)
                );
            }
            for e in &p.examples {
                let _ = writeln!(out, "  e.g. {e}");
            }
        }
        if !any {
            let _ = writeln!(out, "errors       none; wrong answers: none");
        }
        for p in self.phases.iter().filter(|p| p.send_lag.is_some()) {
            if let Some(l) = &p.send_lag {
                let _ = writeln!(
                    out,
                    "send lag     {} {}: the scheduler sent p50 {} / p99 {} / max {} after the intended time ({} over 1 ms); latency counts from the intended time",
                    p.target.name(),
                    p.phase,
                    fmt_us(l.p50_us),
                    fmt_us(l.p99_us),
                    fmt_us(l.max_us),
                    fmt_int(l.over_1ms)
                );
            }
        }
        if let Some(pr) = &self.propagation {
            let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| fmt_us(v * 1e3));
            let late: u64 =
                self.phases.iter().map(|p| p.late_accepts).sum::<u64>() + pr.poll_late_accepts;
            let _ = writeln!(
                out,
                "propagation  {} of {} revoked via {}; refused (client-side, from revoke return) after p50 {} / p99 {} / max {}; {} measured, {} never refused; {} ALLOW(s) within the {} bound",
                pr.performed,
                pr.planned,
                s.revoke_target,
                ms(pr.p50_ms),
                ms(pr.p99_ms),
                ms(pr.max_ms),
                pr.measured,
                pr.never_refused,
                fmt_int(late),
                fmt_us(pr.bound_ms * 1e3)
            );
            for (k, n) in pr.revoke_errors.iter().chain(&pr.poll_errors) {
                let _ = writeln!(out, "  revocation/poll error {k} x{n}");
            }
            for e in &pr.examples {
                let _ = writeln!(out, "  e.g. {e}");
            }
        }
        for r in &self.ratios {
            let tp = r
                .throughput_ratio
                .map_or("throughput n/a (fixed rate)".to_owned(), |t| {
                    format!(
                        "throughput {t:.2}x ({} vs {} req/s)",
                        fmt_int(r.navis_rps.round() as u64),
                        fmt_int(r.empty_rps.round() as u64)
                    )
                });
            let _ = writeln!(
                out,
                "navis-auth / empty-RPC  {}: {tp}, p99 {:.2}x ({} vs {})",
                r.phase,
                r.p99_ratio,
                fmt_us(r.navis_p99_us),
                fmt_us(r.empty_p99_us)
            );
        }
        if let Some(m) = &self.server_metrics {
            match m.lookup_p99_ms {
                Some(p99) => {
                    let _ = writeln!(
                        out,
                        "server side  {LOOKUP_METRIC} p99 {} over the {} ({} lookups; from {}) — client-side p99 above includes the network and both gRPC stacks",
                        fmt_us(p99 * 1e3),
                        m.window,
                        fmt_int(m.lookups.unwrap_or(0.0) as u64),
                        m.url
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "server side  no lookup p99 from {}: {}",
                        m.url, m.status
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "\nRESULT: {}",
            if self.passed {
                format!(
                    "PASS ({} wrong answers, {} errors)",
                    self.wrong_total, self.error_total
                )
            } else {
                format!("FAIL: {}", self.failures.join("; "))
            }
        );
        out
    }
}

fn ratios(phases: &[PhaseReport]) -> Vec<Ratio> {
    let empty: Vec<&PhaseReport> = phases
        .iter()
        .filter(|p| p.target == TargetKind::Empty)
        .collect();
    let navis = phases.iter().filter(|p| p.target == TargetKind::NavisAuth);
    navis
        .zip(empty)
        .filter(|(n, e)| n.phase == e.phase && e.achieved_rps > 0.0 && e.latency_us.p99 > 0.0)
        .map(|(n, e)| Ratio {
            phase: n.phase.clone(),
            navis_rps: n.achieved_rps,
            empty_rps: e.achieved_rps,
            throughput_ratio: (n.mode != Mode::Open).then(|| n.achieved_rps / e.achieved_rps),
            navis_p99_us: n.latency_us.p99,
            empty_p99_us: e.latency_us.p99,
            p99_ratio: n.latency_us.p99 / e.latency_us.p99,
        })
        .collect()
}

/// Left-aligned text columns, right-aligned numbers.
fn grid(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i < 2 {
                let _ = write!(out, "{c:<w$}  ");
            } else {
                let _ = write!(out, "{c:>w$}  ");
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `1,234,567`.
pub fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in nanoseconds: `850ns`, `42.1µs`, `420µs`, `1.25ms`, `2.50s`.
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 100_000 {
        format!("{:.1}µs", v / 1e3)
    } else if ns < 1_000_000 {
        format!("{:.0}µs", v / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", v / 1e6)
    } else {
        format!("{:.2}s", v / 1e9)
    }
}

/// A latency in microseconds, formatted as [`fmt_ns`].
pub fn fmt_us(us: f64) -> String {
    fmt_ns((us * 1e3).round().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(1234), "1,234");
        assert_eq!(fmt_int(1_234_567), "1,234,567");
        assert_eq!(fmt_ns(850), "850ns");
        assert_eq!(fmt_ns(42_120), "42.1µs");
        assert_eq!(fmt_ns(420_000), "420µs");
        assert_eq!(fmt_ns(1_250_000), "1.25ms");
        assert_eq!(fmt_us(1500.0), "1.50ms");
    }

    #[test]
    fn grid_aligns() {
        let g = grid(
            &["a", "b", "n"],
            &[vec!["xx".into(), "y".into(), "1,000".into()]],
        );
        assert_eq!(g, "a   b      n\nxx  y  1,000\n");
    }
}
