//! The HTTP listener: `/healthz` (the process is alive) and `/readyz` (ready for traffic: not
//! shutting down, and the store answers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::revocation::Lease;
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

/// The router for the HTTP listener.
pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn readyz(State(r): State<Arc<Readiness>>) -> (StatusCode, &'static str) {
    match r.check().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}
