//! What a right answer is: the traffic mix and key popularity, the requests they make, and the
//! decision each request must get (including tokens revoked mid-run, within the propagation bound).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use navis_auth::pb::{Decision, ValidateRequest, ValidateResponse};
use serde::Serialize;

use crate::propagation::Revocations;
use crate::provision::Pool;

/// A small, fast PRNG (xorshift64* seeded through SplitMix64): load generation needs speed and
/// reproducibility, not unpredictability.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`; distinct seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        let mut s = seed;
        Self(splitmix(&mut s) | 1)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) (multiply-shift; the bias is below 2^-32 for the sizes used here).
    pub fn below(&mut self, n: u32) -> u32 {
        ((u64::from(self.next_u64() as u32) * u64::from(n)) >> 32) as u32
    }
}

/// One SplitMix64 step: turns any seed (even 0 or 1, 2, 3…) into well-mixed bits.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The kinds of request in the traffic mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// A provisioned token asked for scopes it holds: ALLOW.
    Hits = 0,
    /// A read-only token asked for `mcp:write`: FORBIDDEN.
    Forbidden = 1,
    /// A well-formed token nobody issued: UNAUTHENTICATED.
    Unknown = 2,
    /// A token with a bad checksum: UNAUTHENTICATED, without a store lookup.
    Malformed = 3,
    /// A token revoked during the run: ALLOW before, UNAUTHENTICATED after (within the bound).
    Revoked = 4,
}

/// Every class, in index order.
pub const CLASSES: [Class; 5] = [
    Class::Hits,
    Class::Forbidden,
    Class::Unknown,
    Class::Malformed,
    Class::Revoked,
];

impl Class {
    /// The name used in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hits => "hits",
            Self::Forbidden => "forbidden",
            Self::Unknown => "unknown",
            Self::Malformed => "malformed",
            Self::Revoked => "revoked",
        }
    }

    /// What this class must get from navis-auth (revoked: before its revocation).
    pub fn expected(self) -> &'static str {
        match self {
            Self::Hits => "ALLOW",
            Self::Forbidden => "FORBIDDEN",
            Self::Unknown | Self::Malformed => "UNAUTHENTICATED",
            Self::Revoked => "ALLOW, then UNAUTHENTICATED once revoked",
        }
    }

    fn from_index(i: u8) -> Option<Self> {
        CLASSES.get(usize::from(i)).copied()
    }
}

/// Traffic mix weights, one per class.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix(pub [f64; 5]);

