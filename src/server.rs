//! Wiring: open the store, build cache, validator and admin service, serve the three listeners,
//! and shut down in order (not ready → stop accepting → drain within a bound → flush).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};

use crate::admin::TokenService;
use crate::cache::Cache;
use crate::clock::Clock;
use crate::config::{Config, StoreConfig};
use crate::grpc::AdminAuth;
use crate::grpc::admin::AdminService;
use crate::grpc::ext_authz::ExtAuthz;
use crate::grpc::validator::ValidatorService;
use crate::http::{self, Readiness};
use crate::metrics::Metrics;
use crate::pb;
use crate::revocation::{FeedError, FeedState, Lease, RedisFeed, Revocations};
use crate::store::embedded::{EmbeddedStore, OpenError};
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreCalls};
use crate::token;
use crate::validator::{Validator, run_touch_flusher};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind {
        /// The flag that named the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("--store: {0}")]
    Store(#[from] OpenError),
    /// The Redis URL could not be used.
    #[error("--store: {0}")]
    Redis(String),
    /// Flags that cannot work together.
    #[error("{0}")]
    Config(String),
    /// The admin token file could not be read or written.
    #[error("--admin-token-file {path}: {reason}")]
    AdminToken {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The introspection credential file could not be used.
    #[error("--introspection-token-file {path}: {reason}")]
    IntrospectionToken {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A `--tls-*` file cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A listener failed while serving.
    #[error("{listener} listener failed: {reason}")]
    Serve {
        /// Which one.
        listener: &'static str,
        /// The cause.
        reason: String,
    },
}

/// The three bound listeners. Bind them first (port 0 is fine) and pass them to [`run`].
#[derive(Debug)]
pub struct Listeners {
    /// Validator gRPC.
    pub grpc: TcpListener,
    /// TokenAdmin gRPC.
    pub admin: TcpListener,
    /// HTTP health.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    ///
    /// # Errors
    /// [`ServerError::Bind`] naming the flag.
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        async fn one(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { flag, addr, source })
        }
        Ok(Listeners {
            grpc: one("--listen", config.listen).await?,
            admin: one("--admin-listen", config.admin_listen).await?,
            http: one("--http-listen", config.http_listen).await?,
        })
    }

    /// The bound addresses: (validator, admin, http).
    pub fn addrs(&self) -> (SocketAddr, SocketAddr, SocketAddr) {
        let a = |l: &TcpListener| l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        (a(&self.grpc), a(&self.admin), a(&self.http))
    }
}

/// A built service, ready to serve.
pub struct App {
    config: Config,
    store: Store,
    cache: Arc<Cache>,
    validator: Arc<Validator>,
    tokens: TokenService,
    admin_auth: AdminAuth,
    touch_rx: mpsc::Receiver<(token::TokenHash, i64)>,
    feed: Option<RedisFeed>,
    lease: Lease,
    keepalive: Option<RedisStore>,
    metrics: Arc<Metrics>,
    introspection_auth: Option<AdminAuth>,
    tls: Option<ServerTlsConfig>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs the service until `shutdown` resolves.
///
/// # Errors
/// When the store or admin token cannot be set up, or a listener fails.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    App::build(config).await?.serve(listeners, shutdown).await
}

impl App {
    /// Opens the store and builds every part.
    ///
    /// # Errors
    /// When the store or admin token cannot be set up.
    pub async fn build(config: Config) -> Result<App, ServerError> {
        // TLS files first: a bad one stops startup before anything is opened.
        let tls = match &config.tls {
            Some(files) => {
                let tls = crate::tls::server_config(files)?;
                let client_ca = files.client_ca.as_ref().map(|p| p.display().to_string());
                tracing::info!(cert = %files.cert.display(), client_ca = client_ca.as_deref().unwrap_or("none"), "TLS on both gRPC listeners (client certificates required unless client_ca is none)");
                Some(tls)
            }
            None => None,
        };
        let clock = Clock::coarse();
        let cache = Arc::new(Cache::new(
            config.cache_capacity,
            config.negative_ttl,
            clock.clone(),
        ));
        let metrics = Metrics::new(
            match config.store {
                StoreConfig::Embedded(_) => "embedded",
                StoreConfig::Redis(_) => "redis",
            },
            matches!(config.store, StoreConfig::Redis(_)).then_some(config.revocation_lease),
        );
        let (store, feed, keepalive) = match &config.store {
            StoreConfig::Embedded(dir) => {
                let embedded = EmbeddedStore::open(dir)?;
                tracing::info!(path = %embedded.path().display(), "embedded store open");
                (
                    Store::with_metrics(Arc::new(embedded), Arc::clone(&metrics)),
                    None,
                    None,
                )
            }
            StoreConfig::Redis(rc) => {
                let bad = |e: crate::store::redis::BadRedisUrl| ServerError::Redis(e.0);
                let redis = RedisStore::new(rc).map_err(bad)?;
                let feed = RedisFeed::new(
                    &rc.url,
                    &rc.prefix,
                    Arc::clone(&cache),
                    config.revocation_lease,
                    rc.timeout,
                    Arc::clone(&metrics),
                )
                .map_err(|e| match e {
                    FeedError::Url(e) => bad(e),
                    e @ FeedError::Timing { .. } => ServerError::Config(e.to_string()),
                })?;
                tracing::info!(prefix = %rc.prefix, lease = ?config.revocation_lease, "redis store configured");
                let store = Store::with_metrics(Arc::new(redis.clone()), Arc::clone(&metrics));
                (store, Some(feed), Some(redis))
            }
        };
        let lease = feed
            .as_ref()
            .map_or(Lease::Always, |f| Lease::Feed(f.state()));
        let admin_token = load_or_create_admin_token(&config.admin_token_file)?;
        let introspection_auth = match (&config.introspection_token_file, &config.tls) {
            (Some(path), _) => Some(AdminAuth::new(&read_secret_file(path)?)),
            (None, None) => Some(AdminAuth::new(&admin_token)),
            // The HTTP listener is plaintext: with TLS on the gRPC listeners, the admin token
            // must not travel over it, so introspection needs its own credential.
            (None, Some(_)) => {
                tracing::info!(
                    "RFC 7662 introspection is off: with TLS, the admin token is not accepted on \
                     the plaintext HTTP listener; set --introspection-token-file to turn it on"
                );
                None
            }
        };
        let (touch_tx, touch_rx) = mpsc::channel(65_536);
        let validator = Arc::new(Validator::new(
            Arc::clone(&cache),
            store.clone(),
            clock.clone(),
            touch_tx,
            lease.clone(),
        ));
        let revocations = Revocations::new(Arc::clone(&cache), Some(Arc::clone(&metrics)));
        let tokens = TokenService::new(store.clone(), revocations, clock);
        Ok(App {
            introspection_auth,
            metrics,
            keepalive,
            feed,
            lease,
            admin_auth: AdminAuth::new(&admin_token),
            config,
            store,
            cache,
            validator,
            tokens,
            touch_rx,
            tls,
        })
    }

    /// Store call counters (tests use them to prove bad input never reaches the store).
    pub fn store_calls(&self) -> Arc<StoreCalls> {
        Arc::clone(self.store.calls())
    }

    /// The cache.
    pub fn cache(&self) -> Arc<Cache> {
        Arc::clone(&self.cache)
    }

    /// The revocation feed's state, with a shared store.
    pub fn feed_state(&self) -> Option<Arc<FeedState>> {
        self.feed.as_ref().map(RedisFeed::state)
    }

    /// Serves on `listeners` until `shutdown` resolves, then drains.
    ///
    /// # Errors
    /// When a listener fails.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let App {
            config,
            store,
            cache,
            validator,
            tokens,
            admin_auth,
            touch_rx,
            feed,
            lease,
            keepalive,
            metrics,
            introspection_auth,
            tls,
        } = self;
        let (grpc_addr, admin_addr, http_addr) = listeners.addrs();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_rx_feed = stop_rx.clone();
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };

        let health = HealthReporter::new();
        for name in [VALIDATOR, EXT_AUTHZ, ADMIN] {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let health_server = || {
            tonic_health::pb::health_server::HealthServer::new(HealthService::from_health_reporter(
                health.clone(),
            ))
        };
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .map_err(|e| ServerError::Serve {
                    listener: "reflection",
                    reason: e.to_string(),
                })
        };

        let validator_svc = ValidatorService::new(
            Arc::clone(&validator),
            config.challenges.clone(),
            Arc::clone(&metrics),
        );
        // Both gRPC listeners get the same TLS settings; tonic runs each handshake in its own
        // task, after our incoming stream set TCP_NODELAY, and the shutdown signal still stops
        // accepting and drains as without TLS.
        let builder = || -> Result<Server, ServerError> {
            match &tls {
                None => Ok(Server::builder()),
                Some(t) => {
                    Server::builder()
                        .tls_config(t.clone())
                        .map_err(|e| ServerError::Serve {
                            listener: "tls",
                            reason: e.to_string(),
                        })
                }
            }
        };
        let grpc = builder()?
            .add_service(health_server())
            .add_service(reflection()?)
            .add_service(validator_svc.into_server())
            .add_service(
                ExtAuthz::new(
                    Arc::clone(&validator),
                    config.challenges.clone(),
                    Arc::clone(&metrics),
                    config.ext_authz.clone(),
                )
                .into_server(),
            )
            .serve_with_incoming_shutdown(incoming(listeners.grpc), stopped());
        let admin = builder()?
            .add_service(health_server())
            .add_service(reflection()?)
            .add_service(AdminService::new(tokens).into_server(admin_auth))
            .serve_with_incoming_shutdown(incoming(listeners.admin), stopped());
        let readiness = Arc::new(Readiness::new(store.clone(), lease));
        let scrape = http::Scrape {
            metrics: Arc::clone(&metrics),
            cache: Arc::clone(&cache),
            feed: feed.as_ref().map(RedisFeed::state),
        };
        let upkeep = {
            let metrics = Arc::clone(&metrics);
            let mut stop = stop_rx_feed.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => metrics.upkeep(),
                        () = async { let _ = stop.wait_for(|s| *s).await; } => return,
                    }
                }
            })
        };
        let feed = feed.map(|f| tokio::spawn(f.run(stop_rx_feed.clone())));
        let keepalive = keepalive.map(|r| tokio::spawn(r.keepalive(stop_rx_feed.clone())));
        let introspection = http::Introspection {
            validator: Arc::clone(&validator),
            caller: introspection_auth,
        };
        let http = axum::serve(
            listeners.http,
            http::router(Arc::clone(&readiness), scrape, introspection),
        )
        .with_graceful_shutdown(stopped());

        let (flusher_stop_tx, flusher_stop_rx) = watch::channel(false);
        let flusher = tokio::spawn(run_touch_flusher(
            store.clone(),
            touch_rx,
            config.last_used_flush,
            flusher_stop_rx,
        ));
        let mut grpc = tokio::spawn(grpc);
        let mut admin = tokio::spawn(admin);
        let mut http = tokio::spawn(async move { http.await });
        readiness.set_ready(true);
        tracing::info!(validator = %grpc_addr, admin = %admin_addr, http = %http_addr, grpc_tls = tls.is_some(), "navis-auth serving");

        // Serve until asked to stop, or until a listener dies on its own.
        let early = tokio::select! {
            () = shutdown => None,
            r = &mut grpc => Some(("validator", r.map(|r| r.map_err(|e| e.to_string())))),
            r = &mut admin => Some(("admin", r.map(|r| r.map_err(|e| e.to_string())))),
            r = &mut http => Some(("http", r.map(|r| r.map_err(|e| e.to_string())))),
        };
        tracing::info!("shutting down: marking not ready, closing listeners, draining calls");
        readiness.set_ready(false);
        for name in ["", VALIDATOR, EXT_AUTHZ, ADMIN] {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            let _ = (&mut grpc).await;
            let _ = (&mut admin).await;
            let _ = (&mut http).await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?config.shutdown_grace, "drain took longer than the grace period; closing remaining connections");
            grpc.abort();
            admin.abort();
            http.abort();
        }
        let _ = flusher_stop_tx.send(true);
        let _ = flusher.await;
        for task in feed.into_iter().chain(keepalive).chain([upkeep]) {
            let _ = tokio::time::timeout(config.shutdown_grace, task).await;
        }
        tracing::info!("navis-auth stopped");
        match early {
            Some((listener, Ok(Err(reason)))) => Err(ServerError::Serve { listener, reason }),
            Some((listener, Err(join))) => Err(ServerError::Serve {
                listener,
                reason: join.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// A bound listener as tonic's incoming stream, with TCP_NODELAY on every accepted connection
/// (`Server::tcp_nodelay` only applies to listeners tonic binds itself; without it small
/// answers wait for Nagle's algorithm: ~40 ms p99 under load, found by the load harness).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

const VALIDATOR: &str = "navis.auth.v1.Validator";
const EXT_AUTHZ: &str = "envoy.service.auth.v3.Authorization";
const ADMIN: &str = "navis.auth.v1.TokenAdmin";

/// Reads the introspection credential from a file (trimmed; at least 16 characters).
///
/// # Errors
/// When the file cannot be read or holds too short a credential.
pub fn read_secret_file(path: &Path) -> Result<String, ServerError> {
    let fail = |reason: String| ServerError::IntrospectionToken {
        path: path.to_owned(),
        reason,
    };
    let t = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let t = t.trim().to_owned();
    if t.len() < 16 {
        return Err(fail(
            "holds fewer than 16 characters; use a long random token".into(),
        ));
    }
    warn_if_readable_by_others(path);
    Ok(t)
}

/// Reads the admin token, or generates one into a new file with mode 0600.
///
/// # Errors
/// When the file cannot be read or created, or holds too short a token.
pub fn load_or_create_admin_token(path: &Path) -> Result<String, ServerError> {
    let fail = |reason: String| ServerError::AdminToken {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let t = s.trim().to_owned();
            if t.len() < 16 {
                return Err(fail(
                    "holds fewer than 16 characters; use a long random token".into(),
                ));
            }
            warn_if_readable_by_others(path);
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = token::random_id("nadm_", 40).map_err(|e| fail(e.to_string()))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            }
            write_private(path, &t).map_err(|e| fail(e.to_string()))?;
            tracing::info!(path = %path.display(), "generated an admin token (mode 0600); admin clients read it from this file");
            Ok(t)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, format!("{contents}\n"))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o007 != 0
    {
        // Group read is how Kubernetes mounts Secrets for a non-root pod (fsGroup): not warned.
        tracing::warn!(path = %path.display(), "admin token file is readable by others; chmod 600 (or 640) it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}
