//! RFC 7662 token introspection on the HTTP listener: `POST /oauth/introspect`.

use navis_auth::pb::{self, revoke_token_request::Target};
use navis_auth::token::TokenKind;
use serde_json::{Value, json};

use crate::helpers::{TestServer, http_get_at, http_post_at, unknown_token};

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

async fn introspect(s: &TestServer, credential: &str, token: &str) -> (u16, String, Value) {
    let auth = format!("Bearer {credential}");
    let body = format!("token={token}&token_type_hint=access_token");
    let (code, head, body) = http_post_at(
        s.http_addr,
        "/oauth/introspect",
        &[FORM, ("Authorization", &auth)],
        &body,
    )
    .await;
    (
        code,
        head,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_follows_rfc7662() {
    let s = TestServer::start().await;
    let cred = s.admin_token.clone();
    let (key, info) = s.create_key("alice", &["mcp:read", "mcp:write"]).await;

    // Active API key: the fields RFC 7662 names, no exp for a key that never expires.
    let (code, head, v) = introspect(&s, &cred, &key).await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: application/json"));
    assert!(head.contains("cache-control: no-store"));
    assert_eq!(
        v,
        json!({"active": true, "sub": "alice", "scope": "mcp:read mcp:write",
               "token_type": "Bearer", "jti": info.token_id})
    );

    // OAuth access token bound to a resource: client_id, exp, aud.
    let pair = s
        .admin()
        .await
        .issue_o_auth_tokens(pb::IssueOAuthTokensRequest {
            subject: "bob".into(),
            client_id: "claude".into(),
            scopes: vec!["mcp:read".into()],
            resource: "https://mcp.navisops.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (_, _, v) = introspect(&s, &cred, &pair.access_token).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], "claude");
    assert_eq!(v["aud"], "https://mcp.navisops.com");
    assert_eq!(v["exp"], pair.access.unwrap().expires_at);

    // Everything that is not a valid access credential is just {"active": false}.
    let revoked = s.create_key("carol", &["mcp:read"]).await;
    s.admin()
        .await
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(Target::TokenId(revoked.1.token_id)),
        })
        .await
        .unwrap();
    for t in [
        unknown_token(TokenKind::ApiKey),
        "garbage".to_owned(),
        pair.refresh_token.clone(),
        revoked.0.clone(),
        "x".repeat(9000),
        String::new(),
    ] {
        let (code, _, v) = introspect(&s, &cred, &t).await;
        assert_eq!((code, v), (200, json!({"active": false})));
    }

    // A form without `token` is a bad request; a GET is not allowed.
    let auth = format!("Bearer {cred}");
    let (code, _, body) = http_post_at(
        s.http_addr,
        "/oauth/introspect",
        &[FORM, ("Authorization", &auth)],
        "token_type_hint=x",
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("invalid_request"));
    assert_eq!(http_get_at(s.http_addr, "/oauth/introspect").await.0, 405);
}

#[tokio::test]
async fn unauthenticated_callers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cred_file = dir.path().join("introspection");
    std::fs::write(&cred_file, "introspection-credential-0123456789\n").unwrap();
    let s =
        TestServer::start_with(&["--introspection-token-file", cred_file.to_str().unwrap()]).await;
    let (key, _) = s.create_key("alice", &["mcp:read"]).await;
    for cred in [
        "",
        "wrong-credential-wrong-credential",
        s.admin_token.as_str(),
    ] {
        let (code, head, v) = introspect(&s, cred, &key).await;
        assert_eq!(code, 401, "{cred}");
        assert!(head.contains("www-authenticate: bearer realm="));
        assert_eq!(v["error"], "invalid_client");
        assert!(v.get("active").is_none(), "nothing about the token leaks");
    }
    let (code, _, _) = http_post_at(
        s.http_addr,
        "/oauth/introspect",
        &[FORM],
        &format!("token={key}"),
    )
    .await;
    assert_eq!(code, 401);
    let (code, _, v) = introspect(&s, "introspection-credential-0123456789", &key).await;
    assert_eq!((code, &v["active"]), (200, &json!(true)));
}
