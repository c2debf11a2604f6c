//! Prometheus metrics: every family's name, help text, unit and buckets in one place; a
//! per-server recorder (no global state, so several servers in one test process stay apart);
//! and pre-registered handles for the hot path (an atomic add, not a registry lookup).
//!
//! No label carries a token, a token id, a subject or any other unbounded value: every label
//! value comes from a fixed list in this file.

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::challenge::Reason;
use crate::token::{Malformed, TokenKind};
use crate::validator::{Source, Verdict};

/// Decisions, by decision, reason, kind and source.
pub const DECISIONS: &str = "navis_auth_decisions_total";
/// Validations that ended in a gRPC error instead of a decision, by code.
pub const VALIDATE_ERRORS: &str = "navis_auth_validate_errors_total";
/// Time to decide one validation (the core: parse, cache, store, checks), seconds.
pub const LOOKUP_DURATION: &str = "navis_auth_lookup_duration_seconds";
/// Time to serve one RPC, by method, seconds.
pub const RPC_DURATION: &str = "navis_auth_rpc_duration_seconds";
/// Cache slots in use.
pub const CACHE_ENTRIES: &str = "navis_auth_cache_entries";
/// Answers from a positive cache entry.
pub const CACHE_HITS: &str = "navis_auth_cache_hits_total";
/// Answers from a negative cache entry.
pub const CACHE_NEGATIVE_HITS: &str = "navis_auth_cache_negative_hits_total";
/// Validations that had to ask the store.
pub const CACHE_MISSES: &str = "navis_auth_cache_misses_total";
/// Entries evicted to make room.
pub const CACHE_EVICTIONS: &str = "navis_auth_cache_evictions_total";
/// Whole-cache flushes, by reason.
pub const CACHE_FLUSHES: &str = "navis_auth_cache_flushes_total";
/// Store calls, by operation.
pub const STORE_REQUESTS: &str = "navis_auth_store_requests_total";
/// Failed store calls, by operation.
pub const STORE_ERRORS: &str = "navis_auth_store_errors_total";
/// Store call duration, by operation, seconds.
pub const STORE_DURATION: &str = "navis_auth_store_duration_seconds";
/// Revocation events applied to this replica's cache, by granularity and path.
pub const REVOCATIONS_APPLIED: &str = "navis_auth_revocations_applied_total";
/// Time from a revocation's record in the stream to its application here, seconds.
pub const REVOCATION_LAG: &str = "navis_auth_revocation_lag_seconds";
/// 1 while the revocation stream tail is connected.
pub const FEED_CONNECTED: &str = "navis_auth_revocation_feed_connected";
/// Age of the last confirmed catch-up with the revocation stream, seconds.
pub const LEASE_AGE: &str = "navis_auth_revocation_lease_age_seconds";
/// The revocation lease, seconds.
pub const LEASE: &str = "navis_auth_revocation_lease_seconds";
/// 1 while /readyz would answer 200.
pub const READY: &str = "navis_auth_ready";
/// Always 1; labels say the version and the store kind.
pub const BUILD_INFO: &str = "navis_auth_build_info";

/// Every metric family name, for tests and the dashboard check.
pub const ALL: &[&str] = &[
    DECISIONS,
    VALIDATE_ERRORS,
    LOOKUP_DURATION,
    RPC_DURATION,
    CACHE_ENTRIES,
    CACHE_HITS,
    CACHE_NEGATIVE_HITS,
    CACHE_MISSES,
    CACHE_EVICTIONS,
    CACHE_FLUSHES,
    STORE_REQUESTS,
    STORE_ERRORS,
    STORE_DURATION,
    REVOCATIONS_APPLIED,
    REVOCATION_LAG,
    FEED_CONNECTED,
    LEASE_AGE,
    LEASE,
    READY,
    BUILD_INFO,
];