impl Mix {
    /// `hits=90,forbidden=3,unknown=3,malformed=2,revoked=2`; classes left out get 0.
    ///
    /// # Errors
    /// A message for clap.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut w = [0.0; 5];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected CLASS=WEIGHT"))?;
            let class = CLASSES
                .iter()
                .find(|c| c.name() == k.trim())
                .ok_or_else(|| {
                    format!("unknown class `{k}` (hits, forbidden, unknown, malformed, revoked)")
                })?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight is not a number"))?;
            if !v.is_finite() || v < 0.0 {
                return Err(format!("`{part}`: weights are 0 or more"));
            }
            w[*class as usize] = v;
        }
        if w.iter().sum::<f64>() <= 0.0 {
            return Err("the mix has no weight at all".into());
        }
        Ok(Self(w))
    }

    /// The weight of one class.
    pub fn weight(&self, c: Class) -> f64 {
        self.0[c as usize]
    }

    /// `hits=90,forbidden=3,…`
    pub fn describe(&self) -> String {
        CLASSES
            .iter()
            .filter(|c| self.weight(**c) > 0.0)
            .map(|c| format!("{}={}", c.name(), self.weight(*c)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How traffic spreads over the provisioned keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Popularity {
    /// Every key equally often.
    Uniform,
    /// Key of rank k (1-based) with probability ∝ 1 / k^s.
    Zipf(f64),
}

impl Popularity {
    /// `uniform` or `zipf:S`.
    ///
    /// # Errors
    /// A message for clap.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "uniform" => Ok(Self::Uniform),
            z => {
                let s = z
                    .strip_prefix("zipf:")
                    .ok_or_else(|| format!("`{z}`: expected uniform or zipf:S"))?;
                let e: f64 = s
                    .parse()
                    .map_err(|_| format!("`{z}`: the exponent is not a number"))?;
                if !e.is_finite() || e <= 0.0 || e > 10.0 {
                    return Err(format!("`{z}`: the exponent must be in (0, 10]"));
                }
                Ok(Self::Zipf(e))
            }
        }
    }

    /// `uniform` / `zipf:1.1`.
    pub fn describe(self) -> String {
        match self {
            Self::Uniform => "uniform".into(),
            Self::Zipf(s) => format!("zipf:{s}"),
        }
    }
}

/// Picks an index in [0, n) by popularity. Zipf: an inverse-CDF table, ranks shuffled onto
/// indices so that popularity is unrelated to the order keys were provisioned in.
#[derive(Debug)]
pub enum Sampler {
    /// Equal odds.
    Uniform(u32),
    /// Cumulative probabilities by rank, and the index each rank maps to.
    Zipf {
        /// Non-decreasing, last element 1.0.
        cdf: Vec<f64>,
        /// `order[rank]` is the index.
        order: Vec<u32>,
    },
}

impl Sampler {
    /// A sampler over `n` items (n ≥ 1).
    pub fn new(n: u32, popularity: Popularity, rng: &mut Rng) -> Self {
        match popularity {
            Popularity::Uniform => Self::Uniform(n.max(1)),
            Popularity::Zipf(s) => {
                let mut acc = 0.0;
                let mut cdf: Vec<f64> = (1..=n.max(1))
                    .map(|k| {
                        acc += 1.0 / f64::from(k).powf(s);
                        acc
                    })
                    .collect();
                for c in &mut cdf {
                    *c /= acc;
                }
                if let Some(last) = cdf.last_mut() {
                    *last = 1.0;
                }
                let mut order: Vec<u32> = (0..n.max(1)).collect();
                for i in (1..order.len()).rev() {
                    let j = rng.below(i as u32 + 1) as usize;
                    order.swap(i, j);
                }
                Self::Zipf { cdf, order }
            }
        }
    }

    /// One index.
    pub fn pick(&self, rng: &mut Rng) -> u32 {
        match self {
            Self::Uniform(n) => rng.below(*n),
            Self::Zipf { cdf, order } => {
                let u = rng.unit();
                let rank = cdf.partition_point(|c| *c <= u).min(order.len() - 1);
                order[rank]
            }
        }
    }
}

/// Which scopes a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Nothing beyond a valid token.
    Nothing = 0,
    /// `mcp:read`.
    Read = 1,
    /// `mcp:write`.
    Write = 2,
    /// `mcp:read mcp:write`.
    Both = 3,
}

impl Ask {
    fn scopes(self) -> Vec<String> {
        match self {
            Self::Nothing => Vec::new(),
            Self::Read => vec!["mcp:read".to_owned()],
            Self::Write => vec!["mcp:write".to_owned()],
            Self::Both => vec!["mcp:read".to_owned(), "mcp:write".to_owned()],
        }
    }

    fn from_index(i: u8) -> Option<Self> {
        [Self::Nothing, Self::Read, Self::Write, Self::Both]
            .get(usize::from(i))
            .copied()
    }
}

/// One request to send, before it is built: enough to know its right answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Its class.
    pub class: Class,
    /// Index into the class's token list in the [`Pool`].
    pub idx: u32,
    /// Scopes asked for.
    pub ask: Ask,
}

/// The mix and samplers over one pool, shared by every worker.
#[derive(Debug)]
pub struct Traffic {
    /// The tokens.
    pub pool: Arc<Pool>,
    cdf: [f64; 5],
    good: Sampler,
    read_only: Sampler,
}

