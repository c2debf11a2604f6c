//! Wall-clock time in unix seconds, injected so expiry can be tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current unix time in seconds.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A clock that only moves when told to (tests).
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `unix_seconds`.
    pub fn manual(unix_seconds: i64) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(unix_seconds)))
    }

    /// Now, in unix seconds.
    pub fn now(&self) -> i64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward; does nothing to the system clock.
    pub fn advance(&self, seconds: i64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(seconds, Ordering::Relaxed);
        }
    }
}
