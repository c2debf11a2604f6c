//! Revocation under load: revokes tokens on a schedule (through `--revoke-target`, possibly another
//! replica) and measures, from the client's side, how long until each one is refused: the first
//! UNAUTHENTICATED seen by any caller or by a dedicated poller, counted from the revoke call's
//! return. An ALLOW sent later than the propagation bound after that is a wrong answer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use navis_auth::pb::{Decision, validator_client::ValidatorClient};
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::check::{Ask, Checker, Class, Got, Planned, Traffic, Verdict};
use crate::provision::{self, Admin};
use crate::stats::{ERR_KINDS, ERR_TIMEOUT, error_name, exact_quantile, instant_at, now_ns};

/// What is known about one revocable token. Times are [`now_ns`] values; 0 = not yet.
#[derive(Debug)]
pub struct RevState {
    /// When the revoke call was sent.
    pub start_ns: AtomicU64,
    /// When the revoke call returned OK.
    pub done_ns: AtomicU64,
    /// The earliest arrival of an UNAUTHENTICATED answer for it (`u64::MAX` = none yet).
    pub first_refusal_ns: AtomicU64,
    /// The revoke call failed: it may or may not have taken effect, so either answer is right.
    pub uncertain: AtomicBool,
}

/// The run's revocations and what pollers saw.
#[derive(Debug)]
pub struct Revocations {
    /// One per revocable token, in pool order.
    pub states: Vec<RevState>,
    /// The propagation bound, ns.
    pub bound_ns: u64,
    performed: AtomicU64,
    revoke_errors: [AtomicU64; ERR_KINDS],
    poll_requests: AtomicU64,
    poll_errors: [AtomicU64; ERR_KINDS],
    poll_wrong: AtomicU64,
    poll_late_accepts: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Revocations {
    /// State for `n` tokens.
    pub fn new(n: usize, bound: Duration) -> Self {
        Self {
            states: (0..n)
                .map(|_| RevState {
                    start_ns: AtomicU64::new(0),
                    done_ns: AtomicU64::new(0),
                    first_refusal_ns: AtomicU64::new(u64::MAX),
                    uncertain: AtomicBool::new(false),
                })
                .collect(),
            bound_ns: bound.as_nanos() as u64,
            performed: AtomicU64::new(0),
            revoke_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            poll_requests: AtomicU64::new(0),
            poll_errors: std::array::from_fn(|_| AtomicU64::new(0)),
            poll_wrong: AtomicU64::new(0),
            poll_late_accepts: AtomicU64::new(0),
            examples: Mutex::new(Vec::new()),
        }
    }

    fn example(&self, s: String) {
        let mut e = self.examples.lock().unwrap_or_else(PoisonError::into_inner);
        if e.len() < 5 {
            e.push(s);
        }
    }

    /// The figures, once the run and its pollers are over.
    pub fn summary(&self) -> PropagationSummary {
        let mut delays = Vec::new();
        let mut never = 0;
        let mut never_ids = Vec::new();
        for st in &self.states {
            let done = st.done_ns.load(Ordering::Acquire);
            if done == 0 || st.uncertain.load(Ordering::Acquire) {
                continue;
            }
            match st.first_refusal_ns.load(Ordering::Acquire) {
                u64::MAX => never += 1,
                t => delays.push(t.saturating_sub(done)),
            }
        }
        for (i, st) in self.states.iter().enumerate() {
            if st.done_ns.load(Ordering::Acquire) != 0
                && st.first_refusal_ns.load(Ordering::Acquire) == u64::MAX
                && never_ids.len() < 5
            {
                never_ids.push(i);
            }
        }
        delays.sort_unstable();
        let ms = |q: f64| exact_quantile(&delays, q).map(|ns| ns as f64 / 1e6);
        let errors = |a: &[AtomicU64; ERR_KINDS]| {
            a.iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    let n = n.load(Ordering::Relaxed);
                    (n > 0).then(|| (error_name(i), n))
                })
                .collect::<Vec<_>>()
        };
        PropagationSummary {
            planned: self.states.len() as u64,
            performed: self.performed.load(Ordering::Relaxed),
            revoke_errors: errors(&self.revoke_errors),
            measured: delays.len() as u64,
            never_refused: never,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: delays.last().map(|ns| *ns as f64 / 1e6),
            bound_ms: self.bound_ns as f64 / 1e6,
            poll_requests: self.poll_requests.load(Ordering::Relaxed),
            poll_errors: errors(&self.poll_errors),
            poll_wrong: self.poll_wrong.load(Ordering::Relaxed),
            poll_late_accepts: self.poll_late_accepts.load(Ordering::Relaxed),
            examples: self
                .examples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            never_refused_indices: never_ids,
        }
    }
}

