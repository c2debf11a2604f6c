//! The Redis store and revocation fan-out across replicas (DESIGN.md §3, G1–G4), against real
//! `redis-server` processes on free ports. These fail, not skip, when redis-server is missing.

use std::time::{Duration, Instant};

use navis_auth::pb::{self, Decision, validator_client::ValidatorClient};
use navis_auth::token::TokenKind;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{TestServer, channel, decision, eventually, req, unknown_token};
use crate::proxy::Proxy;
use crate::redis_server::RedisServer;
use crate::replica::Replica;

/// A replica on `url`, started and ready (its feed has caught up).
pub(crate) async fn replica(url: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--store", url];
    args.extend_from_slice(extra);
    let s = TestServer::start_with(&args).await;
    s.wait_ready().await;
    s
}

/// Polls `v` until it refuses `token`; the time from `since`, or `None` past `within`.
pub(crate) async fn refused_after(
    v: &mut ValidatorClient<Channel>,
    token: &str,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    loop {
        let r = v
            .validate(req(token, &[]))
            .await
            .map(tonic::Response::into_inner);
        if let Ok(r) = r
            && decision(&r) == Decision::Unauthenticated
        {
            return Some(since.elapsed());
        }
        if since.elapsed() > within {
            return None;
        }
        tokio::task::yield_now().await;
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Gets `token` into `s`'s cache: validates it until an answer comes from the cache (no store
/// read). A precondition, so it tolerates a flush the feed may do in between (a read that
/// outlived the lease on a loaded machine, say), but not a cache that never serves it.
pub(crate) async fn cache_on(s: &TestServer, token: &str) {
    for attempt in 1..=10 {
        assert_eq!(decision(&s.check(token, &[]).await), Decision::Allow);
        let gets = s.calls.gets();
        assert_eq!(decision(&s.check(token, &[]).await), Decision::Allow);
        if s.calls.gets() == gets {
            return;
        }
        eprintln!("cache_on: attempt {attempt}: the second answer read the store; again");
    }
    panic!("ten second answers in a row came from the store, not the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_call_works_on_redis_and_no_plaintext_reaches_it() {
    let redis = RedisServer::start();
    let s = replica(&redis.url(), &[]).await;
    let mut a = s.admin().await;
    let (key, info) = s.create_key("alice", &["mcp:read"]).await;
    assert_eq!(
        decision(&s.check(&key, &["mcp:read"]).await),
        Decision::Allow
    );
    assert_eq!(
        decision(&s.check(&key, &["mcp:write"]).await),
        Decision::Forbidden
    );
    assert_eq!(
        decision(&s.check(&unknown_token(TokenKind::ApiKey), &[]).await),
        Decision::Unauthenticated
    );

    // Expiring keys expire in Redis too.
    let short = a
        .create_api_key(pb::CreateApiKeyRequest {
            subject: "alice".into(),
            scopes: vec!["mcp:read".into()],
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let hex = navis_auth::token::TokenHash::of(&short.api_key).to_hex();
    let ttl: i64 = redis
        .cli(&["TTL", &format!("navis-auth:t:{{{hex}}}")])
        .trim()
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&ttl), "record TTL {ttl}");

    // Rotation.
    let rotated = a
        .rotate_api_key(pb::RotateApiKeyRequest {
            token_id: info.token_id.clone(),
            grace_period_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        decision(&s.check(&key, &[]).await),
        Decision::Unauthenticated
    );
    assert_eq!(
        decision(&s.check(&rotated.api_key, &[]).await),
        Decision::Allow
    );

    // OAuth: issue, refresh, reuse revokes the grant.
    let first = s.issue("alice", "claude", &["mcp:read", "mcp:write"]).await;
    let refresh = |rt: &str| pb::RefreshOAuthTokensRequest {
        refresh_token: rt.into(),
        client_id: "claude".into(),
        scopes: vec![],
    };
    let second = a
        .refresh_o_auth_tokens(refresh(&first.refresh_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        decision(&s.check(&second.access_token, &["mcp:write"]).await),
        Decision::Allow
    );
    let e = a
        .refresh_o_auth_tokens(refresh(&first.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        decision(&s.check(&second.access_token, &[]).await),
        Decision::Unauthenticated
    );

    // Grant and subject revocation, listing with pagination.
    let g = s.issue("alice", "cursor", &["mcp:read"]).await;
    let r = a
        .revoke_grant(pb::RevokeGrantRequest {
            subject: "alice".into(),
            client_id: "cursor".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 2);
    assert_eq!(
        decision(&s.check(&g.access_token, &[]).await),
        Decision::Unauthenticated
    );
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = a
            .list_tokens(pb::ListTokensRequest {
                subject: "alice".into(),
                include_inactive: true,
                page_size: 3,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.tokens.into_iter().map(|t| t.token_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "pages do not overlap");
    // 9 tokens were made; the key rotated away with no grace expired at once, and expired
    // records expire in Redis too (EXPIREAT), so 8 remain.
    assert_eq!(ids.len(), 8, "{ids:?}");
    let r = a
        .revoke_subject(pb::RevokeSubjectRequest {
            subject: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Still active then: the 1-hour key and the rotated key (the rest were revoked above).
    assert_eq!(r.revoked, 2);
    assert_eq!(
        decision(&s.check(&rotated.api_key, &[]).await),
        Decision::Unauthenticated
    );

    // last_used_at reaches Redis.
    let (k2, i2) = s.create_key("bob", &["mcp:read"]).await;
    assert_eq!(decision(&s.check(&k2, &[]).await), Decision::Allow);
    let used = eventually(Duration::from_secs(5), || {
        let mut a = a.clone();
        let id = i2.token_id.clone();
        async move {
            let l = a
                .list_tokens(pb::ListTokensRequest {
                    subject: "bob".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            l.tokens
                .iter()
                .any(|t| t.token_id == id && t.last_used_at > 0)
        }
    })
    .await;
    assert!(used);

    // Nothing in Redis holds a token or its random body.
    let dump = redis.dump_everything();
    assert!(dump.len() > 1000, "sanity: the dump has the records");
    for t in [
        &key,
        &short.api_key,
        &rotated.api_key,
        &first.access_token,
        &first.refresh_token,
        &second.access_token,
        &second.refresh_token,
        &g.access_token,
        &k2,
    ] {
        assert!(
            !dump.windows(32).any(|w| w == &t.as_bytes()[5..37]),
            "plaintext token in Redis"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case1_a_revocation_through_a_reaches_b_within_100ms() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), &[]).await;
    let b = replica(&redis.url(), &[]).await;
    let mut bv = b.validator().await;
    let mut admin = a.admin().await;

    // One token.
    let (key, info) = a.create_key("alice", &["mcp:read"]).await;
    cache_on(&b, &key).await;
    admin
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(pb::revoke_token_request::Target::TokenId(info.token_id)),
        })
        .await
        .unwrap();
    let t = refused_after(&mut bv, &key, Instant::now(), Duration::from_millis(100)).await;
    assert!(t.is_some(), "token revocation reached B within 100 ms");

    // One grant.
    let g = a.issue("alice", "claude", &["mcp:read"]).await;
    cache_on(&b, &g.access_token).await;
    admin
        .revoke_grant(pb::RevokeGrantRequest {
            subject: "alice".into(),
            client_id: "claude".into(),
        })
        .await
        .unwrap();
    let t = refused_after(
        &mut bv,
        &g.access_token,
        Instant::now(),
        Duration::from_millis(100),
    )
    .await;
    assert!(t.is_some(), "grant revocation reached B within 100 ms");

    // One subject.
    let (k1, _) = a.create_key("carol", &["mcp:read"]).await;
    let g2 = a.issue("carol", "cursor", &["mcp:read"]).await;
    cache_on(&b, &k1).await;
    cache_on(&b, &g2.access_token).await;
    admin
        .revoke_subject(pb::RevokeSubjectRequest {
            subject: "carol".into(),
        })
        .await
        .unwrap();
    let now = Instant::now();
    for t in [&k1, &g2.access_token] {
        let took = refused_after(&mut bv, t, now, Duration::from_millis(100)).await;
        assert!(took.is_some(), "subject revocation reached B within 100 ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case2_propagation_under_load() {
    const N: usize = 1000;
    let redis = RedisServer::start();
    let a = replica(&redis.url(), &[]).await;
    let b = replica(&redis.url(), &[]).await;
    let mut keys = Vec::with_capacity(N);
    let mut admin = a.admin().await;
    for i in 0..N {
        let r = admin
            .create_api_key(pb::CreateApiKeyRequest {
                subject: format!("user-{}", i % 50),
                scopes: vec!["mcp:read".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        keys.push((r.api_key, r.info.unwrap().token_id));
    }
    let mut bv = b.validator().await;
    for (k, _) in &keys {
        assert_eq!(
            decision(&bv.validate(req(k, &[])).await.unwrap().into_inner()),
            Decision::Allow
        );
    }
    // B validates continuously (every key, round robin) while A revokes them one by one.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..2 {
        let (mut v, stop, keys) = (b.validator().await, stop.clone(), keys.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut i = w;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = v.validate(req(&keys[i % keys.len()].0, &[])).await;
                i += 7;
                n += 1;
            }
            n
        }));
    }
    let mut delays = Vec::with_capacity(N);
    for (k, id) in &keys {
        admin
            .revoke_token(pb::RevokeTokenRequest {
                target: Some(pb::revoke_token_request::Target::TokenId(id.clone())),
            })
            .await
            .unwrap();
        let returned = Instant::now();
        let took = refused_after(&mut bv, k, returned, Duration::from_secs(5))
            .await
            .expect("B refuses the revoked token");
        delays.push(took);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut background = 0;
    for l in load {
        background += l.await.unwrap();
    }
    delays.sort();
    let (p50, p99, max) = (
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[N - 1],
    );
    eprintln!(
        "propagation under load ({N} revocations, {background} background validations on B): \
         p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(
        max <= Duration::from_millis(100),
        "every revocation reached B within 100 ms (max {max:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case3_a_missed_pubsub_message_is_replayed_from_the_stream() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), &[]).await;
    let b = replica(&redis.url(), &[]).await;
    let (key, info) = a.create_key("alice", &["mcp:read"]).await;
    cache_on(&b, &key).await;
    let mut bv = b.validator().await;
    let mut admin = a.admin().await;
    // Kill every subscriber connection, then revoke at once, inside the resubscribe backoff.
    let killed: i64 = redis
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .trim()
        .parse()
        .unwrap();
    assert!(killed >= 2, "both replicas had a subscriber ({killed})");
    admin
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(pb::revoke_token_request::Target::TokenId(info.token_id)),
        })
        .await
        .unwrap();
    let took = refused_after(&mut bv, &key, Instant::now(), Duration::from_secs(5)).await;
    eprintln!("missed message: refused after {took:?}");
    assert!(took.is_some(), "replayed from the stream within the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case4_redis_restarted_without_data_flushes_the_cache() {
    let mut redis = RedisServer::start();
    let b = replica(&redis.url(), &["--revocation-lease", "5s"]).await;
    let (key, _) = b.create_key("alice", &["mcp:read"]).await;
    cache_on(&b, &key).await;
    let flushes = b.feed.as_ref().unwrap().flushes();
    redis.restart_empty();
    let refused = eventually(Duration::from_secs(8), || async {
        matches!(b.check_req(req(&key, &[])).await, Ok(r) if decision(&r) == Decision::Unauthenticated)
    })
    .await;
    assert!(refused, "a token Redis no longer has is refused");
    assert!(
        b.feed.as_ref().unwrap().flushes() > flushes,
        "the epoch change flushed the cache"
    );
    let r = b.check(&key, &[]).await;
    assert_eq!(r.error_description, "The token is not recognized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case5_stream_trimmed_past_a_disconnected_replica_flushes_it() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let a = replica(&redis.url(), &[]).await;
    let b = replica(&proxy.url(), &["--revocation-lease", "30s"]).await;
    let (keep, _) = a.create_key("alice", &["mcp:read"]).await;
    let (gone, gone_info) = a.create_key("bob", &["mcp:read"]).await;
    cache_on(&b, &keep).await;
    cache_on(&b, &gone).await;
    let flushes = b.feed.as_ref().unwrap().flushes();

    proxy.partition();
    a.admin()
        .await
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(pb::revoke_token_request::Target::TokenId(
                gone_info.token_id,
            )),
        })
        .await
        .unwrap();
    let trimmed: i64 = redis
        .cli(&["XTRIM", "navis-auth:{rev}:revocations", "MAXLEN", "0"])
        .trim()
        .parse()
        .unwrap();
    assert!(trimmed >= 1);
    proxy.heal();

    let flushed = eventually(Duration::from_secs(5), || async {
        b.feed.as_ref().unwrap().flushes() > flushes
    })
    .await;
    assert!(flushed, "B detected the gap and flushed");
    assert_eq!(
        decision(&b.check(&gone, &[]).await),
        Decision::Unauthenticated
    );
    assert_eq!(decision(&b.check(&keep, &[]).await), Decision::Allow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case6_redis_down_cache_until_the_lease_then_unavailable_then_recovery() {
    let mut redis = RedisServer::start();
    let lease = Duration::from_secs(2);
    let b = replica(
        &redis.url(),
        &["--revocation-lease", "2s", "--redis-timeout", "300ms"],
    )
    .await;
    let (key, _) = b.create_key("alice", &["mcp:read"]).await;
    cache_on(&b, &key).await;

    redis.shutdown_save();
    let down = Instant::now();
    // Within the lease: the cached token is still answered.
    assert_eq!(decision(&b.check(&key, &[]).await), Decision::Allow);
    // A token never seen is UNAVAILABLE at once, never UNAUTHENTICATED (G4).
    let e = b
        .check_req(req(&unknown_token(TokenKind::ApiKey), &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    // Past the lease every answer is UNAVAILABLE.
    tokio::time::sleep((lease + Duration::from_millis(300)).saturating_sub(down.elapsed())).await;
    for _ in 0..3 {
        let e = b.check_req(req(&key, &[])).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    assert_eq!(b.http_get("/readyz").await.0, 503);

    redis.start_again();
    let back = eventually(Duration::from_secs(10), || async {
        matches!(b.check_req(req(&key, &[])).await, Ok(r) if decision(&r) == Decision::Allow)
    })
    .await;
    assert!(back, "recovered without a restart");
    b.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case7_a_paused_replica_serves_no_cached_positive_before_catching_up() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), &[]).await;
    let b = Replica::start(
        &redis.url(),
        &["--revocation-lease", "1s", "--redis-timeout", "200ms"],
    );
    b.wait_ready();
    let (key, info) = a.create_key("alice", &["mcp:read"]).await;
    let mut bv = ValidatorClient::new(channel(b.validator_addr).await);
    for _ in 0..2 {
        let r = bv.validate(req(&key, &[])).await.unwrap().into_inner();
        assert_eq!(decision(&r), Decision::Allow, "{}", r.error_description);
    }
    b.pause();
    a.admin()
        .await
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(pb::revoke_token_request::Target::TokenId(info.token_id)),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.resume();
    let r = bv.validate(req(&key, &[])).await.unwrap().into_inner();
    assert_eq!(
        decision(&r),
        Decision::Unauthenticated,
        "first answer after SIGCONT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case8_revocations_racing_cache_fills_are_never_lost() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), &[]).await;
    let b = replica(&redis.url(), &[]).await;
    let mut admin = a.admin().await;
    let mut bv = b.validator().await;
    for round in 0..100 {
        let (key, info) = a.create_key("alice", &["mcp:read"]).await;
        // B's first lookup (a cache fill) and A's revocation race.
        let fill = {
            let mut bv = bv.clone();
            let key = key.clone();
            tokio::spawn(async move { bv.validate(req(&key, &[])).await })
        };
        admin
            .revoke_token(pb::RevokeTokenRequest {
                target: Some(pb::revoke_token_request::Target::TokenId(info.token_id)),
            })
            .await
            .unwrap();
        let _ = fill.await.unwrap();
        let took = refused_after(&mut bv, &key, Instant::now(), Duration::from_millis(100)).await;
        assert!(
            took.is_some(),
            "round {round}: the revocation won over the fill"
        );
        // And it stays refused.
        let r = bv.validate(req(&key, &[])).await.unwrap().into_inner();
        assert_eq!(decision(&r), Decision::Unauthenticated, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case9_entries_cached_before_the_first_catch_up_do_not_outlive_later_revocations() {
    use std::sync::Arc;

    use navis_auth::cache::{Cache, Probe};
    use navis_auth::clock::Clock;
    use navis_auth::metrics::Metrics;
    use navis_auth::revocation::RedisFeed;
    use navis_auth::token::TokenHash;

    let redis = RedisServer::start();
    let lease = Duration::from_secs(2);
    let cache = Arc::new(Cache::new(1024, Duration::from_secs(60), Clock::coarse()));
    // A lookup fills the cache before the feed ever connected (the lease not yet confirmed).
    let hash = TokenHash::of("filled before the first connect");
    assert!(cache.fill(cache.ticket(), hash, None));
    assert!(matches!(cache.lookup(&hash, |_| ()), Probe::Absent));
    // A revocation of that token reaches the stream before the feed's first connect.
    let id = redis.cli(&[
        "XADD",
        "navis-auth:{rev}:revocations",
        "*",
        "g",
        "token",
        "at",
        "0",
        "h",
        &hash.to_hex(),
    ]);
    assert!(id.contains('-'), "XADD answered {id}");
    let feed = RedisFeed::new(
        &redis.url(),
        "navis-auth:",
        Arc::clone(&cache),
        lease,
        Duration::from_millis(300),
        Metrics::new("redis", Some(lease)),
    )
    .unwrap();
    let state = feed.state();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(feed.run(stop));
    let caught_up = eventually(Duration::from_secs(5), || async { state.fresh() }).await;
    assert!(caught_up, "the feed confirmed a catch-up");
    assert!(
        matches!(cache.lookup(&hash, |_| ()), Probe::Miss),
        "the entry filled before the first catch-up is gone"
    );
    assert!(state.flushes() >= 1);
    let _ = stop_tx.send(true);
    run.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case10_a_replica_stalled_past_its_lease_starts_cold() {
    let redis = RedisServer::start();
    let b = Replica::start(
        &redis.url(),
        &["--revocation-lease", "1s", "--redis-timeout", "200ms"],
    );
    b.wait_ready();
    let flushed = |b: &Replica| {
        b.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("cache flushed"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let before = flushed(&b).len();
    // Stalled with a blocking read in flight, for longer than the lease; whether that read
    // completes after SIGCONT or times out, the feed must start cold before confirming again.
    b.pause();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.resume();
    b.wait_ready();
    let after = flushed(&b);
    eprintln!("flushes after the stall: {:?}", &after[before..]);
    assert!(
        after[before..].iter().any(|l| l.contains("lease ran out")),
        "the lapsed lease flushed the cache"
    );
    assert!(
        !after.iter().any(|l| l.contains("stream is behind")),
        "no stream yet is no gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case11_the_log_node_replaced_within_the_lease_flushes_the_cache() {
    let mut redis = RedisServer::start();
    let a = replica(&redis.url(), &[]).await;
    let b = replica(&redis.url(), &["--revocation-lease", "30s"]).await;
    let (key, _) = a.create_key("alice", &["mcp:read"]).await;
    a.admin()
        .await
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(pb::revoke_token_request::Target::TokenId(
                a.create_key("bob", &["mcp:read"]).await.1.token_id,
            )),
        })
        .await
        .unwrap();
    cache_on(&b, &key).await;
    let feed = b.feed.as_ref().unwrap();
    let flushes = feed.flushes();
    // Another process with the same data and epoch (as after a failover, where the entries the
    // old node had not replicated would be gone without a trace in the stream).
    redis.shutdown_save();
    redis.start_again();
    let flushed = eventually(Duration::from_secs(10), || async {
        feed.flushes() > flushes && feed.connected()
    })
    .await;
    assert!(flushed, "the new node was noticed and the cache flushed");
    assert!(
        feed.lease_age()
            .is_some_and(|a| a < Duration::from_secs(30))
    );
    assert_eq!(decision(&b.check(&key, &[]).await), Decision::Allow);
}
