//! Revocation fan-out and the lease (DESIGN.md §3, G1–G2).
//!
//! Every change that must stop a token (revocation, rotation, refresh reuse) is committed by the
//! store, then [`Revocations::publish`] drops it from this replica's cache at once. With Redis, the
//! store has also appended the change to the revocation stream and published it on the channel,
//! after marking the records (a call whose event could not be written fails: see `store::redis`);
//! every other replica runs a [`RedisFeed`]:
//!
//! - a RESP3 push subscriber applies channel messages at once (the fast path; sharded pub/sub,
//!   `SSUBSCRIBE`, on a Redis Cluster, where the channel lives on the stream's slot);
//! - a tail reads the stream from its last id with blocking `XREAD` on a dedicated connection, so
//!   a missed message is replayed (the stream is the truth). Each completed read confirms the
//!   replica is caught up as of the moment the read was issued (monotonic clock);
//! - on every (re)connect it compares the epoch value and the stream's bounds with what it saw
//!   before, and flushes the whole cache (a generation bump) when the stream no longer covers the
//!   gap: Redis restarted without data, the stream was trimmed past its position, or replaced,
//!   or the node serving it is another process (its `run_id`: a failover may have lost entries
//!   not read yet); and also when the lease ran out (between sessions or inside one), since a
//!   revocation whose record was written while the log's node was unreachable may never have
//!   been published, and when lookups cached entries before the first catch-up.
//!
//! The [`Lease`]: the validator answers from its cache only while the last confirmation is younger
//! than `--revocation-lease`; past it every lookup goes to the store (G2).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncTypedCommands as _;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{
    AsyncConnectionConfig, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use tokio::sync::{mpsc, watch};

use crate::cache::Cache;
use crate::metrics::{AppliedPath, FlushReason, Metrics};
use crate::store::Changed;
use crate::store::redis::{Conn, Keys, RedisTarget, cluster_builder, hex_hash};
use crate::token::TokenHash;

/// How much one revocation covers (a metric label and a log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One token.
    Token,
    /// One grant, or every grant of a subject + client.
    Grant,
    /// Every token of a subject.
    Subject,
    /// A token's record changed (rotation shortened its life).
    Update,
}

impl Granularity {
    /// Stable name for logs, metric labels and stream entries.
    pub const fn as_str(self) -> &'static str {
        match self {
            Granularity::Token => "token",
            Granularity::Grant => "grant",
            Granularity::Subject => "subject",
            Granularity::Update => "update",
        }
    }
}

/// Applies committed changes to this replica's cache.
#[derive(Clone, Debug)]
pub struct Revocations {
    cache: Arc<Cache>,
    metrics: Option<Arc<Metrics>>,
}

impl Revocations {
    /// A publisher for `cache`, counting in `metrics`.
    pub fn new(cache: Arc<Cache>, metrics: Option<Arc<Metrics>>) -> Self {
        Revocations { cache, metrics }
    }

    /// Drops the changed tokens from this replica's cache. (The store has already told the
    /// other replicas, in the same transaction as the change.)
    pub fn publish(&self, granularity: Granularity, changed: &[Changed]) {
        if changed.is_empty() {
            return;
        }
        self.cache.invalidate(changed.iter().map(|c| c.hash));
        if let Some(m) = &self.metrics {
            m.applied(granularity.as_str(), AppliedPath::Local, None);
        }
        for c in changed {
            tracing::info!(token_id = %c.token_id, granularity = granularity.as_str(), "token invalidated");
        }
    }
}

const NEVER: u64 = u64::MAX;

/// Entries asked for per stream read.
const READ_BATCH: usize = 1000;

/// What the feed knows about being caught up; read on the hot path through [`Lease`].
#[derive(Debug)]
pub struct FeedState {
    origin: Instant,
    lease_nanos: u64,
    /// Issue time (nanos since `origin`) of the last completed stream read.
    confirmed: AtomicU64,
    connected: AtomicBool,
    applied: AtomicU64,
    flushes: AtomicU64,
}

