//! The Redis store, shared by every replica. Every mutation is one Lua script, so grant and
//! subject revocation, rotation and refresh spending are atomic, and every revocation is appended
//! to the revocation stream and published on the channel in the same script as the change itself.
//!
//! Keys (all under one prefix `P`, default `navis-auth:`):
//! - `P t:<sha256 hex>`: a HASH per token: `d` (the protobuf record), and the fields scripts read or
//!   change: `e` expires_at, `r` revoked_at, `s` spent_at, `u` last_used_at, `k` kind, `c` client,
//!   `i` token id, `g` grant. `EXPIREAT` = the token's expiry.
//! - `P i:<token id>`: the token's hash (STRING), same expiry.
//! - `P s:<subject>`: ZSET of the subject's token ids (score 0, ordered by id for paging).
//! - `P g:<grant id>`: SET of the grant's token ids.
//! - `P revocations`: the revocation STREAM (fields `g` granularity, `at` unix ms, `h` hashes),
//!   trimmed by age (`MINID ~`), and the pub/sub channel of the same name.
//! - `P epoch`: a random value that changes when Redis loses its data (see `revocation`).
//!
//! No plaintext token is ever sent to Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{
    Changed, ListPage, ListQuery, RefreshRefusal, RefreshState, RevokeTarget, SpendOutcome,
    StoreError, StoreFuture, Successors, TokenStore,
};
use crate::record::TokenRecord;
use crate::token::{TokenHash, TokenKind};

/// How the Redis store connects.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// Connect and response timeout for each call; a call never takes much longer.
    pub timeout: Duration,
    /// How long revocation stream entries are kept.
    pub retention: Duration,
}

/// Shared helpers for every script: record insertion, index expiry and event publication.
const PRELUDE: &str = r"
local p = ARGV[1]
local function extend(key, exp, existed)
  if exp == 0 then redis.call('PERSIST', key) return end
  if existed == 0 then redis.call('EXPIREAT', key, exp) return end
  local cur = redis.call('EXPIRETIME', key)
  if cur >= 0 and cur < exp then redis.call('EXPIREAT', key, exp) end
end
local function conflict(b)
  if redis.call('EXISTS', p .. 't:' .. ARGV[b]) == 1 then return 'token hash exists' end
  if redis.call('EXISTS', p .. 'i:' .. ARGV[b + 1]) == 1 then return 'token id exists' end
  return nil
end
-- A record is 8 arguments from index b: hex, id, subject, grant, exp, blob, kind, client.
local function insert(b)
  local hex, id, sub, grant = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local exp = tonumber(ARGV[b + 4])
  local rk, ik = p .. 't:' .. hex, p .. 'i:' .. id
  redis.call('HSET', rk, 'd', ARGV[b + 5], 'e', exp, 'r', 0, 's', 0, 'u', 0,
    'k', ARGV[b + 6], 'c', ARGV[b + 7], 'i', id, 'g', grant)
  redis.call('SET', ik, hex)
  if exp > 0 then
    redis.call('EXPIREAT', rk, exp)
    redis.call('EXPIREAT', ik, exp)
  end
  local sk = p .. 's:' .. sub
  local existed = redis.call('EXISTS', sk)
  redis.call('ZADD', sk, 0, id)
  extend(sk, exp, existed)
  if grant ~= '' then
    local gk = p .. 'g:' .. grant
    existed = redis.call('EXISTS', gk)
    redis.call('SADD', gk, id)
    extend(gk, exp, existed)
  end
end
local function publish(gran, at_ms, minid, hexes)
  local h = table.concat(hexes, ',')
  local key = p .. 'revocations'
  local sid = redis.call('XADD', key, 'MINID', '~', minid, '*', 'g', gran, 'at', at_ms, 'h', h)
  redis.call('PUBLISH', key, sid .. ' ' .. gran .. ' ' .. at_ms .. ' ' .. h)
  return sid
end
";

const INSERT: &str = r"
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local c = conflict(3 + i * 8)
  if c then return redis.error_reply('CONFLICT ' .. c) end
end
for i = 0, n - 1 do insert(3 + i * 8) end
return n
";

/// ARGV: p, now, now_ms, minid, mode, a, b, granularity.
const REVOKE: &str = r"
local now, mode, a, b = tonumber(ARGV[2]), ARGV[5], ARGV[6], ARGV[7]
local ids = {}
if mode == 'hash' then
  local id = redis.call('HGET', p .. 't:' .. a, 'i')
  if id then ids = { id } end
