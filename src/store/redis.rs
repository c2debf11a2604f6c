//! The Redis store, shared by every replica: one Redis server (`redis://`) or a Redis Cluster
//! (`redis+cluster://`), with the same key layout on both.
//!
//! Keys (all under one prefix `P`, default `navis-auth:`). The `{…}` part of a key is its Redis
//! Cluster hash tag: only it decides the key's slot, so records spread over every slot while the
//! revocation log keeps its three keys on one slot.
//! - `P t:{<sha256 hex>}`: a HASH per token: `d` (the protobuf record), and the fields scripts read
//!   or change: `e` expires_at, `r` revoked_at, `s` spent_at, `u` last_used_at, `k` kind, `c`
//!   client, `i` token id, `g` grant, `p` 1 while a change to it may not have been published yet,
//!   `n` (a spent refresh token) the hash of the successor it was spent for.
//!   `EXPIREAT` = the token's expiry.
//! - `P i:{<token id>}`: the token's hash (STRING), same expiry.
//! - `P s:{<subject>}`: ZSET of the subject's token ids (score 0, ordered by id for paging).
//! - `P g:{<grant id>}`: SET of the grant's token ids.
//! - `P g:{<grant id>}:revoked`: the grant's tombstone (set by a grant revocation, for a day).
//! - `P {rev}:revocations`: the revocation STREAM (fields `g` granularity, `at` unix ms, `h`
//!   hashes), trimmed by age (`MINID ~`), and the pub/sub channel of the same name (sharded
//!   pub/sub, `SPUBLISH`, on a cluster; `PUBLISH` on one server).
//! - `P {rev}:epoch`: a random value that changes when Redis loses its data (see `revocation`).
//!
//! Every script names all its keys in `KEYS` and touches exactly one slot, so each one is atomic
//! on a cluster too. An operation that spans slots is a sequence of such steps, ordered so that
//! no failure between two steps can make a revoked token acceptable (see `RedisStore::revoke_with`
//! and the comments on insertion, rotation and refresh).
//!
//! No plaintext token is ever sent to Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt as _, TryStreamExt as _};
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{AsyncCommands, Cmd, RedisFuture, Script, Value};

use super::{
    Changed, ListPage, ListQuery, RefreshRefusal, RefreshState, RevokeTarget, SpendOutcome,
    StoreError, StoreFuture, Successors, TokenStore,
};
use crate::record::TokenRecord;
use crate::token::{TokenHash, TokenKind};

/// The URL scheme of a Redis Cluster store: `redis+cluster://host:port,host:port,…`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// How the Redis store connects.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:port/db`, or `redis+cluster://host:port,host:port,…`.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// Connect and response timeout for each call; a call never takes much longer.
    pub timeout: Duration,
    /// How long revocation stream entries are kept.
    pub retention: Duration,
}

/// Where Redis is: one server, or the seed nodes of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: a `redis://` URL.
    Server(String),
    /// A cluster: one `redis://host:port` URL per seed node (the rest are discovered).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Parses `redis://…` or `redis+cluster://[user:password@]host:port,host:port,…`.
    ///
    /// # Errors
    /// When the URL is not usable.
    pub fn parse(url: &str) -> Result<Self, BadRedisUrl> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            redis::Client::open(url).map_err(|e| BadRedisUrl(e.to_string()))?;
            return Ok(RedisTarget::Server(url.to_owned()));
        };
        let rest = rest.trim_end_matches('/');
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((a, h)) => (format!("{a}@"), h),
            None => (String::new(), rest),
        };
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() || host.contains('/') || host.contains('?') {
                return Err(BadRedisUrl(
                    "redis+cluster:// takes host:port,host:port,… (no database, no path)".into(),
                ));
            }
            let node = format!("redis://{auth}{host}");
            redis::Client::open(node.as_str())
                .map_err(|e| BadRedisUrl(format!("cluster node #{}: {e}", nodes.len() + 1)))?;
            nodes.push(node);
        }
        Ok(RedisTarget::Cluster(nodes))
    }
}

/// A connection to one server or to a cluster, so that commands and scripts are written once.
/// On a cluster every command goes to the node serving its key's slot (redirections and
/// topology changes are followed by the client).
#[derive(Clone)]
pub enum Conn {
    /// One server, reconnecting by itself (the store's connection).
    Manager(ConnectionManager),
    /// One server, one connection (the revocation feed's, which reconnects itself).
    Plain(MultiplexedConnection),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The keys of one deployment (one prefix).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    /// The keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// A token's record.
    pub fn record(&self, hex: &str) -> String {
        format!("{}t:{{{hex}}}", self.prefix)
    }

    /// A token id's pointer to the record.
    pub fn id(&self, id: &str) -> String {
        format!("{}i:{{{id}}}", self.prefix)
    }

    /// A subject's index.
    pub fn subject(&self, subject: &str) -> String {
        format!("{}s:{{{subject}}}", self.prefix)
    }

    /// A grant's index.
    pub fn grant(&self, grant: &str) -> String {
        format!("{}g:{{{grant}}}", self.prefix)
    }

    /// A grant's tombstone (on the grant index's slot): set by a grant revocation before it
    /// reads the grant's members, checked by a refresh after it spends.
    pub fn grant_tombstone(&self, grant: &str) -> String {
        format!("{}g:{{{grant}}}:revoked", self.prefix)
    }

    /// The revocation stream, and the pub/sub channel of the same name.
    pub fn revocations(&self) -> String {
        format!("{}{{rev}}:revocations", self.prefix)
    }

    /// The epoch value (on the stream's slot, so it is lost and replaced together with it).
    pub fn epoch(&self) -> String {
        format!("{}{{rev}}:epoch", self.prefix)
    }
}

