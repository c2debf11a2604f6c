//! An MCP-style server protected by navis-auth with no auth code in its handlers: a read tool
//! (`mcp:read`) and a write tool (`mcp:write`) behind `NavisAuthLayer`, plus the RFC 9728
//! protected-resource metadata document MCP clients fetch from the 401 challenge.
//!
//! ```sh
//! cargo run --release -- serve \
//!   --resource-metadata-url http://127.0.0.1:8080/.well-known/oauth-protected-resource
//! cargo run --example mcp_server -- --listen 127.0.0.1:8080
//! curl -i -X POST http://127.0.0.1:8080/tools/read                       # 401 + challenge
//! curl -i -X POST http://127.0.0.1:8080/tools/write -H "Authorization: Bearer nops_…"
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use clap::Parser;
use navis_auth::client::{Identity, NavisAuth, NavisAuthLayer};

/// The routes: each tool names the scope it needs; the layer does the rest.
pub fn app(auth: NavisAuth, resource: &str, authorization_server: &str) -> Router {
    let metadata = serde_json::json!({
        "resource": resource,
        "authorization_servers": [authorization_server],
        "scopes_supported": ["mcp:read", "mcp:write"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Navis Ops MCP (example)",
    })
    .to_string();
    let auth = auth.with_resource(resource);
    Router::new()
        .route(
            "/tools/read",
            post(read_tool).route_layer(NavisAuthLayer::new(auth.clone()).require(["mcp:read"])),
        )
        .route(
            "/tools/write",
            post(write_tool).route_layer(NavisAuthLayer::new(auth).require(["mcp:write"])),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], metadata) }),
        )
}

async fn read_tool(Extension(who): Extension<Identity>) -> impl IntoResponse {
    let body = serde_json::json!({"tool": "read", "subject": who.subject, "scopes": who.scopes});
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn write_tool(Extension(who): Extension<Identity>) -> impl IntoResponse {
    let body =
        serde_json::json!({"tool": "write", "subject": who.subject, "token_id": who.token_id});
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

/// Example MCP server behind navis-auth.
#[derive(Parser)]
struct Args {
    /// Where this server listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// navis-auth's Validator.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    navis: String,
    /// This server's RFC 8707 resource identifier [default: http://<listen>].
    #[arg(long)]
    resource: Option<String>,
    /// The OAuth authorization server clients should use.
    #[arg(long, default_value = "https://auth.navisops.com")]
    authorization_server: String,
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let resource = args
        .resource
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let auth = NavisAuth::connect_lazy(&args.navis)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "example MCP server on http://{} (resource {resource})",
        listener.local_addr()?
    );
    axum::serve(listener, app(auth, &resource, &args.authorization_server)).await?;
    Ok(())
}