impl FeedState {
    /// A feed that has not confirmed anything yet.
    pub fn new(lease: Duration) -> Self {
        FeedState {
            origin: Instant::now(),
            lease_nanos: u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX),
            confirmed: AtomicU64::new(NEVER),
            connected: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.origin).as_nanos()).unwrap_or(NEVER - 1)
    }

    /// Records a completed read issued at `issued`.
    fn confirm(&self, issued: Instant) {
        let t = self.nanos(issued);
        // NEVER is the largest value, so the first confirmation replaces it; later ones only
        // move forward (a slow read issued earlier never pulls the confirmation back).
        if self
            .confirmed
            .compare_exchange(NEVER, t, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.confirmed.fetch_max(t, Ordering::AcqRel);
        }
    }

    /// When the last confirmed catch-up was issued; `None` before the first.
    fn confirmed_at(&self) -> Option<Instant> {
        match self.confirmed.load(Ordering::Acquire) {
            NEVER => None,
            c => self.origin.checked_add(Duration::from_nanos(c)),
        }
    }

    /// The lease.
    fn lease(&self) -> Duration {
        Duration::from_nanos(self.lease_nanos)
    }

    /// How long ago the last confirmed catch-up was issued; `None` before the first.
    pub fn lease_age(&self) -> Option<Duration> {
        match self.confirmed.load(Ordering::Acquire) {
            NEVER => None,
            c => Some(Duration::from_nanos(
                self.nanos(Instant::now()).saturating_sub(c),
            )),
        }
    }

    /// Whether the cache may answer.
    pub fn fresh(&self) -> bool {
        match self.confirmed.load(Ordering::Acquire) {
            NEVER => false,
            c => self.nanos(Instant::now()).saturating_sub(c) < self.lease_nanos,
        }
    }

    /// Whether the stream tail is connected.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Revocation events applied (both paths count; an event seen twice counts twice).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Whole-cache flushes because the stream did not cover a gap.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

/// Whether the validator may answer from its cache.
#[derive(Clone, Debug)]
pub enum Lease {
    /// One process, in-process feed: the cache is always current.
    Always,
    /// A shared store: only while the feed's last catch-up is younger than the lease.
    Feed(Arc<FeedState>),
}

impl Lease {
    /// Whether the cache may answer now.
    #[inline]
    pub fn fresh(&self) -> bool {
        match self {
            Lease::Always => true,
            Lease::Feed(s) => s.fresh(),
        }
    }
}

/// Where the feed reads: one server, or a cluster (the stream's slot decides the node).
#[derive(Clone)]
enum Source {
    Server(redis::Client),
    Cluster(Arc<[String]>),
}

/// Why a feed cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The store URL is not usable.
    #[error(transparent)]
    Url(#[from] crate::store::redis::BadRedisUrl),
    /// The lease is too short for the Redis timeout (G2).
    #[error(
        "--revocation-lease {lease:?} is too short for --redis-timeout {timeout:?}: a stream read \
         (blocking {block:?}) plus the timeout must be at most half the lease; raise the lease \
         or lower the timeout"
    )]
    Timing {
        /// The lease.
        lease: Duration,
        /// The Redis timeout.
        timeout: Duration,
        /// How long one stream read blocks.
        block: Duration,
    },
}

/// How long one blocking stream read waits for new entries with `lease`, when a read (block
/// plus `timeout`) fits at most twice in the lease; two back-to-back slow reads of a healthy
/// connection then never let it run out.
///
/// # Errors
/// [`FeedError::Timing`] when it does not fit.
pub fn read_block(lease: Duration, timeout: Duration) -> Result<Duration, FeedError> {
    // Blocking reads return at least every second, well inside any sensible lease.
    let block = Duration::from_millis(1000)
        .min(lease / 4)
        .max(Duration::from_millis(50));
    if (block + timeout) * 2 > lease {
        return Err(FeedError::Timing {
            lease,
            timeout,
            block,
        });
    }
    Ok(block)
}

