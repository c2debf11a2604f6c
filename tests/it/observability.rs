//! Observability with real Prometheus tools: `promtool check metrics` on a real scrape,
//! `promtool check rules` / `test rules` on deploy/prometheus, a real Prometheus server scraping
//! the service and answering queries, the dashboard's metric names, and no token in any log line
//! or metric. Needs `prometheus`/`promtool` on PATH (scripts/test installs Debian's package).

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use navis_auth::pb::{self, Decision, revoke_token_request::Target};
use navis_auth::token::TokenKind;

use crate::helpers::{TestServer, channel, decision, eventually, http_get_at, req, unknown_token};
use crate::replica::Replica;

/// Sends a known mix: 5 allow, 3 forbidden, 2 unknown, 2 malformed, 1 invalid argument.
async fn traffic(s: &TestServer) {
    let (key, _) = s.create_key("alice", &["mcp:read"]).await;
    for _ in 0..5 {
        assert_eq!(
            decision(&s.check(&key, &["mcp:read"]).await),
            Decision::Allow
        );
    }
    for _ in 0..3 {
        assert_eq!(
            decision(&s.check(&key, &["mcp:write"]).await),
            Decision::Forbidden
        );
    }
    let unknown = unknown_token(TokenKind::ApiKey);
    for _ in 0..2 {
        assert_eq!(
            decision(&s.check(&unknown, &[]).await),
            Decision::Unauthenticated
        );
    }
    for _ in 0..2 {
        assert_eq!(
            decision(&s.check("nops_garbage", &[]).await),
            Decision::Unauthenticated
        );
    }
    let bad = pb::ValidateRequest {
        required_scopes: vec!["a b".into()],
        ..req(&key, &[])
    };
    assert!(s.check_req(bad).await.is_err());
}

