//! Every TokenAdmin call over real gRPC: auth, creation, listing, rotation, OAuth refresh with
//! reuse detection, and the three revocation granularities.

use std::time::Duration;

use navis_auth::pb::{self, Decision, revoke_token_request::Target};
use prost::Message;
use tonic::Code;

use crate::helpers::{TestServer, decision, eventually};

#[tokio::test]
async fn admin_calls_need_the_admin_token() {
    let s = TestServer::start().await;
    let create = || pb::CreateApiKeyRequest {
        subject: "alice".into(),
        scopes: vec!["mcp:read".into()],
        ..Default::default()
    };
    let wrong = s
        .admin_as("nadm_not-the-right-token-at-all")
        .await
        .create_api_key(create())
        .await;
    assert_eq!(wrong.unwrap_err().code(), Code::Unauthenticated);
    let almost = format!("{}x", s.admin_token);
    let r = s.admin_as(&almost).await.create_api_key(create()).await;
    assert_eq!(r.unwrap_err().code(), Code::Unauthenticated);
    let mut bare =
        pb::token_admin_client::TokenAdminClient::new(crate::helpers::channel(s.admin_addr).await);
    let missing = bare.create_api_key(create()).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(!missing.message().contains(&s.admin_token));
    assert!(s.admin().await.create_api_key(create()).await.is_ok());
    // The public listener does not serve TokenAdmin at all.
    let mut public = pb::token_admin_client::TokenAdminClient::new(
        crate::helpers::channel(s.validator_addr).await,
    );
    assert_eq!(
        public.create_api_key(create()).await.unwrap_err().code(),
        Code::Unimplemented
    );
}