/// The Redis revocation feed of one replica.
#[derive(Clone)]
pub struct RedisFeed {
    source: Source,
    stream: String,
    epoch_key: String,
    cache: Arc<Cache>,
    state: Arc<FeedState>,
    timeout: Duration,
    block: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RedisFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFeed")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// What the stream tail saw of the log on its last check and reads.
#[derive(Debug, Default)]
struct Seen {
    /// The epoch value.
    epoch: Option<String>,
    /// The id of the last entry applied (or where reading starts).
    last: Option<StreamPos>,
    /// The run id of the node serving the stream.
    node: Option<String>,
}

/// How an event reached this replica.
#[derive(Clone, Copy, Debug)]
enum Path {
    PubSub,
    Stream,
}

/// A stream id `ms-seq`, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamPos(u64, u64);

impl StreamPos {
    const ZERO: StreamPos = StreamPos(0, 0);

    fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('-')?;
        Some(StreamPos(a.parse().ok()?, b.parse().ok()?))
    }
}

impl std::fmt::Display for StreamPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

impl RedisFeed {
    /// A feed for the store at `url` with key prefix `prefix`, applying to `cache`.
    ///
    /// # Errors
    /// When the URL is not usable, or the lease too short for `timeout` ([`read_block`]).
    pub fn new(
        url: &str,
        prefix: &str,
        cache: Arc<Cache>,
        lease: Duration,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, FeedError> {
        let block = read_block(lease, timeout)?;
        let bad = |e: redis::RedisError| crate::store::redis::BadRedisUrl(e.to_string());
        let source = match RedisTarget::parse(url)? {
            RedisTarget::Server(url) => {
                let info = url.into_connection_info().map_err(bad)?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                Source::Server(redis::Client::open(info.set_redis_settings(settings)).map_err(bad)?)
            }
            RedisTarget::Cluster(nodes) => Source::Cluster(nodes.into()),
        };
        let keys = Keys::new(prefix);
        Ok(RedisFeed {
            source,
            stream: keys.revocations(),
            epoch_key: keys.epoch(),
            cache,
            state: Arc::new(FeedState::new(lease)),
            timeout,
            block,
            metrics,
        })
    }

    /// The state the validator's lease reads.
    pub fn state(&self) -> Arc<FeedState> {
        Arc::clone(&self.state)
    }

    /// Runs the subscriber and the stream tail until `stop` turns true.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let sub = tokio::spawn(self.clone().subscriber(stop.clone()));
        self.tail(stop).await;
        let _ = sub.await;
        tracing::info!("revocation feed stopped");
    }

