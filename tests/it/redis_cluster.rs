//! The Redis store and revocation fan-out on a real 3-master Redis Cluster (`redis+cluster://`):
//! propagation between two replicas, a missed sharded pub/sub message replayed from the stream,
//! and the master holding the revocation log killed and started again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use navis_auth::pb::{self, Decision};
use navis_auth::token::TokenHash;
use tonic::Code;

use crate::helpers::{TestServer, decision, eventually, req};
use crate::redis::{cache_on, percentile, refused_after, replica};
use crate::redis_cluster_server::RedisCluster;

/// The revocation stream's key (the default prefix, hash-tagged onto one slot).
pub(crate) const STREAM: &str = "navis-auth:{rev}:revocations";

/// The Redis key of `token`'s record (default prefix).
pub(crate) fn record_key(token: &str) -> String {
    format!("navis-auth:t:{{{}}}", TokenHash::of(token).to_hex())
}

fn revoke_id(id: &str) -> pb::RevokeTokenRequest {
    pb::RevokeTokenRequest {
        target: Some(pb::revoke_token_request::Target::TokenId(id.to_owned())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_every_admin_call_works_and_keys_spread_over_the_masters() {
    let cluster = RedisCluster::start();
    let s = replica(&cluster.url(), &[]).await;
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

    // Rotation (new key on its own slot, old one shortened and published).
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

    // Refresh, then reuse revokes the grant.
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

    // Listing pages through the subject's index, record by record across slots.
    for i in 0..5 {
        s.create_key("alice", &[&format!("scope{i}")]).await;
    }
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
    // The rotated-away key expired at once (and in Redis); 1 + 4 OAuth + 5 remain.
    assert_eq!(ids.len(), 10, "{ids:?}");

    // last_used_at reaches the records (touches grouped by slot).
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

    let r = a
        .revoke_subject(pb::RevokeSubjectRequest {
            subject: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 6, "the rotated key and the five new ones");
    assert_eq!(
        decision(&s.check(&rotated.api_key, &[]).await),
        Decision::Unauthenticated
    );

    // A subject with many tokens on every slot: marked side by side, one event.
    let mut many = Vec::new();
    for _ in 0..300 {
        many.push(s.create_key("mallory", &["mcp:read"]).await.0);
    }
    let started = Instant::now();
    let r = a
        .revoke_subject(pb::RevokeSubjectRequest {
            subject: "mallory".into(),
        })
        .await
        .unwrap()
        .into_inner();
    eprintln!(
        "cluster subject revocation of {} tokens took {:?}",
        r.revoked,
        started.elapsed()
    );
    assert_eq!(r.revoked, 300);
    for t in [&many[0], &many[299]] {
        assert_eq!(decision(&s.check(t, &[]).await), Decision::Unauthenticated);
    }

    // The keys are spread over every master; the log's three keys share one slot.
    let per_node: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["--scan"]).lines().filter(|l| !l.is_empty()).count())
        .collect();
    assert!(
        per_node.iter().all(|n| *n > 0),
        "keys per master {per_node:?}"
    );
    assert_eq!(cluster.slot(STREAM), cluster.slot("navis-auth:{rev}:epoch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_case1_a_revocation_through_a_reaches_b_within_100ms() {
    let cluster = RedisCluster::start();
    let a = replica(&cluster.url(), &[]).await;
    let b = replica(&cluster.url(), &[]).await;
    let mut bv = b.validator().await;
    let mut admin = a.admin().await;

    // Token, grant and subject, as on one server.
    let (key, info) = a.create_key("alice", &["mcp:read"]).await;
    cache_on(&b, &key).await;
    admin.revoke_token(revoke_id(&info.token_id)).await.unwrap();
    let t = refused_after(&mut bv, &key, Instant::now(), Duration::from_millis(100)).await;
    assert!(t.is_some(), "token revocation reached B within 100 ms");

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

    let (k1, _) = a.create_key("carol", &["mcp:read"]).await;
    let g2 = a.issue("carol", "cursor", &["mcp:read"]).await;
    cache_on(&b, &k1).await;
    cache_on(&b, &g2.access_token).await;
    let r = admin
        .revoke_subject(pb::RevokeSubjectRequest {
            subject: "carol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked, 3, "key + access + refresh token");
    let now = Instant::now();
    for t in [&k1, &g2.access_token] {
        let took = refused_after(&mut bv, t, now, Duration::from_millis(100)).await;
        assert!(took.is_some(), "subject revocation reached B within 100 ms");
    }

    // Many tokens, their records on every master, revoked one by one through A while B
    // validates them all continuously.
    const N: usize = 200;
    let mut keys = Vec::with_capacity(N);
    for i in 0..N {
        let (k, info) = a
            .create_key(&format!("user-{}", i % 20), &["mcp:read"])
            .await;
        keys.push((k, info.token_id));
    }
    let mut owners = [0usize; 3];
    for (k, _) in keys.iter().take(30) {
        owners[cluster.owner(&record_key(k))] += 1;
    }
    assert!(
        owners.iter().all(|n| *n > 0),
        "records spread over every master: {owners:?}"
    );
    for (k, _) in &keys {
        let r = bv.validate(req(k, &[])).await.unwrap().into_inner();
        assert_eq!(decision(&r), Decision::Allow);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (mut v, stop, keys) = (b.validator().await, stop.clone(), keys.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = v.validate(req(&keys[i % keys.len()].0, &[])).await;
                i += 7;
            }
        })
    };
    let mut delays = Vec::with_capacity(N);
    for (k, id) in &keys {
        admin.revoke_token(revoke_id(id)).await.unwrap();
        let returned = Instant::now();
        let took = refused_after(&mut bv, k, returned, Duration::from_secs(5))
            .await
            .expect("B refuses the revoked token");
        delays.push(took);
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    delays.sort();
    let (p50, p99, max) = (
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[N - 1],
    );
    eprintln!(
        "cluster propagation ({N} revocations through A, B validating): p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(
        max <= Duration::from_millis(100),
        "every revocation reached B within 100 ms (max {max:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_case2_a_missed_sharded_message_is_replayed_from_the_stream() {
    let cluster = RedisCluster::start();
    let a = replica(&cluster.url(), &[]).await;
    let b = replica(&cluster.url(), &[]).await;
    let (key, info) = a.create_key("alice", &["mcp:read"]).await;
    cache_on(&b, &key).await;
    let mut bv = b.validator().await;
    let mut admin = a.admin().await;
    // The sharded subscribers are on the node serving the channel's (the stream's) slot.
    let rev = cluster.owner(STREAM);
    let killed: i64 = cluster.nodes[rev]
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .trim()
        .parse()
        .unwrap();
    assert!(killed >= 2, "both replicas had a subscriber ({killed})");
    admin.revoke_token(revoke_id(&info.token_id)).await.unwrap();
    let took = refused_after(&mut bv, &key, Instant::now(), Duration::from_secs(5)).await;
    eprintln!("cluster missed message: refused after {took:?}");
    assert!(took.is_some(), "replayed from the stream within the lease");
    assert!(applied(&b, "stream").await >= 1.0, "through the stream");

    // B subscribes again by itself: later revocations arrive over sharded pub/sub again.
    let before = applied(&b, "pubsub").await;
    let resubscribed = eventually(Duration::from_secs(10), || async {
        let (k, i) = a.create_key("bob", &["mcp:read"]).await;
        cache_on(&b, &k).await;
        a.admin()
            .await
            .revoke_token(revoke_id(&i.token_id))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        applied(&b, "pubsub").await > before
    })
    .await;
    assert!(resubscribed, "B resubscribed to the sharded channel");
}

/// Revocation events `s` applied through `path` (`pubsub` or `stream`), from its metrics.
async fn applied(s: &TestServer, path: &str) -> f64 {
    let (_, text) = s.http_get("/metrics").await;
    let label = format!("path=\"{path}\"");
    text.lines()
        .filter(|l| l.starts_with("navis_auth_revocations_applied_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_case3_the_revocation_log_master_dies_replicas_fall_back_and_recover() {
    let mut cluster = RedisCluster::start();
    let lease = Duration::from_secs(2);
    let flags = ["--revocation-lease", "2s", "--redis-timeout", "300ms"];
    let a = replica(&cluster.url(), &flags).await;
    let b = replica(&cluster.url(), &flags).await;
    let feed = b.feed.clone().unwrap();
    let rev = cluster.owner(STREAM);

    // Tokens whose records (and id keys) live on the other masters, and one on the log's master.
    let (mut elsewhere, mut on_rev) = (Vec::new(), None);
    for i in 0..60 {
        let (k, info) = a.create_key(&format!("user-{i}"), &["mcp:read"]).await;
        let id_key = format!("navis-auth:i:{{{}}}", info.token_id);
        if cluster.owner(&record_key(&k)) == rev {
            on_rev.get_or_insert((k, info));
        } else if elsewhere.len() < 3 && cluster.owner(&id_key) != rev {
            elsewhere.push((k, info));
        }
        if on_rev.is_some() && elsewhere.len() == 3 {
            break;
        }
    }
    let (lost, _) = on_rev.expect("a record on the log's master");
    let [(keep, _), (early, early_info), (victim, victim_info)] =
        <[_; 3]>::try_from(elsewhere).expect("three records elsewhere");
    for t in [&keep, &early, &victim, &lost] {
        cache_on(&b, t).await;
    }
    let mut admin = a.admin().await;
    admin
        .revoke_token(revoke_id(&early_info.token_id))
        .await
        .unwrap();
    let mut bv = b.validator().await;
    assert!(
        refused_after(&mut bv, &early, Instant::now(), Duration::from_millis(100))
            .await
            .is_some()
    );

    // From here to the end, B is asked about both revoked tokens all the time: `early` must never
    // be allowed, nor `victim` once its revocation call has returned (whatever it returned).
    let victim_revoked = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (wrong, unavailable, asked) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let watcher = {
        let mut v = b.validator().await;
        let (early, victim) = (early.clone(), victim.clone());
        let (victim_revoked, stop) = (victim_revoked.clone(), stop.clone());
        let (wrong, unavailable, asked) = (wrong.clone(), unavailable.clone(), asked.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (t, revoked) in [
                    (&early, true),
                    (&victim, victim_revoked.load(Ordering::SeqCst)),
                ] {
                    asked.fetch_add(1, Ordering::Relaxed);
                    match v.validate(req(t, &[])).await {
                        Ok(r) if decision(r.get_ref()) == Decision::Allow && revoked => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.code() == Code::Unavailable => {
                            unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected error {e:?}"),
                        Ok(_) => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    cluster.kill(rev);
    let killed = Instant::now();
    // The lease runs out: B stops answering from its cache and asks the store.
    let stale = eventually(Duration::from_secs(5), || async { !feed.fresh() }).await;
    assert!(stale, "B's lease ran out");
    let fell_back = killed.elapsed();
    assert!(fell_back >= lease.saturating_sub(Duration::from_millis(1200)));
    let gets = b.calls.gets();
    assert_eq!(decision(&b.check(&keep, &[]).await), Decision::Allow);
    assert!(
        b.calls.gets() > gets,
        "answered from the store, not the cache"
    );
    // A record on the dead master: the store cannot answer, and that is never "invalid".
    let e = b.check_req(req(&lost, &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(b.http_get("/readyz").await.0, 503);

    // A revocation now: the record is written (its master is up), the event cannot be
    // published, so the call fails and can be retried; B refuses at once from the store.
    let r = admin.revoke_token(revoke_id(&victim_info.token_id)).await;
    victim_revoked.store(true, Ordering::SeqCst);
    let e = r.expect_err("publishing to the dead master fails the call");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(
        decision(&b.check(&victim, &[]).await),
        Decision::Unauthenticated
    );

    // A replacement: the same node, port and dir (nodes.conf + append-only file).
    let flushes = feed.flushes();
    cluster.restart(rev);
    let restarted = Instant::now();
    assert!(cluster.wait_ok(Duration::from_secs(20)), "cluster ok again");
    let fresh = eventually(Duration::from_secs(15), || async { feed.fresh() }).await;
    assert!(fresh, "B caught up with the log again");
    let recovered = restarted.elapsed();
    assert!(
        feed.flushes() > flushes,
        "B started cold after its lease lapsed"
    );
    let back = eventually(Duration::from_secs(10), || async {
        matches!(b.check_req(req(&lost, &[])).await, Ok(r) if decision(&r) == Decision::Allow)
    })
    .await;
    assert!(back, "the record on the restarted master is back");
    cache_on(&b, &keep).await;
    for t in [&early, &victim] {
        assert_eq!(decision(&b.check(t, &[]).await), Decision::Unauthenticated);
    }
    b.wait_ready().await;

    // The retried call succeeds; the event is in the stream (published by the retry or by
    // A's background republisher, whichever came first).
    let again = admin
        .revoke_token(revoke_id(&victim_info.token_id))
        .await
        .expect("the retry succeeds")
        .into_inner();
    assert!(again.revoked <= 1);
    let hex = TokenHash::of(&victim).to_hex();
    let published = eventually(Duration::from_secs(5), || async {
        cluster.nodes[rev]
            .cli(&["XRANGE", STREAM, "-", "+"])
            .contains(&hex)
    })
    .await;
    assert!(published, "the victim's revocation reached the stream");

    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    eprintln!(
        "cluster log master killed: B fell back to the store after {fell_back:?} (lease {lease:?}); \
         caught up {recovered:?} after the restart; {} answers watched, {} UNAVAILABLE, {} wrong",
        asked.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "no revoked token accepted at any point"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_case4_a_subscription_dropped_by_a_slot_migration_is_renewed() {
    let cluster = RedisCluster::start();
    let a = replica(&cluster.url(), &[]).await;
    let b = replica(&cluster.url(), &[]).await;
    let slot = cluster.slot(STREAM).to_string();
    let from = cluster.owner(STREAM);
    let to = (from + 1) % cluster.nodes.len();
    let id = |i: usize| cluster.nodes[i].cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let (from_id, to_id) = (id(from), id(to));
    // Move the stream's slot (and with it the sharded channel) to another master.
    cluster.nodes[to].cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cluster.nodes[from].cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let keys = cluster.nodes[from].cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
    let port = cluster.nodes[to].port.to_string();
    for k in keys.lines().map(str::trim).filter(|k| !k.is_empty()) {
        let r = cluster.nodes[from].cli(&["MIGRATE", "127.0.0.1", &port, k, "0", "5000"]);
        assert!(r.contains("OK"), "MIGRATE {k}: {r}");
    }
    for n in &cluster.nodes {
        n.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
    assert!(cluster.wait_ok(Duration::from_secs(10)));
    assert_eq!(cluster.owner(STREAM), to);

    // Later revocations reach B over sharded pub/sub again, not only through the stream.
    let before = applied(&b, "pubsub").await;
    let resubscribed = eventually(Duration::from_secs(10), || async {
        let (k, i) = a.create_key("bob", &["mcp:read"]).await;
        cache_on(&b, &k).await;
        a.admin()
            .await
            .revoke_token(revoke_id(&i.token_id))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        applied(&b, "pubsub").await > before
    })
    .await;
    assert!(resubscribed, "B subscribed again on the slot's new owner");
}
