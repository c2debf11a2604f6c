//! Command line and configuration: clap derive, every flag with a `NAVIS_AUTH_*` environment
//! twin, parsed once into typed structs. The only module that reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::challenge::Challenges;

/// navis-auth: token validation for the Navis Ops API and MCP servers.
#[derive(Debug, Parser)]
#[command(name = "navis-auth", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (Validator, TokenAdmin and HTTP listeners).
    Serve(Box<ServeArgs>),
    /// Create, list, rotate and revoke API keys.
    Keys {
        /// The keys subcommand.
        #[command(subcommand)]
        cmd: KeysCmd,
        /// Where the service is.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Issue and refresh OAuth tokens (what the authorization server calls).
    Oauth {
        /// The oauth subcommand.
        #[command(subcommand)]
        cmd: OauthCmd,
        /// Where the service is.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke one token, one grant (subject + client) or every token of a subject.
    Revoke {
        /// The revoke subcommand.
        #[command(subcommand)]
        cmd: RevokeCmd,
        /// Where the service is.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask the Validator about a token, as an API server would. Exit code 0 = ALLOW.
    Validate {
        /// The token, a whole `Bearer …` value, or `-` to read it from standard input (keeps it
        /// out of shell history).
        token: String,
        /// A scope the call needs (repeatable, or space/comma separated).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// The RFC 8707 resource the call is for.
        #[arg(long, default_value = "")]
        resource: String,
        /// Where the service is.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `navis-auth keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create an API key; the key is printed once.
    Create {
        /// Who the key acts for.
        #[arg(long)]
        subject: String,
        /// Scopes, space or comma separated (repeatable): `mcp:read`, or `mcp:read,mcp:write`.
        #[arg(long, required = true, num_args = 1..)]
        scopes: Vec<String>,
        /// A label for the Settings page.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime (`90d`, `12h`, `3600s`); omit for a key that never expires.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Bind the key to one RFC 8707 resource.
        #[arg(long, default_value = "")]
        resource: String,
    },
    /// List a subject's tokens (metadata only, never secrets).
    List {
        /// Whose tokens.
        #[arg(long)]
        subject: String,
        /// Only tokens issued to this OAuth client.
        #[arg(long, default_value = "")]
        client_id: String,
        /// Include revoked, expired and spent tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an API key (or any token) by its token id.
    Revoke {
        /// The token id (`tok_…`) from `keys list`.
        token_id: String,
    },
    /// Replace a key: a new key with the same subject and scopes; the old one keeps working for
    /// the grace period.
    Rotate {
        /// The token id of the key to replace.
        token_id: String,
        /// How long the old key keeps working (`0s` = stops at once).
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        grace: Duration,
    },
}

/// `navis-auth oauth …`
#[derive(Debug, Subcommand)]
pub enum OauthCmd {
    /// Issue an access + refresh token pair (a new grant).
    Issue {
        /// The user.
        #[arg(long)]
        subject: String,
        /// The OAuth client.
        #[arg(long)]
        client_id: String,
        /// Granted scopes.
        #[arg(long, required = true, num_args = 1..)]
        scopes: Vec<String>,
        /// RFC 8707 resource the tokens are for.
        #[arg(long, default_value = "")]
        resource: String,
        /// Access token lifetime.
        #[arg(long, value_parser = parse_duration)]
        access_ttl: Option<Duration>,
        /// Refresh token lifetime.
        #[arg(long, value_parser = parse_duration)]
        refresh_ttl: Option<Duration>,
    },
    /// Spend a refresh token for a new pair.
    Refresh {
        /// The refresh token, or `-` to read it from standard input.
        refresh_token: String,
        /// The client the grant belongs to.
        #[arg(long)]
        client_id: String,
        /// Narrow the scopes (default: the grant's).
        #[arg(long, num_args = 1..)]
        scopes: Vec<String>,
    },
}

/// `navis-auth revoke …`
#[derive(Debug, Subcommand)]
pub enum RevokeCmd {
    /// One token, by id.
    Token {
        /// The token id.
        token_id: String,
    },
    /// Every token a subject gave one client (Connected Apps → Disconnect).
    Grant {
        /// The user.
        #[arg(long)]
        subject: String,
        /// The OAuth client.
        #[arg(long)]
        client_id: String,
    },
    /// Every token of a subject.
    Subject {
        /// The user.
        #[arg(long)]
        subject: String,
    },
}

/// How client subcommands reach the service.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Validator address: `host:port` (http, or https with --tls-ca), `http://…` or
    /// `https://…`.
    #[arg(
        long,
        global = true,
        env = "NAVIS_AUTH_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub addr: String,
    /// TokenAdmin address (same forms as --addr).
    #[arg(
        long,
        global = true,
        env = "NAVIS_AUTH_ADMIN_ADDR",
        default_value = "127.0.0.1:50052"
    )]
    pub admin_addr: String,
    /// Admin token (prefer the file or the environment: flags show up in `ps`).
    #[arg(
        long,
        global = true,
        env = "NAVIS_AUTH_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// File holding the admin token [default: <data-dir>/admin-token].
    #[arg(long, global = true, env = "NAVIS_AUTH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The service's data directory, where it keeps a generated admin token.
    #[arg(long, global = true, env = "NAVIS_AUTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Connect with TLS, trusting this CA bundle (PEM) to have signed the server's certificate
    /// (addresses without a scheme then mean https://).
    #[arg(long, global = true, env = "NAVIS_AUTH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// mTLS: the client certificate chain (PEM) to present. Needs --tls-client-key and --tls-ca.
    #[arg(
        long,
        global = true,
        env = "NAVIS_AUTH_TLS_CLIENT_CERT",
        requires_all = ["tls_client_key", "tls_ca"]
    )]
    pub tls_client_cert: Option<PathBuf>,
    /// mTLS: the private key (PEM) of --tls-client-cert.
    #[arg(
        long,
        global = true,
        env = "NAVIS_AUTH_TLS_CLIENT_KEY",
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<PathBuf>,
    /// Check the server's certificate against this name instead of the address's host (e.g.
    /// through `kubectl port-forward` to localhost). Needs --tls-ca.
    #[arg(
        long,
        global = true,
        env = "NAVIS_AUTH_TLS_SERVER_NAME",
        requires = "tls_ca"
    )]
    pub tls_server_name: Option<String>,
}