impl Traffic {
    /// Mix weights of classes with no token to draw from are dropped.
    pub fn new(pool: Arc<Pool>, mix: &Mix, popularity: Popularity, seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5EED);
        let mut w = mix.0;
        if pool.good.is_empty() {
            w[Class::Hits as usize] = 0.0;
        }
        if pool.read_only.is_empty() {
            w[Class::Forbidden as usize] = 0.0;
        }
        if pool.revocable.is_empty() {
            w[Class::Revoked as usize] = 0.0;
        }
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let mut cdf = [0.0; 5];
        for (c, wi) in cdf.iter_mut().zip(w) {
            acc += wi / total.max(f64::MIN_POSITIVE);
            *c = acc;
        }
        let good = Sampler::new(pool.good.len() as u32, popularity, &mut rng);
        let read_only = Sampler::new(pool.read_only.len() as u32, popularity, &mut rng);
        Self {
            pool,
            cdf,
            good,
            read_only,
        }
    }

    /// The next request for a worker with generator `rng`.
    pub fn next(&self, rng: &mut Rng) -> Planned {
        let u = rng.unit();
        let class = CLASSES[self.cdf.partition_point(|c| *c <= u).min(4)];
        let p = &self.pool;
        match class {
            Class::Hits => {
                let idx = self.good.pick(rng);
                let ask = if p.good[idx as usize].read_only {
                    Ask::Read
                } else {
                    Ask::from_index((rng.next_u64() & 3) as u8).unwrap_or(Ask::Read)
                };
                Planned { class, idx, ask }
            }
            Class::Forbidden => Planned {
                class,
                idx: p.read_only[self.read_only.pick(rng) as usize],
                ask: Ask::Write,
            },
            Class::Unknown => Planned {
                class,
                idx: rng.below(p.unknown.len() as u32),
                ask: Ask::Read,
            },
            Class::Malformed => Planned {
                class,
                idx: rng.below(p.malformed.len() as u32),
                ask: Ask::Read,
            },
            Class::Revoked => Planned {
                class,
                idx: rng.below(p.revocable.len() as u32),
                ask: Ask::Read,
            },
        }
    }

    /// The token bytes a planned request carries.
    fn token(&self, p: &Planned) -> &[u8] {
        let pool = &self.pool;
        let i = p.idx as usize;
        match p.class {
            Class::Hits | Class::Forbidden => &pool.good[i].secret,
            Class::Unknown => &pool.unknown[i],
            Class::Malformed => &pool.malformed[i],
            Class::Revoked => &pool.revocable[i].secret,
        }
    }

    /// The token id the answer must name (ALLOW / FORBIDDEN), if the token has one.
    fn token_id(&self, p: &Planned) -> Option<&str> {
        let i = p.idx as usize;
        match p.class {
            Class::Hits | Class::Forbidden => Some(&self.pool.good[i].id),
            Class::Revoked => Some(&self.pool.revocable[i].id),
            Class::Unknown | Class::Malformed => None,
        }
    }

    /// A unary request (no request id).
    pub fn request(&self, p: &Planned) -> ValidateRequest {
        ValidateRequest {
            token: self.token(p).to_vec(),
            required_scopes: p.ask.scopes(),
            resource: String::new(),
            request_id: String::new(),
        }
    }

    /// A stream request whose id carries the plan and the send time, so answers can be checked
    /// in any order without a table of outstanding requests.
    pub fn stream_request(&self, p: &Planned, sent_ns: u64) -> ValidateRequest {
        ValidateRequest {
            request_id: encode_id(p, sent_ns),
            ..self.request(p)
        }
    }

    /// A wrong answer in words, naming token ids only.
    pub fn describe(&self, p: &Planned, r: &ValidateResponse) -> String {
        let who = match self.token_id(p) {
            Some(id) => id.to_owned(),
            None => format!("{} token #{}", p.class.name(), p.idx),
        };
        let got = Decision::try_from(r.decision).map_or("?", |d| d.as_str_name());
        let naming = if r.token_id.is_empty() {
            String::new()
        } else {
            format!(" naming {}", r.token_id)
        };
        format!(
            "{}: {who} asking [{}]: expected {}, got {got}{naming}",
            p.class.name(),
            p.ask.scopes().join(" "),
            p.class.expected(),
        )
    }

    /// The token id of a revocable token (for the poller's reports).
    pub fn revocable_id(&self, idx: u32) -> &str {
        &self.pool.revocable[idx as usize].id
    }
}

/// `<class><ask><idx hex>.<sent ns hex>`.
pub fn encode_id(p: &Planned, sent_ns: u64) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(28);
    s.push(char::from(b'0' + p.class as u8));
    s.push(char::from(b'0' + p.ask as u8));
    let _ = write!(s, "{:x}.{:x}", p.idx, sent_ns);
    s
}

