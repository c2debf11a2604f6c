//! Test helpers: spawn a real server on loopback port 0 in its own temp dir, and clients for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use navis_auth::config::Config;
use navis_auth::pb::{
    self, token_admin_client::TokenAdminClient, validator_client::ValidatorClient,
};
use navis_auth::server::{App, Listeners, ServerError};
use navis_auth::store::StoreCalls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A running server and what tests need to reach it.
pub struct TestServer {
    pub validator_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: String,
    pub calls: Arc<StoreCalls>,
    pub feed: Option<Arc<navis_auth::revocation::FeedState>>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
    _tmp: Option<tempfile::TempDir>,
}

pub type AdminClient = TokenAdminClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <admin token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    pub fn new(v: MetadataValue<tonic::metadata::Ascii>) -> Self {
        Bearer(v)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

impl TestServer {
    /// A server in a fresh temp dir.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A server in a fresh temp dir with extra `serve` flags.
    pub async fn start_with(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut s = Self::start_in(&dir, extra).await;
        s._tmp = Some(tmp);
        s
    }

    /// A server whose data lives in `dir` (for restart tests).
    pub async fn start_in(dir: &Path, extra: &[&str]) -> Self {
        let dir_s = dir.to_str().expect("utf-8 path");
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            dir_s,
            "--last-used-flush",
            "50ms",
            "--shutdown-grace",
            "2s",
        ];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).expect("config");
        let listeners = Listeners::bind(&config).await.expect("bind");
        let (validator_addr, admin_addr, http_addr) = listeners.addrs();
        let admin_token_file = config.admin_token_file.clone();
        let app = App::build(config).await.expect("build");
        let calls = app.store_calls();
        let feed = app.feed_state();
        let admin_token = std::fs::read_to_string(admin_token_file)
            .expect("admin token file")
            .trim()
            .to_owned();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(app.serve(listeners, async {
            let _ = rx.await;
        }));
        TestServer {
            validator_addr,
            admin_addr,
            http_addr,
            data_dir: dir.to_owned(),
            admin_token,
            calls,
            feed,
            stop: Some(tx),
            handle: Some(handle),
            _tmp: None,
        }
    }

    pub async fn validator(&self) -> ValidatorClient<Channel> {
        ValidatorClient::new(channel(self.validator_addr).await)
    }

    pub async fn admin(&self) -> AdminClient {
        self.admin_as(&self.admin_token.clone()).await
    }

    /// An admin client presenting `token` (for auth tests).
    pub async fn admin_as(&self, token: &str) -> AdminClient {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii");
        TokenAdminClient::with_interceptor(channel(self.admin_addr).await, Bearer(value))
    }

    /// Stops the server (as SIGTERM would) and returns how `serve` ended.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.stop_ref().await
    }

    async fn stop_ref(&mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => tokio::time::timeout(Duration::from_secs(20), h)
                .await
                .expect("server stops within 20s")
                .expect("server task"),
            None => Ok(()),
        }
    }

    /// A plain HTTP GET on the HTTP listener: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get_at(self.http_addr, path).await
    }

    /// Creates an API key: (plaintext, info).
    pub async fn create_key(&self, subject: &str, scopes: &[&str]) -> (String, pb::TokenInfo) {
        let r = self
            .admin()
            .await
            .create_api_key(pb::CreateApiKeyRequest {
                subject: subject.into(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                name: "test".into(),
                ..Default::default()
            })
            .await
            .expect("create key")
            .into_inner();
        (r.api_key, r.info.expect("info"))
    }

    /// Issues an OAuth pair.
    pub async fn issue(&self, subject: &str, client: &str, scopes: &[&str]) -> pb::OAuthTokens {
        self.admin()
            .await
            .issue_o_auth_tokens(pb::IssueOAuthTokensRequest {
                subject: subject.into(),
                client_id: client.into(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .await
            .expect("issue")
            .into_inner()
    }

    /// Waits until `/readyz` says ready (with Redis: the feed has caught up).
    pub async fn wait_ready(&self) {
        let ok = eventually(Duration::from_secs(10), || async {
            self.http_get("/readyz").await.0 == 200
        })
        .await;
        assert!(ok, "server did not become ready");
    }

    /// Validates `token` needing `scopes`.
    pub async fn check(&self, token: &str, scopes: &[&str]) -> pb::ValidateResponse {
        self.check_req(req(token, scopes)).await.expect("validate")
    }

    pub async fn check_req(&self, r: pb::ValidateRequest) -> Result<pb::ValidateResponse, Status> {
        self.validator()
            .await
            .validate(r)
            .await
            .map(tonic::Response::into_inner)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn req(token: &str, scopes: &[&str]) -> pb::ValidateRequest {
    pb::ValidateRequest {
        token: token.as_bytes().to_vec(),
        required_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

pub fn decision(r: &pb::ValidateResponse) -> pb::Decision {
    pb::Decision::try_from(r.decision).expect("known decision")
}

/// Polls `f` every 20 ms until it returns true, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A well-formed token (valid checksum) that was never issued.
pub fn unknown_token(kind: navis_auth::token::TokenKind) -> String {
    navis_auth::token::generate(kind)
        .expect("rng")
        .into_exposed()
}

/// Sends one raw HTTP/1.0 request (no chunked bodies to undo): (status, lowercased head,
/// body); status 0 when nothing answers (a server still starting).
async fn exchange(addr: SocketAddr, raw: String) -> (u16, String, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new(), String::new());
    };
    let mut buf = Vec::new();
    if s.write_all(raw.as_bytes()).await.is_err() || s.read_to_end(&mut buf).await.is_err() {
        return (0, String::new(), String::new());
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A plain HTTP GET: (status, body).
pub async fn http_get_at(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = exchange(
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n"),
    )
    .await;
    (status, body)
}

/// A plain HTTP POST: (status, lowercased head, body).
pub async fn http_post_at(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut req = format!(
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    exchange(addr, req).await
}
