//! The HTTP listener: `/metrics` (Prometheus text format), `/healthz` (the process is alive) and
//! `/readyz` (ready for traffic: not shutting down, the store answers, the revocation feed is
//! caught up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::cache::Cache;
use crate::grpc::AdminAuth;
use crate::metrics::Metrics;
use crate::revocation::{FeedState, Lease};
use crate::store::Store;
use crate::validator::{Decision, Request, ValidateError, Validator};

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

/// What `POST /oauth/introspect` needs.
#[derive(Clone, Debug)]
pub struct Introspection {
    /// The validator (the same pipeline, cache and checks as `Validate`).
    pub validator: Arc<Validator>,
    /// The credential callers must present; `None`: introspection is off.
    pub caller: Option<AdminAuth>,
}

#[derive(Clone)]
struct AppState {
    readiness: Arc<Readiness>,
    scrape: Scrape,
    introspection: Introspection,
}

/// Largest introspection request body accepted.
const MAX_INTROSPECTION_BODY: usize = 16 * 1024;

/// The router for the HTTP listener.
pub fn router(readiness: Arc<Readiness>, scrape: Scrape, introspection: Introspection) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/oauth/introspect", post(introspect))
        .layer(DefaultBodyLimit::max(MAX_INTROSPECTION_BODY))
        .with_state(AppState {
            readiness,
            scrape,
            introspection,
        })
}

/// Decodes `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte) and returns the
/// value of `name`, or `None` when it is absent.
fn form_value(body: &[u8], name: &str) -> Option<Vec<u8>> {
    fn decode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        out
    }
    body.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[..0]),
        };
        (decode(k) == name.as_bytes()).then(|| decode(v))
    })
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// RFC 7662 token introspection for callers without gRPC: the same decision as `Validate` with
/// no required scope and no resource; every token that would not be allowed is
/// `{"active": false}`, and a store outage is a 503, never "inactive".
async fn introspect(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let Some(caller) = &s.introspection.caller else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "error_description": "introspection is off: with TLS on the gRPC listeners it needs --introspection-token-file"}),
        );
    };
    if !caller.matches(presented) {
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "invalid_client", "error_description": "introspection needs the configured bearer credential"}),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"navis-auth introspection\""),
        );
        return r;
    }
    let form_ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let Some(token) = form_ok.then(|| form_value(&body, "token")).flatten() else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid_request", "error_description": "POST a form-encoded `token` parameter"}),
        );
    };
    let req = Request {
        credential: &token,
        required_scopes: &[],
        resource: "",
    };
    match s.introspection.validator.validate(req).await {
        Ok(v) if v.decision == Decision::Allow => {
            let Some(g) = v.record else {
                return json(StatusCode::OK, serde_json::json!({"active": false}));
            };
            let mut answer = serde_json::json!({
                "active": true,
                "sub": g.subject(),
                "scope": g.scopes().collect::<Vec<_>>().join(" "),
                "token_type": "Bearer",
                "jti": g.token_id(),
            });
            if !g.client_id().is_empty() {
                answer["client_id"] = g.client_id().into();
            }
            if g.expires_at() != 0 {
                answer["exp"] = g.expires_at().into();
            }
            if !g.resource().is_empty() {
                answer["aud"] = g.resource().into();
            }
            json(StatusCode::OK, answer)
        }
        // Unknown, expired, revoked, malformed, refresh token, oversized: all simply inactive.
        Ok(_) | Err(ValidateError::InvalidArgument(_)) => {
            json(StatusCode::OK, serde_json::json!({"active": false}))
        }
        Err(ValidateError::Unavailable(_)) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "temporarily_unavailable", "error_description": "token store unavailable; retry"}),
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::form_value;

    #[test]
    fn form_values_are_decoded() {
        let body = b"token_type_hint=access_token&token=nops_a%2Bb+c&x";
        assert_eq!(
            form_value(body, "token").as_deref(),
            Some(&b"nops_a+b c"[..])
        );
        assert_eq!(form_value(body, "x").as_deref(), Some(&b""[..]));
        assert_eq!(form_value(body, "missing"), None);
        assert_eq!(
            form_value(b"token=%zz%4", "token").as_deref(),
            Some(&b"%zz%4"[..])
        );
    }
}