/// KEYS[1] the record. ARGV: blob, exp, kind, client, id, grant.
const INSERT_RECORD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('CONFLICT token hash exists') end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'e', ARGV[2], 'r', 0, 's', 0, 'u', 0, 'p', 0,
  'k', ARGV[3], 'c', ARGV[4], 'i', ARGV[5], 'g', ARGV[6])
local exp = tonumber(ARGV[2])
if exp > 0 then redis.call('EXPIREAT', KEYS[1], exp) end
return 1
";

/// KEYS[1] a subject ZSET (ARGV[1] = 'z') or grant SET ('s'). ARGV: kind, member, exp.
/// The index lives as long as its longest-lived token.
const INDEX_ADD: &str = r"
local exp = tonumber(ARGV[3])
local existed = redis.call('EXISTS', KEYS[1])
if ARGV[1] == 'z' then redis.call('ZADD', KEYS[1], 0, ARGV[2]) else redis.call('SADD', KEYS[1], ARGV[2]) end
if exp == 0 then redis.call('PERSIST', KEYS[1])
elseif existed == 0 then redis.call('EXPIREAT', KEYS[1], exp)
else
  local cur = redis.call('EXPIRETIME', KEYS[1])
  if cur >= 0 and cur < exp then redis.call('EXPIREAT', KEYS[1], exp) end
end
return 1
";

/// KEYS[1] the record. ARGV: now, '1' to require client ARGV[3].
/// Returns {code, grant}: code 1 revoked now; 2 changed before (revoked, or shortened by a rotation) and maybe never
/// published (`p`), so to be published again; 0 nothing to do.
const REVOKE_RECORD: &str = r"
local f = redis.call('HMGET', KEYS[1], 'r', 'e', 'c', 'p')
if not f[1] then return {0, ''} end
local now, r, e = tonumber(ARGV[1]), tonumber(f[1]), tonumber(f[2])
if ARGV[2] == '1' and f[3] ~= ARGV[3] then return {0, ''} end
local g = redis.call('HGET', KEYS[1], 'g') or ''
if r == 0 and (e == 0 or e > now) then
  redis.call('HSET', KEYS[1], 'r', now, 'p', 1)
  return {1, g}
end
if f[4] == '1' then return {2, g} end
return {0, g}
";

/// KEYS[1] a grant's tombstone, KEYS[2] its index (one slot). ARGV: now. Sets the tombstone
/// (kept a day: far longer than any refresh in flight), then returns the grant's token ids.
const GRANT_TOMBSTONE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'EX', 86400)
return redis.call('SMEMBERS', KEYS[2])
";

/// KEYS[1] a grant's tombstone. Returns 1 when the grant was revoked.
const GRANT_REVOKED: &str = r"
return redis.call('EXISTS', KEYS[1])
";

/// KEYS[1] the record: its last change is published.
const CONFIRM: &str = r"
if redis.call('HGET', KEYS[1], 'p') == '1' then redis.call('HSET', KEYS[1], 'p', 0) end
return 1
";

/// KEYS[1] the stream, KEYS[2] the channel (same slot). ARGV: granularity, unix ms, minid,
/// hashes, '1' for sharded pub/sub.
const PUBLISH: &str = r"
local sid = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[3], '*', 'g', ARGV[1], 'at', ARGV[2], 'h', ARGV[4])
local cmd = 'PUBLISH'
if ARGV[5] == '1' then cmd = 'SPUBLISH' end
redis.call(cmd, KEYS[2], sid .. ' ' .. ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[4])
return sid
";

/// KEYS[1] the old API key's record. ARGV: now, new expiry. Returns the expiry set, or 0.
const ROTATE_OLD: &str = r"
local f = redis.call('HMGET', KEYS[1], 'k', 'r', 'e', 's')
if not f[1] then return 0 end
local now, e = tonumber(ARGV[1]), tonumber(f[3])
if tonumber(f[1]) ~= 1 or tonumber(f[2]) ~= 0 or tonumber(f[4]) ~= 0 or (e ~= 0 and e <= now) then
  return 0
end
local ne = tonumber(ARGV[2])
if e ~= 0 and e < ne then ne = e end
redis.call('HSET', KEYS[1], 'e', ne, 'p', 1)
redis.call('EXPIREAT', KEYS[1], ne)
return ne
";

/// KEYS[1] the refresh token's record. ARGV: now, nonce (the successor refresh token's hash).
/// Idempotent: spent already with the same nonce is this same spend sent again (the client
/// re-sends a call whose reply was lost), so it answers OK, not REUSED.
pub const SPEND: &str = r"
local now = tonumber(ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'k', 'r', 's', 'e', 'n')
if not f[1] or tonumber(f[1]) ~= 3 then return 'UNKNOWN' end
if tonumber(f[2]) ~= 0 then return 'REVOKED' end
if tonumber(f[3]) ~= 0 then
  if f[5] == ARGV[2] then return 'OK' end
  return 'REUSED'
end
local e = tonumber(f[4])
if e ~= 0 and e <= now then return 'EXPIRED' end
redis.call('HSET', KEYS[1], 's', now, 'n', ARGV[2])
return 'OK'
";

/// KEYS: records (one slot); ARGV: the unix seconds for each.
const TOUCH: &str = r"
for i, k in ipairs(KEYS) do
  local t = tonumber(ARGV[i])
  local u = redis.call('HGET', k, 'u')
  if u and tonumber(u) < t then redis.call('HSET', k, 'u', t) end
end
return 1
";

struct Scripts {
    insert_record: Script,
    index_add: Script,
    revoke_record: Script,
    confirm: Script,
    publish: Script,
    rotate_old: Script,
    spend: Script,
    touch: Script,
    grant_tombstone: Script,
    grant_revoked: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            insert_record: Script::new(INSERT_RECORD),
            index_add: Script::new(INDEX_ADD),
            revoke_record: Script::new(REVOKE_RECORD),
            confirm: Script::new(CONFIRM),
            publish: Script::new(PUBLISH),
            rotate_old: Script::new(ROTATE_OLD),
            spend: Script::new(SPEND),
            touch: Script::new(TOUCH),
            grant_tombstone: Script::new(GRANT_TOMBSTONE),
            grant_revoked: Script::new(GRANT_REVOKED),
        }
    }
}

