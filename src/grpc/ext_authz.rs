//! Envoy external authorization (`envoy.service.auth.v3.Authorization/Check`) on the public
//! listener: the same decision as `Validate`, answered as Envoy wants it. Allowed requests go
//! upstream with `x-navis-*` identity headers (and, by default, without the bearer token);
//! denied ones get a ready 401/403 with the MCP-conformant `WWW-Authenticate` challenge and a
//! small JSON body; a store outage is an explicit 503 (fail closed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use tonic::{Request, Response, Status};

use crate::challenge::{Challenges, Reason};
use crate::metrics::{Method, Metrics};
use crate::validator::{self as core, Decision, ValidateError, Validator, Verdict};

/// `context_extensions` key with the route's required scopes (space separated).
pub const SCOPES_KEY: &str = "navis_required_scopes";
/// `context_extensions` key with the route's RFC 8707 resource.
pub const RESOURCE_KEY: &str = "navis_resource";
/// Identity headers navis-auth sets; any incoming `x-navis-*` header is removed first.
pub const HEADER_PREFIX: &str = "x-navis-";

/// How the ext_authz answers are shaped.
#[derive(Clone, Debug, Default)]
pub struct ExtAuthzConfig {
    /// Remove `authorization` from allowed requests (no token passthrough to the upstream).
    pub strip_authorization: bool,
    /// Resource for a request `Host`, when the route names none.
    pub host_resources: HashMap<String, String>,
}

/// The Authorization service.
#[derive(Clone, Debug)]
pub struct ExtAuthz {
    core: Arc<Validator>,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
    config: Arc<ExtAuthzConfig>,
}

impl ExtAuthz {
    /// A service over `core`.
    pub fn new(
        core: Arc<Validator>,
        challenges: Challenges,
        metrics: Arc<Metrics>,
        config: ExtAuthzConfig,
    ) -> Self {
        ExtAuthz {
            core,
            challenges: Arc::new(challenges),
            metrics,
            config: Arc::new(config),
        }
    }

    /// The tonic server.
    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }

    fn allow(&self, v: &Verdict, headers: Option<&HashMap<String, String>>) -> CheckResponse {
        let mut ok = OkHttpResponseBuilder::new();
        // A client must never be able to forge identity headers: drop every incoming x-navis-*.
        for name in headers.into_iter().flat_map(|h| h.keys()) {
            if name.to_ascii_lowercase().starts_with(HEADER_PREFIX) {
                ok.remove_header(name.to_ascii_lowercase());
            }
        }
        if self.config.strip_authorization {
            ok.remove_header("authorization");
        }
        if let Some(g) = &v.record {
            let set = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
            let scopes = g.scopes().collect::<Vec<_>>().join(" ");
            ok.add_header("x-navis-subject", g.subject(), set, false)
                .add_header("x-navis-scopes", scopes, set, false)
                .add_header("x-navis-token-id", g.token_id(), set, false)
                .add_header("x-navis-client-id", g.client_id(), set, false);
        }
        let mut r = CheckResponse::with_status(Status::ok("allowed"));
        r.set_http_response(ok);
        r
    }

    fn deny(&self, v: &Verdict, scopes: &[String]) -> CheckResponse {
        let (http, status) = match v.decision {
            Decision::Forbidden => (
                HttpStatusCode::Forbidden,
                Status::permission_denied("insufficient_scope"),
            ),
            _ => (
                HttpStatusCode::Unauthorized,
                Status::unauthenticated(v.reason.as_str()),
            ),
        };
        let error = match v.reason.error_code() {
            "" => "invalid_request",
            code => code,
        };
        let body = serde_json::json!({
            "error": error,
            "error_description": v.reason.description(),
        });
        let mut denied = DeniedHttpResponseBuilder::new();
        denied
            .set_http_status(http)
            .add_header(
                "www-authenticate",
                self.challenges.www_authenticate(v.reason, scopes),
                None,
                false,
            )
            .add_header("content-type", "application/json", None, false)
            .add_header("cache-control", "no-store", None, false)
            .set_body(body.to_string());
        let mut r = CheckResponse::with_status(status);
        r.set_http_response(denied);
        r
    }

    fn failed(&self, e: &ValidateError, scopes: &[String]) -> CheckResponse {
        let (status, body): (_, DeniedHttpResponse) = match e {
            ValidateError::Unavailable(_) => {
                let mut d = DeniedHttpResponseBuilder::new();
                d.set_http_status(HttpStatusCode::ServiceUnavailable)
                    .add_header("content-type", "application/json", None, false)
                    .add_header("retry-after", "1", None, false)
                    .set_body(
                        serde_json::json!({"error": "temporarily_unavailable",
                            "error_description": "token store unavailable; retry"})
                        .to_string(),
                    );
                (Status::unavailable("token store unavailable"), d.build())
            }
            ValidateError::InvalidArgument(m) => {
                let mut d = DeniedHttpResponseBuilder::new();
                d.set_http_status(HttpStatusCode::Unauthorized)
                    .add_header(
                        "www-authenticate",
                        self.challenges.www_authenticate(
                            Reason::Malformed(crate::token::Malformed::Length),
                            scopes,
                        ),
                        None,
                        false,
                    )
                    .add_header("content-type", "application/json", None, false)
                    .set_body(
                        serde_json::json!({"error": "invalid_token", "error_description": m})
                            .to_string(),
                    );
                (Status::unauthenticated("invalid request"), d.build())
            }
        };
        let mut r = CheckResponse::with_status(status);
        r.set_http_response(body);
        r
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let headers = r.get_client_headers();
        let header = |name: &str| {
            headers.and_then(|h| {
                h.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            })
        };
        let credential = header("authorization").unwrap_or_default();
        let context = r.attributes.as_ref().map(|a| &a.context_extensions);
        let scopes: Vec<String> = context
            .and_then(|c| c.get(SCOPES_KEY))
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let host = r
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|q| q.http.as_ref())
            .map(|h| h.host.as_str())
            .unwrap_or_default();
        let resource = context
            .and_then(|c| c.get(RESOURCE_KEY))
            .map(String::as_str)
            .or_else(|| self.config.host_resources.get(host).map(String::as_str))
            .unwrap_or_default();
        let outcome = self
            .core
            .validate(core::Request {
                credential: credential.as_bytes(),
                required_scopes: &scopes,
                resource,
            })
            .await;
        self.metrics.lookup(started.elapsed());
        let answer = match outcome {
            Ok(v) => {
                self.metrics.decision(&v);
                if v.decision == Decision::Allow {
                    self.allow(&v, headers)
                } else {
                    self.deny(&v, &scopes)
                }
            }
            Err(e) => {
                self.metrics
                    .validate_error(matches!(e, ValidateError::Unavailable(_)));
                self.failed(&e, &scopes)
            }
        };
        self.metrics.rpc(Method::Check, started.elapsed());
        Ok(Response::new(answer))
    }
}
