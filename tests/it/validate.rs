//! Every decision row of DESIGN.md §1 over real gRPC, plus resource binding and streaming.

use std::time::Duration;

use navis_auth::pb::{self, Decision};
use navis_auth::token::TokenKind;
use tokio_stream::StreamExt;

use crate::helpers::{TestServer, decision, eventually, req, unknown_token};

#[tokio::test]
async fn allow_with_a_held_scope() {
    let s = TestServer::start().await;
    let (key, info) = s.create_key("alice", &["mcp:read"]).await;
    let r = s.check(&key, &["mcp:read"]).await;
    assert_eq!(decision(&r), Decision::Allow);
    assert_eq!(r.subject, "alice");
    assert_eq!(r.scopes, ["mcp:read"]);
    assert_eq!(r.kind, pb::TokenKind::ApiKey as i32);
    assert_eq!(r.token_id, info.token_id);
    assert_eq!(r.expires_at, 0);
    assert!(r.error.is_empty() && r.www_authenticate.is_empty());
    // No scope required: any valid token passes.
    assert_eq!(decision(&s.check(&key, &[]).await), Decision::Allow);
    // Read + Write holds both.
    let (rw, _) = s.create_key("alice", &["mcp:read", "mcp:write"]).await;
    assert_eq!(
        decision(&s.check(&rw, &["mcp:read", "mcp:write"]).await),
        Decision::Allow
    );
}