impl ClientArgs {
    /// Where the admin token file is.
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file.clone().unwrap_or_else(|| {
            self.data_dir
                .clone()
                .unwrap_or_else(default_data_dir)
                .join(ADMIN_TOKEN_FILE)
        })
    }
}

/// `navis-auth serve` flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "serve")]
pub struct ServeArgs {
    /// Validator gRPC listener (port 0 = any free port; the bound address is logged).
    #[arg(long, env = "NAVIS_AUTH_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// TokenAdmin gRPC listener: keep it off the public network.
    #[arg(
        long,
        env = "NAVIS_AUTH_ADMIN_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub admin_listen: SocketAddr,
    /// HTTP listener for /healthz and /readyz.
    #[arg(long, env = "NAVIS_AUTH_HTTP_LISTEN", default_value = "127.0.0.1:9090")]
    pub http_listen: SocketAddr,
    /// TLS on both gRPC listeners: the server's certificate chain (PEM, leaf first). Needs
    /// --tls-key. The HTTP listener stays plaintext.
    #[arg(long, env = "NAVIS_AUTH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "NAVIS_AUTH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// mTLS: CA bundle (PEM); clients of both gRPC listeners must present a certificate it
    /// signed. Needs --tls-cert and --tls-key.
    #[arg(long, env = "NAVIS_AUTH_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Local state: the embedded store and a generated admin token
    /// [default: $XDG_DATA_HOME/navis-auth or ~/.local/share/navis-auth].
    #[arg(long, env = "NAVIS_AUTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Token store: `embedded` (in the data directory), `embedded:PATH` (a directory),
    /// `redis://host:port/db` (shared by every replica), or
    /// `redis+cluster://host:port,host:port,…` (a Redis Cluster: seed nodes, the rest are found).
    #[arg(long, env = "NAVIS_AUTH_STORE", default_value = "embedded", value_parser = parse_store)]
    pub store: StoreSpec,
    /// File holding the admin token; generated (mode 0600) when missing
    /// [default: <data-dir>/admin-token].
    #[arg(long, env = "NAVIS_AUTH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Envoy ext_authz: pass the caller's `Authorization` header on to the upstream (by default
    /// it is removed from allowed requests: no token passthrough).
    #[arg(long, env = "NAVIS_AUTH_EXT_AUTHZ_KEEP_AUTHORIZATION")]
    pub ext_authz_keep_authorization: bool,
    /// Envoy ext_authz: the RFC 8707 resource for requests to a host, as `HOST=URI`, when the
    /// route gives no `navis_resource` context extension (repeatable, or comma separated).
    #[arg(long, env = "NAVIS_AUTH_EXT_AUTHZ_HOST_RESOURCE", value_delimiter = ',', value_parser = parse_host_resource)]
    pub ext_authz_host_resource: Vec<(String, String)>,
    /// File holding the bearer credential callers of `POST /oauth/introspect` (RFC 7662) must
    /// present [default: the admin token].
    #[arg(long, env = "NAVIS_AUTH_INTROSPECTION_TOKEN_FILE")]
    pub introspection_token_file: Option<PathBuf>,
    /// The protected resource's RFC 9728 metadata URL, sent in 401/403 challenges as
    /// `resource_metadata` (the MCP authorization spec asks for it).
    #[arg(long, env = "NAVIS_AUTH_RESOURCE_METADATA_URL", value_parser = parse_metadata_url)]
    pub resource_metadata_url: Option<String>,
    /// Most tokens the in-memory cache holds.
    #[arg(long, env = "NAVIS_AUTH_CACHE_CAPACITY", default_value = "1000000", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub cache_capacity: u64,
    /// How long "no such token" is remembered.
    #[arg(long, env = "NAVIS_AUTH_NEGATIVE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub negative_ttl: Duration,
    /// How often queued last-used times are written to the store.
    #[arg(long, env = "NAVIS_AUTH_LAST_USED_FLUSH", default_value = "5s", value_parser = parse_nonzero_duration)]
    pub last_used_flush: Duration,
    /// How long in-flight calls may take to finish after SIGTERM.
    #[arg(long, env = "NAVIS_AUTH_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Prefix of every Redis key (several deployments can share one Redis).
    #[arg(long, env = "NAVIS_AUTH_REDIS_PREFIX", default_value = "navis-auth:", value_parser = parse_prefix)]
    pub redis_prefix: String,
    /// Connect and response timeout of each Redis call.
    #[arg(long, env = "NAVIS_AUTH_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_nonzero_duration)]
    pub redis_timeout: Duration,
    /// A replica answers from its cache only while its last confirmed catch-up with the
    /// revocation stream is younger than this; past it every lookup goes to the store.
    #[arg(long, env = "NAVIS_AUTH_REVOCATION_LEASE", default_value = "5s", value_parser = parse_lease)]
    pub revocation_lease: Duration,
    /// How long revocation stream entries are kept (at least the longest token lifetime you
    /// issue; a replica disconnected for longer flushes its cache instead of replaying).
    #[arg(long, env = "NAVIS_AUTH_REVOCATION_RETENTION", default_value = "30d", value_parser = parse_nonzero_duration)]
    pub revocation_retention: Duration,
    /// Log filter (`info`, `debug`, `navis_auth=debug,tonic=info`, …).
    #[arg(long, env = "NAVIS_AUTH_LOG", default_value = "info")]
    pub log: String,
    /// Log format: `plain` for terminals, `json` (one object per line) for log pipelines.
    #[arg(long, env = "NAVIS_AUTH_LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"])]
    pub log_format: String,
}

