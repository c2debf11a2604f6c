//! The Redis store's multi-step changes under faults and races (`store::redis`): a revocation
//! that reaches only some cluster slots, listing while tokens are being created, refreshes racing
//! grant revocation, and a refresh whose reply was lost.

use std::time::{Duration, Instant};

use navis_auth::pb::{self, Decision};
use navis_auth::token::TokenHash;
use tonic::Code;

use crate::helpers::decision;
use crate::redis::{cache_on, refused_after, replica};
use crate::redis_cluster::{STREAM, record_key};
use crate::redis_cluster_server::RedisCluster;
use crate::redis_server::RedisServer;

fn id_key(id: &str) -> String {
    format!("navis-auth:i:{{{id}}}")
}

/// A subject revocation while one master (not the log's, not the subject index's) is down: the
/// records on the healthy masters are still revoked and published, this replica drops them at
/// once, the call reports UNAVAILABLE, and a retry after the master is back completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_revocation_missing_one_master_still_publishes_the_rest() {
    let mut cluster = RedisCluster::start();
    let flags = ["--redis-timeout", "300ms"];
    let a = replica(&cluster.url(), &flags).await;
    let b = replica(&cluster.url(), &flags).await;
    let rev = cluster.owner(STREAM);
    let index = cluster.owner("navis-auth:s:{alice}");
    let down = (0..3)
        .find(|n| *n != rev && *n != index)
        .expect("a third master");

    let (mut healthy, mut lost) = (Vec::new(), None);
    for _ in 0..200 {
        let (k, info) = a.create_key("alice", &["mcp:read"]).await;
        let on_down = cluster.owner(&record_key(&k)) == down;
        let id_down = cluster.owner(&id_key(&info.token_id)) == down;
        if on_down && !id_down {
            lost.get_or_insert(k);
        } else if !on_down && !id_down && healthy.len() < 3 {
            healthy.push(k);
        }
        if lost.is_some() && healthy.len() == 3 {
            break;
        }
    }
    let lost = lost.expect("a record on the master to kill");
    assert_eq!(healthy.len(), 3, "three records elsewhere");
    for t in &healthy {
        cache_on(&a, t).await;
        cache_on(&b, t).await;
    }

    cluster.kill(down);
    let mut admin = a.admin().await;
    let e = admin
        .revoke_subject(pb::RevokeSubjectRequest {
            subject: "alice".into(),
        })
        .await
        .expect_err("one record could not be marked");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let returned = Instant::now();
    // This replica dropped what was revoked at once; the other one hears the event.
    for t in &healthy {
        assert_eq!(
            decision(&a.check(t, &[]).await),
            Decision::Unauthenticated,
            "the local replica invalidated the marked records"
        );
    }
    let mut bv = b.validator().await;
    for t in &healthy {
        let took = refused_after(&mut bv, t, returned, Duration::from_millis(500)).await;
        assert!(took.is_some(), "the marked records were published");
    }
    let events = cluster.nodes[rev].cli(&["XRANGE", STREAM, "-", "+"]);
    for t in &healthy {
        assert!(events.contains(&TokenHash::of(t).to_hex()), "in the stream");
    }

    cluster.restart(down);
    assert!(cluster.wait_ok(Duration::from_secs(20)), "cluster ok again");
    let mut retried = None;
    for _ in 0..50 {
        match admin
            .revoke_subject(pb::RevokeSubjectRequest {
                subject: "alice".into(),
            })
            .await
        {
            Ok(r) => {
                retried = Some(r.into_inner());
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let retried = retried.expect("the retry succeeds once the master is back");
    assert!(retried.revoked >= 1, "the record on the restarted master");
    assert_eq!(
        decision(&b.check(&lost, &[]).await),
        Decision::Unauthenticated
    );
}

/// ListTokens never prunes an index entry whose id key is still there: that is a token being
/// created (id claimed and indexed, record not written yet). Once the id key is gone (it expires
/// with the token), the entry is pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_keeps_index_entries_of_tokens_being_created() {
    let redis = RedisServer::start();
    let s = replica(&redis.url(), &[]).await;
    let (_, done) = s.create_key("alice", &["mcp:read"]).await;
    // A token half way through `insert_records`: id claimed, indexed, record not yet written.
    let pending = "tok_pendingpendingpend";
    let hex = TokenHash::of("not-a-token").to_hex();
    redis.cli(&["SET", &id_key(pending), &hex]);
    redis.cli(&["ZADD", "navis-auth:s:{alice}", "0", pending]);
    let list = |mut a: crate::helpers::AdminClient| async move {
        a.list_tokens(pb::ListTokensRequest {
            subject: "alice".into(),
            include_inactive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| t.token_id)
        .collect::<Vec<_>>()
    };
    assert_eq!(list(s.admin().await).await, vec![done.token_id.clone()]);
    let score = redis.cli(&["ZSCORE", "navis-auth:s:{alice}", pending]);
    assert_eq!(
        score.trim(),
        "0",
        "the entry of a token being created stays"
    );
    // Its id key gone (expired with the token): now it is stale and pruned.
    redis.cli(&["DEL", &id_key(pending)]);
    assert_eq!(list(s.admin().await).await, vec![done.token_id.clone()]);
    let score = redis.cli(&["ZSCORE", "navis-auth:s:{alice}", pending]);
    assert_eq!(score.trim(), "", "pruned once the id key is gone");
}

/// A record whose change may not have been published (`p` = 1: its event was lost) is published
/// again by the next revocation that reaches it, whether it was rotated or revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_left_unpublished_is_published_by_the_next_call_that_reaches_it() {
    let redis = RedisServer::start();
    let s = replica(&redis.url(), &[]).await;
    let mut a = s.admin().await;
    let events = || {
        redis
            .cli(&["XLEN", "navis-auth:{rev}:revocations"])
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    // A rotation whose event was lost (simulated: `p` set again after it was published).
    let (key, info) = s.create_key("alice", &["mcp:read"]).await;
    a.rotate_api_key(pb::RotateApiKeyRequest {
        token_id: info.token_id.clone(),
        grace_period_seconds: 600,
    })
    .await
    .unwrap();
    let rk = record_key(&key);
    redis.cli(&["HSET", &rk, "p", "1"]);
    let before = events();
    a.revoke_token(pb::RevokeTokenRequest {
        target: Some(pb::revoke_token_request::Target::TokenId(
            info.token_id.clone(),
        )),
    })
    .await
    .unwrap();
    assert_eq!(events(), before + 1, "published");
    assert_eq!(redis.cli(&["HGET", &rk, "p"]).trim(), "0", "and confirmed");
    // A revoked record whose event was lost: revoking it again publishes it again.
    redis.cli(&["HSET", &rk, "p", "1"]);
    a.revoke_token(pb::RevokeTokenRequest {
        target: Some(pb::revoke_token_request::Target::TokenId(
            info.token_id.clone(),
        )),
    })
    .await
    .unwrap();
    assert_eq!(events(), before + 2, "published again");
    assert_eq!(redis.cli(&["HGET", &rk, "p"]).trim(), "0");
    assert_eq!(
        decision(&s.check(&key, &[]).await),
        Decision::Unauthenticated
    );
}

const ROUNDS: u64 = 300;

/// Varies the interleaving of two racing calls: sometimes none, sometimes up to ~2 ms.
async fn jitter(round: u64) {
    if !round.is_multiple_of(5) {
        tokio::time::sleep(Duration::from_micros(97 * (round % 23))).await;
    }
}

/// Refreshes racing Disconnect (RevokeGrant) many times: whatever each side returns, no successor
/// of a refresh stays valid once the revocation has returned (the grant tombstone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_racing_grant_revocation_leave_no_valid_successor() {
    let redis = RedisServer::start();
    let s = replica(&redis.url(), &[]).await;
    let admin = s.admin().await;
    let (mut handed_out, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let subject = format!("racer-{round}");
        let first = s.issue(&subject, "claude", &["mcp:read"]).await;
        let refresh = {
            let mut a = admin.clone();
            let rt = first.refresh_token.clone();
            tokio::spawn(async move {
                a.refresh_o_auth_tokens(pb::RefreshOAuthTokensRequest {
                    refresh_token: rt,
                    client_id: "claude".into(),
                    scopes: vec![],
                })
                .await
            })
        };
        jitter(round).await;
        admin
            .clone()
            .revoke_grant(pb::RevokeGrantRequest {
                subject: subject.clone(),
                client_id: "claude".into(),
            })
            .await
            .unwrap();
        match refresh.await.unwrap() {
            Ok(r) => {
                handed_out += 1;
                let r = r.into_inner();
                assert_eq!(
                    decision(&s.check(&r.access_token, &[]).await),
                    Decision::Unauthenticated,
                    "round {round}: a successor access token stayed valid"
                );
                let again = admin
                    .clone()
                    .refresh_o_auth_tokens(pb::RefreshOAuthTokensRequest {
                        refresh_token: r.refresh_token,
                        client_id: "claude".into(),
                        scopes: vec![],
                    })
                    .await;
                assert!(
                    again.is_err(),
                    "round {round}: a successor refresh token stayed usable"
                );
            }
            Err(e) => {
                refused += 1;
                assert_eq!(e.code(), Code::FailedPrecondition, "round {round}: {e:?}");
            }
        }
        assert_eq!(
            decision(&s.check(&first.access_token, &[]).await),
            Decision::Unauthenticated
        );
    }
    eprintln!(
        "refresh vs grant revocation: {handed_out} refreshes returned tokens, {refused} refused"
    );
}

/// A refresh racing reuse detection of the same grant (an already spent refresh token presented
/// again revokes the grant by its id) many times: the racing refresh's successors never stay
/// valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_racing_reuse_detection_leave_no_valid_successor() {
    let redis = RedisServer::start();
    let s = replica(&redis.url(), &[]).await;
    let admin = s.admin().await;
    let req = |rt: &str| pb::RefreshOAuthTokensRequest {
        refresh_token: rt.into(),
        client_id: "claude".into(),
        scopes: vec![],
    };
    let mut handed_out = 0;
    for round in 0..ROUNDS {
        let first = s
            .issue(&format!("reuser-{round}"), "claude", &["mcp:read"])
            .await;
        let second = admin
            .clone()
            .refresh_o_auth_tokens(req(&first.refresh_token))
            .await
            .unwrap()
            .into_inner();
        let refresh = {
            let mut a = admin.clone();
            let r = req(&second.refresh_token);
            tokio::spawn(async move { a.refresh_o_auth_tokens(r).await })
        };
        jitter(round).await;
        let reuse = admin
            .clone()
            .refresh_o_auth_tokens(req(&first.refresh_token))
            .await
            .expect_err("reuse is refused");
        assert_eq!(reuse.code(), Code::FailedPrecondition);
        if let Ok(r) = refresh.await.unwrap() {
            handed_out += 1;
            let r = r.into_inner();
            assert_eq!(
                decision(&s.check(&r.access_token, &[]).await),
                Decision::Unauthenticated,
                "round {round}: a successor access token stayed valid"
            );
            assert!(
                admin
                    .clone()
                    .refresh_o_auth_tokens(req(&r.refresh_token))
                    .await
                    .is_err(),
                "round {round}: a successor refresh token stayed usable"
            );
        }
    }
    eprintln!("refresh vs reuse detection: {handed_out} of {ROUNDS} refreshes returned tokens");
}

/// SPEND is idempotent: the same spend sent again (the client retries a call whose reply was
/// lost) answers OK; another spend of the same refresh token is reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_sent_again_is_not_reuse() {
    let redis = RedisServer::start();
    let s = replica(&redis.url(), &[]).await;
    let first = s.issue("alice", "claude", &["mcp:read"]).await;
    let second = s
        .admin()
        .await
        .refresh_o_auth_tokens(pb::RefreshOAuthTokensRequest {
            refresh_token: first.refresh_token.clone(),
            client_id: "claude".into(),
            scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let rk = record_key(&first.refresh_token);
    let nonce = TokenHash::of(&second.refresh_token).to_hex();
    assert_eq!(redis.cli(&["HGET", &rk, "n"]).trim(), nonce);
    let spend = |n: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        redis.cli(&["EVAL", navis_auth::store::redis::SPEND, "1", &rk, &now, n])
    };
    assert_eq!(spend(&nonce).trim(), "OK", "the same spend again");
    let other = TokenHash::of("another successor").to_hex();
    assert_eq!(spend(&other).trim(), "REUSED", "another spend");
    // The successors are untouched by the repeated spend.
    assert_eq!(
        decision(&s.check(&second.access_token, &[]).await),
        Decision::Allow
    );
}
