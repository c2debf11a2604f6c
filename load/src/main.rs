//! `navis-auth-load`: the load harness's entry point. Flags and scenario, an optional spawned
//! server, provisioning, the phases (against the empty baseline first when asked, then against
//! navis-auth while tokens are revoked), the server-side scrape, the report, and the exit code:
//! 0 pass, 1 wrong answers or errors, 2 the run could not be made.

mod baseline;
mod check;
mod cli;
mod driver;
mod metrics;
mod propagation;
mod provision;
mod report;
mod scenario;
mod server;
mod stats;
mod svg;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use tonic::transport::Channel;

use crate::check::{Checker, Class, Traffic};
use crate::cli::{Args, ensure_loopback, uri};
use crate::driver::Ctx;
use crate::propagation::{Revocations, Revoker};
use crate::provision::Plan;
use crate::report::{PhaseResult, Report, Settings, TargetKind};

fn main() -> ExitCode {
    stats::now_ns();
    let (args, scenario) = match parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("navis-auth-load: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args, scenario)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("navis-auth-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn clap_exit(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// The command line, with the scenario's lines placed before it so that its flags win.
fn parse_args() -> Result<(Args, Option<String>), ExitCode> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let first = Args::try_parse_from(&argv).map_err(|e| clap_exit(&e))?;
    let (args, scenario) = match &first.scenario {
        None => (first, None),
        Some(name) => {
            let sc = scenario::load(name).map_err(|e| {
                eprintln!("navis-auth-load: {e:#}");
                ExitCode::from(2)
            })?;
            let mut full = vec![argv[0].clone()];
            full.extend(sc.args.iter().map(OsString::from));
            full.extend(argv.iter().skip(1).cloned());
            let a = Args::try_parse_from(full).map_err(|e| {
                eprintln!("navis-auth-load: with scenario {}:", sc.path.display());
                clap_exit(&e)
            })?;
            (a, Some(sc.name))
        }
    };
    if let Err(e) = args.check() {
        eprintln!("navis-auth-load: {e:#}");
        return Err(ExitCode::from(2));
    }
    Ok((args, scenario))
}

async fn connect_all(addr: &str, n: u32) -> Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(provision::connect(addr).await?);
    }
    Ok(out)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Ctrl-C stops the current phase and still reports; a second one quits at once.
fn on_ctrl_c(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nnavis-auth-load: interrupted: finishing up (Ctrl-C again to quit now)");
            stop.store(true, Ordering::Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
}

#[allow(clippy::too_many_lines)]
async fn run(args: Args, scenario: Option<String>) -> Result<bool> {
    let phases = args.resolved_phases()?;
    let started = unix_now();
    let seed = args.seed.unwrap_or(started.as_nanos() as u64);
    let tty = std::io::stderr().is_terminal();
    let stop = Arc::new(AtomicBool::new(false));
    on_ctrl_c(Arc::clone(&stop));

    // Where to send load: a spawned child, or the given addresses.
    let mut spawned = if args.spawn_server {
        let bin = server::binary(args.server_bin.clone())?;
        eprintln!(
            "starting {} serve on 127.0.0.1:0 ports with a temporary data dir",
            bin.display()
        );
        let s = tokio::task::spawn_blocking(move || server::spawn(&bin))
            .await
            .context("spawning the server")??;
        eprintln!(
            "navis-auth serving: validator {}, admin {}, http {}",
            s.validator, s.admin, s.http
        );
        Some(s)
    } else {
        None
    };
    let (target, admin_addr, admin_token, metrics_url) = match &spawned {
        Some(s) => (
            uri(&s.validator),
            uri(&s.admin),
            s.admin_token.clone(),
            args.metrics_url
                .clone()
                .or_else(|| Some(format!("http://{}/metrics", s.http))),
        ),
        None => (
            uri(&args.target),
            uri(&args.admin_addr),
            provision::admin_token(
                args.admin_token.as_deref(),
                args.admin_token_file.clone(),
                args.data_dir.clone(),
            )?,
            args.metrics_url.clone(),
        ),
    };
    let revoke_addr = args
        .revoke_target
        .as_deref()
        .map_or(admin_addr.clone(), uri);
    for a in [&target, &admin_addr, &revoke_addr] {
        ensure_loopback(a)?;
    }

    let admin = provision::admin_client(&admin_addr, &admin_token)
        .await
        .context("TokenAdmin")?;
    let revoke_admin = if revoke_addr == admin_addr {
        admin.clone()
    } else {
        provision::admin_client(&revoke_addr, &admin_token)
            .await
            .context("--revoke-target")?
    };
    let channels = connect_all(&target, args.connections)
        .await
        .context("Validator")?;

    // Tokens.
    let total: Duration = phases.iter().map(|p| p.duration).sum();
    let plan = Plan {
        keys: args.keys,
        oauth: args.oauth,
        read_only_percent: args.read_only_percent,
        revocable: args.revocations,
        run_id: format!("{:08x}", (seed ^ (started.as_nanos() as u64 >> 20)) as u32),
        ttl: total * 2 + Duration::from_secs(3600),
    };
    eprintln!(
        "provisioning {} API keys and {} OAuth access tokens ({}% read-only), {} to revoke, via {admin_addr}",
        plan.keys, plan.oauth, plan.read_only_percent, plan.revocable
    );
    let t = Instant::now();
    let pool = Arc::new(
        provision::provision(&admin, &plan)
            .await
            .context("provisioning tokens")?,
    );
    eprintln!(
        "provisioned {} tokens in {:.1}s (+{} unknown and {} malformed generated locally)",
        pool.good.len() + pool.revocable.len(),
        t.elapsed().as_secs_f64(),
        pool.unknown.len(),
        pool.malformed.len()
    );
    if args.mix.weight(Class::Revoked) > 0.0 && args.revocations == 0 {
        eprintln!("note: --revocations is 0, so the mix's `revoked` share is not sent");
    }
    let traffic = Arc::new(Traffic::new(
        Arc::clone(&pool),
        &args.mix,
        args.popularity,
        seed,
    ));
    let ctx_for = |channels: Vec<Channel>, checker: Arc<Checker>| Ctx {
        channels,
        traffic: Arc::clone(&traffic),
        checker,
        concurrency: args.concurrency,
        streams: args.streams,
        window: args.window,
        batch: args.batch,
        max_requests: args.max_requests,
        timeout: args.timeout,
        stop: Arc::clone(&stop),
        seed,
        tty,
    };

    let before = match &metrics_url {
        Some(u) => metrics::scrape(u).await.ok(),
        None => None,
    };

    let mut results = Vec::new();
    let mut extra_failures = Vec::new();

    // The empty service first, with the same phases and settings.
    if args.baseline {
        let b = baseline::start()?;
        let addr = format!("http://{}", b.addr);
        eprintln!("baseline: empty Validator on {addr}");
        let ctx = ctx_for(
            connect_all(&addr, args.connections).await?,
            Arc::new(Checker::new(Arc::clone(&traffic), None, true)),
        );
        for spec in &phases {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let label = format!("{} {}", TargetKind::Empty.name(), spec.label());
            let outcome = driver::run_phase(&ctx, spec, label).await;
            results.push(PhaseResult {
                target: TargetKind::Empty,
                spec: spec.clone(),
                outcome,
            });
        }
        drop(ctx);
        drop(b);
    }

    // navis-auth, with revocations spread over its phases.
    let revs = (args.revocations > 0).then(|| {
        Arc::new(Revocations::new(
            pool.revocable.len(),
            args.propagation_bound,
        ))
    });
    let checker = Arc::new(Checker::new(Arc::clone(&traffic), revs.clone(), false));
    let revoker = match &revs {
        Some(r) => {
            let rv = Revoker {
                revs: Arc::clone(r),
                traffic: Arc::clone(&traffic),
                checker: Arc::clone(&checker),
                admin: revoke_admin.clone(),
                poll: provision::connect(&target).await?,
                stop: Arc::clone(&stop),
            };
            Some(tokio::spawn(
                rv.run(stats::now_ns(), total.as_nanos() as u64),
            ))
        }
        None => None,
    };
    let ctx = ctx_for(channels, Arc::clone(&checker));
    for spec in &phases {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let label = format!("{} {}", TargetKind::NavisAuth.name(), spec.label());
        let outcome = driver::run_phase(&ctx, spec, label).await;
        results.push(PhaseResult {
            target: TargetKind::NavisAuth,
            spec: spec.clone(),
            outcome,
        });
        if let Some(s) = spawned.as_mut()
            && let Some(status) = s.exit_status()
        {
            eprintln!(
                "navis-auth-load: the spawned server {status}; its last log lines:\n{}",
                s.tail()
            );
            extra_failures.push(format!("the spawned navis-auth {status}"));
            stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    let propagation = match (revoker, &revs) {
        (Some(h), Some(r)) => {
            let _ = h.await;
            let mut p = r.summary();
            for i in p.never_refused_indices.clone() {
                p.examples.push(format!(
                    "revoked {}: never seen refused",
                    pool.revocable[i].id
                ));
            }
            Some(p)
        }
        _ => None,
    };
    let server_metrics = match &metrics_url {
        Some(u) => Some(metrics::server_side(u, before.as_ref()).await),
        None => None,
    };
    if stop.load(Ordering::Relaxed) && extra_failures.is_empty() {
        extra_failures.push("interrupted".into());
    }
    if !args.keep_tokens && spawned.is_none() {
        match provision::cleanup(&mut admin.clone(), &pool).await {
            Ok(n) => eprintln!("cleanup: revoked the run's {n} remaining token(s)"),
            Err(e) => eprintln!(
                "navis-auth-load: cleanup: {e:#} (the run's tokens expire by themselves in {}s)",
                plan.ttl.as_secs()
            ),
        }
    }

    let settings = Settings {
        scenario,
        seed,
        target: target.clone(),
        admin: admin_addr.clone(),
        revoke_target: revoke_addr.clone(),
        spawned_server: spawned.is_some(),
        concurrency: args.concurrency,
        connections: args.connections,
        streams: args.streams,
        window: args.window,
        batch: args.batch,
        keys: args.keys,
        oauth: args.oauth,
        read_only_percent: args.read_only_percent,
        mix: args.mix.describe(),
        popularity: args.popularity.describe(),
        revocations: args.revocations,
        propagation_bound_ms: args.propagation_bound.as_secs_f64() * 1e3,
        timeout_s: args.timeout.as_secs_f64(),
    };
    let report = Report::build(
        settings,
        started.as_secs(),
        &results,
        propagation,
        server_metrics,
        args.allow_errors,
        extra_failures,
    );
    print!("{}", report.table());
    if let Some(p) = &args.json {
        std::fs::write(p, report.json()).with_context(|| format!("write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.svg {
        std::fs::write(p, svg::render(&report))
            .with_context(|| format!("write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    drop(spawned);
    Ok(report.passed)
}