/// Which store to run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// The embedded store, in the data directory or the given one.
    Embedded(Option<PathBuf>),
    /// Redis, at this URL.
    Redis(String),
}

/// Where the records live, resolved.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded store in this directory.
    Embedded(PathBuf),
    /// Redis.
    Redis(crate::store::redis::RedisConfig),
}

/// The typed configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Validator listener.
    pub listen: SocketAddr,
    /// TokenAdmin listener.
    pub admin_listen: SocketAddr,
    /// HTTP listener.
    pub http_listen: SocketAddr,
    /// TLS on the gRPC listeners (files read at startup).
    pub tls: Option<crate::tls::ServerTlsFiles>,
    /// Local state directory.
    pub data_dir: PathBuf,
    /// The store.
    pub store: StoreConfig,
    /// The revocation lease (G2).
    pub revocation_lease: Duration,
    /// The admin token file.
    pub admin_token_file: PathBuf,
    /// The introspection credential file (None: the admin token).
    pub introspection_token_file: Option<PathBuf>,
    /// Envoy ext_authz answers.
    pub ext_authz: crate::grpc::ext_authz::ExtAuthzConfig,
    /// Challenge builder (with the resource metadata URL).
    pub challenges: Challenges,
    /// Cache size.
    pub cache_capacity: usize,
    /// Negative entry lifetime.
    pub negative_ttl: Duration,
    /// last_used flush interval.
    pub last_used_flush: Duration,
    /// Drain bound.
    pub shutdown_grace: Duration,
    /// Log filter.
    pub log: String,
    /// JSON logs instead of plain text.
    pub log_json: bool,
}

