//! Envoy ext_authz v3: a test acting as Envoy (a gRPC client built from `envoy-types`) sends
//! realistic `CheckRequest`s and asserts each answer's status, headers and body.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use navis_auth::pb::{self, revoke_token_request::Target};
use navis_auth::token::TokenKind;
use serde_json::Value;

use crate::helpers::{TestServer, channel, unknown_token};

const META: &str = "https://mcp.navisops.com/.well-known/oauth-protected-resource";

fn check(
    headers: &[(&str, &str)],
    scopes: &str,
    resource: Option<&str>,
    host: &str,
) -> CheckRequest {
    let mut ctx = HashMap::new();
    if !scopes.is_empty() {
        ctx.insert("navis_required_scopes".to_owned(), scopes.to_owned());
    }
    if let Some(r) = resource {
        ctx.insert("navis_resource".to_owned(), r.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/mcp".into(),
                    host: host.into(),
                    scheme: "https".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ctx,
            ..Default::default()
        }),
    }
}

struct Denied {
    grpc_code: i32,
    http: i32,
    headers: HashMap<String, String>,
    body: Value,
}

fn denied(r: &CheckResponse) -> Denied {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("expected a denied response, got {r:?}");
    };
    Denied {
        grpc_code: r.status.as_ref().map_or(0, |s| s.code),
        http: d.status.as_ref().map_or(0, |s| s.code),
        headers: d
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect(),
        body: serde_json::from_str(&d.body).expect("JSON body"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_check_requests_get_conformant_answers() {
    let s = TestServer::start_with(&[
        "--resource-metadata-url",
        META,
        "--ext-authz-host-resource",
        "mcp.navisops.com=https://mcp.navisops.com",
    ])
    .await;
    let envoy = AuthorizationClient::new(channel(s.validator_addr).await);
    let mut admin = s.admin().await;
    let read = admin
        .create_api_key(pb::CreateApiKeyRequest {
            subject: "alice".into(),
            scopes: vec!["mcp:read".into()],
            resource: "https://mcp.navisops.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bearer = format!("Bearer {}", read.api_key);
    let host = "mcp.navisops.com";
    let ask = |req: CheckRequest| {
        let mut e = envoy.clone();
        async move { e.check(req).await.expect("check answers").into_inner() }
    };

    // No Authorization header: 401 with resource_metadata, no error code (RFC 6750 §3.1).
    let d = denied(&ask(check(&[], "mcp:read", None, host)).await);
    assert_eq!((d.grpc_code, d.http), (16, 401));
    assert_eq!(
        d.headers["www-authenticate"],
        format!(r#"Bearer scope="mcp:read", resource_metadata="{META}""#)
    );
    assert_eq!(d.headers["content-type"], "application/json");
    assert_eq!(d.body["error"], "invalid_request");

    // Malformed, unknown: 401 invalid_token.
    let unknown = format!("Bearer {}", unknown_token(TokenKind::ApiKey));
    for value in [
        "Bearer nops_notatoken",
        unknown.as_str(),
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
    ] {
        let d = denied(&ask(check(&[("authorization", value)], "mcp:read", None, host)).await);
        assert_eq!(d.http, 401, "{value}");
        assert!(d.headers["www-authenticate"].contains(&format!(r#"resource_metadata="{META}""#)));
    }

    // Read key on a write route: 403 insufficient_scope naming the scope.
    let d = denied(
        &ask(check(
            &[("authorization", &bearer)],
            "mcp:write",
            None,
            host,
        ))
        .await,
    );
    assert_eq!((d.grpc_code, d.http), (7, 403));
    assert!(d.headers["www-authenticate"].starts_with(
        r#"Bearer error="insufficient_scope", scope="mcp:write", resource_metadata=""#
    ));
    assert_eq!(d.body["error"], "insufficient_scope");

    // Wrong resource (route extension or host map): 401 invalid_token.
    let d = denied(
        &ask(check(
            &[("authorization", &bearer)],
            "mcp:read",
            Some("https://other.example"),
            host,
        ))
        .await,
    );
    assert_eq!(d.http, 401);
    assert_eq!(
        d.body["error_description"],
        "The token was not issued for this resource"
    );

    // Allowed: identity headers set (overwriting), forged x-navis-* removed, token not passed on.
    let r = ask(check(
        &[
            ("authorization", &bearer),
            ("x-navis-subject", "mallory"),
            ("x-navis-admin", "1"),
        ],
        "mcp:read",
        None,
        host,
    ))
    .await;
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("expected ok: {r:?}")
    };
    let set: HashMap<_, _> = ok
        .headers
        .iter()
        .filter_map(|h| {
            h.header
                .as_ref()
                .map(|v| (v.key.as_str(), (v.value.as_str(), h.append_action)))
        })
        .collect();
    assert_eq!(set["x-navis-subject"].0, "alice");
    assert_eq!(set["x-navis-scopes"].0, "mcp:read");
    assert_eq!(
        set["x-navis-token-id"].0,
        read.info.as_ref().unwrap().token_id
    );
    // OVERWRITE_IF_EXISTS_OR_ADD (2): a forged value can never survive next to ours.
    assert!(set.values().all(|(_, action)| *action == 2));
    for gone in ["authorization", "x-navis-subject", "x-navis-admin"] {
        assert!(
            ok.headers_to_remove.iter().any(|h| h == gone),
            "{gone} removed: {:?}",
            ok.headers_to_remove
        );
    }
    // A host with no mapped resource and no route resource checks no binding.
    let r = ask(check(
        &[("authorization", &bearer)],
        "mcp:read",
        None,
        "other.example",
    ))
    .await;
    assert!(matches!(r.http_response, Some(HttpResponse::OkResponse(_))));

    // OAuth access token: the client id travels upstream.
    let pair = s
        .issue("bob", "claude-desktop", &["mcp:read", "mcp:write"])
        .await;
    let r = ask(check(
        &[("authorization", &format!("bearer {}", pair.access_token))],
        "mcp:write",
        None,
        host,
    ))
    .await;
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("expected ok")
    };
    assert!(ok.headers.iter().any(|h| {
        h.header
            .as_ref()
            .is_some_and(|v| v.key == "x-navis-client-id" && v.value == "claude-desktop")
    }));

    // Revoked: 401 invalid_token.
    admin
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(Target::TokenId(read.info.unwrap().token_id)),
        })
        .await
        .unwrap();
    let d = denied(&ask(check(&[("authorization", &bearer)], "mcp:read", None, host)).await);
    assert_eq!(d.http, 401);
    assert_eq!(d.body["error_description"], "The token has been revoked");
    assert!(d.headers["www-authenticate"].starts_with(r#"Bearer error="invalid_token""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_passthrough_is_opt_in() {
    let s = TestServer::start_with(&["--ext-authz-keep-authorization"]).await;
    let (key, _) = s.create_key("alice", &["mcp:read"]).await;
    let mut envoy = AuthorizationClient::new(channel(s.validator_addr).await);
    let r = envoy
        .check(check(
            &[("Authorization", &format!("Bearer {key}"))],
            "",
            None,
            "x",
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("expected ok")
    };
    assert!(!ok.headers_to_remove.iter().any(|h| h == "authorization"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unavailable_is_an_explicit_503() {
    let redis = crate::redis_server::RedisServer::start();
    let url = redis.url();
    let s = TestServer::start_with(&["--store", &url, "--redis-timeout", "300ms"]).await;
    s.wait_ready().await;
    let mut redis = redis;
    redis.stop();
    let mut envoy = AuthorizationClient::new(channel(s.validator_addr).await);
    let token = format!("Bearer {}", unknown_token(TokenKind::ApiKey));
    let r = envoy
        .check(check(&[("authorization", &token)], "", None, "x"))
        .await
        .unwrap()
        .into_inner();
    let d = denied(&r);
    assert_eq!((d.grpc_code, d.http), (14, 503));
    assert_eq!(d.body["error"], "temporarily_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let s = TestServer::start().await;
    let key = s
        .admin()
        .await
        .create_api_key(pb::CreateApiKeyRequest {
            subject: "alice".into(),
            scopes: vec!["mcp:read".into()],
            ttl_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .api_key;
    let envoy = AuthorizationClient::new(channel(s.validator_addr).await);
    let bearer = format!("Bearer {key}");
    let expired = crate::helpers::eventually(std::time::Duration::from_secs(4), || {
        let mut e = envoy.clone();
        let req = check(&[("authorization", &bearer)], "mcp:read", None, "x");
        async move {
            let r = e.check(req).await.unwrap().into_inner();
            matches!(&r.http_response, Some(HttpResponse::DeniedResponse(_)))
                && denied(&r).body["error_description"] == "The token has expired"
        }
    })
    .await;
    assert!(expired, "a 1 s key is refused as expired within 4 s");
}
