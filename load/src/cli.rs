//! Command-line flags, their value parsers and the checks that keep a run bounded and on loopback.
//! Every long flag can also be a `key = value` line in a scenario file (see `scenario.rs`).

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Parser};
use serde::Serialize;

use crate::check::{Mix, Popularity};

/// Longest phase and longest run the harness accepts: a load test always stops by itself.
pub const MAX_PHASE: Duration = Duration::from_secs(3600);
const MAX_RUN: Duration = Duration::from_secs(4 * 3600);

/// How a phase drives the Validator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// C callers, each waiting for its answer before sending the next request (unary `Validate`).
    Closed,
    /// Requests at a fixed arrival rate, latency measured from each one's intended send time.
    Open,
    /// Pipelined `ValidateStream`: a window of outstanding requests per stream.
    Stream,
}

/// One phase: `closed:10s`, `open:30s@20000`, `stream:5s`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseSpec {
    /// How it drives the target.
    pub mode: Mode,
    /// How long it sends.
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    /// Arrival rate in requests per second (open loop only).
    pub rate: Option<u32>,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl PhaseSpec {
    /// `closed:10s`, `open:3s@2000`: the spec as it is written on the command line.
    pub fn label(&self) -> String {
        let mode = match self.mode {
            Mode::Closed => "closed",
            Mode::Open => "open",
            Mode::Stream => "stream",
        };
        let rate = self.rate.map(|r| format!("@{r}")).unwrap_or_default();
        format!("{mode}:{}{rate}", fmt_duration(self.duration))
    }
}

/// A comma-separated list of phases, run in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Phases(pub Vec<PhaseSpec>);

/// The harness's flags. `args_override_self` lets a flag given twice keep its last value, which is
/// how command-line flags override the scenario's lines (those come first in the argument list).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "navis-auth-load",
    version,
    about = "Load harness for navis-auth: provisions tokens, drives Validate / ValidateStream, checks every answer",
    args_override_self = true
)]
pub struct Args {
    /// A scenario in load/scenarios/ (smoke, steady, spike, revocation-storm) or a path to a
    /// `key = value` file; flags given here override its values.
    #[arg(long, value_name = "NAME|PATH")]
    pub scenario: Option<String>,

    /// Validator address to load (loopback only).
    #[arg(
        long,
        alias = "addr",
        env = "NAVIS_AUTH_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub target: String,
    /// TokenAdmin address used to provision (and, without --revoke-target, to revoke) tokens.
    #[arg(
        long,
        env = "NAVIS_AUTH_ADMIN_ADDR",
        default_value = "http://127.0.0.1:50052"
    )]
    pub admin_addr: String,
    /// TokenAdmin address of the replica that revokes during the run [default: --admin-addr]:
    /// another replica's admin address measures propagation across replicas.
    #[arg(long)]
    pub revoke_target: Option<String>,
    /// Admin token (prefer the file or the environment: flags show up in `ps`).
    #[arg(long, env = "NAVIS_AUTH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token [default: <data-dir>/admin-token].
    #[arg(long, env = "NAVIS_AUTH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The service's data directory, where it keeps a generated admin token.
    #[arg(long, env = "NAVIS_AUTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Prometheus endpoint of the target (`http://127.0.0.1:9090/metrics`); scraped before and after
    /// the run for the server-side lookup p99 [default with --spawn-server: its HTTP listener].
    #[arg(long)]
    pub metrics_url: Option<String>,

    /// Start `navis-auth serve` as a child on 127.0.0.1:0 ports with a temporary data dir, load it,
    /// and stop it at the end.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false, value_name = "BOOL")]
    pub spawn_server: bool,
    /// The `navis-auth` binary for --spawn-server [default: next to this binary].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Run the same phases against a built-in empty Validator (fixed ALLOW, no work) first and
    /// report navis-auth / empty-RPC ratios.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false, value_name = "BOOL")]
    pub baseline: bool,

    /// Phases in order, comma separated: `closed:10s`, `open:30s@20000` (rate in req/s; `20k`
    /// works), `stream:10s`.
    #[arg(long, value_parser = parse_phases, default_value = "closed:10s")]
    pub phases: Phases,
    /// Set every phase's duration.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Set every open-loop phase's arrival rate (req/s).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u32>,
    /// Closed loop: concurrent callers.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// HTTP/2 connections to the target (callers and streams are spread over them).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub connections: u32,
    /// Stream phases: concurrent ValidateStream calls.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub streams: u32,
    /// Stream phases: outstanding requests per stream.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(2..=65_536))]
    pub window: u32,
    /// Stream phases: requests sent per batch (at most half the window).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=32_768))]
    pub batch: u32,
    /// Stop a phase after this many requests even if its time is not up.
    #[arg(long, default_value_t = 100_000_000, value_parser = clap::value_parser!(u64).range(1..=2_000_000_000))]
    pub max_requests: u64,
    /// Per-request timeout in open loop, and how long a phase waits for answers after it stops
    /// sending.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,

    /// API keys to provision.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub keys: u32,
    /// OAuth access tokens to provision.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub oauth: u32,
    /// Percentage of the provisioned tokens that only hold `mcp:read`.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub read_only_percent: u32,
    /// Traffic mix weights: hits, forbidden (missing scope), unknown (well-formed), malformed (bad
    /// checksum), revoked (revoked during the run).
    #[arg(
        long,
        value_parser = Mix::parse,
        default_value = "hits=90,forbidden=3,unknown=3,malformed=2,revoked=2"
    )]
    pub mix: Mix,
    /// Which keys get the traffic: `uniform` or `zipf:S` (exponent S > 0; rank 1 is the hottest).
    #[arg(long, value_parser = Popularity::parse, default_value = "zipf:1.1")]
    pub popularity: Popularity,

    /// Tokens to revoke during the target's phases (spread evenly over them); each one's
    /// propagation delay is measured.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub revocations: u32,
    /// How long after a revoke call returns a revoked token may still be accepted; an ALLOW for a
    /// request sent later is a wrong answer.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub propagation_bound: Duration,

    /// Do not fail the run on gRPC errors (they are still counted and reported).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false, value_name = "BOOL")]
    pub allow_errors: bool,
    /// Leave the provisioned tokens active at the end (they are revoked by default).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false, value_name = "BOOL")]
    pub keep_tokens: bool,
    /// Write the figures and per-second series as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write a latency-over-time plot (per-second p50 / p99 / max) as SVG.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Seed for the traffic generator [default: from the clock; printed in the report].
    #[arg(long)]
    pub seed: Option<u64>,
}

