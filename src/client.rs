//! A Rust client for API and MCP servers: a pooled `Validator` client and a `tower` layer that
//! authenticates every HTTP request before the handler runs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use navis_auth::client::{NavisAuth, NavisAuthLayer};
//! let auth = NavisAuth::connect_lazy("http://127.0.0.1:50051")?
//!     .with_resource("https://mcp.example.com");
//! // axum: Router::new().route("/tools/write", post(write)).route_layer(layer)
//! let layer = NavisAuthLayer::new(auth).require(["mcp:write"]);
//! # let _ = layer; Ok(()) }
//! ```
//!
//! Over TLS (a server started with `--tls-cert`, and `--tls-client-ca` for mTLS), use an
//! `https://` address and [`NavisAuth::connect_lazy_tls`]:
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use navis_auth::{client::NavisAuth, tls::ClientTls};
//! let tls = ClientTls::new(&std::fs::read("ca.crt")?)?
//!     .with_identity(&std::fs::read("client.crt")?, &std::fs::read("client.key")?)?;
//! let auth = NavisAuth::connect_lazy_tls("https://navis-auth.navis-auth.svc:50051", &tls)?;
//! # let _ = auth; Ok(()) }
//! ```
//!
//! The layer takes the `Authorization` header, calls `Validate` with the route's required
//! scopes, and answers 401/403 with the challenge navis-auth built (or 503 when navis-auth cannot
//! answer), so handlers only ever see authenticated requests. The caller's identity is passed to
//! the handler as an [`Identity`] request extension.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use tonic::transport::{Channel, Endpoint};

use crate::pb::{self, validator_client::ValidatorClient};
use crate::tls::ClientTls;

/// Who made a request, as navis-auth answered; inserted as a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub subject: String,
    /// Held scopes.
    pub scopes: Vec<String>,
    /// Public token id (safe to log).
    pub token_id: String,
    /// OAuth client, empty for API keys.
    pub client_id: String,
}

/// A handle to navis-auth's Validator. Cheap to clone: every clone shares one HTTP/2 connection
/// pool (tonic's `Channel` multiplexes calls and reconnects on its own).
#[derive(Clone, Debug)]
pub struct NavisAuth {
    client: ValidatorClient<Channel>,
    resource: Arc<str>,
}

/// Why a client could not be made: a bad address or unusable TLS settings.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up a navis-auth client: {0}")]
pub struct BadAddress(String);

impl NavisAuth {
    /// A client for `addr` (`http://host:port`) that connects on first use.
    ///
    /// # Errors
    /// When `addr` is not a valid URI, or is `https://` (use [`NavisAuth::connect_lazy_tls`]).
    pub fn connect_lazy(addr: &str) -> Result<Self, BadAddress> {
        let endpoint = endpoint(addr)?;
        if endpoint.uri().scheme_str() == Some("https") {
            return Err(BadAddress(format!(
                "{addr}: an https:// address needs connect_lazy_tls with the server's CA"
            )));
        }
        Ok(Self::with_endpoint(endpoint))
    }

    /// A client for a TLS listener at `addr` (`https://host:port`; the certificate must name
    /// `host`, or see [`ClientTls::with_server_name`]) that connects on first use.
    ///
    /// # Errors
    /// When `addr` is not a valid `https://` URI, or tonic refuses the TLS settings.
    pub fn connect_lazy_tls(addr: &str, tls: &ClientTls) -> Result<Self, BadAddress> {
        let endpoint = tls
            .apply(endpoint(addr)?)
            .map_err(|e| BadAddress(e.to_string()))?;
        Ok(Self::with_endpoint(endpoint))
    }

    fn with_endpoint(endpoint: Endpoint) -> Self {
        NavisAuth {
            client: ValidatorClient::new(endpoint.connect_lazy()),
            resource: Arc::from(""),
        }
    }

    /// Every validation from this handle names `resource` (RFC 8707): tokens bound to another
    /// resource are refused.
    #[must_use]
    pub fn with_resource(mut self, resource: &str) -> Self {
        self.resource = Arc::from(resource);
        self
    }

    /// Validates an `Authorization` value (or bare token) needing `scopes`.
    ///
    /// # Errors
    /// The gRPC status when navis-auth cannot answer (unreachable, `UNAVAILABLE`).
    pub async fn validate(
        &self,
        authorization: &[u8],
        scopes: &[String],
    ) -> Result<pb::ValidateResponse, tonic::Status> {
        let mut client = self.client.clone();
        client
            .validate(pb::ValidateRequest {
                token: authorization.to_vec(),
                required_scopes: scopes.to_vec(),
                resource: self.resource.to_string(),
                request_id: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, BadAddress> {
    Ok(Endpoint::from_shared(addr.to_owned())
        .map_err(|e| BadAddress(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30)))
}

/// A `tower` layer requiring a valid token with the given scopes.
#[derive(Clone, Debug)]
pub struct NavisAuthLayer {
    auth: NavisAuth,
    scopes: Arc<[String]>,
}

impl NavisAuthLayer {
    /// A layer that requires a valid token (any scope).
    pub fn new(auth: NavisAuth) -> Self {
        NavisAuthLayer {
            auth,
            scopes: Arc::from([]),
        }
    }

    /// The scopes every request through this layer must hold.
    #[must_use]
    pub fn require<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

impl<S> tower::Layer<S> for NavisAuthLayer {
    type Service = NavisAuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NavisAuthService {
            inner,
            auth: self.auth.clone(),
            scopes: Arc::clone(&self.scopes),
        }
    }
}

/// The service [`NavisAuthLayer`] wraps around a handler.
#[derive(Clone, Debug)]
pub struct NavisAuthService<S> {
    inner: S,
    auth: NavisAuth,
    scopes: Arc<[String]>,
}

fn answer<B: From<String>>(
    status: StatusCode,
    challenge: &str,
    body: serde_json::Value,
) -> Response<B> {
    let mut r = Response::new(B::from(body.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !challenge.is_empty()
        && let Ok(v) = HeaderValue::from_str(challenge)
    {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for NavisAuthService<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqB: Send + 'static,
    ResB: From<String> + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The ready inner service goes with this call; its clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (auth, scopes) = (self.auth.clone(), Arc::clone(&self.scopes));
        Box::pin(async move {
            let authorization = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            let r = match auth.validate(&authorization, &scopes).await {
                Ok(r) => r,
                Err(status) => {
                    let code = if status.code() == tonic::Code::InvalidArgument {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let body = serde_json::json!({"error": "temporarily_unavailable",
                        "error_description": "authentication is unavailable; retry"});
                    return Ok(answer(code, "", body));
                }
            };
            match pb::Decision::try_from(r.decision) {
                Ok(pb::Decision::Allow) => {
                    req.extensions_mut().insert(Identity {
                        subject: r.subject,
                        scopes: r.scopes,
                        token_id: r.token_id,
                        client_id: r.client_id,
                    });
                    inner.call(req).await
                }
                decision => {
                    let status = if decision == Ok(pb::Decision::Forbidden) {
                        StatusCode::FORBIDDEN
                    } else {
                        StatusCode::UNAUTHORIZED
                    };
                    let error = if r.error.is_empty() {
                        "invalid_request"
                    } else {
                        r.error.as_str()
                    };
                    let body = serde_json::json!({"error": error, "error_description": r.error_description});
                    Ok(answer(status, &r.www_authenticate, body))
                }
            }
        })
    }
}