/// The lookup histogram resolves the hot-path budget (100 ns – 10 µs) and still places store
/// round trips.
const LOOKUP_BUCKETS: &[f64] = &[
    1e-7, 2e-7, 3e-7, 4e-7, 5e-7, 6e-7, 8e-7, 1e-6, 1.5e-6, 2e-6, 3e-6, 5e-6, 1e-5, 3e-5, 1e-4,
    1e-3, 1e-2, 0.1,
];
/// RPC and store calls: 10 µs – 1 s.
const CALL_BUCKETS: &[f64] = &[
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
    1.0,
];
/// Revocation lag: 100 µs – 10 s.
const LAG_BUCKETS: &[f64] = &[
    1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Reasons, in label order.
const REASONS: [Reason; 13] = [
    Reason::Ok,
    Reason::Malformed(Malformed::Missing),
    Reason::Malformed(Malformed::WrongScheme),
    Reason::Malformed(Malformed::Length),
    Reason::Malformed(Malformed::Charset),
    Reason::Malformed(Malformed::Prefix),
    Reason::Malformed(Malformed::Checksum),
    Reason::RefreshToken,
    Reason::Unknown,
    Reason::Expired,
    Reason::Revoked,
    Reason::WrongResource,
    Reason::InsufficientScope,
];
const KINDS: [&str; 3] = ["none", "api_key", "oauth_access"];
const SOURCES: [&str; 3] = ["request", "cache", "store"];

/// The RPC methods timed.
#[derive(Clone, Copy, Debug)]
pub enum Method {
    /// `Validator.Validate`.
    Validate,
    /// One answer on `Validator.ValidateStream`.
    ValidateStream,
    /// Envoy `Authorization.Check`.
    Check,
}

/// Store operations, for labels.
pub const STORE_OPS: [&str; 9] = [
    "get",
    "get_by_id",
    "insert",
    "rotate",
    "spend_refresh",
    "revoke",
    "list",
    "touch",
    "ping",
];

fn reason_index(r: Reason) -> usize {
    REASONS.iter().position(|x| *x == r).unwrap_or(0)
}

fn decision_label(r: Reason) -> &'static str {
    match r {
        Reason::Ok => "allow",
        Reason::InsufficientScope => "forbidden",
        _ => "unauthenticated",
    }
}

