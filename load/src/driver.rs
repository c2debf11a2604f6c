//! The load loops: closed loop (C callers over K connections), open loop (fixed arrival rate,
//! latency from each request's intended send time) and pipelined ValidateStream. Each phase stops
//! by itself: at its deadline, at `--max-requests`, or on Ctrl-C, then waits at most `--timeout`
//! for outstanding answers.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hdrhistogram::Histogram;
use navis_auth::pb::{ValidateRequest, validator_client::ValidatorClient};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::transport::Channel;

use crate::check::{Checker, Got, Rng, Traffic, Verdict, decode_id, splitmix};
use crate::cli::{Mode, PhaseSpec};
use crate::stats::{
    ERR_LOST, ERR_TIMEOUT, PhaseStats, Recorder, instant_at, now_ns, spawn_progress,
};

/// What every phase against one target shares.
pub struct Ctx {
    /// HTTP/2 connections to the target.
    pub channels: Vec<Channel>,
    /// Requests and their tokens.
    pub traffic: Arc<Traffic>,
    /// What a right answer is for this target.
    pub checker: Arc<Checker>,
    /// Closed-loop callers.
    pub concurrency: u32,
    /// Streams in stream phases.
    pub streams: u32,
    /// Outstanding requests per stream.
    pub window: u32,
    /// Requests per stream batch.
    pub batch: u32,
    /// Request cap per phase.
    pub max_requests: u64,
    /// Open-loop request timeout and drain limit.
    pub timeout: Duration,
    /// Set on Ctrl-C.
    pub stop: Arc<AtomicBool>,
    /// Generator seed.
    pub seed: u64,
    /// Rewrite the progress line in place.
    pub tty: bool,
}

/// How late the open-loop scheduler sent requests relative to their intended time.
#[derive(Clone, Debug, Serialize)]
pub struct SendLag {
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Worst, µs.
    pub max_us: f64,
    /// Requests sent more than 1 ms late.
    pub over_1ms: u64,
}

/// A finished phase, before reporting.
pub struct PhaseOutcome {
    /// Everything measured.
    pub rec: Recorder,
    /// Start and end ([`now_ns`]).
    pub start_ns: u64,
    /// When its last answer arrived or its drain gave up.
    pub end_ns: u64,
    /// Open loop only.
    pub send_lag: Option<SendLag>,
}

/// Runs one phase against `ctx`'s target; `label` prefixes the progress line.
pub async fn run_phase(ctx: &Ctx, spec: &PhaseSpec, label: String) -> PhaseOutcome {
    let start = now_ns();
    let end = start + spec.duration.as_nanos() as u64;
    let shards = match spec.mode {
        Mode::Closed => ctx.concurrency.min(64) as usize,
        Mode::Open => 16,
        Mode::Stream => ctx.streams as usize,
    };
    let stats = PhaseStats::new(start, shards);
    let progress = spawn_progress(label, Arc::clone(&stats), ctx.tty);
    let send_lag = match spec.mode {
        Mode::Closed => {
            closed(ctx, &stats, end).await;
            None
        }
        Mode::Open => Some(open(ctx, &stats, start, end, spec.rate.unwrap_or(1)).await),
        Mode::Stream => {
            stream(ctx, &stats, end).await;
            None
        }
    };
    let end_ns = now_ns();
    progress.abort();
    if ctx.tty {
        eprintln!();
    }
    PhaseOutcome {
        rec: stats.merged(),
        start_ns: start,
        end_ns,
        send_lag,
    }
}

fn worker_seed(seed: u64, phase_start: u64, worker: u64) -> u64 {
    let mut s = seed ^ phase_start.rotate_left(17) ^ worker.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    splitmix(&mut s)
}

/// Closed loop: each caller sends its next request when the previous answer is in.
async fn closed(ctx: &Ctx, stats: &Arc<PhaseStats>, end: u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for j in 0..ctx.concurrency as usize {
        let mut client = ValidatorClient::new(ctx.channels[j % ctx.channels.len()].clone());
        let (traffic, checker, stats, sent, stop) = (
            Arc::clone(&ctx.traffic),
            Arc::clone(&ctx.checker),
            Arc::clone(stats),
            Arc::clone(&sent),
            Arc::clone(&ctx.stop),
        );
        let max = ctx.max_requests;
        let mut rng = Rng::new(worker_seed(ctx.seed, stats.start_ns, j as u64));
        handles.push(tokio::spawn(async move {
            loop {
                if now_ns() >= end
                    || stop.load(Ordering::Relaxed)
                    || sent.fetch_add(1, Ordering::Relaxed) >= max
                {
                    break;
                }
                let p = traffic.next(&mut rng);
                let req = traffic.request(&p);
                let t0 = now_ns();
                let r = client.validate(req).await;
                let t1 = now_ns();
                let mut rec = stats.shard(j);
                match r {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        let v = checker.check(&p, &resp, t0, t1);
                        rec.answer(v, p.class as usize, t1 - t0, t1, || {
                            traffic.describe(&p, &resp)
                        });
                    }
                    Err(s) => rec.error(s.code() as usize, t1, 1),
                }
            }
        }));
    }
    drain(handles, end + ctx.timeout.as_nanos() as u64, stats).await;
}