/// The inverse of [`encode_id`]; `None` for an id this harness did not make.
pub fn decode_id(id: &str) -> Option<(Planned, u64)> {
    let b = id.as_bytes();
    if b.len() < 5 {
        return None;
    }
    let class = Class::from_index(b[0].wrapping_sub(b'0'))?;
    let ask = Ask::from_index(b[1].wrapping_sub(b'0'))?;
    let (idx, sent) = id.get(2..)?.split_once('.')?;
    let idx = u32::from_str_radix(idx, 16).ok()?;
    let sent = u64::from_str_radix(sent, 16).ok()?;
    Some((Planned { class, idx, ask }, sent))
}

/// What an answer was, for the wrong-answer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Got {
    /// ALLOW where something else was right.
    Allow = 0,
    /// UNAUTHENTICATED where something else was right.
    Unauthenticated = 1,
    /// FORBIDDEN where something else was right.
    Forbidden = 2,
    /// DECISION_UNSPECIFIED without a status code, or an unknown decision.
    Other = 3,
    /// The right decision, naming another token (answers mixed up).
    OtherToken = 4,
    /// ALLOW for a revoked token, sent later than the propagation bound after the revoke returned.
    AllowAfterBound = 5,
    /// UNAUTHENTICATED for a revocable token before its revocation started.
    RefusedBeforeRevoke = 6,
    /// A stream answer whose request_id this harness never sent.
    UnknownRequestId = 7,
}

/// Number of [`Got`] variants.
pub const GOT_N: usize = 8;

impl Got {
    /// Report text.
    pub fn name(i: usize) -> &'static str {
        [
            "ALLOW",
            "UNAUTHENTICATED",
            "FORBIDDEN",
            "no decision",
            "the right decision for another token",
            "ALLOW later than the propagation bound after revocation",
            "UNAUTHENTICATED before the revocation started",
            "an answer with an unknown request_id",
        ][i]
    }

    fn of(decision: i32) -> Self {
        match Decision::try_from(decision) {
            Ok(Decision::Allow) => Self::Allow,
            Ok(Decision::Unauthenticated) => Self::Unauthenticated,
            Ok(Decision::Forbidden) => Self::Forbidden,
            _ => Self::Other,
        }
    }
}

/// The judgement on one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// As expected.
    Right,
    /// A revoked token accepted after the revoke returned, but within the propagation bound.
    LateAccept,
    /// Not what navis-auth must answer.
    Wrong(Got),
    /// An in-stream error answer (`status_code` set): counted as a gRPC error of that code.
    Error(i32),
}

/// Judges answers against what is right for the target: navis-auth, or the empty baseline whose
/// fixed answer is ALLOW.
#[derive(Debug)]
pub struct Checker {
    traffic: Arc<Traffic>,
    revocations: Option<Arc<Revocations>>,
    baseline: bool,
}

impl Checker {
    /// A checker for navis-auth (`baseline = false`) or the empty service.
    pub fn new(
        traffic: Arc<Traffic>,
        revocations: Option<Arc<Revocations>>,
        baseline: bool,
    ) -> Self {
        Self {
            traffic,
            revocations,
            baseline,
        }
    }

    /// The verdict on `r`, the answer to `p`, sent at `sent_ns` and received at `recv_ns`.
    pub fn check(&self, p: &Planned, r: &ValidateResponse, sent_ns: u64, recv_ns: u64) -> Verdict {
        if r.decision == Decision::Unspecified as i32 && r.status_code != 0 {
            return Verdict::Error(r.status_code);
        }
        if self.baseline {
            return if r.decision == Decision::Allow as i32 {
                Verdict::Right
            } else {
                Verdict::Wrong(Got::of(r.decision))
            };
        }
        let got = Got::of(r.decision);
        let want = match p.class {
            Class::Hits => Got::Allow,
            Class::Forbidden => Got::Forbidden,
            Class::Unknown | Class::Malformed => Got::Unauthenticated,
            Class::Revoked => return self.check_revocable(p, r, got, sent_ns, recv_ns),
        };
        if got != want {
            return Verdict::Wrong(got);
        }
        match self.traffic.token_id(p) {
            Some(id) if id != r.token_id => Verdict::Wrong(Got::OtherToken),
            _ => Verdict::Right,
        }
    }

