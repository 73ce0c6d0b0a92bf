//! governor's clock on tokio's time, so that the limiter follows `tokio::time::pause` and
//! `advance` (and `#[tokio::test(start_paused = true)]`) exactly, like every other stage.

use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use tokio::time::Instant;

/// About 30 years: where an instant goes when adding to it would overflow.
const FAR: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// A [`tokio::time::Instant`] as governor's [`Reference`]. A newtype because governor asks for
/// `Add<Nanos>`, which neither crate implements for tokio's instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TokioInstant(pub(crate) Instant);

/// governor's [`Clock`] reading [`tokio::time::Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokioClock;

pub(crate) use crate::time::nanos;

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;

    /// Saturates instead of panicking: an instant too far off to represent becomes one some 30
    /// years ahead (or stays put, if even that cannot be represented).
    fn add(self, d: Nanos) -> TokioInstant {
        let d = Duration::from_nanos(d.as_u64());
        TokioInstant(
            self.0
                .checked_add(d)
                .or_else(|| self.0.checked_add(FAR))
                .unwrap_or(self.0),
        )
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(nanos(self.0.saturating_duration_since(earlier.0)))
    }

    fn saturating_sub(&self, d: Nanos) -> Self {
        let d = Duration::from_nanos(d.as_u64());
        TokioInstant(self.0.checked_sub(d).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time_exactly() {
        let clock = TokioClock;
        let t0 = clock.now();
        assert_eq!(t0.0, Instant::now());
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let t1 = clock.now();
        assert_eq!(t1.duration_since(t0), Nanos::from(1_500_000_000));
        tokio::time::sleep(Duration::from_micros(7)).await;
        assert!(clock.now() > t1);
    }

    #[tokio::test(start_paused = true)]
    async fn arithmetic_saturates() {
        let t0 = TokioClock.now();
        let t1 = t0 + Nanos::from(250);
        assert_eq!(t1.duration_since(t0), Nanos::from(250));
        // Earlier minus later is zero, not a panic.
        assert_eq!(t0.duration_since(t1), Nanos::from(0));
        assert_eq!(Reference::saturating_sub(&t1, Nanos::from(250)), t0);
        // Adding the largest `Nanos` neither panics nor stays put: it lands 30 years ahead at
        // least.
        let far = t0 + Nanos::from(u64::MAX);
        assert!(far.duration_since(t0) >= Nanos::from(nanos(FAR)));
        // Subtracting the largest `Nanos` neither panics nor lands anywhere but exactly that far
        // back or, where the platform's instants cannot go there, where it was.
        let early = Reference::saturating_sub(&t0, Nanos::from(u64::MAX));
        assert!(early == t0 || t0.duration_since(early) == Nanos::from(u64::MAX));
    }

    #[test]
    fn works_without_a_runtime() {
        // tokio's `Instant::now` falls back to the system's monotonic clock outside a runtime.
        let c = TokioClock;
        let a = c.now();
        assert!(c.now() >= a);
    }
}