/// Propagation figures for the report.
#[derive(Clone, Debug, Serialize)]
pub struct PropagationSummary {
    /// Tokens set aside for revocation.
    pub planned: u64,
    /// Revoke calls that returned OK.
    pub performed: u64,
    /// Failed revoke calls by error kind.
    pub revoke_errors: Vec<(String, u64)>,
    /// Revoked tokens whose refusal was observed.
    pub measured: u64,
    /// Revoked tokens never seen refused (each one is a wrong answer).
    pub never_refused: u64,
    /// Revoke-return → first refusal, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Slowest, ms.
    pub max_ms: Option<f64>,
    /// The bound, ms.
    pub bound_ms: f64,
    /// Validate calls made by the pollers.
    pub poll_requests: u64,
    /// Their errors by kind.
    pub poll_errors: Vec<(String, u64)>,
    /// Their wrong answers (an ALLOW past the bound counts once per token).
    pub poll_wrong: u64,
    /// Their ALLOWs within the bound.
    pub poll_late_accepts: u64,
    /// A few of the wrong answers, described by token id.
    pub examples: Vec<String>,
    /// Pool indices of tokens never refused (the report turns them into token ids).
    #[serde(skip)]
    pub never_refused_indices: Vec<usize>,
}

impl PropagationSummary {
    /// Wrong answers this part adds to the run.
    pub fn wrong(&self) -> u64 {
        self.poll_wrong + self.never_refused
    }

    /// Errors this part adds to the run.
    pub fn errors(&self) -> u64 {
        self.revoke_errors
            .iter()
            .chain(&self.poll_errors)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Everything the revoker needs.
pub struct Revoker {
    /// Shared state (also read by the checker).
    pub revs: Arc<Revocations>,
    /// The tokens.
    pub traffic: Arc<Traffic>,
    /// Judges poll answers.
    pub checker: Arc<Checker>,
    /// TokenAdmin of the revoking replica.
    pub admin: Admin,
    /// A connection to the validation target, for the pollers.
    pub poll: Channel,
    /// Set on Ctrl-C.
    pub stop: Arc<AtomicBool>,
}

impl Revoker {
    /// Revokes every token, evenly spread over `[start_ns, start_ns + span_ns)`, each in its own
    /// task followed by its poller; returns when all are done (each one is bounded in time).
    pub async fn run(self, start_ns: u64, span_ns: u64) {
        let n = self.revs.states.len();
        let me = Arc::new(self);
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let at = start_ns + ((i as f64 + 0.5) / n as f64 * span_ns as f64) as u64;
            tokio::time::sleep_until(instant_at(at).into()).await;
            if me.stop.load(Ordering::Relaxed) {
                break;
            }
            let me = Arc::clone(&me);
            tasks.spawn(async move { me.revoke_and_poll(i as u32).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn revoke_and_poll(&self, idx: u32) {
        let st = &self.revs.states[idx as usize];
        let id = self.traffic.revocable_id(idx).to_owned();
        st.start_ns.store(now_ns(), Ordering::Release);
        let mut admin = self.admin.clone();
        if let Err(s) = provision::revoke(&mut admin, &id).await {
            st.uncertain.store(true, Ordering::Release);
            self.revs.revoke_errors[s.code() as usize].fetch_add(1, Ordering::Relaxed);
            self.revs
                .example(format!("revoking {id} failed: {:?}", s.code()));
            return;
        }
        let done = now_ns();
        st.done_ns.store(done, Ordering::Release);
        self.revs.performed.fetch_add(1, Ordering::Relaxed);
        self.poll(idx, &id, done).await;
    }

    /// Validates the token until it is refused (or a caller saw it refused): back to back within
    /// the bound, every millisecond after it, for at most max(5 s, 10 × bound).
    async fn poll(&self, idx: u32, id: &str, done: u64) {
        let st = &self.revs.states[idx as usize];
        let limit = done + (self.revs.bound_ns * 10).max(5_000_000_000);
        let p = Planned {
            class: Class::Revoked,
            idx,
            ask: Ask::Read,
        };
        let mut client = ValidatorClient::new(self.poll.clone());
        let mut flagged = false;
        loop {
            let sent = now_ns();
            if st.first_refusal_ns.load(Ordering::Acquire) != u64::MAX || sent > limit {
                return;
            }
            if sent > done + self.revs.bound_ns {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let call = client.validate(self.traffic.request(&p));
            let r = tokio::time::timeout(Duration::from_secs(5), call).await;
            let recv = now_ns();
            self.revs.poll_requests.fetch_add(1, Ordering::Relaxed);
            let resp = match r {
                Ok(Ok(resp)) => resp.into_inner(),
                Ok(Err(s)) => {
                    self.revs.poll_errors[s.code() as usize].fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(_) => {
                    self.revs.poll_errors[ERR_TIMEOUT].fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            match self.checker.check(&p, &resp, sent, recv) {
                Verdict::Right if resp.decision == Decision::Unauthenticated as i32 => return,
                Verdict::Right => {}
                Verdict::LateAccept => {
                    self.revs.poll_late_accepts.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Wrong(Got::AllowAfterBound) => {
                    if !flagged {
                        flagged = true;
                        self.revs.poll_wrong.fetch_add(1, Ordering::Relaxed);
                        self.revs.example(format!(
                            "revoked {id}: still ALLOW {:.1} ms after the revoke returned",
                            (sent - done) as f64 / 1e6
                        ));
                    }
                }
                Verdict::Wrong(got) => {
                    self.revs.poll_wrong.fetch_add(1, Ordering::Relaxed);
                    self.revs.example(format!(
                        "revoked {id}: poller got {}",
                        Got::name(got as usize)
                    ));
                    return;
                }
                Verdict::Error(code) => {
                    let k = if (1..=16).contains(&code) { code } else { 2 };
                    self.revs.poll_errors[k as usize].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