/// Name of the admin token file in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

impl Config {
    /// Parses `serve` arguments (the first item is the program name, as with `std::env::args`).
    ///
    /// # Errors
    /// A clap error naming the flag.
    pub fn try_parse_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        ServeArgs::try_parse_from(args).map(Config::from)
    }
}

impl From<ServeArgs> for Config {
    fn from(a: ServeArgs) -> Config {
        let data_dir = a.data_dir.unwrap_or_else(default_data_dir);
        let store = match a.store {
            StoreSpec::Embedded(Some(p)) => StoreConfig::Embedded(p),
            StoreSpec::Embedded(None) => StoreConfig::Embedded(data_dir.clone()),
            StoreSpec::Redis(url) => StoreConfig::Redis(crate::store::redis::RedisConfig {
                url,
                prefix: a.redis_prefix,
                timeout: a.redis_timeout,
                retention: a.revocation_retention,
            }),
        };
        let admin_token_file = a
            .admin_token_file
            .unwrap_or_else(|| data_dir.join(ADMIN_TOKEN_FILE));
        Config {
            listen: a.listen,
            admin_listen: a.admin_listen,
            http_listen: a.http_listen,
            tls: a
                .tls_cert
                .zip(a.tls_key)
                .map(|(cert, key)| crate::tls::ServerTlsFiles {
                    cert,
                    key,
                    client_ca: a.tls_client_ca,
                }),
            challenges: Challenges::new(a.resource_metadata_url).unwrap_or_default(),
            data_dir,
            store,
            revocation_lease: a.revocation_lease,
            admin_token_file,
            introspection_token_file: a.introspection_token_file,
            ext_authz: crate::grpc::ext_authz::ExtAuthzConfig {
                strip_authorization: !a.ext_authz_keep_authorization,
                host_resources: a.ext_authz_host_resource.into_iter().collect(),
            },
            cache_capacity: usize::try_from(a.cache_capacity).unwrap_or(usize::MAX),
            negative_ttl: a.negative_ttl,
            last_used_flush: a.last_used_flush,
            shutdown_grace: a.shutdown_grace,
            log: a.log,
            log_json: a.log_format == "json",
        }
    }
}

/// `$XDG_DATA_HOME/navis-auth`, else `~/.local/share/navis-auth`, else `./navis-auth-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("navis-auth");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/navis-auth");
    }
    PathBuf::from("navis-auth-data")
}