/// Pre-registered handles.
pub struct Metrics {
    handle: PrometheusHandle,
    decisions: Vec<Counter>,
    invalid_argument: Counter,
    unavailable: Counter,
    lookup: Histogram,
    rpc: [Histogram; 3],
    cache_hits: Counter,
    cache_negative_hits: Counter,
    cache_misses: Counter,
    /// Cache slots in use (set at scrape time).
    pub cache_entries: Gauge,
    /// Evictions (absolute, set at scrape time).
    pub cache_evictions: Counter,
    flushes: [Counter; 5],
    store_requests: Vec<Counter>,
    store_errors: Vec<Counter>,
    store_duration: Vec<Histogram>,
    applied: Vec<Counter>,
    lag: Histogram,
    /// 1 while the stream tail is connected (set at scrape time).
    pub feed_connected: Gauge,
    /// Age of the last catch-up (set at scrape time).
    pub lease_age: Gauge,
    /// 1 while ready (set at scrape time).
    pub ready: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Flush reasons, for labels.
#[derive(Clone, Copy, Debug)]
pub enum FlushReason {
    /// Redis lost its data or was replaced (epoch changed).
    Epoch,
    /// The stream is behind this replica (failover to a stale copy).
    StreamBehind,
    /// The stream was trimmed past this replica's position.
    StreamTrimmed,
    /// The feed reconnected after its lease had run out: a change whose publication failed
    /// meanwhile may never reach the stream (see `store::redis`), so the cache starts cold.
    LeaseLapsed,
    /// The node holding the revocation log is another process than before (a failover or a
    /// restart): entries this replica had not read yet may have been lost with the old one.
    NodeChanged,
}

/// How a revocation reached this replica, for labels.
#[derive(Clone, Copy, Debug)]
pub enum AppliedPath {
    /// Made on this replica.
    Local,
    /// Pub/sub message.
    PubSub,
    /// Stream read (replay or tail).
    Stream,
}

const GRANULARITIES: [&str; 4] = ["token", "grant", "subject", "update"];
const PATHS: [&str; 3] = ["local", "pubsub", "stream"];

impl Metrics {
    /// Builds a recorder for one server and registers every family. `store` is the store
    /// kind for the build-info labels; `lease` the revocation lease (None: in-process feed).
    pub fn new(store: &'static str, lease: Option<Duration>) -> Arc<Self> {
        let mut builder = PrometheusBuilder::new();
        // Every bucket list is a non-empty constant, so setting it cannot fail.
        for (name, buckets) in [
            (LOOKUP_DURATION, LOOKUP_BUCKETS),
            (RPC_DURATION, CALL_BUCKETS),
            (STORE_DURATION, CALL_BUCKETS),
            (REVOCATION_LAG, LAG_BUCKETS),
        ] {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .unwrap_or_else(|_| PrometheusBuilder::new());
        }
        let recorder: PrometheusRecorder = builder.build_recorder();
        let handle = recorder.handle();
        let m = ::metrics::with_local_recorder(&recorder, || {
            describe();
            let mut decisions = Vec::with_capacity(REASONS.len() * KINDS.len() * SOURCES.len());
            for r in REASONS {
                for k in KINDS {
                    for s in SOURCES {
                        decisions.push(::metrics::counter!(DECISIONS,
                            "decision" => decision_label(r), "reason" => r.as_str(),
                            "kind" => k, "source" => s));
                    }
                }
            }
            let per_op = |name: &'static str| -> Vec<Counter> {
                STORE_OPS
                    .iter()
                    .map(|op| ::metrics::counter!(name, "operation" => *op))
                    .collect()
            };
            let mut applied = Vec::new();
            for g in GRANULARITIES {
                for p in PATHS {
                    applied.push(
                        ::metrics::counter!(REVOCATIONS_APPLIED, "granularity" => g, "path" => p),
                    );
                }
            }
            ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "store" => store)
                .set(1.0);
            ::metrics::gauge!(LEASE).set(lease.map_or(0.0, |l| l.as_secs_f64()));
            Metrics {
                handle: handle.clone(),
                decisions,
                invalid_argument: ::metrics::counter!(VALIDATE_ERRORS, "code" => "invalid_argument"),
                unavailable: ::metrics::counter!(VALIDATE_ERRORS, "code" => "unavailable"),
                lookup: ::metrics::histogram!(LOOKUP_DURATION),
                rpc: [
                    ::metrics::histogram!(RPC_DURATION, "method" => "Validate"),
                    ::metrics::histogram!(RPC_DURATION, "method" => "ValidateStream"),
                    ::metrics::histogram!(RPC_DURATION, "method" => "Check"),
                ],
                cache_hits: ::metrics::counter!(CACHE_HITS),
                cache_negative_hits: ::metrics::counter!(CACHE_NEGATIVE_HITS),
                cache_misses: ::metrics::counter!(CACHE_MISSES),
                cache_entries: ::metrics::gauge!(CACHE_ENTRIES),
                cache_evictions: ::metrics::counter!(CACHE_EVICTIONS),
                flushes: [
                    ::metrics::counter!(CACHE_FLUSHES, "reason" => "epoch"),
                    ::metrics::counter!(CACHE_FLUSHES, "reason" => "stream_behind"),
                    ::metrics::counter!(CACHE_FLUSHES, "reason" => "stream_trimmed"),
                    ::metrics::counter!(CACHE_FLUSHES, "reason" => "lease_lapsed"),
                    ::metrics::counter!(CACHE_FLUSHES, "reason" => "node_changed"),
                ],
                store_requests: per_op(STORE_REQUESTS),
                store_errors: per_op(STORE_ERRORS),
                store_duration: STORE_OPS
                    .iter()
                    .map(|op| ::metrics::histogram!(STORE_DURATION, "operation" => *op))
                    .collect(),
                applied,
                lag: ::metrics::histogram!(REVOCATION_LAG),
                feed_connected: ::metrics::gauge!(FEED_CONNECTED),
                lease_age: ::metrics::gauge!(LEASE_AGE),
                ready: ::metrics::gauge!(READY),
            }
        });
        // The recorder's storage lives on in the handles and the render handle.
        drop(recorder);
        Arc::new(m)
    }

    /// Counts a decision and the cache outcome behind it.
    pub fn decision(&self, v: &Verdict) {
        let kind = match v.record.as_ref().map(|r| r.kind()) {
            None | Some(TokenKind::OAuthRefresh) => 0,
            Some(TokenKind::ApiKey) => 1,
            Some(TokenKind::OAuthAccess) => 2,
        };
        let source = match v.source {
            Source::Request => 0,
            Source::Cache => 1,
            Source::Store => 2,
        };
        let i = (reason_index(v.reason) * KINDS.len() + kind) * SOURCES.len() + source;
        if let Some(c) = self.decisions.get(i) {
            c.increment(1);
        }
        match (v.source, v.reason) {
            (Source::Cache, Reason::Unknown) => self.cache_negative_hits.increment(1),
            (Source::Cache, _) => self.cache_hits.increment(1),
            (Source::Store, _) => self.cache_misses.increment(1),
            (Source::Request, _) => {}
        }
    }

    /// Counts a validation that failed with a status.
    pub fn validate_error(&self, unavailable: bool) {
        if unavailable {
            self.unavailable.increment(1);
            self.cache_misses.increment(1);
        } else {
            self.invalid_argument.increment(1);
        }
    }

    /// Records how long a validation's decision took.
    pub fn lookup(&self, d: Duration) {
        self.lookup.record(d.as_secs_f64());
    }

    /// Records an RPC's duration.
    pub fn rpc(&self, m: Method, d: Duration) {
        self.rpc[m as usize].record(d.as_secs_f64());
    }

    /// Records a store call: operation index in [`STORE_OPS`], duration, outcome.
    pub fn store_call(&self, op: usize, d: Duration, ok: bool) {
        if let Some(c) = self.store_requests.get(op) {
            c.increment(1);
        }
        if !ok && let Some(c) = self.store_errors.get(op) {
            c.increment(1);
        }
        if let Some(h) = self.store_duration.get(op) {
            h.record(d.as_secs_f64());
        }
    }

    /// Counts a flush.
    pub fn flush(&self, r: FlushReason) {
        self.flushes[r as usize].increment(1);
    }

    /// Counts a revocation event applied here, with its lag when known.
    pub fn applied(&self, granularity: &str, path: AppliedPath, lag: Option<Duration>) {
        let g = GRANULARITIES
            .iter()
            .position(|x| *x == granularity)
            .unwrap_or(0);
        if let Some(c) = self.applied.get(g * PATHS.len() + path as usize) {
            c.increment(1);
        }
        if let Some(l) = lag {
            self.lag.record(l.as_secs_f64());
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets (call every few seconds).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        DECISIONS,
        Unit::Count,
        "Validation decisions by decision, reason, token kind and source (request, cache, store)."
    );
    describe_counter!(
        VALIDATE_ERRORS,
        Unit::Count,
        "Validations answered with a gRPC error instead of a decision (invalid_argument, unavailable)."
    );
    describe_histogram!(
        LOOKUP_DURATION,
        Unit::Seconds,
        "Time to decide one validation: parse, cache, store on a miss, checks. Budget: p99 under 1 microsecond for cache hits."
    );
    describe_histogram!(
        RPC_DURATION,
        Unit::Seconds,
        "Time to serve one validation RPC or stream answer, by method."
    );
    describe_gauge!(
        CACHE_ENTRIES,
        Unit::Count,
        "Cache slots in use (positive and negative entries)."
    );
    describe_counter!(
        CACHE_HITS,
        Unit::Count,
        "Validations answered from a positive cache entry."
    );
    describe_counter!(
        CACHE_NEGATIVE_HITS,
        Unit::Count,
        "Validations answered from a negative cache entry (unknown token)."
    );
    describe_counter!(
        CACHE_MISSES,
        Unit::Count,
        "Validations that asked the store."
    );
    describe_counter!(
        CACHE_EVICTIONS,
        Unit::Count,
        "Cache entries evicted to make room."
    );
    describe_counter!(
        CACHE_FLUSHES,
        Unit::Count,
        "Whole-cache flushes because the revocation stream could not cover a gap, by reason."
    );
    describe_counter!(STORE_REQUESTS, Unit::Count, "Store calls by operation.");
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Failed store calls by operation."
    );
    describe_histogram!(
        STORE_DURATION,
        Unit::Seconds,
        "Store call duration by operation."
    );
    describe_counter!(
        REVOCATIONS_APPLIED,
        Unit::Count,
        "Revocation events applied to this replica's cache, by granularity and path (local, pubsub, stream)."
    );
    describe_histogram!(
        REVOCATION_LAG,
        Unit::Seconds,
        "Time from a revocation's record in the stream to its application on this replica."
    );
    describe_gauge!(
        FEED_CONNECTED,
        Unit::Count,
        "1 while the revocation stream tail is connected (always 1 on the embedded store)."
    );
    describe_gauge!(
        LEASE_AGE,
        Unit::Seconds,
        "Age of the last confirmed catch-up with the revocation stream; past the lease the cache is bypassed."
    );
    describe_gauge!(
        LEASE,
        Unit::Seconds,
        "The configured revocation lease (0 on the embedded store)."
    );
    describe_gauge!(READY, Unit::Count, "1 while /readyz answers 200.");
    describe_gauge!(
        BUILD_INFO,
        Unit::Count,
        "Always 1; labels carry the version and the store kind."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_with_help() {
        let m = Metrics::new("embedded", None);
        m.lookup(Duration::from_nanos(300));
        m.rpc(Method::Validate, Duration::from_micros(50));
        m.store_call(0, Duration::from_micros(30), true);
        m.applied("token", AppliedPath::Local, Some(Duration::from_millis(1)));
        m.flush(FlushReason::Epoch);
        let text = m.render();
        for name in ALL {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
        assert!(
            text.contains("navis_auth_lookup_duration_seconds_bucket{le=\"0.0000004\"}"),
            "{text}"
        );
    }
}