/// Waits for workers until `until_ns`; the rest are aborted and their in-flight call counted lost.
async fn drain(handles: Vec<JoinHandle<()>>, until_ns: u64, stats: &PhaseStats) {
    for mut h in handles {
        if tokio::time::timeout_at(instant_at(until_ns).into(), &mut h)
            .await
            .is_err()
        {
            h.abort();
            stats.shard(0).error(ERR_LOST, now_ns(), 1);
        }
    }
}

/// Open loop: request i is due at start + i / rate and its latency counts from then, however late
/// it is actually sent (no coordinated omission). A dedicated thread schedules (OS sleep, no tokio
/// timer granularity), each request runs in its own task with its own timeout.
async fn open(ctx: &Ctx, stats: &Arc<PhaseStats>, start: u64, end: u64, rate: u32) -> SendLag {
    let clients: Vec<_> = ctx
        .channels
        .iter()
        .map(|c| ValidatorClient::new(c.clone()))
        .collect();
    let inflight = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = oneshot::channel();
    let (traffic, checker, stats2, stop, inflight2) = (
        Arc::clone(&ctx.traffic),
        Arc::clone(&ctx.checker),
        Arc::clone(stats),
        Arc::clone(&ctx.stop),
        Arc::clone(&inflight),
    );
    let (max, timeout) = (ctx.max_requests, ctx.timeout);
    let mut rng = Rng::new(worker_seed(ctx.seed, start, 0x0be7));
    let interval = 1e9 / f64::from(rate);
    let spawned = std::thread::Builder::new()
        .name("open-loop".into())
        .spawn(move || {
            let mut lag: Histogram<u64> =
                Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
            let mut over_1ms = 0;
            let mut i: u64 = 0;
            loop {
                let due = start + (i as f64 * interval) as u64;
                if due >= end || i >= max || stop.load(Ordering::Relaxed) {
                    break;
                }
                let now = now_ns();
                if due > now {
                    std::thread::sleep(Duration::from_nanos(due - now));
                }
                let late = now_ns().saturating_sub(due);
                lag.saturating_record(late.max(1));
                if late > 1_000_000 {
                    over_1ms += 1;
                }
                let p = traffic.next(&mut rng);
                let req = traffic.request(&p);
                let mut client = clients[i as usize % clients.len()].clone();
                let (traffic, checker, stats, inflight) = (
                    Arc::clone(&traffic),
                    Arc::clone(&checker),
                    Arc::clone(&stats2),
                    Arc::clone(&inflight2),
                );
                inflight.fetch_add(1, Ordering::AcqRel);
                runtime.spawn(async move {
                    let r = tokio::time::timeout(timeout, client.validate(req)).await;
                    let t1 = now_ns();
                    {
                        let mut rec = stats.shard(i as usize);
                        match r {
                            Ok(Ok(resp)) => {
                                let resp = resp.into_inner();
                                let v = checker.check(&p, &resp, due, t1);
                                rec.answer(v, p.class as usize, t1 - due, t1, || {
                                    traffic.describe(&p, &resp)
                                });
                            }
                            Ok(Err(s)) => rec.error(s.code() as usize, t1, 1),
                            Err(_) => rec.error(ERR_TIMEOUT, t1, 1),
                        }
                    }
                    inflight.fetch_sub(1, Ordering::AcqRel);
                });
                i += 1;
            }
            let _ = done_tx.send(SendLag {
                p50_us: lag.value_at_quantile(0.5) as f64 / 1e3,
                p99_us: lag.value_at_quantile(0.99) as f64 / 1e3,
                max_us: lag.max() as f64 / 1e3,
                over_1ms,
            });
        });
    let lag = match spawned {
        Ok(_) => done_rx.await.ok(),
        Err(e) => {
            eprintln!("navis-auth-load: cannot start the open-loop scheduler thread: {e}");
            None
        }
    };
    // Every task carries its own timeout, so this ends by then.
    let limit = now_ns() + ctx.timeout.as_nanos() as u64 + 1_000_000_000;
    while inflight.load(Ordering::Acquire) > 0 && now_ns() < limit {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let left = inflight.load(Ordering::Acquire);
    if left > 0 {
        stats.shard(0).error(ERR_LOST, now_ns(), left);
    }
    lag.unwrap_or(SendLag {
        p50_us: 0.0,
        p99_us: 0.0,
        max_us: 0.0,
        over_1ms: 0,
    })
}

/// Pipelined ValidateStream: `streams` streams over the connections, each keeping up to `window`
/// requests outstanding, sent in batches of `batch`.
async fn stream(ctx: &Ctx, stats: &Arc<PhaseStats>, end: u64) {
    let budget = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..ctx.streams as usize)
        .map(|s| {
            let one = OneStream {
                index: s,
                client: ValidatorClient::new(ctx.channels[s % ctx.channels.len()].clone()),
                traffic: Arc::clone(&ctx.traffic),
                checker: Arc::clone(&ctx.checker),
                stats: Arc::clone(stats),
                budget: Arc::clone(&budget),
                stop: Arc::clone(&ctx.stop),
                end,
                window: ctx.window,
                batch: ctx.batch,
                max: ctx.max_requests,
                timeout: ctx.timeout,
                seed: worker_seed(ctx.seed, stats.start_ns, s as u64),
            };
            tokio::spawn(one.run())
        })
        .collect();
    // Each stream bounds its own waits; this is a backstop.
    drain(
        handles,
        end + 2 * ctx.timeout.as_nanos() as u64 + 1_000_000_000,
        stats,
    )
    .await;
}

