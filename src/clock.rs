//! Time for the hot path: unix seconds (token expiry) and monotonic nanoseconds (negative cache
//! entries), read from atomics that a ticker thread refreshes every millisecond, so a validation
//! never pays for a clock read (a `clock_gettime` system call on VMs without a usable vDSO clock:
//! ~50 ns here). Tests inject a manual clock instead of sleeping.
//!
//! Safety-relevant staleness checks (the revocation lease) do not use this clock: a paused process
//! would resume with a stale tick. They read `Instant::now()` themselves.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the ticker refreshes the coarse time.
pub const TICK: Duration = Duration::from_millis(1);

/// The atomics a [`Clock`] reads.
#[derive(Debug)]
pub struct Ticks {
    unix: AtomicI64,
    mono: AtomicU64,
    origin: Instant,
}

impl Ticks {
    fn refresh(&self) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.unix.store(unix, Ordering::Relaxed);
        let mono = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.mono.store(mono, Ordering::Relaxed);
    }
}

/// A source of the current time.
#[derive(Clone, Debug)]
pub enum Clock {
    /// Refreshed every [`TICK`] by a background thread that stops when the last clone is dropped.
    Coarse(Arc<Ticks>),
    /// Moves only when told to (tests).
    Manual(Arc<Ticks>),
}

impl Default for Clock {
    fn default() -> Self {
        Clock::coarse()
    }
}

impl Clock {
    /// The ticking clock.
    pub fn coarse() -> Self {
        let ticks = Arc::new(Ticks {
            unix: AtomicI64::new(0),
            mono: AtomicU64::new(0),
            origin: Instant::now(),
        });
        ticks.refresh();
        let weak: Weak<Ticks> = Arc::downgrade(&ticks);
        let spawned = std::thread::Builder::new()
            .name("navis-clock".into())
            .spawn(move || {
                while let Some(t) = weak.upgrade() {
                    t.refresh();
                    drop(t);
                    std::thread::sleep(TICK);
                }
            });
        if spawned.is_err() {
            tracing::warn!("could not start the clock thread; time will not advance");
        }
        Clock::Coarse(ticks)
    }

    /// A manual clock starting at `unix_seconds`.
    pub fn manual(unix_seconds: i64) -> Self {
        Clock::Manual(Arc::new(Ticks {
            unix: AtomicI64::new(unix_seconds),
            mono: AtomicU64::new(0),
            origin: Instant::now(),
        }))
    }

    fn ticks(&self) -> &Ticks {
        match self {
            Clock::Coarse(t) | Clock::Manual(t) => t,
        }
    }

    /// Now, in unix seconds.
    #[inline]
    pub fn now(&self) -> i64 {
        self.ticks().unix.load(Ordering::Relaxed)
    }

    /// Monotonic nanoseconds since this clock was made.
    #[inline]
    pub fn mono_nanos(&self) -> u64 {
        self.ticks().mono.load(Ordering::Relaxed)
    }

    /// Moves a manual clock forward (both readings); does nothing to the ticking clock.
    pub fn advance(&self, seconds: i64) {
        if let Clock::Manual(t) = self {
            t.unix.fetch_add(seconds, Ordering::Relaxed);
            let ns = u64::try_from(seconds)
                .unwrap_or(0)
                .saturating_mul(1_000_000_000);
            t.mono.fetch_add(ns, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_ticks() {
        let c = Clock::coarse();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((c.now() - wall).abs() <= 1);
        let m = c.mono_nanos();
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.mono_nanos() > m);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(100);
        assert_eq!(c.now(), 100);
        c.advance(5);
        assert_eq!(c.now(), 105);
        assert_eq!(c.mono_nanos(), 5_000_000_000);
    }
}
