//! Server-side figures: scrapes the target's Prometheus `/metrics` (plain HTTP/1.1 on loopback)
//! before and after the run, and computes the p99 of the `navis_auth_lookup_duration_seconds`
//! histogram over the run from the difference of its buckets.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::authority;

/// The server-side histogram this harness reports.
pub const LOOKUP_METRIC: &str = "navis_auth_lookup_duration_seconds";
const MAX_BODY: usize = 32 << 20;

/// Cumulative bucket counts by upper bound (`+Inf` last), summed over every label set.
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

/// What the report says about the server side.
#[derive(Clone, Debug, Serialize)]
pub struct ServerMetrics {
    /// Where it was scraped.
    pub url: String,
    /// `ok`, or why there is no figure.
    pub status: String,
    /// Lookups counted over the window.
    pub lookups: Option<f64>,
    /// p99 from the buckets (linear within a bucket, as Prometheus' histogram_quantile), ms.
    pub lookup_p99_ms: Option<f64>,
    /// `run` (difference of two scrapes) or `server lifetime` (only the last scrape worked).
    pub window: String,
}

/// GETs `url` (loopback `http://host:port/path`): the body of a 200 answer.
///
/// # Errors
/// Unreachable, not 200, or not readable within 5 s.
pub async fn fetch(url: &str) -> Result<String> {
    let host_port = authority(url)?;
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    let io = async {
        let mut s = tokio::net::TcpStream::connect(host_port).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s).take(MAX_BODY as u64).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| anyhow!("no answer within 5 s"))?
        .with_context(|| format!("cannot reach {host_port}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("not an HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        bail!("HTTP {status}");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok(if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The `le` label of a sample's label set, unescaped enough for numbers.
fn le_label(labels: &str) -> Option<&str> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        // Values here are numbers or simple words; skip escaped quotes anyway.
        let mut end = 0;
        let bytes = after.as_bytes();
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        let value = after.get(..end)?;
        if name.trim().trim_start_matches(',').trim() == "le" {
            return Some(value);
        }
        rest = after.get(end + 1..)?.trim_start_matches(',');
    }
    None
}

/// The buckets of histogram `name` in a Prometheus text body, or `None` if it is not there.
pub fn parse(body: &str, name: &str) -> Option<Buckets> {
    let prefix = format!("{name}_bucket{{");
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(le) = le_label(labels) else { continue };
        let le = match le {
            "+Inf" | "Inf" => f64::INFINITY,
            v => match v.parse::<f64>() {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let Some(count) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        match by_le.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += count,
            None => by_le.push((le, count)),
        }
    }
    if by_le.is_empty() {
        return None;
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    Some(Buckets(by_le))
}

impl Buckets {
    /// `self - before`, bucket by bucket (a server restart in between shows as negative: clamped).
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, c)| {
                    let b = before
                        .0
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, (c - b).max(0.0))
                })
                .collect(),
        )
    }

    /// Observations counted.
    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// Quantile `q` in the histogram's unit, Prometheus-style: linear within the bucket; a rank
    /// in the `+Inf` bucket gives the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.0 {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let span = c - prev.1;
                let frac = if span > 0.0 {
                    (rank - prev.1) / span
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, c);
        }
        Some(prev.0)
    }
}

/// Scrapes once; `Err` says why there is nothing to use.
pub async fn scrape(url: &str) -> Result<Buckets, String> {
    let body = fetch(url).await.map_err(|e| format!("{e:#}"))?;
    parse(&body, LOOKUP_METRIC).ok_or_else(|| format!("no {LOOKUP_METRIC} histogram in the answer"))
}

/// The report's server-side section from a scrape before (if any) and one now.
pub async fn server_side(url: &str, before: Option<&Buckets>) -> ServerMetrics {
    match scrape(url).await {
        Ok(after) => {
            let (b, window) = match before {
                Some(b) => (after.since(b), "run"),
                None => (after, "server lifetime"),
            };
            ServerMetrics {
                url: url.to_owned(),
                status: "ok".into(),
                lookups: Some(b.count()),
                lookup_p99_ms: b.quantile(0.99).map(|s| s * 1e3),
                window: window.into(),
            }
        }
        Err(why) => ServerMetrics {
            url: url.to_owned(),
            status: format!("missing: {why}"),
            lookups: None,
            lookup_p99_ms: None,
            window: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "\
# HELP navis_auth_lookup_duration_seconds Lookup time.
# TYPE navis_auth_lookup_duration_seconds histogram
navis_auth_lookup_duration_seconds_bucket{result=\"hit\",le=\"0.00001\"} 90
navis_auth_lookup_duration_seconds_bucket{result=\"hit\",le=\"0.0001\"} 99
navis_auth_lookup_duration_seconds_bucket{result=\"hit\",le=\"0.001\"} 100
navis_auth_lookup_duration_seconds_bucket{result=\"hit\",le=\"+Inf\"} 100
navis_auth_lookup_duration_seconds_bucket{le=\"0.00001\",result=\"miss\"} 0
navis_auth_lookup_duration_seconds_bucket{le=\"0.0001\",result=\"miss\"} 0
navis_auth_lookup_duration_seconds_bucket{le=\"0.001\",result=\"miss\"} 0
navis_auth_lookup_duration_seconds_bucket{le=\"+Inf\",result=\"miss\"} 0
navis_auth_lookup_duration_seconds_sum 0.01
navis_auth_lookup_duration_seconds_count 100
other_bucket{le=\"1\"} 5
";

    #[test]
    fn p99_from_buckets() {
        let b = parse(BODY, LOOKUP_METRIC).expect("histogram");
        assert_eq!(b.0.len(), 4);
        assert_eq!(b.count(), 100.0);
        // Rank 99 is the last observation of the (10 µs, 100 µs] bucket.
        let p99 = b.quantile(0.99).expect("p99");
        assert!((p99 - 0.0001).abs() < 1e-12, "{p99}");
        // Rank 50 lies in the first bucket: 50/90 of the way from 0 to 10 µs.
        let p50 = b.quantile(0.5).expect("p50");
        assert!((p50 - 0.00001 * 50.0 / 90.0).abs() < 1e-12, "{p50}");
        let before = Buckets(vec![
            (0.00001, 90.0),
            (0.0001, 90.0),
            (0.001, 90.0),
            (f64::INFINITY, 90.0),
        ]);
        let d = b.since(&before);
        assert_eq!(d.count(), 10.0);
        // 9 of the 10 new ones are in (10 µs, 100 µs], the last in (100 µs, 1 ms]: rank 9.9 is
        // 90% into that last bucket.
        assert!((d.quantile(0.99).expect("p99") - 0.00091).abs() < 1e-9);
        assert_eq!(parse("foo 1\n", LOOKUP_METRIC), None);
    }

    #[test]
    fn inf_bucket_gives_the_highest_bound() {
        let b = Buckets(vec![(0.001, 1.0), (f64::INFINITY, 100.0)]);
        assert_eq!(b.quantile(0.99), Some(0.001));
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
