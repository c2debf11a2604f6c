//! Persistence across restarts, nothing stored in plaintext, health and readiness, reflection,
//! and graceful shutdown.

use std::time::{Duration, Instant};

use navis_auth::pb::{self, Decision};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{TestServer, channel, decision, req};

fn file_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).expect("read db file");
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn tokens_survive_a_restart_and_are_never_stored_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), &[]).await;
    let admin_token = s.admin_token.clone();
    let (key, info) = s.create_key("alice", &["mcp:read"]).await;
    let pair = s.issue("alice", "claude", &["mcp:read"]).await;
    assert_eq!(decision(&s.check(&key, &[]).await), Decision::Allow);
    s.stop().await.unwrap();

    let db = dir.path().join("tokens.redb");
    for secret in [&key, &pair.access_token, &pair.refresh_token] {
        assert!(
            !file_contains(&db, secret.as_bytes()),
            "plaintext token on disk"
        );
        // Not even the random body.
        assert!(!file_contains(&db, &secret.as_bytes()[5..37]));
    }
    assert!(
        file_contains(&db, info.token_id.as_bytes()),
        "sanity: the record is in this file"
    );

    let s = TestServer::start_in(dir.path(), &[]).await;
    assert_eq!(s.admin_token, admin_token, "the admin token is kept");
    let r = s.check(&key, &["mcp:read"]).await;
    assert_eq!(decision(&r), Decision::Allow);
    assert_eq!(r.token_id, info.token_id);
    assert_eq!(
        decision(&s.check(&pair.access_token, &[]).await),
        Decision::Allow
    );
    s.stop().await.unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn the_generated_admin_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = TestServer::start().await;
    let mode = std::fs::metadata(s.data_dir.join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(s.admin_token.len() >= 32);
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused_clearly() {
    let s = TestServer::start().await;
    let config = navis_auth::config::Config::try_parse_from([
        "serve",
        "--data-dir",
        s.data_dir.to_str().unwrap(),
    ])
    .unwrap();
    let e = navis_auth::server::App::build(config).await.unwrap_err();
    assert!(e.to_string().contains("already open"), "{e}");
}

#[tokio::test]
async fn health_readiness_and_reflection() {
    let s = TestServer::start().await;
    assert_eq!(s.http_get("/healthz").await.0, 200);
    let (code, body) = s.http_get("/readyz").await;
    assert_eq!((code, body.trim()), (200, "ready"));
    assert_eq!(s.http_get("/nope").await.0, 404);
    for (addr, service) in [
        (s.validator_addr, "navis.auth.v1.Validator"),
        (s.admin_addr, "navis.auth.v1.TokenAdmin"),
        (s.validator_addr, ""),
    ] {
        let mut h = HealthClient::new(channel(addr).await);
        let r = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service}");
    }
}

#[tokio::test]
async fn shutdown_drains_within_the_grace_period() {
    let s = TestServer::start().await;
    let (key, _) = s.create_key("alice", &["mcp:read"]).await;
    // Hold a stream open: shutdown must not wait for it longer than the grace period (2 s).
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ValidateRequest>(4);
    let mut v = s.validator().await;
    tx.send(req(&key, &[])).await.unwrap();
    let mut answers = v
        .validate_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().unwrap();
    assert_eq!(decision(&first), Decision::Allow);
    let t = Instant::now();
    s.stop().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "drain is bounded");
    drop(tx);
}

#[tokio::test]
async fn reflection_lists_the_services_on_both_listeners() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let s = TestServer::start().await;
    for (addr, want) in [
        (s.validator_addr, "navis.auth.v1.Validator"),
        (s.admin_addr, "navis.auth.v1.TokenAdmin"),
    ] {
        let mut c = ServerReflectionClient::new(channel(addr).await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = c
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected reflection answer");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == want), "{names:?}");
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    }
}