    fn flush(&self, reason: FlushReason, why: &str) {
        self.cache.flush();
        self.metrics.flush(reason);
        self.state.flushes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            reason = why,
            "revocation stream does not cover the gap: cache flushed"
        );
    }

    fn apply(&self, granularity: &str, at_ms: u64, hashes: &str, path: Path) {
        let hashes: Vec<TokenHash> = hashes.split(',').filter_map(hex_hash).collect();
        if hashes.is_empty() {
            return;
        }
        self.cache.invalidate(hashes.iter().copied());
        self.state.applied.fetch_add(1, Ordering::Relaxed);
        let lag = Duration::from_millis(unix_ms().saturating_sub(at_ms));
        let metric_path = match path {
            Path::PubSub => AppliedPath::PubSub,
            Path::Stream => AppliedPath::Stream,
        };
        self.metrics
            .applied(granularity, metric_path, (at_ms > 0).then_some(lag));
        tracing::debug!(
            granularity,
            tokens = hashes.len(),
            lag_ms = lag.as_millis() as u64,
            path = ?path,
            "revocation applied"
        );
    }

    /// A new connection of the feed's own (a blocking read must not hold up anyone else's
    /// calls); on a cluster, with push messages in RESP3 when `push` is given.
    async fn connect(
        &self,
        push: Option<mpsc::UnboundedSender<PushInfo>>,
        response: Duration,
    ) -> redis::RedisResult<Conn> {
        match &self.source {
            Source::Server(client) => {
                let mut cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(response));
                if let Some(tx) = push {
                    cfg = cfg.set_push_sender(tx);
                }
                Ok(Conn::Plain(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ))
            }
            Source::Cluster(nodes) => {
                // No retries inside the client: a read that fails or is redirected ends the
                // session, whose reconnect checks the gap and the lease; retried internally, one
                // read could outlast the lease unnoticed.
                let mut b = cluster_builder(nodes, self.timeout, response).retries(0);
                if let Some(tx) = push {
                    b = b.use_protocol(ProtocolVersion::RESP3).push_sender(tx);
                }
                Ok(Conn::Cluster(b.build()?.get_async_connection().await?))
            }
        }
    }

    async fn tail(&self, mut stop: watch::Receiver<bool>) {
        let mut seen = Seen::default();
        let mut backoff = Duration::from_millis(50);
        let mut failing = false;
        loop {
            match self.tail_session(&mut seen, &mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    self.state.connected.store(false, Ordering::Release);
                    if !failing {
                        tracing::warn!(error = %e, "revocation stream unreachable; retrying (cache answers stop when the lease runs out)");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if self.state.connected() {
                backoff = Duration::from_millis(50);
                failing = false;
            }
        }
    }

    /// One connection's life: check the gap, then read until an error or `stop`.
    async fn tail_session(
        &self,
        seen: &mut Seen,
        stop: &mut watch::Receiver<bool>,
    ) -> redis::RedisResult<()> {
        let mut conn = self.connect(None, self.block + self.timeout).await?;
        let first = seen.last.is_none();
        let checked = Instant::now();
        // Whether the cache may hold entries the log has not kept current: the lease ran out
        // (or was never confirmed) while lookups went on filling it.
        let lapsed = !self.state.fresh();
        self.check_gap(&mut conn, seen).await?;
        if lapsed {
            if first && self.cache.is_empty() {
                // Nothing was cached before this first connection; still fail any fill in
                // flight, which read the store before the position was taken.
                self.cache.flush();
            } else if first {
                // Lookups filled the cache before the first catch-up; the position starts at
                // the stream's end, so events appended since those fills would never be read.
                self.flush(
                    FlushReason::LeaseLapsed,
                    "cache filled before the first catch-up with the revocation log",
                );
            } else {
                // A revocation whose record was written but whose event could not be published
                // (the log's node was down: see `store::redis`) may never reach the stream, and
                // this replica's cache may still hold the token: start cold. (While the lease was
                // out the cache answered nothing; lookups went to the store.)
                self.flush(
                    FlushReason::LeaseLapsed,
                    "lease ran out while the revocation log was unreachable",
                );
            }
        }
        // Since when the cache is known to agree with the log (up to what the reads from `last`
        // apply): the last confirmation, or the check above when it started cold.
        let mut anchor = match self.state.confirmed_at() {
            Some(c) if !lapsed => c,
            _ => checked,
        };
        self.state.connected.store(true, Ordering::Release);
        tracing::info!(from = %seen.last.unwrap_or(StreamPos::ZERO), "revocation stream connected");
        let mut blocking = false;
        loop {
            let from = seen.last.unwrap_or(StreamPos::ZERO).to_string();
            let mut opts = StreamReadOptions::default().count(READ_BATCH);
            if blocking {
                opts = opts.block(usize::try_from(self.block.as_millis()).unwrap_or(1000));
            }
            let issued = Instant::now();
            let (keys, ids) = ([self.stream.as_str()], [from.as_str()]);
            let read = conn.xread_options(&keys, &ids, &opts);
            let reply: Option<StreamReadReply> = tokio::select! {
                r = read => r?,
                () = async { let _ = stop.wait_for(|s| *s).await; } => return Ok(()),
            };
            let n = reply
                .as_ref()
                .map_or(0, |r| r.keys.iter().map(|k| k.ids.len()).sum::<usize>());
            if let Some(reply) = reply {
                for key in reply.keys {
                    for entry in key.ids {
                        let g: String = entry.get("g").unwrap_or_default();
                        let at: u64 = entry.get("at").unwrap_or_default();
                        let h: String = entry.get("h").unwrap_or_default();
                        self.apply(&g, at, &h, Path::Stream);
                        if let Some(pos) = StreamPos::parse(&entry.id) {
                            seen.last = Some(pos);
                        }
                    }
                }
            }
            if anchor.elapsed() >= self.state.lease() {
                // The lease ran out inside this session (a slow read, a stalled process): the
                // same doubt as after a reconnect past the lease, and the node may have changed
                // under the connection. Check the gap again, start cold, and confirm only with a
                // read issued after that.
                let checked = Instant::now();
                self.check_gap(&mut conn, seen).await?;
                self.flush(
                    FlushReason::LeaseLapsed,
                    "lease ran out during a revocation stream read",
                );
                anchor = checked;
                blocking = false;
                continue;
            }
            // A full batch may have more behind it: read again at once, and confirm nothing
            // yet (entries that were in the stream when this read was issued may be unread).
            blocking = n < READ_BATCH;
            if blocking {
                // Fewer than asked for: everything in the stream when this read was issued has
                // now been applied.
                self.state.confirm(issued);
                anchor = anchor.max(issued);
            }
        }
    }

    /// Compares the epoch and the stream's bounds with what this replica saw before, flushing
    /// when the stream cannot replay what was missed; sets the position to read from.
    async fn check_gap(&self, conn: &mut Conn, seen: &mut Seen) -> redis::RedisResult<()> {
        // First: a node that changes after this is seen as a failed read, and a new check.
        let node = self.log_node(conn).await?;
        let node_changed = matches!((&seen.node, &node), (Some(a), Some(b)) if a != b);
        if node.is_some() {
            seen.node = node;
        }
        let candidate = crate::token::random_id("", 24).unwrap_or_else(|_| unix_ms().to_string());
        let _: Value = redis::cmd("SET")
            .arg(&self.epoch_key)
            .arg(&candidate)
            .arg("NX")
            .query_async(conn)
            .await?;
        let now_epoch: Option<String> = redis::cmd("GET")
            .arg(&self.epoch_key)
            .query_async(conn)
            .await?;
        let first: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        let first = first.ids.first().and_then(|e| StreamPos::parse(&e.id));
        let generated = self.last_generated(conn).await?;
        let epoch_changed = matches!((&seen.epoch, &now_epoch), (Some(a), Some(b)) if a != b);
        seen.epoch = now_epoch;
        let last = &mut seen.last;
        match *last {
            None => {
                // First connection: nothing to replay; whatever lookups cached before it is
                // flushed by the caller (the lease was never confirmed).
                *last = Some(generated.unwrap_or(StreamPos::ZERO));
            }
            Some(pos) => {
                if epoch_changed {
                    self.flush(
                        FlushReason::Epoch,
                        "epoch changed: redis lost its data or was replaced",
                    );
                    *last = Some(generated.unwrap_or(StreamPos::ZERO));
                } else if generated.unwrap_or(StreamPos::ZERO) < pos {
                    // The stream ends before what this replica read (no stream at all, while it
                    // has read none, is no gap).
                    self.flush(
                        FlushReason::StreamBehind,
                        "stream is behind this replica: replaced or failed over",
                    );
                    *last = Some(generated.unwrap_or(StreamPos::ZERO));
                } else if generated.is_some_and(|g| g > pos) && first.is_none_or(|f| f > pos) {
                    // Entries after our position existed and the oldest left is newer than it:
                    // some of what we missed may be gone.
                    self.flush(
                        FlushReason::StreamTrimmed,
                        "stream trimmed past this replica's position",
                    );
                } else if node_changed {
                    // A failover (or a restart) keeps the epoch and may keep the stream going
                    // with new entries, while the entries after this replica's position that
                    // the old node had not replicated are gone: nothing tells which.
                    self.flush(
                        FlushReason::NodeChanged,
                        "the revocation log's node changed: unread entries may be lost",
                    );
                }
            }
        }
        Ok(())
    }

    /// The run id of the node serving the stream (`INFO server`); `None` when this user may not
    /// call INFO (the check is then skipped).
    async fn log_node(&self, conn: &mut Conn) -> redis::RedisResult<Option<String>> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        let info = match conn {
            Conn::Cluster(c) => {
                let route = Route::with_key(&self.stream, SlotAddr::Master);
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                c.route_command(cmd, to).await
            }
            other => cmd.query_async::<Value>(other).await,
        };
        let text = match info {
            Ok(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Ok(Value::VerbatimString { text, .. } | Value::SimpleString(text)) => text,
            Ok(_) => return Ok(None),
            // Refused (an ACL without INFO, a managed Redis that renamed it): no check.
            Err(e) if e.code().is_some() => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned()))
    }

    async fn last_generated(&self, conn: &mut Conn) -> redis::RedisResult<Option<StreamPos>> {
        let info: redis::RedisResult<redis::streams::StreamInfoStreamReply> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.stream)
            .query_async(conn)
            .await;
        match info {
            Ok(i) => Ok(StreamPos::parse(&i.last_generated_id)),
            // No stream yet.
            Err(e) if e.code().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn subscriber(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.sub_session(&mut stop, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "revocation channel disconnected; resubscribing")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn sub_session(
        &self,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Duration,
    ) -> redis::RedisResult<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut conn = self.connect(Some(tx), self.timeout).await?;
        match &mut conn {
            // Sharded pub/sub on a cluster: the message goes only to the node serving the
            // channel's slot (the stream's), not over the whole cluster bus.
            Conn::Cluster(c) => c.ssubscribe(&self.stream).await?,
            Conn::Plain(c) => c.subscribe(&self.stream).await?,
            Conn::Manager(_) => {}
        }
        *backoff = Duration::from_millis(50);
        let mut ping = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(PushInfo { kind: PushKind::Message | PushKind::SMessage, data }) => {
                        if let Some(Value::BulkString(payload)) = data.get(1) {
                            self.apply_payload(payload);
                        }
                    }
                    Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => {
                        return Err(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "subscriber disconnected",
                        )));
                    }
                    // Never asked for: the server dropped the subscription (a cluster node does
                    // when the channel's slot moves away from it). Subscribe again from a new
                    // connection, which finds the slot's new owner; the stream covers the gap.
                    Some(PushInfo { kind: PushKind::Unsubscribe | PushKind::SUnsubscribe, .. }) => {
                        return Err(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "subscription dropped by the server",
                        )));
                    }
                    Some(_) => {}
                },
                _ = ping.tick() => {
                    // Finds half-open connections that would never deliver a Disconnection.
                    match &mut conn {
                        Conn::Cluster(c) => {
                            // To the channel's node, not to every primary.
                            let route = Route::with_key(&self.stream, SlotAddr::Master);
                            let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                            c.route_command(redis::cmd("PING"), to).await?;
                        }
                        other => {
                            let _: Value = redis::cmd("PING").query_async(other).await?;
                        }
                    }
                }
                () = async { let _ = stop.wait_for(|s| *s).await; } => return Ok(()),
            }
        }
    }

    /// `<stream id> <granularity> <unix ms> <hex,hex,…>`
    fn apply_payload(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let mut parts = text.split(' ');
        let (Some(_id), Some(g), Some(at), Some(h)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        self.apply(g, at.parse().unwrap_or(0), h, Path::PubSub);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_positions_order_numerically() {
        let a = StreamPos::parse("9-5").unwrap();
        let b = StreamPos::parse("10-0").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        assert!(StreamPos::parse("x").is_none());
    }

    #[test]
    fn a_stream_read_fits_twice_in_the_lease() {
        let ms = Duration::from_millis;
        assert_eq!(read_block(ms(5000), ms(1000)).ok(), Some(ms(1000)));
        assert_eq!(read_block(ms(2000), ms(300)).ok(), Some(ms(500)));
        assert_eq!(read_block(ms(1000), ms(200)).ok(), Some(ms(250)));
        assert!(read_block(ms(1000), ms(1000)).is_err());
        assert!(read_block(ms(5000), ms(3000)).is_err());
        let e = read_block(ms(200), ms(100)).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("--revocation-lease")));
    }

    #[test]
    fn lease_follows_confirmations() {
        let s = FeedState::new(Duration::from_millis(50));
        assert!(!s.fresh(), "not fresh before the first catch-up");
        s.confirm(Instant::now());
        assert!(s.fresh());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!s.fresh(), "stale once the lease runs out");
        // A read issued long ago confirms only up to its issue time.
        s.confirm(Instant::now() - Duration::from_millis(100));
        assert!(!s.fresh());
        s.confirm(Instant::now());
        assert!(s.fresh());
    }
}