elseif mode == 'id' then ids = { a }
elseif mode == 'grant' then ids = redis.call('SMEMBERS', p .. 'g:' .. a)
else ids = redis.call('ZRANGE', p .. 's:' .. a, 0, -1) end
local out, hexes = {}, {}
for _, id in ipairs(ids) do
  local hex = redis.call('GET', p .. 'i:' .. id)
  if hex then
    local rk = p .. 't:' .. hex
    local f = redis.call('HMGET', rk, 'r', 'e', 'c')
    if f[1] then
      local r, e, c = tonumber(f[1]), tonumber(f[2]), f[3]
      if r == 0 and (e == 0 or e > now) and (mode ~= 'subject_client' or c == b) then
        redis.call('HSET', rk, 'r', now)
        table.insert(out, id)
        table.insert(out, hex)
        table.insert(hexes, hex)
      end
    end
  end
end
if #hexes > 0 then publish(ARGV[8], ARGV[3], ARGV[4], hexes) end
return out
";

/// ARGV: p, now, now_ms, minid, old_id, old_exp, then the new record (8 fields from 7).
const ROTATE: &str = r"
local now = tonumber(ARGV[2])
local hex = redis.call('GET', p .. 'i:' .. ARGV[5])
if not hex then return 0 end
local rk = p .. 't:' .. hex
local f = redis.call('HMGET', rk, 'k', 'r', 'e', 's')
if not f[1] then return 0 end
local e = tonumber(f[3])
if tonumber(f[1]) ~= 1 or tonumber(f[2]) ~= 0 or tonumber(f[4]) ~= 0 or (e ~= 0 and e <= now) then
  return 0
end
local c = conflict(7)
if c then return redis.error_reply('CONFLICT ' .. c) end
insert(7)
local ne = tonumber(ARGV[6])
if e ~= 0 and e < ne then ne = e end
redis.call('HSET', rk, 'e', ne)
redis.call('EXPIREAT', rk, ne)
redis.call('EXPIREAT', p .. 'i:' .. ARGV[5], ne)
publish('update', ARGV[3], ARGV[4], { hex })
return 1
";

/// ARGV: p, now, old_hex, then two new records (8 fields each, from 4 and 12).
const SPEND: &str = r"
local now = tonumber(ARGV[2])
local rk = p .. 't:' .. ARGV[3]
local f = redis.call('HMGET', rk, 'k', 'r', 's', 'e')
if not f[1] or tonumber(f[1]) ~= 3 then return 'UNKNOWN' end
if tonumber(f[2]) ~= 0 then return 'REVOKED' end
if tonumber(f[3]) ~= 0 then return 'REUSED' end
local e = tonumber(f[4])
if e ~= 0 and e <= now then return 'EXPIRED' end
for _, b in ipairs({ 4, 12 }) do
  local c = conflict(b)
  if c then return redis.error_reply('CONFLICT ' .. c) end
end
redis.call('HSET', rk, 's', now)
insert(4)
insert(12)
return 'OK'
";

/// ARGV: p, then pairs of (hex, unix seconds).
const TOUCH: &str = r"
for i = 2, #ARGV, 2 do
  local rk = p .. 't:' .. ARGV[i]
  local t = tonumber(ARGV[i + 1])
  local u = redis.call('HGET', rk, 'u')
  if u and tonumber(u) < t then redis.call('HSET', rk, 'u', t) end
end
return 1
";

struct Scripts {
    insert: Script,
    revoke: Script,
    rotate: Script,
    spend: Script,
    touch: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            insert: s(INSERT),
            revoke: s(REVOKE),
            rotate: s(ROTATE),
            spend: s(SPEND),
            touch: s(TOUCH),
        }
    }
}

/// A token store in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    retention_ms: u64,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
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