/// Sum of every sample of `family` whose labels contain all of `labels`.
fn sum_samples(body: &str, family: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter(|l| l[family.len()..].starts_with('{') || l[family.len()..].starts_with(' '))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_scrape_passes_promtool_and_counts_what_was_sent() {
    let s = TestServer::start().await;
    traffic(&s).await;
    let (code, body) = s.http_get("/metrics").await;
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be on PATH (scripts/test installs Debian's prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let d = "navis_auth_decisions_total";
    assert_eq!(sum_samples(&body, d, &[r#"decision="allow""#]), 5.0);
    assert_eq!(sum_samples(&body, d, &[r#"decision="forbidden""#]), 3.0);
    assert_eq!(sum_samples(&body, d, &[r#"reason="unknown""#]), 2.0);
    assert_eq!(sum_samples(&body, d, &[r#"reason="bad_length""#]), 2.0);
    assert_eq!(
        sum_samples(
            &body,
            "navis_auth_validate_errors_total",
            &[r#"code="invalid_argument""#]
        ),
        1.0
    );
    assert_eq!(
        sum_samples(&body, "navis_auth_lookup_duration_seconds_count", &[]),
        13.0
    );
    assert_eq!(
        sum_samples(&body, "navis_auth_cache_negative_hits_total", &[]),
        1.0
    );
    assert_eq!(
        sum_samples(&body, "navis_auth_revocation_feed_connected", &[]),
        1.0
    );
    assert_eq!(sum_samples(&body, "navis_auth_ready", &[]), 1.0);
    assert!(body.contains(r#"navis_auth_build_info{version=""#));
    for name in navis_auth::metrics::ALL {
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has HELP text"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_dashboard_uses_only_metrics_the_service_exports() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/navis-auth.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if (k == "expr" || k == "query") && v.is_string() {
                        out.push(v.as_str().unwrap().to_owned());
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() > 20, "{} expressions", exprs.len());
    let mut used = std::collections::BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("navis_auth_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| navis_auth::metrics::ALL.contains(f))
                })
                .map_or(name.clone(), str::to_owned);
            used.insert(family);
        }
    }
    for name in &used {
        assert!(
            navis_auth::metrics::ALL.contains(&name.as_str()),
            "dashboard uses unknown metric {name}"
        );
    }
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        titles,
        [
            "Traffic and decisions",
            "Latency vs budget",
            "Cache",
            "Revocation feed",
            "Store"
        ]
    );
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One instant query: the first sample's value, if any.
async fn query(prom: SocketAddr, q: &str) -> Option<f64> {
    let (code, body) = http_get_at(prom, &format!("/api/v1/query?query={}", encode(q))).await;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_service_and_answers_queries() {
    let s = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: navis-auth\n    static_configs:\n      - targets: ['{}']\n",
            s.http_addr
        ),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus must be on PATH (scripts/test installs Debian's prometheus)");
    let prom_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    traffic(&s).await;
    let allow = r#"sum(navis_auth_decisions_total{job="navis-auth",decision="allow"})"#;
    let scraped = eventually(Duration::from_secs(30), || async {
        query(prom_addr, allow).await == Some(5.0)
    })
    .await;
    let forbidden = query(
        prom_addr,
        r#"sum(navis_auth_decisions_total{decision="forbidden"})"#,
    )
    .await;
    let p99 = query(
        prom_addr,
        // Over everything scraped so far (a rate needs two scrapes that straddle the traffic).
        "histogram_quantile(0.99, sum by (le) (navis_auth_lookup_duration_seconds_bucket))",
    )
    .await;
    let count = query(prom_addr, "sum(navis_auth_lookup_duration_seconds_count)").await;
    let up = query(prom_addr, r#"up{job="navis-auth"}"#).await;
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(scraped, "Prometheus saw the 5 allowed validations");
    assert_eq!(forbidden, Some(3.0));
    assert_eq!(count, Some(13.0));
    assert_eq!(up, Some(1.0));
    let p99 = p99.expect("lookup p99 from histogram_quantile");
    assert!(p99 > 0.0 && p99 < 1.0, "lookup p99 {p99}");
    eprintln!("Prometheus-computed lookup p99 over the test traffic: {p99:.9} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_a_log_line_or_a_metric() {
    let mut r = Replica::start("embedded", &["--log", "debug", "--log-format", "json"]);
    r.wait_ready();
    let admin_token = r.admin_token();
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {admin_token}").parse().unwrap();
    let mut admin = pb::token_admin_client::TokenAdminClient::with_interceptor(
        channel(r.admin_addr).await,
        crate::helpers::Bearer::new(value),
    );
    let mut v = pb::validator_client::ValidatorClient::new(channel(r.validator_addr).await);
    let key = admin
        .create_api_key(pb::CreateApiKeyRequest {
            subject: "alice".into(),
            scopes: vec!["mcp:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let pair = admin
        .issue_o_auth_tokens(pb::IssueOAuthTokensRequest {
            subject: "alice".into(),
            client_id: "claude".into(),
            scopes: vec!["mcp:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let k = key.api_key.clone();
    // Every validation path: allow, forbidden, header form, refresh token, typo, unknown.
    let mut typo = k.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    for t in [
        k.clone().into_bytes(),
        format!("Bearer {k}").into_bytes(),
        pair.access_token.clone().into_bytes(),
        pair.refresh_token.clone().into_bytes(),
        typo,
        format!("Basic {k}").into_bytes(),
        vec![b'x'; 9000],
    ] {
        let _ = v
            .validate(pb::ValidateRequest {
                token: t,
                required_scopes: vec!["mcp:write".into()],
                ..Default::default()
            })
            .await;
    }
    let _ = v
        .validate_stream(tokio_stream::iter([
            req(&k, &["mcp:read"]),
            req(&pair.access_token, &[]),
        ]))
        .await;
    // Admin paths that take a token.
    let refreshed = admin
        .refresh_o_auth_tokens(pb::RefreshOAuthTokensRequest {
            refresh_token: pair.refresh_token.clone(),
            client_id: "claude".into(),
            scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let _ = admin
        .refresh_o_auth_tokens(pb::RefreshOAuthTokensRequest {
            refresh_token: pair.refresh_token.clone(),
            client_id: "claude".into(),
            scopes: vec![],
        })
        .await;
    let _ = admin
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(Target::Token(k.clone())),
        })
        .await;
    let _ = v.validate(req(&k, &[])).await;
    let rotated = admin
        .create_api_key(pb::CreateApiKeyRequest {
            subject: "bob".into(),
            scopes: vec!["mcp:read".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (_, metrics_body) = http_get_at(r.http_addr, "/metrics").await;
    r.terminate();
    let log = r.log.lock().unwrap().join("\n");
    assert!(log.lines().count() > 10, "debug logs were captured");
    for line in log.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).expect("every JSON log line parses");
    }
    for secret in [
        &k,
        &pair.access_token,
        &pair.refresh_token,
        &refreshed.access_token,
        &refreshed.refresh_token,
        &rotated.api_key,
        &admin_token,
    ] {
        let body = &secret[5..37];
        assert!(!log.contains(body), "a token reached the logs");
        assert!(!metrics_body.contains(body), "a token reached /metrics");
    }
}