impl Args {
    /// The phases after --duration and --rate, checked.
    ///
    /// # Errors
    /// When a phase is out of bounds.
    pub fn resolved_phases(&self) -> Result<Vec<PhaseSpec>> {
        let mut phases = self.phases.0.clone();
        for p in &mut phases {
            if let Some(d) = self.duration {
                p.duration = d;
            }
            if p.mode == Mode::Open
                && let Some(r) = self.rate
            {
                p.rate = Some(r);
            }
        }
        let total: Duration = phases.iter().map(|p| p.duration).sum();
        if phases
            .iter()
            .any(|p| p.duration > MAX_PHASE || p.duration.is_zero())
        {
            bail!(
                "a phase must last between 1 ms and {}",
                fmt_duration(MAX_PHASE)
            );
        }
        if total > MAX_RUN {
            bail!("the phases add up to more than {}", fmt_duration(MAX_RUN));
        }
        Ok(phases)
    }

    /// Cross-flag checks clap cannot express.
    ///
    /// # Errors
    /// A message naming the flags.
    pub fn check(&self) -> Result<()> {
        if self.batch * 2 > self.window {
            bail!(
                "--batch ({}) must be at most half of --window ({})",
                self.batch,
                self.window
            );
        }
        if self.keys + self.oauth == 0 {
            bail!("--keys and --oauth are both 0: there is nothing to validate");
        }
        let read_only = (self.keys + self.oauth) * self.read_only_percent / 100;
        if self.mix.weight(crate::check::Class::Forbidden) > 0.0 && read_only == 0 {
            bail!(
                "the mix asks for forbidden answers but --read-only-percent leaves no read-only token"
            );
        }
        if self.spawn_server && self.revoke_target.is_some() {
            bail!(
                "--revoke-target names a second replica; --spawn-server starts only one (run two replicas on a shared Redis and point --target and --revoke-target at them)"
            );
        }
        if !self.spawn_server {
            ensure_loopback(&self.target).context("--target")?;
            ensure_loopback(&self.admin_addr).context("--admin-addr")?;
        }
        if let Some(r) = &self.revoke_target {
            ensure_loopback(r).context("--revoke-target")?;
        }
        if let Some(m) = &self.metrics_url {
            ensure_loopback(m).context("--metrics-url")?;
        }
        self.resolved_phases()?;
        Ok(())
    }
}

/// `http://host:port` from `host:port` or a URI (the service speaks plaintext HTTP/2 only).
pub fn uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// The `host:port` part of an address or URL.
pub fn authority(addr: &str) -> Result<&str> {
    let rest = match addr.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => bail!("{addr}: only http:// targets are supported, not {scheme}://"),
        None => addr,
    };
    let host_port = rest.split('/').next().unwrap_or_default();
    if host_port.is_empty() {
        bail!("{addr}: no host");
    }
    Ok(host_port)
}

/// Refuses any address that does not resolve to loopback only: a load test here sends traffic to
/// this machine and nowhere else.
///
/// # Errors
/// When the address is malformed, does not resolve, or resolves to a non-loopback address.
pub fn ensure_loopback(addr: &str) -> Result<()> {
    let host_port = authority(addr)?;
    let with_port = if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !host_port.ends_with(']')
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:80")
    };
    let resolved: Vec<_> = with_port
        .to_socket_addrs()
        .with_context(|| format!("{addr}: cannot resolve"))?
        .collect();
    if resolved.is_empty() || resolved.iter().any(|a| !a.ip().is_loopback()) {
        bail!(
            "{addr}: the load harness only targets loopback addresses (127.0.0.0/8, ::1, localhost)"
        );
    }
    Ok(())
}

