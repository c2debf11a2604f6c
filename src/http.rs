//! The HTTP listener: `/metrics` (Prometheus text format), `/healthz` (the process is alive) and
//! `/readyz` (ready for traffic: not shutting down, the store answers, the revocation feed is
//! caught up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::revocation::{FeedState, Lease};
use crate::store::Store;

/// How long `/readyz` waits for the store.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What `/readyz` looks at.
#[derive(Debug)]
pub struct Readiness {
    ready: AtomicBool,
    store: Store,
    lease: Lease,
}

impl Readiness {
    /// Not ready until [`Readiness::set_ready`] is called.
    pub fn new(store: Store, lease: Lease) -> Self {
        Readiness {
            ready: AtomicBool::new(false),
            store,
            lease,
        }
    }

    /// Marks the service ready (true) or draining (false).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The `/readyz` answer.
    pub async fn check(&self) -> Result<(), &'static str> {
        if !self.ready.load(Ordering::Acquire) {
            return Err("not ready: starting or shutting down");
        }
        match tokio::time::timeout(STORE_PING_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err("not ready: token store unreachable"),
        }
        if !self.lease.fresh() {
            return Err("not ready: revocation feed not caught up");
        }
        Ok(())
    }
}

/// What `/metrics` refreshes before rendering.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// The registry.
    pub metrics: Arc<Metrics>,
    /// For the entry gauge and eviction counter.
    pub cache: Arc<Cache>,
    /// For the feed gauges (None: embedded store, always caught up).
    pub feed: Option<Arc<FeedState>>,
}

#[derive(Clone)]
struct AppState {
    readiness: Arc<Readiness>,
    scrape: Scrape,
}

/// The router for the HTTP listener.
pub fn router(readiness: Arc<Readiness>, scrape: Scrape) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState { readiness, scrape })
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let m = &s.scrape.metrics;
    m.cache_entries.set(s.scrape.cache.len() as f64);
    m.cache_evictions.absolute(s.scrape.cache.evictions());
    match &s.scrape.feed {
        Some(f) => {
            m.feed_connected.set(if f.connected() { 1.0 } else { 0.0 });
            m.lease_age
                .set(f.lease_age().map_or(f64::INFINITY, |a| a.as_secs_f64()));
        }
        None => {
            m.feed_connected.set(1.0);
            m.lease_age.set(0.0);
        }
    }
    m.ready.set(if s.readiness.check().await.is_ok() {
        1.0
    } else {
        0.0
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    match s.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}