struct OneStream {
    index: usize,
    client: ValidatorClient<Channel>,
    traffic: Arc<Traffic>,
    checker: Arc<Checker>,
    stats: Arc<PhaseStats>,
    budget: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    end: u64,
    window: u32,
    batch: u32,
    max: u64,
    timeout: Duration,
    seed: u64,
}

impl OneStream {
    async fn run(mut self) {
        let sem = Arc::new(Semaphore::new(self.window as usize));
        let (tx, rx) = mpsc::channel::<Vec<ValidateRequest>>(4);
        let sent = Arc::new(AtomicU64::new(0));
        let sender = {
            let (sem, sent, traffic, budget, stop) = (
                Arc::clone(&sem),
                Arc::clone(&sent),
                Arc::clone(&self.traffic),
                Arc::clone(&self.budget),
                Arc::clone(&self.stop),
            );
            let (end, batch, max) = (self.end, self.batch, self.max);
            let mut rng = Rng::new(self.seed);
            tokio::spawn(async move {
                loop {
                    if now_ns() >= end
                        || stop.load(Ordering::Relaxed)
                        || budget.fetch_add(u64::from(batch), Ordering::Relaxed) >= max
                    {
                        break;
                    }
                    let Ok(permits) = sem.acquire_many(batch).await else {
                        break;
                    };
                    permits.forget();
                    let t = now_ns();
                    let reqs: Vec<ValidateRequest> = (0..batch)
                        .map(|_| traffic.stream_request(&traffic.next(&mut rng), t))
                        .collect();
                    sent.fetch_add(u64::from(batch), Ordering::Relaxed);
                    if tx.send(reqs).await.is_err() {
                        break;
                    }
                }
            })
        };
        let requests = BatchStream {
            rx,
            current: Vec::new().into_iter(),
        };
        let call = tokio::time::timeout(self.timeout, self.client.validate_stream(requests)).await;
        let mut inbound = match call {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                self.stats
                    .shard(self.index)
                    .error(s.code() as usize, now_ns(), 1);
                sem.close();
                let _ = sender.await;
                return;
            }
            Err(_) => {
                self.stats.shard(self.index).error(ERR_TIMEOUT, now_ns(), 1);
                sem.close();
                sender.abort();
                return;
            }
        };
        let release = (self.batch / 4).max(1);
        let mut held = 0;
        let mut received: u64 = 0;
        loop {
            match tokio::time::timeout(self.timeout, inbound.message()).await {
                Ok(Ok(Some(resp))) => {
                    let t1 = now_ns();
                    received += 1;
                    let mut rec = self.stats.shard(self.index);
                    match decode_id(&resp.request_id) {
                        Some((p, t0)) => {
                            let v = self.checker.check(&p, &resp, t0, t1);
                            rec.answer(v, p.class as usize, t1.saturating_sub(t0), t1, || {
                                self.traffic.describe(&p, &resp)
                            });
                        }
                        None => rec.answer(Verdict::Wrong(Got::UnknownRequestId), 0, 0, t1, || {
                            "an answer with a request_id this harness never sent".into()
                        }),
                    }
                    drop(rec);
                    held += 1;
                    if held >= release {
                        sem.add_permits(held as usize);
                        held = 0;
                    }
                }
                // The server answered everything and closed: the sender has finished.
                Ok(Ok(None)) => break,
                Ok(Err(s)) => {
                    self.stats
                        .shard(self.index)
                        .error(s.code() as usize, now_ns(), 1);
                    break;
                }
                Err(_) => break,
            }
        }
        sem.close();
        let mut sender = sender;
        if tokio::time::timeout(self.timeout, &mut sender)
            .await
            .is_err()
        {
            sender.abort();
        }
        let sent = sent.load(Ordering::Relaxed);
        if sent > received {
            self.stats
                .shard(self.index)
                .error(ERR_LOST, now_ns(), sent - received);
        }
    }
}

/// The request side of a stream: batches from the sender, flattened. Everything already
/// received is ready at once, so tonic encodes a whole batch into one write.
struct BatchStream {
    rx: mpsc::Receiver<Vec<ValidateRequest>>,
    current: std::vec::IntoIter<ValidateRequest>,
}

impl Stream for BatchStream {
    type Item = ValidateRequest;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(r) = self.current.next() {
                return Poll::Ready(Some(r));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.current = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