/// The arguments `insert` in the scripts takes for one record.
fn record_args(r: &TokenRecord) -> [Vec<u8>; 8] {
    [
        r.hash.to_hex().into_bytes(),
        r.token_id.clone().into_bytes(),
        r.subject.clone().into_bytes(),
        r.grant_id.clone().into_bytes(),
        r.expires_at.to_string().into_bytes(),
        r.encode(),
        kind_code(r.kind).to_string().into_bytes(),
        r.client_id.clone().into_bytes(),
    ]
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

fn parse_changed(flat: Vec<String>) -> Vec<Changed> {
    flat.chunks(2)
        .filter_map(|c| match c {
            [id, hex] => hex_hash(hex).map(|hash| Changed {
                hash,
                token_id: id.clone(),
            }),
            _ => None,
        })
        .collect()
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

impl RedisStore {
    /// Builds a store for `cfg`. Connects lazily: the service starts (not ready) while Redis is
    /// down, and calls fail fast with [`StoreError::Unavailable`] until it is back.
    ///
    /// # Errors
    /// When the URL is not a usable `redis://` URL.
    pub fn new(cfg: &RedisConfig) -> Result<Self, BadRedisUrl> {
        let client =
            redis::Client::open(cfg.url.as_str()).map_err(|e| BadRedisUrl(e.to_string()))?;
        let mgr = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let conn = client
            .get_connection_manager_lazy(mgr)
            .map_err(|e| BadRedisUrl(e.to_string()))?;
        Ok(RedisStore {
            conn,
            prefix: cfg.prefix.clone().into(),
            timeout: cfg.timeout,
            retention_ms: u64::try_from(cfg.retention.as_millis()).unwrap_or(u64::MAX),
            scripts: Arc::new(Scripts::new()),
        })
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}:{rest}", self.prefix)
    }

    /// The minimum stream id to keep (trim by age).
    fn min_id(&self) -> String {
        format!("{}-0", now_ms().saturating_sub(self.retention_ms))
    }

    /// Runs `f` with a connection, bounded by twice the timeout whatever the reconnect logic does.
    fn call<'a, T, F, Fut>(&'a self, f: F) -> StoreFuture<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'a,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    {
        let conn = self.conn.clone();
        let bound = self.timeout * 2;
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
        F: Fn(ConnectionManager) -> Fut + Send + Sync + 'a,
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

    async fn hgetall(
        conn: &mut ConnectionManager,
        key: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let fields: HashMap<String, Vec<u8>> = conn.hgetall(key).await.map_err(unavailable)?;
        decode_hash(&fields)
    }

    async fn revoke_with(
        &self,
        conn: &mut ConnectionManager,
        target: RevokeTarget,
        now: i64,
    ) -> Result<Vec<Changed>, StoreError> {
        let (mode, a, b, gran) = match target {
            RevokeTarget::Token(h) => ("hash", h.to_hex(), String::new(), "token"),
            RevokeTarget::TokenId(id) => ("id", id, String::new(), "token"),
            RevokeTarget::GrantId(g) => ("grant", g, String::new(), "grant"),
            RevokeTarget::SubjectClient { subject, client_id } => {
                ("subject_client", subject, client_id, "grant")
            }
            RevokeTarget::Subject(s) => ("subject", s, String::new(), "subject"),
        };
        let flat: Vec<String> = self
            .scripts
            .revoke
            .arg(&*self.prefix)
            .arg(now)
            .arg(now_ms())
            .arg(self.min_id())
            .arg(mode)
            .arg(a)
            .arg(b)
            .arg(gran)
            .invoke_async(conn)
            .await
            .map_err(unavailable)?;
        Ok(parse_changed(flat))
    }
}