/// A token store in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    keys: Keys,
    cluster: bool,
    timeout: Duration,
    retention_ms: u64,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// A Redis URL that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRedisUrl(pub String);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(e)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn kind_code(k: TokenKind) -> u8 {
    match k {
        TokenKind::ApiKey => 1,
        TokenKind::OAuthAccess => 2,
        TokenKind::OAuthRefresh => 3,
    }
}

fn int_field(fields: &HashMap<String, Vec<u8>>, name: &str) -> i64 {
    fields
        .get(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Rebuilds a record from its HASH: the blob, with the mutable fields taken from their own
/// fields (scripts change those without touching the blob).
fn decode_hash(fields: &HashMap<String, Vec<u8>>) -> Result<Option<TokenRecord>, StoreError> {
    let Some(blob) = fields.get("d") else {
        return Ok(None);
    };
    let mut r = TokenRecord::decode(blob).map_err(|e| StoreError::Corrupt(e.to_string().into()))?;
    r.expires_at = int_field(fields, "e");
    r.revoked_at = int_field(fields, "r");
    r.spent_at = int_field(fields, "s");
    r.last_used_at = int_field(fields, "u");
    Ok(Some(r))
}

/// Parses 64 lowercase hex characters into a hash.
pub fn hex_hash(hex: &str) -> Option<TokenHash> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(TokenHash(out))
}

fn conflict_or_unavailable(e: &redis::RedisError) -> StoreError {
    if e.to_string().contains("CONFLICT") {
        StoreError::Conflict("token hash or id exists")
    } else {
        unavailable(e)
    }
}

/// How many single-slot calls one store call keeps in flight. They share the multiplexed
/// connections, so this pipelines them: a subject with thousands of tokens is revoked in a few
/// round trips' time, not thousands.
const IN_FLIGHT: usize = 64;

/// Runs `f` for every item, [`IN_FLIGHT`] at a time, and collects the results in order; the
/// first error stops it.
async fn each<T, R, F, Fut>(
    c: &Conn,
    items: impl IntoIterator<Item = T>,
    f: F,
) -> Result<Vec<R>, StoreError>
where
    F: Fn(Conn, T) -> Fut,
    Fut: std::future::Future<Output = Result<R, StoreError>>,
{
    futures_util::stream::iter(items)
        .map(|item| f(c.clone(), item))
        .buffered(IN_FLIGHT)
        .try_collect()
        .await
}

/// Like [`each`], but runs `f` for every item whatever the others return, and gives back every
/// result (in order).
async fn each_settled<T, R, F, Fut>(
    c: &Conn,
    items: impl IntoIterator<Item = T>,
    f: F,
) -> Vec<Result<R, StoreError>>
where
    F: Fn(Conn, T) -> Fut,
    Fut: std::future::Future<Output = Result<R, StoreError>>,
{
    futures_util::stream::iter(items)
        .map(|item| f(c.clone(), item))
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

/// How long a replica keeps retrying a revocation event it could not publish.
const REPUBLISH_FOR: Duration = Duration::from_secs(600);

impl RedisStore {
    /// Builds a store for `cfg`. Connects lazily: the service starts (not ready) while Redis is
    /// down, and calls fail fast with [`StoreError::Unavailable`] until it is back.
    ///
    /// # Errors
    /// When the URL is not a usable `redis://` or `redis+cluster://` URL.
    pub fn new(cfg: &RedisConfig) -> Result<Self, BadRedisUrl> {
        let bad = |e: redis::RedisError| BadRedisUrl(e.to_string());
        let (conn, cluster) = match RedisTarget::parse(&cfg.url)? {
            RedisTarget::Server(url) => {
                let client = redis::Client::open(url.as_str()).map_err(bad)?;
                let mgr = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(cfg.timeout))
                    .set_response_timeout(Some(cfg.timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(200));
                let conn = client.get_connection_manager_lazy(mgr).map_err(bad)?;
                (Conn::Manager(conn), false)
            }
            RedisTarget::Cluster(nodes) => {
                let client = cluster_builder(&nodes, cfg.timeout, cfg.timeout)
                    .build()
                    .map_err(bad)?;
                let conn = client
                    .get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new());
                (Conn::Cluster(conn), true)
            }
        };
        Ok(RedisStore {
            conn,
            keys: Keys::new(&cfg.prefix),
            cluster,
            timeout: cfg.timeout,
            retention_ms: u64::try_from(cfg.retention.as_millis()).unwrap_or(u64::MAX),
            scripts: Arc::new(Scripts::new()),
        })
    }

    /// The minimum stream id to keep (trim by age).
    fn min_id(&self) -> String {
        format!("{}-0", now_ms().saturating_sub(self.retention_ms))
    }

    /// Runs `f` with a connection, bounded by twice the timeout whatever the reconnect logic does.
    fn call<'a, T, F, Fut>(&'a self, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(Conn) -> Fut + Send + 'a,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    {
        self.call_within(self.timeout * 2, f)
    }

    /// Like [`RedisStore::call`] for calls made of several steps (one per slot): bounded by
    /// four times the timeout.
    fn steps<'a, T, F, Fut>(&'a self, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(Conn) -> Fut + Send + 'a,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    {
        self.call_within(self.timeout * 4, f)
    }

    fn call_within<'a, T, F, Fut>(&'a self, bound: Duration, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(Conn) -> Fut + Send + 'a,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    {
        let conn = self.conn.clone();
        Box::pin(async move {
            match tokio::time::timeout(bound, f(conn)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::unavailable("redis did not answer in time")),
            }
        })
    }

    /// Like [`RedisStore::call`] for reads: one retry after a connection error, because the
    /// connection manager reports the error of its last failed reconnect once before it tries
    /// again (a read is safe to repeat).
    fn read<'a, T, F, Fut>(&'a self, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'a,
        F: Fn(Conn) -> Fut + Send + Sync + 'a,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    {
        Box::pin(async move {
            match self.call(&f).await {
                Err(StoreError::Unavailable(_)) => self.call(&f).await,
                other => other,
            }
        })
    }

    /// Pings Redis every second until `stop`, so the connection manager reconnects soon after
    /// Redis comes back even when no request is asking.
    pub async fn keepalive(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = self.ping().await;
                }
                () = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
    }

    /// One command, bounded by twice the timeout whatever the reconnect logic does.
    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout * 2, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable("redis did not answer in time")),
        }
    }

    async fn hgetall(c: &mut Conn, key: &str) -> Result<Option<TokenRecord>, StoreError> {
        let fields: HashMap<String, Vec<u8>> = c.hgetall(key).await.map_err(unavailable)?;
        decode_hash(&fields)
    }

    /// Writes new records, in the order that keeps every step safe to interrupt:
    /// 1. claim each token id (`SET NX`): a duplicate id stops here, before anything else;
    /// 2. add each id to its subject and grant indexes, so a subject or grant revocation that
    ///    runs from now on finds it;
    /// 3. write each record: only now can the token be validated.
    ///
    /// A failure after step 1 leaves ids and index entries without a record: nothing accepts
    /// them, listing skips them (and prunes an index entry only once its id key is gone), and
    /// they expire with the token. A token is never valid before every revocation path can
    /// reach it.
    async fn insert_records(
        &self,
        c: &mut Conn,
        records: &[TokenRecord],
    ) -> Result<(), StoreError> {
        for (n, r) in records.iter().enumerate() {
            let mut set = redis::cmd("SET");
            set.arg(self.keys.id(&r.token_id))
                .arg(r.hash.to_hex())
                .arg("NX");
            if r.expires_at > 0 {
                set.arg("EXAT").arg(r.expires_at);
            }
            let claimed: Option<String> = set.query_async(c).await.map_err(unavailable)?;
            if claimed.is_none() {
                for earlier in &records[..n] {
                    let _: redis::RedisResult<i64> = c.del(self.keys.id(&earlier.token_id)).await;
                }
                return Err(StoreError::Conflict("token hash or id exists"));
            }
        }
        for r in records {
            let exp = r.expires_at.max(0);
            let _: i64 = self
                .scripts
                .index_add
                .key(self.keys.subject(&r.subject))
                .arg("z")
                .arg(&r.token_id)
                .arg(exp)
                .invoke_async(c)
                .await
                .map_err(unavailable)?;
            if !r.grant_id.is_empty() {
                let _: i64 = self
                    .scripts
                    .index_add
                    .key(self.keys.grant(&r.grant_id))
                    .arg("s")
                    .arg(&r.token_id)
                    .arg(exp)
                    .invoke_async(c)
                    .await
                    .map_err(unavailable)?;
            }
        }
        for r in records {
            let _: i64 = self
                .scripts
                .insert_record
                .key(self.keys.record(&r.hash.to_hex()))
                .arg(r.encode())
                .arg(r.expires_at)
                .arg(kind_code(r.kind))
                .arg(&r.client_id)
                .arg(&r.token_id)
                .arg(&r.grant_id)
                .invoke_async(c)
                .await
                .map_err(|e| conflict_or_unavailable(&e))?;
        }
        Ok(())
    }

    /// Removes records written by a call that then lost a race (best effort: whatever is left
    /// is unknown to everyone, is pruned from listings, and expires with the token).
    async fn remove_records(&self, c: &mut Conn, records: &[TokenRecord]) {
        for r in records {
            let _: redis::RedisResult<i64> = c.del(self.keys.record(&r.hash.to_hex())).await;
            let _: redis::RedisResult<i64> = c.del(self.keys.id(&r.token_id)).await;
            let _: redis::RedisResult<i64> =
                c.zrem(self.keys.subject(&r.subject), &r.token_id).await;
            if !r.grant_id.is_empty() {
                let _: redis::RedisResult<i64> =
                    c.srem(self.keys.grant(&r.grant_id), &r.token_id).await;
            }
        }
    }

    /// The (token id, hash) pairs a revocation target names, and the first error of the
    /// lookups that failed (the pairs that were found are still returned, so that they can be
    /// revoked). An error reading the index itself is returned as such: nothing was found.
    async fn resolve(
        &self,
        c: &mut Conn,
        target: &RevokeTarget,
    ) -> Result<(Vec<(String, String)>, Option<StoreError>), StoreError> {
        let ids: Vec<String> = match target {
            RevokeTarget::Token(h) => {
                let hex = h.to_hex();
                let id: Option<String> = c
                    .hget(self.keys.record(&hex), "i")
                    .await
                    .map_err(unavailable)?;
                return Ok((id.map(|id| vec![(id, hex)]).unwrap_or_default(), None));
            }
            RevokeTarget::TokenId(id) => vec![id.clone()],
            RevokeTarget::GrantId(g) => self.tombstone(c, g).await?,
            RevokeTarget::SubjectClient { subject, .. } | RevokeTarget::Subject(subject) => c
                .zrange(self.keys.subject(subject), 0, -1)
                .await
                .map_err(unavailable)?,
        };
        Ok(self.pairs_of(c, ids).await)
    }

    /// Sets a grant's tombstone, then reads its token ids (one script on the grant's slot): a
    /// refresh that spends from now on sees the tombstone, one that spent before has indexed its
    /// successors already.
    async fn tombstone(&self, c: &mut Conn, grant: &str) -> Result<Vec<String>, StoreError> {
        let mut inv = self
            .scripts
            .grant_tombstone
            .key(self.keys.grant_tombstone(grant));
        inv.key(self.keys.grant(grant)).arg(now_ms() / 1000);
        self.bounded(inv.invoke_async(c)).await
    }

    /// The (token id, hash) pairs of `ids`, and the first error of the lookups that failed.
    async fn pairs_of(
        &self,
        c: &mut Conn,
        ids: Vec<String>,
    ) -> (Vec<(String, String)>, Option<StoreError>) {
        let found = each_settled(c, ids, |mut c, id| async move {
            let key = self.keys.id(&id);
            let hex: Option<String> = self.bounded(c.get(&key)).await?;
            Ok(hex.map(|hex| (id, hex)))
        })
        .await;
        let (mut pairs, mut failed) = (Vec::new(), None);
        for f in found {
            match f {
                Ok(Some(pair)) => pairs.push(pair),
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        (pairs, failed)
    }

    /// Appends one event to the revocation stream and publishes it (one script on the stream's
    /// slot), then clears `p` on the records. On failure a background task keeps trying for a
    /// while (see `RedisStore::revoke_with`).
    ///
    /// The attempt and its retries run in a task of their own: dropping this future (the
    /// caller's deadline) never cancels them, so a record marked `p` is always either published
    /// or left to the retries. This future only waits for the first attempt's result.
    async fn publish(&self, granularity: &str, hexes: Vec<String>) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let store = self.clone();
        let granularity = granularity.to_owned();
        tokio::spawn(async move {
            let mut c = store.conn.clone();
            let first = tokio::time::timeout(
                store.timeout * 2,
                store.publish_once(&mut c, &granularity, &hexes),
            )
            .await
            .unwrap_or_else(|_| Err(unavailable("redis did not answer in time")));
            match first {
                Ok(()) => {
                    store.confirm(&mut c, &hexes).await;
                    let _ = tx.send(Ok(()));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    store.republish(granularity, hexes).await;
                }
            }
        });
        rx.await
            .unwrap_or_else(|_| Err(unavailable("the revocation event task ended")))
    }

    async fn publish_once(
        &self,
        c: &mut Conn,
        granularity: &str,
        hexes: &[String],
    ) -> Result<(), StoreError> {
        let stream = self.keys.revocations();
        let _: String = self
            .scripts
            .publish
            .key(&stream)
            .key(&stream)
            .arg(granularity)
            .arg(now_ms())
            .arg(self.min_id())
            .arg(hexes.join(","))
            .arg(if self.cluster { "1" } else { "0" })
            .invoke_async(c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Marks records as published (best effort: an unmarked one is only published again).
    async fn confirm(&self, c: &mut Conn, hexes: &[String]) {
        let _ = each(c, hexes.to_vec(), |mut c, hex| async move {
            let _: redis::RedisResult<i64> = self
                .scripts
                .confirm
                .key(self.keys.record(&hex))
                .invoke_async(&mut c)
                .await;
            Ok(())
        })
        .await;
    }

    /// Retries an event that could not be published, with backoff, for [`REPUBLISH_FOR`].
    async fn republish(self, granularity: String, hexes: Vec<String>) {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        tracing::warn!(
            granularity,
            tokens = hexes.len(),
            "revocation event not published; retrying in the background"
        );
        while started.elapsed() < REPUBLISH_FOR {
            tokio::time::sleep(wait).await;
            let mut c = self.conn.clone();
            let attempt = tokio::time::timeout(
                self.timeout * 2,
                self.publish_once(&mut c, &granularity, &hexes),
            )
            .await;
            if matches!(attempt, Ok(Ok(()))) {
                self.confirm(&mut c, &hexes).await;
                tracing::info!(
                    granularity,
                    tokens = hexes.len(),
                    "revocation event published on retry"
                );
                return;
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
        tracing::error!(
            granularity,
            tokens = hexes.len(),
            "gave up publishing a revocation event; revoke the tokens again to publish it"
        );
    }

    /// Revokes what `target` names. Records live on many slots and the revocation log on one,
    /// so this cannot be one transaction on a cluster. The order makes every interruption safe:
    ///
    /// 1. Each record is marked revoked (`r`) and unpublished (`p`) by a script on its own slot.
    ///    From here any replica that reads the store refuses the token: a cache miss, a replica
    ///    past its lease, a replica whose cache was flushed.
    /// 2. One event naming every hash goes to the stream and the channel (a script on the log's
    ///    slot); then `p` is cleared.
    ///
    /// If step 2 fails, the call returns `UNAVAILABLE` (never success), and this replica keeps
    /// retrying the event in the background. Replicas whose cache still holds the token are
    /// covered in every case: if the log's node is down their feeds cannot confirm either, so
    /// their lease runs out and they read the store (which says revoked), and when their feed
    /// comes back after the lease ran out they flush their cache; if only this replica cannot
    /// publish, the background retry or the caller's retry publishes. A retry is idempotent:
    /// records still marked `p` are published again (and reported again, as this call is the
    /// one that completes them), records whose revocation was published are not.
    ///
    /// If some records cannot be marked (their slot is down), every other record is still
    /// marked and published, and the call returns `UNAVAILABLE` carrying what it did change
    /// ([`StoreError::Incomplete`]), so this replica drops those from its cache at once. The
    /// event and its retries run in a task of their own (see `RedisStore::publish`): the
    /// caller's deadline cannot cancel them between step 1 and step 2.
    ///
    /// Publishing first would be unsafe: a replica could refill its cache from the store
    /// between the event and the record change, and keep an allowed entry for a revoked token.
    ///
    /// Each step has its own bound (the lookups, each mark, the first publish attempt), and the
    /// whole sequence runs in a task of its own ([`RedisStore::revoke_detached`]), so no
    /// caller's deadline can stop it between marking and publishing, and every mark that can be
    /// made is made and reported.
    async fn revoke_with(
        &self,
        target: RevokeTarget,
        now: i64,
    ) -> Result<Vec<Changed>, StoreError> {
        let mut conn = self.conn.clone();
        let c = &mut conn;
        let granularity = match &target {
            RevokeTarget::Token(_) | RevokeTarget::TokenId(_) => "token",
            RevokeTarget::GrantId(_) | RevokeTarget::SubjectClient { .. } => "grant",
            RevokeTarget::Subject(_) => "subject",
        };
        let client = match &target {
            RevokeTarget::SubjectClient { client_id, .. } => Some(client_id.clone()),
            _ => None,
        };
        let (pairs, mut failed) = tokio::time::timeout(self.timeout * 6, self.resolve(c, &target))
            .await
            .unwrap_or_else(|_| Err(unavailable("redis did not answer in time")))?;
        let (only, client) = match &client {
            Some(cl) => ("1", cl.as_str()),
            None => ("0", ""),
        };
        let mut changed = Vec::new();
        let mut hexes = Vec::new();
        let mut grants = Vec::new();
        self.mark(
            c,
            pairs,
            (now, only, client),
            &mut changed,
            &mut hexes,
            &mut grants,
            &mut failed,
        )
        .await;
        // Disconnect: every grant it reached gets its tombstone, then the grant's members are
        // revoked too (a refresh in flight indexed its successors in the grant, maybe after the
        // subject index was read; see `spend_refresh`).
        if matches!(target, RevokeTarget::SubjectClient { .. }) {
            grants.sort();
            grants.dedup();
            let seen: std::collections::HashSet<String> = changed
                .iter()
                .map(|ch: &Changed| ch.token_id.clone())
                .collect();
            let mut ids = Vec::new();
            for g in &grants {
                match self.tombstone(c, g).await {
                    Ok(members) => ids.extend(members.into_iter().filter(|i| !seen.contains(i))),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            let (more, err) = self.pairs_of(c, ids).await;
            if let Some(e) = err {
                failed.get_or_insert(e);
            }
            let mut ignored = Vec::new();
            self.mark(
                c,
                more,
                (now, only, client),
                &mut changed,
                &mut hexes,
                &mut ignored,
                &mut failed,
            )
            .await;
        }
        if !hexes.is_empty()
            && let Err(e) = self.publish(granularity, hexes).await
        {
            failed.get_or_insert(e);
        }
        match failed {
            None => Ok(changed),
            Some(e) => Err(e.with_changed(changed)),
        }
    }
}

impl RedisStore {
    /// Marks every record of `pairs` revoked (each on its own slot, every one tried whatever the
    /// others do: one slot down must not leave the records on the healthy ones marked but
    /// unpublished), and collects what changed, the grants reached, and the first error.
    #[allow(clippy::too_many_arguments)]
    async fn mark(
        &self,
        c: &mut Conn,
        pairs: Vec<(String, String)>,
        (now, only, client): (i64, &str, &str),
        changed: &mut Vec<Changed>,
        hexes: &mut Vec<String>,
        grants: &mut Vec<String>,
        failed: &mut Option<StoreError>,
    ) {
        let marked = each_settled(c, pairs, |mut c, (id, hex)| async move {
            let mut mark = self.scripts.revoke_record.key(self.keys.record(&hex));
            mark.arg(now).arg(only).arg(client);
            let (done, grant): (i64, String) = self.bounded(mark.invoke_async(&mut c)).await?;
            Ok((done, id, hex, grant))
        })
        .await;
        for m in marked {
            match m {
                Ok((done, id, hex, grant)) => {
                    if !grant.is_empty() {
                        grants.push(grant);
                    }
                    if done != 0
                        && let Some(hash) = hex_hash(&hex)
                    {
                        changed.push(Changed { hash, token_id: id });
                        hexes.push(hex);
                    }
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
    }

    /// The spending steps of [`TokenStore::spend_refresh`] (one bound for all of them): the
    /// outcome, or the grant to revoke when the refresh token was reused.
    fn spend_steps(
        &self,
        hash: TokenHash,
        now: i64,
        successors: Successors,
    ) -> StoreFuture<'_, Result<SpendOutcome, Reuse>> {
        self.steps(move |mut c| async move {
            let rk = self.keys.record(&hash.to_hex());
            let Some(old) = Self::hgetall(&mut c, &rk).await? else {
                return Ok(Ok(SpendOutcome::Refused(RefreshRefusal::Unknown)));
            };
            let grant = old.grant_id.clone();
            match RefreshState::of(&old, now) {
                RefreshState::Usable => {}
                RefreshState::Refused(r) => return Ok(Ok(SpendOutcome::Refused(r))),
                RefreshState::Reused => return Ok(Err(Reuse(grant))),
            }
            let issued = match successors(&old) {
                Ok(v) => v,
                Err(r) => return Ok(Ok(SpendOutcome::Refused(r))),
            };
            if issued.len() != 2 {
                return Err(StoreError::Corrupt(
                    "a refresh must issue exactly two tokens".into(),
                ));
            }
            self.insert_records(&mut c, &issued).await?;
            let nonce = issued.last().map(|r| r.hash.to_hex()).unwrap_or_default();
            let outcome: String = match self
                .scripts
                .spend
                .key(&rk)
                .arg(now)
                .arg(&nonce)
                .invoke_async(&mut c)
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    self.remove_records(&mut c, &issued).await;
                    return Err(unavailable(e));
                }
            };
            if outcome != "OK" {
                self.remove_records(&mut c, &issued).await;
            }
            if outcome == "OK" && !grant.is_empty() {
                // A grant revocation sets the tombstone before it reads the grant's members: if
                // it is not set now, that revocation (if any) will find the successors, indexed
                // above; if it is, the successors are revoked here and nothing is handed out.
                let tomb = self.keys.grant_tombstone(&grant);
                let revoked: i64 = self
                    .bounded(self.scripts.grant_revoked.key(&tomb).invoke_async(&mut c))
                    .await?;
                if revoked != 0 {
                    let pairs = issued
                        .iter()
                        .map(|r| (r.token_id.clone(), r.hash.to_hex()))
                        .collect();
                    let (mut changed, mut hexes, mut grants, mut failed) =
                        (Vec::new(), Vec::new(), Vec::new(), None);
                    self.mark(
                        &mut c,
                        pairs,
                        (now, "0", ""),
                        &mut changed,
                        &mut hexes,
                        &mut grants,
                        &mut failed,
                    )
                    .await;
                    // Never handed out, so in no cache: the marks suffice, the event is for
                    // the record. A failed mark leaves a token nobody knows.
                    if !hexes.is_empty() {
                        let _ = self.publish("grant", hexes).await;
                    }
                    return Ok(Ok(SpendOutcome::Refused(RefreshRefusal::Revoked)));
                }
            }
            match outcome.as_str() {
                "OK" => {
                    let mut spent = old;
                    spent.spent_at = now;
                    Ok(Ok(SpendOutcome::Spent {
                        old: Box::new(spent),
                        issued,
                    }))
                }
                // Spent by a concurrent refresh between our read and the script: reuse.
                "REUSED" => Ok(Err(Reuse(grant))),
                "REVOKED" => Ok(Ok(SpendOutcome::Refused(RefreshRefusal::Revoked))),
                "EXPIRED" => Ok(Ok(SpendOutcome::Refused(RefreshRefusal::Expired))),
                _ => Ok(Ok(SpendOutcome::Refused(RefreshRefusal::Unknown))),
            }
        })
    }
}

/// What listing found for an id of a subject's index.
enum Listed {
    /// The id key is there; the record, if it is there too.
    Record(Option<Box<TokenRecord>>),
    /// The id key is gone: the token expired (or was never completed and removed).
    Gone,
}

/// A refresh token was presented again: its grant (this id) must be revoked.
struct Reuse(String);

impl RedisStore {
    /// Runs [`RedisStore::revoke_with`] in a task of its own and waits for its result: when the
    /// caller stops waiting, the revocation still completes (its steps are bounded).
    async fn revoke_detached(
        &self,
        target: RevokeTarget,
        now: i64,
    ) -> Result<Vec<Changed>, StoreError> {
        let store = self.clone();
        tokio::spawn(async move { store.revoke_with(target, now).await })
            .await
            .unwrap_or_else(|_| Err(unavailable("the revocation task ended")))
    }
}

/// A cluster client for `nodes` (RESP2 unless the caller asks for more).
pub(crate) fn cluster_builder(
    nodes: &[String],
    connect: Duration,
    response: Duration,
) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(connect)
        .response_timeout(response)
        .retries(2)
        .min_retry_wait(20)
        .max_retry_wait(200)
}

impl TokenStore for RedisStore {
    fn get(&self, hash: TokenHash) -> StoreFuture<'_, Option<TokenRecord>> {
        let key = self.keys.record(&hash.to_hex());
        self.read(move |mut c| {
            let key = key.clone();
            async move { Self::hgetall(&mut c, &key).await }
        })
    }

    fn get_by_id(&self, token_id: String) -> StoreFuture<'_, Option<TokenRecord>> {
        let id_key = self.keys.id(&token_id);
        self.read(move |mut c| {
            let id_key = id_key.clone();
            async move {
                let hex: Option<String> = c.get(&id_key).await.map_err(unavailable)?;
                match hex {
                    Some(h) => Self::hgetall(&mut c, &self.keys.record(&h)).await,
                    None => Ok(None),
                }
            }
        })
    }

    fn insert(&self, records: Vec<TokenRecord>) -> StoreFuture<'_, ()> {
        self.steps(move |mut c| async move { self.insert_records(&mut c, &records).await })
    }

    /// Rotation: the new key is written completely (see `insert_records`) before the old one is
    /// shortened, so a failure in between leaves the old key working and the new one unknown to
    /// anyone. The old record's new expiry is then published like a revocation (step 2 of
    /// `RedisStore::revoke_with`, with the same failure handling).
    fn rotate(
        &self,
        old_id: String,
        old_expires_at: i64,
        new: TokenRecord,
        now: i64,
    ) -> StoreFuture<'_, Option<TokenRecord>> {
        self.steps(move |mut c| async move {
            let id_key = self.keys.id(&old_id);
            let hex: Option<String> = c.get(&id_key).await.map_err(unavailable)?;
            let Some(hex) = hex else { return Ok(None) };
            let rk = self.keys.record(&hex);
            let Some(before) = Self::hgetall(&mut c, &rk).await? else {
                return Ok(None);
            };
            if before.kind != TokenKind::ApiKey
                || before.is_revoked()
                || before.spent_at != 0
                || before.is_expired(now)
            {
                // A change to it that may never have been published (`p`: a revocation, or an
                // earlier rotation whose event failed) is published again: a retry completes it.
                let p: Option<String> = c.hget(&rk, "p").await.map_err(unavailable)?;
                if p.as_deref() == Some("1") {
                    let granularity = if before.is_revoked() {
                        "token"
                    } else {
                        "update"
                    };
                    self.publish(granularity, vec![hex]).await?;
                }
                return Ok(None);
            }
            let new = [new];
            self.insert_records(&mut c, &new).await?;
            let set: i64 = self
                .scripts
                .rotate_old
                .key(&rk)
                .arg(now)
                .arg(old_expires_at)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            if set == 0 {
                // Revoked or rotated by someone else meanwhile.
                self.remove_records(&mut c, &new).await;
                return Ok(None);
            }
            let _: redis::RedisResult<i64> = c.expire_at(&id_key, set).await;
            if let Err(e) = self.publish("update", vec![hex]).await {
                // The old record is changed in the store: this replica drops it anyway.
                let changed = Changed {
                    hash: before.hash,
                    token_id: before.token_id.clone(),
                };
                return Err(e.with_changed(vec![changed]));
            }
            Ok(Some(before))
        })
    }

    /// Refresh: the successors are written first (unknown to anyone until this call returns
    /// them), then the refresh token is spent by one script on its slot, which re-checks
    /// `spent_at`, so reuse detection stays atomic across replicas. A refresh that loses the
    /// race removes its successors and is treated as reuse.
    fn spend_refresh(
        &self,
        hash: TokenHash,
        now: i64,
        successors: Successors,
    ) -> StoreFuture<'_, SpendOutcome> {
        Box::pin(async move {
            // On reuse the grant is revoked outside the bound of the spending steps, in a task
            // of its own (see `RedisStore::revoke_detached`).
            let grant = match self.spend_steps(hash, now, successors).await? {
                Ok(done) => return Ok(done),
                Err(Reuse(grant)) => grant,
            };
            let revoked = self
                .revoke_detached(RevokeTarget::GrantId(grant), now)
                .await?;
            Ok(SpendOutcome::Reused { revoked })
        })
    }

    fn revoke(&self, target: RevokeTarget, now: i64) -> StoreFuture<'_, Vec<Changed>> {
        Box::pin(self.revoke_detached(target, now))
    }

    fn list(&self, q: ListQuery) -> StoreFuture<'_, ListPage> {
        self.steps(move |mut c| async move {
            let sk = self.keys.subject(&q.subject);
            let mut page = ListPage::default();
            let mut cursor = match &q.after {
                Some(a) => format!("({a}"),
                None => "-".to_owned(),
            };
            let batch = (q.limit + 1).clamp(16, 1000);
            loop {
                let ids: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&sk)
                    .arg(&cursor)
                    .arg("+")
                    .arg("BYLEX")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(batch)
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                if ids.is_empty() {
                    return Ok(page);
                }
                // One slot per id and per record (no multi-key pipeline on a cluster): the
                // lookups run side by side instead.
                let records = each(&c, ids.clone(), |mut c, id| async move {
                    let hex: Option<String> =
                        c.get(self.keys.id(&id)).await.map_err(unavailable)?;
                    match hex {
                        Some(h) => Self::hgetall(&mut c, &self.keys.record(&h))
                            .await
                            .map(|r| Listed::Record(r.map(Box::new))),
                        None => Ok(Listed::Gone),
                    }
                })
                .await?;
                let mut stale = Vec::new();
                for (id, rec) in ids.iter().zip(records) {
                    let r = match rec {
                        Listed::Record(Some(r)) => *r,
                        // An id without its record is a token being created (`insert_records`
                        // writes the record last) or left by a failed one: not listed, and not
                        // pruned either, as the record may be about to appear.
                        Listed::Record(None) => continue,
                        Listed::Gone => {
                            stale.push(id.clone());
                            continue;
                        }
                    };
                    if q.matches(&r) && !page.offer(r, q.limit) {
                        return Ok(page);
                    }
                }
                if !stale.is_empty() {
                    // Expired tokens leave their id behind in the index (the `i:` key expires
                    // with the token, the index lives as long as its longest token): tidy up.
                    let _: i64 = c.zrem(&sk, &stale).await.map_err(unavailable)?;
                }
                if ids.len() < batch {
                    return Ok(page);
                }
                cursor = format!("({}", ids[ids.len() - 1]);
            }
        })
    }

    fn touch(&self, used: Vec<(TokenHash, i64)>) -> StoreFuture<'_, ()> {
        self.steps(move |c| async move {
            // One script per slot on a cluster (all keys of a script must share a slot).
            let mut groups: HashMap<Option<Slot>, Vec<(String, i64)>> = HashMap::new();
            for (h, t) in &used {
                let key = self.keys.record(&h.to_hex());
                let slot = self.cluster.then(|| Slot::for_key(&key));
                groups.entry(slot).or_default().push((key, *t));
            }
            each(&c, groups.into_values(), |mut c, group| async move {
                let mut inv = self.scripts.touch.prepare_invoke();
                for (k, t) in group {
                    inv.key(k).arg(t);
                }
                let _: i64 = inv.invoke_async(&mut c).await.map_err(unavailable)?;
                Ok(())
            })
            .await?;
            Ok(())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        // On a cluster PING goes to every primary: the store is reachable only when all are.
        self.read(|mut c| async move {
            let _: String = redis::cmd("PING")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_seed_node() {
        let t = RedisTarget::parse("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001").unwrap();
        assert_eq!(
            t,
            RedisTarget::Cluster(vec![
                "redis://u:p@10.0.0.1:7000".into(),
                "redis://u:p@10.0.0.2:7001".into()
            ])
        );
        assert!(matches!(
            RedisTarget::parse("redis://127.0.0.1:6379/0"),
            Ok(RedisTarget::Server(_))
        ));
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1,",
            "redis+cluster://a:1/0",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_spread_over_slots_and_the_log_shares_one() {
        let k = Keys::new("navis-auth:");
        let h = TokenHash::of("x").to_hex();
        assert_eq!(k.record(&h), format!("navis-auth:t:{{{h}}}"));
        assert_eq!(
            Slot::for_key(k.revocations()),
            Slot::for_key(k.epoch()),
            "stream, channel and epoch on one slot"
        );
        let slots: std::collections::HashSet<Slot> = (0..64)
            .map(|i| Slot::for_key(k.record(&TokenHash::of(&i.to_string()).to_hex())))
            .collect();
        assert!(slots.len() > 60, "records spread: {} slots", slots.len());
        // A subject with braces still gives one key, on one slot, for its index.
        assert_eq!(k.subject("a}b"), "navis-auth:s:{a}b}");
    }

    #[test]
    fn hex_round_trip() {
        let h = TokenHash::of("x");
        assert_eq!(hex_hash(&h.to_hex()), Some(h));
        assert_eq!(hex_hash("zz"), None);
        assert_eq!(hex_hash(&"g".repeat(64)), None);
    }
}