#[tokio::test]
async fn forbidden_names_the_missing_scope() {
    let s = TestServer::start().await;
    let (key, info) = s.create_key("alice", &["mcp:read"]).await;
    // Twice: once from the store, once from the cache; both answers must be the same.
    for _ in 0..2 {
        let r = s.check(&key, &["mcp:write"]).await;
        assert_eq!(decision(&r), Decision::Forbidden);
        assert_eq!(r.error, "insufficient_scope");
        assert_eq!(r.subject, "alice");
        assert_eq!(r.token_id, info.token_id);
        assert!(
            r.www_authenticate
                .starts_with(r#"Bearer error="insufficient_scope", scope="mcp:write""#),
            "{}",
            r.www_authenticate
        );
    }
    // One held and one missing is still forbidden.
    let r = s.check(&key, &["mcp:read", "mcp:write"]).await;
    assert_eq!(decision(&r), Decision::Forbidden);
    assert!(r.www_authenticate.contains(r#"scope="mcp:read mcp:write""#));
}

#[tokio::test]
async fn unknown_missing_malformed_and_refresh_tokens_are_unauthenticated() {
    let s = TestServer::start().await;
    let unknown = unknown_token(TokenKind::ApiKey);
    for _ in 0..2 {
        let r = s.check(&unknown, &["mcp:read"]).await;
        assert_eq!(decision(&r), Decision::Unauthenticated);
        assert_eq!(r.error, "invalid_token");
        assert!(r.subject.is_empty() && r.token_id.is_empty());
        assert!(
            r.www_authenticate
                .starts_with(r#"Bearer error="invalid_token""#)
        );
    }
    // The second lookup was answered by the negative cache.
    assert_eq!(s.calls.gets(), 1);

    let missing = s.check("", &["mcp:read"]).await;
    assert_eq!(decision(&missing), Decision::Unauthenticated);
    assert_eq!(
        missing.error, "",
        "RFC 6750 §3.1: no error code without a credential"
    );
    assert_eq!(missing.www_authenticate, r#"Bearer scope="mcp:read""#);

    let mut typo = unknown.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let r = s.check(std::str::from_utf8(&typo).unwrap(), &[]).await;
    assert_eq!(decision(&r), Decision::Unauthenticated);
    assert!(r.error_description.contains("checksum"));

    let pair = s.issue("alice", "claude", &["mcp:read"]).await;
    let r = s.check(&pair.refresh_token, &[]).await;
    assert_eq!(decision(&r), Decision::Unauthenticated);
    assert_eq!(r.error, "invalid_token");
    assert!(r.error_description.contains("refresh token"));
}

#[tokio::test]
async fn expired_tokens_are_refused_even_from_the_cache() {
    let s = TestServer::start().await;
    let r = s
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
        .into_inner();
    let key = r.api_key;
    let expires_at = r.info.unwrap().expires_at;
    // Cache it while valid (unless the second boundary already passed).
    let first = s.check(&key, &[]).await;
    if decision(&first) == Decision::Allow {
        assert_eq!(first.expires_at, expires_at);
    }
    let gets = s.calls.gets();
    let expired = eventually(Duration::from_secs(4), || async {
        decision(&s.check(&key, &[]).await) == Decision::Unauthenticated
    })
    .await;
    assert!(expired, "a 1 s key must be refused within 4 s");
    let r = s.check(&key, &[]).await;
    assert_eq!(r.error, "invalid_token");
    assert_eq!(r.error_description, "The token has expired");
    assert_eq!(
        s.calls.gets(),
        gets,
        "expiry was decided from the cached record"
    );
}

#[tokio::test]
async fn bearer_header_values_are_accepted() {
    let s = TestServer::start().await;
    let (key, _) = s.create_key("alice", &["mcp:read"]).await;
    for v in [
        format!("Bearer {key}"),
        format!("bearer {key}"),
        format!("BEARER   {key}  "),
        format!("  Bearer\t{key}"),
    ] {
        assert_eq!(
            decision(&s.check(&v, &["mcp:read"]).await),
            Decision::Allow,
            "{v:?}"
        );
    }
}

#[tokio::test]
async fn resource_binding_rfc8707() {
    let s = TestServer::start().await;
    let mut a = s.admin().await;
    let bound = a
        .create_api_key(pb::CreateApiKeyRequest {
            subject: "alice".into(),
            scopes: vec!["mcp:read".into()],
            resource: "https://mcp.navisops.com/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .api_key;
    let (free, _) = s.create_key("alice", &["mcp:read"]).await;
    let with = |t: &str, res: &str| pb::ValidateRequest {
        resource: res.into(),
        ..req(t, &["mcp:read"])
    };

    let r = s
        .check_req(with(&bound, "https://api.other.example"))
        .await
        .unwrap();
    assert_eq!(decision(&r), Decision::Unauthenticated);
    assert_eq!(r.error, "invalid_token");
    assert_eq!(
        r.error_description,
        "The token was not issued for this resource"
    );
    let ok = s
        .check_req(with(&bound, "https://mcp.navisops.com"))
        .await
        .unwrap();
    assert_eq!(decision(&ok), Decision::Allow);
    assert_eq!(ok.resource, "https://mcp.navisops.com/");
    assert_eq!(
        decision(&s.check_req(with(&bound, "")).await.unwrap()),
        Decision::Allow
    );
    // A token issued with no resource is accepted for any.
    let any = s
        .check_req(with(&free, "https://api.other.example"))
        .await
        .unwrap();
    assert_eq!(decision(&any), Decision::Allow);
}

#[tokio::test]
async fn challenges_carry_resource_metadata_when_configured() {
    let url = "https://mcp.navisops.com/.well-known/oauth-protected-resource";
    let s = TestServer::start_with(&["--resource-metadata-url", url]).await;
    let missing = s.check("", &[]).await;
    assert_eq!(
        missing.www_authenticate,
        format!(r#"Bearer resource_metadata="{url}""#)
    );
    let (key, _) = s.create_key("alice", &["mcp:read"]).await;
    let r = s.check(&key, &["mcp:write"]).await;
    assert!(
        r.www_authenticate.starts_with(&format!(
            r#"Bearer error="insufficient_scope", scope="mcp:write", resource_metadata="{url}""#
        )),
        "{}",
        r.www_authenticate
    );
}

#[tokio::test]
async fn oauth_access_tokens_validate_with_their_client() {
    let s = TestServer::start().await;
    let pair = s
        .issue("bob", "claude-desktop", &["mcp:read", "mcp:write"])
        .await;
    let r = s.check(&pair.access_token, &["mcp:write"]).await;
    assert_eq!(decision(&r), Decision::Allow);
    assert_eq!(r.kind, pb::TokenKind::OauthAccess as i32);
    assert_eq!(r.client_id, "claude-desktop");
    assert_eq!(r.subject, "bob");
    assert!(r.expires_at > 0);
}

#[tokio::test]
async fn validate_stream_answers_every_request_with_its_id() {
    let s = TestServer::start().await;
    let (key, _) = s.create_key("alice", &["mcp:read"]).await;
    let unknown = unknown_token(TokenKind::OAuthAccess);
    let mut reqs = Vec::new();
    let mut expect = std::collections::HashMap::new();
    for i in 0..300 {
        let (r, want) = match i % 5 {
            0 => (req(&key, &["mcp:read"]), (Decision::Allow as i32, 0)),
            1 => (req(&key, &["mcp:write"]), (Decision::Forbidden as i32, 0)),
            2 => (req(&unknown, &[]), (Decision::Unauthenticated as i32, 0)),
            3 => (req("garbage", &[]), (Decision::Unauthenticated as i32, 0)),
            _ => (
                pb::ValidateRequest {
                    token: vec![b'a'; 20_000],
                    ..Default::default()
                },
                (
                    Decision::Unspecified as i32,
                    tonic::Code::InvalidArgument as i32,
                ),
            ),
        };
        let id = format!("req-{i}");
        expect.insert(id.clone(), want);
        reqs.push(pb::ValidateRequest {
            request_id: id,
            ..r
        });
    }
    let mut answers = s
        .validator()
        .await
        .validate_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Some(a) = answers.next().await {
        let a = a.unwrap();
        let want = expect
            .remove(&a.request_id)
            .expect("one answer per request id");
        assert_eq!((a.decision, a.status_code), want, "{}", a.request_id);
        seen += 1;
    }
    assert_eq!(seen, 300);
    assert!(expect.is_empty());
}