impl TokenStore for RedisStore {
    fn get(&self, hash: TokenHash) -> StoreFuture<'_, Option<TokenRecord>> {
        let key = self.key("t", &hash.to_hex());
        self.read(move |mut c| {
            let key = key.clone();
            async move { Self::hgetall(&mut c, &key).await }
        })
    }

    fn get_by_id(&self, token_id: String) -> StoreFuture<'_, Option<TokenRecord>> {
        let id_key = self.key("i", &token_id);
        self.read(move |mut c| {
            let id_key = id_key.clone();
            async move {
                let hex: Option<String> = c.get(&id_key).await.map_err(unavailable)?;
                match hex {
                    Some(h) => Self::hgetall(&mut c, &self.key("t", &h)).await,
                    None => Ok(None),
                }
            }
        })
    }

    fn insert(&self, records: Vec<TokenRecord>) -> StoreFuture<'_, ()> {
        self.call(move |mut c| async move {
            let mut inv = self.scripts.insert.arg(&*self.prefix);
            inv.arg(records.len());
            for r in &records {
                for a in record_args(r) {
                    inv.arg(a);
                }
            }
            let _: i64 = inv
                .invoke_async(&mut c)
                .await
                .map_err(|e| conflict_or_unavailable(&e))?;
            Ok(())
        })
    }

    fn rotate(
        &self,
        old_id: String,
        old_expires_at: i64,
        new: TokenRecord,
        now: i64,
    ) -> StoreFuture<'_, Option<TokenRecord>> {
        self.call(move |mut c| async move {
            let id_key = self.key("i", &old_id);
            let hex: Option<String> = c.get(&id_key).await.map_err(unavailable)?;
            let Some(hex) = hex else { return Ok(None) };
            let Some(before) = Self::hgetall(&mut c, &self.key("t", &hex)).await? else {
                return Ok(None);
            };
            let mut inv = self.scripts.rotate.arg(&*self.prefix);
            inv.arg(now)
                .arg(now_ms())
                .arg(self.min_id())
                .arg(&old_id)
                .arg(old_expires_at);
            for a in record_args(&new) {
                inv.arg(a);
            }
            let done: i64 = inv
                .invoke_async(&mut c)
                .await
                .map_err(|e| conflict_or_unavailable(&e))?;
            Ok((done == 1).then_some(before))
        })
    }

    fn spend_refresh(
        &self,
        hash: TokenHash,
        now: i64,
        successors: Successors,
    ) -> StoreFuture<'_, SpendOutcome> {
        self.call(move |mut c| async move {
            let hex = hash.to_hex();
            let Some(old) = Self::hgetall(&mut c, &self.key("t", &hex)).await? else {
                return Ok(SpendOutcome::Refused(RefreshRefusal::Unknown));
            };
            let reuse = |c: ConnectionManager, grant: String| async move {
                let mut c = c;
                let revoked = self
                    .revoke_with(&mut c, RevokeTarget::GrantId(grant), now)
                    .await?;
                Ok(SpendOutcome::Reused { revoked })
            };
            match RefreshState::of(&old, now) {
                RefreshState::Usable => {}
                RefreshState::Refused(r) => return Ok(SpendOutcome::Refused(r)),
                RefreshState::Reused => return reuse(c, old.grant_id.clone()).await,
            }
            let issued = match successors(&old) {
                Ok(v) => v,
                Err(r) => return Ok(SpendOutcome::Refused(r)),
            };
            let [first, second] = issued.as_slice() else {
                return Err(StoreError::Corrupt(
                    "a refresh must issue exactly two tokens".into(),
                ));
            };
            let mut inv = self.scripts.spend.arg(&*self.prefix);
            inv.arg(now).arg(&hex);
            for a in record_args(first).into_iter().chain(record_args(second)) {
                inv.arg(a);
            }
            let outcome: String = inv
                .invoke_async(&mut c)
                .await
                .map_err(|e| conflict_or_unavailable(&e))?;
            match outcome.as_str() {
                "OK" => {
                    let mut spent = old;
                    spent.spent_at = now;
                    Ok(SpendOutcome::Spent {
                        old: Box::new(spent),
                        issued,
                    })
                }
                // Spent by a concurrent refresh between our read and the script: reuse.
                "REUSED" => reuse(c, old.grant_id.clone()).await,
                "REVOKED" => Ok(SpendOutcome::Refused(RefreshRefusal::Revoked)),
                "EXPIRED" => Ok(SpendOutcome::Refused(RefreshRefusal::Expired)),
                _ => Ok(SpendOutcome::Refused(RefreshRefusal::Unknown)),
            }
        })
    }

    fn revoke(&self, target: RevokeTarget, now: i64) -> StoreFuture<'_, Vec<Changed>> {
        self.call(move |mut c| async move { self.revoke_with(&mut c, target, now).await })
    }

    fn list(&self, q: ListQuery) -> StoreFuture<'_, ListPage> {
        self.call(move |mut c| async move {
            let sk = self.key("s", &q.subject);
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
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.get(self.key("i", id));
                }
                let hexes: Vec<Option<String>> =
                    pipe.query_async(&mut c).await.map_err(unavailable)?;
                let mut stale = Vec::new();
                for (id, hex) in ids.iter().zip(hexes) {
                    let rec = match hex {
                        Some(h) => Self::hgetall(&mut c, &self.key("t", &h)).await?,
                        None => None,
                    };
                    let Some(r) = rec else {
                        stale.push(id.clone());
                        continue;
                    };
                    if q.matches(&r) && !page.offer(r, q.limit) {
                        return Ok(page);
                    }
                }
                if !stale.is_empty() {
                    // Expired tokens leave their id behind in the index: tidy up.
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
        self.call(move |mut c| async move {
            let mut inv = self.scripts.touch.arg(&*self.prefix);
            for (h, t) in &used {
                inv.arg(h.to_hex()).arg(*t);
            }
            let _: i64 = inv.invoke_async(&mut c).await.map_err(unavailable)?;
            Ok(())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
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
    fn hex_round_trip() {
        let h = TokenHash::of("x");
        assert_eq!(hex_hash(&h.to_hex()), Some(h));
        assert_eq!(hex_hash("zz"), None);
        assert_eq!(hex_hash(&"g".repeat(64)), None);
    }
}
