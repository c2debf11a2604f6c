//! The Rust middleware: the example MCP server (examples/mcp_server.rs, compiled into this test)
//! driven over HTTP with a real client, in front of a real navis-auth.

use serde_json::Value;

use crate::helpers::{TestServer, http_get_at, http_post_at};
use crate::mcp_example::app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_mcp_server_answers_401_403_and_200() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mcp = listener.local_addr().unwrap();
    let resource = format!("http://{mcp}");
    let metadata_url = format!("http://{mcp}/.well-known/oauth-protected-resource");
    let s = TestServer::start_with(&["--resource-metadata-url", &metadata_url]).await;
    let auth = navis_auth::client::NavisAuth::connect_lazy(&format!("http://{}", s.validator_addr))
        .unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app(auth, &resource, "https://auth.example"))
            .await
            .unwrap();
    });
    let (read_key, _) = s.create_key("alice", &["mcp:read"]).await;
    let read = format!("Bearer {read_key}");

    // No token: 401 pointing at the metadata document.
    let (code, head, _) = http_post_at(mcp, "/tools/read", &[], "").await;
    assert_eq!(code, 401);
    assert!(
        head.contains(
            &format!(
                "www-authenticate: bearer scope=\"mcp:read\", resource_metadata=\"{metadata_url}\""
            )
            .to_ascii_lowercase()
        ),
        "{head}"
    );
    // The document it points at.
    let (code, body) = http_get_at(mcp, "/.well-known/oauth-protected-resource").await;
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["resource"], format!("http://{mcp}"));
    assert_eq!(
        doc["scopes_supported"],
        serde_json::json!(["mcp:read", "mcp:write"])
    );

    // Read key on the write tool: 403 insufficient_scope naming mcp:write.
    let (code, head, body) =
        http_post_at(mcp, "/tools/write", &[("Authorization", &read)], "").await;
    assert_eq!(code, 403);
    assert!(
        head.contains("www-authenticate: bearer error=\"insufficient_scope\", scope=\"mcp:write\""),
        "{head}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "insufficient_scope"
    );

    // Read key on the read tool: 200 with the subject from the request extension.
    let (code, _, body) = http_post_at(mcp, "/tools/read", &[("Authorization", &read)], "").await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["subject"], "alice");
    assert_eq!(v["scopes"], serde_json::json!(["mcp:read"]));

    // A key bound to another resource is refused by this server (RFC 8707).
    let other = s
        .admin()
        .await
        .create_api_key(navis_auth::pb::CreateApiKeyRequest {
            subject: "alice".into(),
            scopes: vec!["mcp:read".into()],
            resource: "https://elsewhere.example".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (code, _, _) = http_post_at(
        mcp,
        "/tools/read",
        &[("Authorization", &format!("Bearer {}", other.api_key))],
        "",
    )
    .await;
    assert_eq!(code, 401);

    // navis-auth gone: 503, never 401.
    s.stop().await.unwrap();
    let (code, _, body) = http_post_at(mcp, "/tools/read", &[("Authorization", &read)], "").await;
    assert_eq!(code, 503, "{body}");
}