fn parse_store(s: &str) -> Result<StoreSpec, String> {
    match s.split_once(':') {
        None if s == "embedded" => Ok(StoreSpec::Embedded(None)),
        Some(("embedded", "")) => Err("embedded:PATH needs a directory".into()),
        Some(("embedded", p)) => Ok(StoreSpec::Embedded(Some(PathBuf::from(p)))),
        Some(("redis" | "redis+cluster", _)) => {
            crate::store::redis::RedisTarget::parse(s)
                .map_err(|e| format!("not a usable Redis URL: {e}"))?;
            Ok(StoreSpec::Redis(s.to_owned()))
        }
        Some(("rediss", _)) => Err(
            "rediss:// (TLS to Redis) is not supported by this build; use redis:// on a private network or a TLS sidecar".into(),
        ),
        _ => Err(
            "expected `embedded`, `embedded:PATH`, `redis://host:port/db` or `redis+cluster://host:port,host:port,…`"
                .into(),
        ),
    }
}

fn parse_host_resource(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((host, uri)) if !host.is_empty() && uri.contains("://") => {
            Ok((host.to_ascii_lowercase(), uri.to_owned()))
        }
        _ => Err("expected HOST=URI, e.g. mcp.example.com=https://mcp.example.com".into()),
    }
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.len() > 64 || s.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("use at most 64 printable characters without spaces".into());
    }
    if s.contains(['{', '}']) {
        // Braces would become the Redis Cluster hash tag of every key (one slot for all).
        return Err("must not contain `{` or `}`".into());
    }
    Ok(s.to_owned())
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d < Duration::from_millis(200) => Err("must be at least 200ms".into()),
        d => Ok(d),
    }
}

fn parse_metadata_url(s: &str) -> Result<String, String> {
    Challenges::new(Some(s.to_owned()))
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Parses `90d`, `12h`, `30m`, `15s`, `250ms` or a plain number of seconds.
///
/// # Errors
/// A message saying what is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s, 15m, 12h, 90d, 250ms)"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(format!("`{s}` has an unknown unit (use ms, s, m, h or d)")),
    };
    Ok(d)
}

fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_embedded() {
        let c = Config::try_parse_from(["serve", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:50052");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:9090");
        assert!(matches!(c.store, StoreConfig::Embedded(ref p) if p == &PathBuf::from("/tmp/x")));
        let r = Config::try_parse_from(["serve", "--store", "redis://127.0.0.1:7000/2"]).unwrap();
        assert!(matches!(r.store, StoreConfig::Redis(ref c) if c.prefix == "navis-auth:"));
        assert!(Config::try_parse_from(["serve", "--store", "rediss://x:1"]).is_err());
        let cl = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000";
        let r = Config::try_parse_from(["serve", "--store", cl]).unwrap();
        assert!(matches!(r.store, StoreConfig::Redis(ref c) if c.url == cl));
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,,b:2",
            "redis+cluster://a:1/0",
        ] {
            assert!(
                Config::try_parse_from(["serve", "--store", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(Config::try_parse_from(["serve", "--redis-prefix", "a{b}:"]).is_err());
        assert_eq!(c.admin_token_file, PathBuf::from("/tmp/x/admin-token"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Config::try_parse_from(["serve", "--listen", "nope"]).unwrap_err();
        assert!(e.to_string().contains("--listen"), "{e}");
        let e = Config::try_parse_from(["serve", "--store", "mongodb://x"]).unwrap_err();
        assert!(e.to_string().contains("--store"), "{e}");
        let e = Config::try_parse_from(["serve", "--resource-metadata-url", "https://x\"y"])
            .unwrap_err();
        assert!(e.to_string().contains("--resource-metadata-url"), "{e}");
        let e = Config::try_parse_from(["serve", "--negative-ttl", "5 parsecs"]).unwrap_err();
        assert!(e.to_string().contains("--negative-ttl"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1y").is_err());
    }
}