    fn check_revocable(
        &self,
        p: &Planned,
        r: &ValidateResponse,
        got: Got,
        sent_ns: u64,
        recv_ns: u64,
    ) -> Verdict {
        let Some(revs) = &self.revocations else {
            // Never revoked in this run: an ordinary hit.
            return match got {
                Got::Allow if self.traffic.token_id(p) == Some(r.token_id.as_str()) => {
                    Verdict::Right
                }
                Got::Allow => Verdict::Wrong(Got::OtherToken),
                other => Verdict::Wrong(other),
            };
        };
        let st = &revs.states[p.idx as usize];
        match got {
            Got::Allow => {
                if self.traffic.token_id(p) != Some(r.token_id.as_str()) {
                    return Verdict::Wrong(Got::OtherToken);
                }
                if st.uncertain.load(Ordering::Acquire) {
                    return Verdict::Right;
                }
                let done = st.done_ns.load(Ordering::Acquire);
                if done == 0 || sent_ns < done {
                    Verdict::Right
                } else if sent_ns > done + revs.bound_ns {
                    Verdict::Wrong(Got::AllowAfterBound)
                } else {
                    Verdict::LateAccept
                }
            }
            Got::Unauthenticated => {
                let start = st.start_ns.load(Ordering::Acquire);
                if start == 0 || recv_ns < start {
                    return Verdict::Wrong(Got::RefusedBeforeRevoke);
                }
                st.first_refusal_ns.fetch_min(recv_ns, Ordering::AcqRel);
                Verdict::Right
            }
            other => Verdict::Wrong(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: &str, read_only: bool) -> crate::provision::Tok {
        crate::provision::Tok {
            secret: format!("secret-{id}").into_bytes(),
            id: id.into(),
            read_only,
        }
    }

    fn answer(decision: Decision, token_id: &str) -> ValidateResponse {
        ValidateResponse {
            decision: decision as i32,
            token_id: token_id.into(),
            ..ValidateResponse::default()
        }
    }

    #[test]
    fn wrong_answers_are_caught() {
        let pool = Arc::new(Pool {
            good: vec![tok("tok_a", false), tok("tok_b", true)],
            read_only: vec![1],
            unknown: vec![b"u".to_vec()],
            malformed: vec![b"m".to_vec()],
            revocable: vec![tok("tok_r", false)],
            subjects: Vec::new(),
        });
        let mix = Mix::parse("hits=1").expect("mix");
        let traffic = Arc::new(Traffic::new(pool, &mix, Popularity::Uniform, 1));
        let revs = Arc::new(Revocations::new(1, std::time::Duration::from_millis(100)));
        let c = Checker::new(Arc::clone(&traffic), Some(Arc::clone(&revs)), false);
        let plan = |class, idx, ask| Planned { class, idx, ask };
        let hit = plan(Class::Hits, 0, Ask::Write);
        assert_eq!(
            c.check(&hit, &answer(Decision::Allow, "tok_a"), 1, 2),
            Verdict::Right
        );
        assert_eq!(
            c.check(&hit, &answer(Decision::Allow, "tok_b"), 1, 2),
            Verdict::Wrong(Got::OtherToken)
        );
        assert_eq!(
            c.check(&hit, &answer(Decision::Forbidden, "tok_a"), 1, 2),
            Verdict::Wrong(Got::Forbidden)
        );
        let forbidden = plan(Class::Forbidden, 1, Ask::Write);
        assert_eq!(
            c.check(&forbidden, &answer(Decision::Forbidden, "tok_b"), 1, 2),
            Verdict::Right
        );
        let unknown = plan(Class::Unknown, 0, Ask::Read);
        assert_eq!(
            c.check(&unknown, &answer(Decision::Unauthenticated, ""), 1, 2),
            Verdict::Right
        );
        assert_eq!(
            c.check(&unknown, &answer(Decision::Allow, "tok_a"), 1, 2),
            Verdict::Wrong(Got::Allow)
        );
        let stream_error = ValidateResponse {
            status_code: 14,
            ..ValidateResponse::default()
        };
        assert_eq!(c.check(&unknown, &stream_error, 1, 2), Verdict::Error(14));

        // A revocable token: ALLOW before, refused only once the revoke started, ALLOW tolerated
        // for the bound after the revoke returned, wrong after it.
        let r = plan(Class::Revoked, 0, Ask::Read);
        let st = &revs.states[0];
        assert_eq!(
            c.check(&r, &answer(Decision::Unauthenticated, ""), 10, 20),
            Verdict::Wrong(Got::RefusedBeforeRevoke)
        );
        assert_eq!(
            c.check(&r, &answer(Decision::Allow, "tok_r"), 10, 20),
            Verdict::Right
        );
        st.start_ns.store(1_000, Ordering::Release);
        st.done_ns.store(2_000, Ordering::Release);
        assert_eq!(
            c.check(&r, &answer(Decision::Allow, "tok_r"), 1_500, 2_500),
            Verdict::Right
        );
        assert_eq!(
            c.check(
                &r,
                &answer(Decision::Allow, "tok_r"),
                50_000_000,
                50_000_100
            ),
            Verdict::LateAccept
        );
        assert_eq!(
            c.check(
                &r,
                &answer(Decision::Allow, "tok_r"),
                200_000_000,
                200_000_100
            ),
            Verdict::Wrong(Got::AllowAfterBound)
        );
        assert_eq!(
            c.check(&r, &answer(Decision::Unauthenticated, ""), 3_000, 7_000),
            Verdict::Right
        );
        assert_eq!(st.first_refusal_ns.load(Ordering::Acquire), 7_000);
        assert_eq!(revs.summary().p50_ms, Some(0.005));

        // The empty baseline: everything must be its fixed ALLOW.
        let b = Checker::new(traffic, None, true);
        assert_eq!(
            b.check(&unknown, &answer(Decision::Allow, ""), 1, 2),
            Verdict::Right
        );
        assert_eq!(
            b.check(&hit, &answer(Decision::Unauthenticated, ""), 1, 2),
            Verdict::Wrong(Got::Unauthenticated)
        );
    }

    #[test]
    fn ids_round_trip() {
        let p = Planned {
            class: Class::Revoked,
            idx: 0x1234,
            ask: Ask::Both,
        };
        let id = encode_id(&p, 987_654_321_012);
        assert_eq!(decode_id(&id), Some((p, 987_654_321_012)));
        assert_eq!(decode_id(""), None);
        assert_eq!(decode_id("91x.1"), None);
        assert_eq!(decode_id("11zz.1"), None);
    }

    #[test]
    fn mix_parses() {
        let m = Mix::parse("hits=90, forbidden=3,unknown=3,malformed=2,revoked=2").expect("mix");
        assert_eq!(m.weight(Class::Hits), 90.0);
        assert_eq!(
            m.describe(),
            "hits=90,forbidden=3,unknown=3,malformed=2,revoked=2"
        );
        assert!(Mix::parse("hits=0").is_err());
        assert!(Mix::parse("cats=1").is_err());
        assert!(Mix::parse("hits=-1").is_err());
        assert_eq!(Popularity::parse("zipf:1.1"), Ok(Popularity::Zipf(1.1)));
        assert!(Popularity::parse("zipf:0").is_err());
    }

    #[test]
    fn zipf_is_skewed_and_uniform_is_flat() {
        let mut rng = Rng::new(7);
        let z = Sampler::new(100, Popularity::Zipf(1.1), &mut rng);
        let mut counts = [0u32; 100];
        for _ in 0..200_000 {
            counts[z.pick(&mut rng) as usize] += 1;
        }
        let Sampler::Zipf { order, .. } = &z else {
            panic!("zipf sampler expected")
        };
        let (hot, cold) = (counts[order[0] as usize], counts[order[99] as usize]);
        // P(rank 1) / P(rank 100) = 100^1.1 ≈ 158.
        let ratio = f64::from(hot) / f64::from(cold.max(1));
        assert!((100.0..250.0).contains(&ratio), "ratio {ratio}");
        let u = Sampler::new(10, Popularity::Uniform, &mut rng);
        let mut c = [0u32; 10];
        for _ in 0..100_000 {
            c[u.pick(&mut rng) as usize] += 1;
        }
        assert!(c.iter().all(|n| (9_000..11_000).contains(n)), "{c:?}");
    }
}