#[tokio::test]
async fn create_checks_its_input() {
    let s = TestServer::start().await;
    let mut a = s.admin().await;
    let base = pb::CreateApiKeyRequest {
        subject: "alice".into(),
        scopes: vec!["mcp:read".into()],
        ..Default::default()
    };
    let bad = [
        pb::CreateApiKeyRequest {
            subject: String::new(),
            ..base.clone()
        },
        pb::CreateApiKeyRequest {
            subject: "a\nb".into(),
            ..base.clone()
        },
        pb::CreateApiKeyRequest {
            scopes: vec![],
            ..base.clone()
        },
        pb::CreateApiKeyRequest {
            scopes: vec!["mcp:\"read".into()],
            ..base.clone()
        },
        pb::CreateApiKeyRequest {
            ttl_seconds: -5,
            ..base.clone()
        },
        pb::CreateApiKeyRequest {
            resource: "not a uri".into(),
            ..base.clone()
        },
        pb::CreateApiKeyRequest {
            resource: "https://x.example/#frag".into(),
            ..base.clone()
        },
        pb::CreateApiKeyRequest {
            name: "n".repeat(500),
            ..base.clone()
        },
    ];
    for b in bad {
        let e = a.create_api_key(b.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{b:?}: {e:?}");
    }
    let ok = a.create_api_key(base).await.unwrap().into_inner();
    assert!(ok.api_key.starts_with("nops_") && ok.api_key.len() == 43);
}

#[tokio::test]
async fn list_shows_metadata_and_last_use_never_secrets() {
    let s = TestServer::start().await;
    let (key, info) = s.create_key("alice", &["mcp:read"]).await;
    let pair = s.issue("alice", "cursor", &["mcp:read"]).await;
    s.create_key("bob", &["mcp:read"]).await;
    let mut a = s.admin().await;
    let list = |a: &mut crate::helpers::AdminClient, all: bool| {
        let mut a = a.clone();
        async move {
            a.list_tokens(pb::ListTokensRequest {
                subject: "alice".into(),
                include_inactive: all,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let l = list(&mut a, false).await;
    assert_eq!(l.tokens.len(), 3, "key + access + refresh");
    let bytes = l.encode_to_vec();
    for secret in [&key, &pair.access_token, &pair.refresh_token] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    let k = l
        .tokens
        .iter()
        .find(|t| t.token_id == info.token_id)
        .unwrap();
    assert_eq!(k.name, "test");
    assert_eq!(k.scopes, ["mcp:read"]);
    assert!(k.created_at > 0);
    assert_eq!(k.last_used_at, 0);
    assert_eq!(decision(&s.check(&key, &[]).await), Decision::Allow);
    let used = eventually(Duration::from_secs(5), || {
        let mut a = a.clone();
        let id = info.token_id.clone();
        async move {
            let l = list(&mut a, false).await;
            l.tokens
                .iter()
                .any(|t| t.token_id == id && t.last_used_at > 0)
        }
    })
    .await;
    assert!(
        used,
        "last_used_at is written off the hot path within seconds"
    );
    // Pagination walks every token exactly once.
    let first = a
        .list_tokens(pb::ListTokensRequest {
            subject: "alice".into(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.tokens.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let rest = a
        .list_tokens(pb::ListTokensRequest {
            subject: "alice".into(),
            page_size: 2,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.tokens.len(), 1);
    assert!(rest.next_page_token.is_empty());
    // Revoked tokens are listed only on request.
    a.revoke_token(pb::RevokeTokenRequest {
        target: Some(Target::TokenId(info.token_id.clone())),
    })
    .await
    .unwrap();
    assert_eq!(list(&mut a, false).await.tokens.len(), 2);
    let all = list(&mut a, true).await;
    assert!(
        all.tokens
            .iter()
            .any(|t| t.token_id == info.token_id && t.revoked_at > 0)
    );
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_the_grace_period() {
    let s = TestServer::start().await;
    let (old, info) = s.create_key("alice", &["mcp:read", "mcp:write"]).await;
    assert_eq!(decision(&s.check(&old, &[]).await), Decision::Allow);
    let mut a = s.admin().await;
    let r = a
        .rotate_api_key(pb::RotateApiKeyRequest {
            token_id: info.token_id.clone(),
            grace_period_seconds: 2,
        })
        .await
        .unwrap()
        .into_inner();
    let new_info = r.info.unwrap();
    assert_ne!(r.api_key, old);
    assert_eq!(new_info.subject, "alice");
    assert_eq!(new_info.scopes, ["mcp:read", "mcp:write"]);
    assert_eq!(new_info.name, "test");
    assert!(r.old_expires_at > 0);
    let n = s.check(&r.api_key, &["mcp:write"]).await;
    assert_eq!(decision(&n), Decision::Allow);
    // The old key still works, and now reports its new expiry (the cache was refreshed).
    let o = s.check(&old, &["mcp:write"]).await;
    assert_eq!(decision(&o), Decision::Allow);
    assert_eq!(o.expires_at, r.old_expires_at);
    let gone = eventually(Duration::from_secs(5), || async {
        decision(&s.check(&old, &[]).await) == Decision::Unauthenticated
    })
    .await;
    assert!(gone, "old key stops after the grace period");
    assert_eq!(decision(&s.check(&r.api_key, &[]).await), Decision::Allow);

    // Grace 0: the old key stops at once; a rotated-away key cannot be rotated again.
    let r2 = a
        .rotate_api_key(pb::RotateApiKeyRequest {
            token_id: new_info.token_id.clone(),
            grace_period_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        decision(&s.check(&r.api_key, &[]).await),
        Decision::Unauthenticated
    );
    assert_eq!(decision(&s.check(&r2.api_key, &[]).await), Decision::Allow);
    let again = a
        .rotate_api_key(pb::RotateApiKeyRequest {
            token_id: new_info.token_id,
            grace_period_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let unknown = a
        .rotate_api_key(pb::RotateApiKeyRequest {
            token_id: "tok_nope".into(),
            grace_period_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_grant() {
    let s = TestServer::start().await;
    let mut a = s.admin().await;
    let first = s.issue("alice", "claude", &["mcp:read", "mcp:write"]).await;
    let grant = first.access.as_ref().unwrap().grant_id.clone();
    assert!(first.access_token.starts_with("nopo_") && first.refresh_token.starts_with("nopr_"));
    let refresh = |rt: &str, client: &str, scopes: &[&str]| pb::RefreshOAuthTokensRequest {
        refresh_token: rt.into(),
        client_id: client.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    };
    // Another client cannot spend it, and that attempt does not spend it.
    let e = a
        .refresh_o_auth_tokens(refresh(&first.refresh_token, "evil", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().starts_with("invalid_grant"));
    // Widening is refused (RFC 6749 §6).
    let e = a
        .refresh_o_auth_tokens(refresh(&first.refresh_token, "claude", &["mcp:admin"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("invalid_scope"));

    let second = a
        .refresh_o_auth_tokens(refresh(&first.refresh_token, "claude", &["mcp:read"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.access.as_ref().unwrap().grant_id, grant);
    assert_eq!(second.access.as_ref().unwrap().scopes, ["mcp:read"]);
    let r = s.check(&second.access_token, &["mcp:read"]).await;
    assert_eq!(decision(&r), Decision::Allow);
    assert_eq!(
        decision(&s.check(&second.access_token, &["mcp:write"]).await),
        Decision::Forbidden
    );

    // Reuse of the spent refresh token: refused, and the whole grant is revoked.
    let e = a
        .refresh_o_auth_tokens(refresh(&first.refresh_token, "claude", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("reuse"));
    for t in [&first.access_token, &second.access_token] {
        let r = s.check(t, &[]).await;
        assert_eq!(decision(&r), Decision::Unauthenticated);
        assert_eq!(r.error_description, "The token has been revoked");
    }
    let e = a
        .refresh_o_auth_tokens(refresh(&second.refresh_token, "claude", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Garbage and access tokens are not refresh tokens.
    for bad in ["garbage", first.access_token.as_str()] {
        let e = a
            .refresh_o_auth_tokens(refresh(bad, "claude", &[]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
    }
}

#[tokio::test]
async fn revoke_token_by_id_or_by_token() {
    let s = TestServer::start().await;
    let mut a = s.admin().await;
    let (k1, i1) = s.create_key("alice", &["mcp:read"]).await;
    let (k2, _) = s.create_key("alice", &["mcp:read"]).await;
    for k in [&k1, &k2] {
        assert_eq!(decision(&s.check(k, &[]).await), Decision::Allow);
    }
    let r = a
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(Target::TokenId(i1.token_id.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.revoked, r.token_ids), (1, vec![i1.token_id.clone()]));
    let r = a
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(Target::Token(format!("Bearer {k2}"))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 1);
    for k in [&k1, &k2] {
        assert_eq!(
            decision(&s.check(k, &[]).await),
            Decision::Unauthenticated,
            "visible at once"
        );
    }
    // Again: nothing left to revoke. Unknown: not found. Empty: invalid.
    let again = a
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(Target::TokenId(i1.token_id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revoked, 0);
    let e = a
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(Target::TokenId("tok_unknown".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a
        .revoke_token(pb::RevokeTokenRequest { target: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn revoke_grant_disconnects_one_client_only() {
    let s = TestServer::start().await;
    let g1 = s.issue("alice", "claude", &["mcp:read"]).await;
    let g2 = s.issue("alice", "claude", &["mcp:read"]).await;
    let other = s.issue("alice", "cursor", &["mcp:read"]).await;
    let (key, _) = s.create_key("alice", &["mcp:read"]).await;
    for t in [
        &g1.access_token,
        &g2.access_token,
        &other.access_token,
        &key,
    ] {
        assert_eq!(decision(&s.check(t, &[]).await), Decision::Allow);
    }
    let r = s
        .admin()
        .await
        .revoke_grant(pb::RevokeGrantRequest {
            subject: "alice".into(),
            client_id: "claude".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 4, "two access + two refresh tokens");
    for t in [&g1.access_token, &g2.access_token] {
        assert_eq!(decision(&s.check(t, &[]).await), Decision::Unauthenticated);
    }
    for t in [&other.access_token, &key] {
        assert_eq!(decision(&s.check(t, &[]).await), Decision::Allow);
    }
    let e = s
        .admin()
        .await
        .refresh_o_auth_tokens(pb::RefreshOAuthTokensRequest {
            refresh_token: g1.refresh_token.clone(),
            client_id: "claude".into(),
            scopes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn revoke_subject_stops_every_token_of_the_user() {
    let s = TestServer::start().await;
    let (k, _) = s.create_key("alice", &["mcp:read"]).await;
    let g = s.issue("alice", "claude", &["mcp:read"]).await;
    let (bob, _) = s.create_key("bob", &["mcp:read"]).await;
    for t in [&k, &g.access_token, &bob] {
        assert_eq!(decision(&s.check(t, &[]).await), Decision::Allow);
    }
    let r = s
        .admin()
        .await
        .revoke_subject(pb::RevokeSubjectRequest {
            subject: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 3);
    for t in [&k, &g.access_token] {
        assert_eq!(decision(&s.check(t, &[]).await), Decision::Unauthenticated);
    }
    assert_eq!(decision(&s.check(&bob, &[]).await), Decision::Allow);
    // A key created after the revocation works.
    let (later, _) = s.create_key("alice", &["mcp:read"]).await;
    assert_eq!(decision(&s.check(&later, &[]).await), Decision::Allow);
}