/// `500ms`, `5s`, `1.5s`, `2m`, `1h`, `250us`.
///
/// # Errors
/// A message for clap when the text is not a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` needs a unit (us, ms, s, m, h)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (us, ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `20000`, `20k`, `1.5k`, `1m` (per second), between 1 and 2,000,000.
///
/// # Errors
/// A message for clap when the text is not a rate.
pub fn parse_rate(s: &str) -> Result<u32, String> {
    let s = s.trim().trim_end_matches("/s");
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        _ => (s, 1.0),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a rate (e.g. 20000 or 20k)"))?;
    let r = (n * mult).round();
    if !(1.0..=2_000_000.0).contains(&r) {
        return Err(format!("rate `{s}` must be between 1 and 2M req/s"));
    }
    Ok(r as u32)
}

/// `closed:10s,open:30s@20k,stream:5s`.
///
/// # Errors
/// A message for clap naming the bad phase.
pub fn parse_phases(s: &str) -> Result<Phases, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (mode, rest) = part
            .split_once(':')
            .ok_or_else(|| format!("phase `{part}`: expected MODE:DURATION[@RATE]"))?;
        let mode = match mode.trim() {
            "closed" => Mode::Closed,
            "open" => Mode::Open,
            "stream" => Mode::Stream,
            m => {
                return Err(format!(
                    "phase `{part}`: unknown mode `{m}` (closed, open, stream)"
                ));
            }
        };
        let (dur, rate) = match rest.split_once('@') {
            Some((d, r)) => (d, Some(parse_rate(r)?)),
            None => (rest, None),
        };
        let duration = parse_duration(dur)?;
        match (mode, rate) {
            (Mode::Open, None) => return Err(format!("phase `{part}`: open loop needs @RATE")),
            (Mode::Closed | Mode::Stream, Some(_)) => {
                return Err(format!("phase `{part}`: only open-loop phases take @RATE"));
            }
            _ => {}
        }
        out.push(PhaseSpec {
            mode,
            duration,
            rate,
        });
    }
    if out.is_empty() {
        return Err("no phase given".into());
    }
    Ok(Phases(out))
}

/// `1.5s`, `250ms`, `80µs`: compact and exact enough for labels.
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns >= 3_600_000_000_000 && ns.is_multiple_of(3_600_000_000_000) {
        format!("{}h", ns / 3_600_000_000_000)
    } else if ns >= 60_000_000_000 && ns.is_multiple_of(60_000_000_000) {
        format!("{}m", ns / 60_000_000_000)
    } else if ns >= 1_000_000_000 {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 {
            format!("{s}s")
        } else {
            let t = format!("{s:.3}");
            format!("{}s", t.trim_end_matches('0').trim_end_matches('.'))
        }
    } else if ns >= 1_000_000 {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{}us", ns / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
        assert_eq!(fmt_duration(Duration::from_millis(100)), "100ms");
    }

    #[test]
    fn rates_and_phases() {
        assert_eq!(parse_rate("20k"), Ok(20_000));
        assert_eq!(parse_rate("2000"), Ok(2000));
        assert!(parse_rate("0").is_err());
        let p = parse_phases("closed:5s, open:3s@2k ,stream:2s").expect("phases");
        assert_eq!(p.0.len(), 3);
        assert_eq!(p.0[1].rate, Some(2000));
        assert_eq!(p.0[1].label(), "open:3s@2000");
        assert!(parse_phases("open:3s").is_err());
        assert!(parse_phases("closed:3s@10").is_err());
        assert!(parse_phases("warp:3s").is_err());
    }

    #[test]
    fn loopback_only() {
        assert!(ensure_loopback("http://127.0.0.1:50051").is_ok());
        assert!(ensure_loopback("127.0.0.2:1").is_ok());
        assert!(ensure_loopback("http://[::1]:9090/metrics").is_ok());
        assert!(ensure_loopback("http://10.0.0.5:50051").is_err());
        assert!(ensure_loopback("https://127.0.0.1:1").is_err());
        assert!(ensure_loopback("http://192.168.1.1:80/metrics").is_err());
    }

    #[test]
    fn later_flags_override_earlier_ones() {
        let a = Args::try_parse_from([
            "x",
            "--concurrency=8",
            "--baseline=true",
            "--concurrency",
            "16",
            "--baseline",
            "false",
        ])
        .expect("parse");
        assert_eq!(a.concurrency, 16);
        assert!(!a.baseline);
        let b = Args::try_parse_from(["x", "--baseline", "--spawn-server"]).expect("parse");
        assert!(b.baseline && b.spawn_server);
    }
}
