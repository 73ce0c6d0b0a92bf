//! The backoff schedule: exponential growth with a cap, and jitter.
//!
//! The ceiling of the n-th retry's delay is `min(max_delay, base · 2^(n-1))`, computed in
//! saturating integer arithmetic so that no attempt number overflows it. Jitter then picks the
//! delay below that ceiling, as in the AWS Architecture Blog's "Exponential Backoff And Jitter":
//! full jitter spreads retries the most and is the default.

use std::time::Duration;

/// How the delay is drawn below the exponential ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Uniform in `[0, ceiling]`. The default: it spreads competing clients the most.
    #[default]
    Full,
    /// Uniform in `[ceiling / 2, ceiling]`: never much shorter than the schedule.
    Equal,
    /// `min(max_delay, uniform[base, 3 · previous delay])`: each delay grows from the last one
    /// drawn, not from the attempt number.
    Decorrelated,
    /// Exactly the ceiling: no randomness.
    None,
}

/// An exponential backoff schedule with a cap and [`Jitter`].
///
/// ```
/// use std::time::Duration;
/// use palisade::retry::{Backoff, Jitter};
///
/// let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).jitter(Jitter::None);
/// assert_eq!(b.ceiling(1), Duration::from_millis(100));
/// assert_eq!(b.ceiling(4), Duration::from_millis(800));
/// assert_eq!(b.ceiling(1_000), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a schedule does nothing until given to a retry policy"]
pub struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
    pub(crate) jitter: Jitter,
}

impl Default for Backoff {
    /// Base 100 ms, cap 10 s, full jitter.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// A schedule from `base` doubling up to `max`, with full jitter.
    ///
    /// `base` must be above zero and `max` at least `base`; the retry stage checks both when it
    /// is built and reports a [`ConfigError`](crate::ConfigError) otherwise.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            jitter: Jitter::Full,
        }
    }

    /// Sets the jitter. Default: [`Jitter::Full`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The base delay (the first retry's ceiling).
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap on every delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The ceiling of retry `n`'s delay (`n` from 1): `min(max, base · 2^(n-1))`, saturating.
    pub fn ceiling(&self, n: u32) -> Duration {
        let shift = n.saturating_sub(1);
        let base = self.base.as_nanos();
        let grown = if shift >= 128 || base.leading_zeros() < shift {
            u128::MAX
        } else {
            base << shift
        };
        let capped = grown.min(self.max.as_nanos());
        nanos(capped)
    }

    /// The delay before retry `n` (from 1), given the delay drawn before the previous retry
    /// (`prev`, used by [`Jitter::Decorrelated`]; pass `base` for the first) and a random
    /// source.
    pub fn delay(&self, n: u32, prev: Duration, rng: &mut fastrand::Rng) -> Duration {
        match self.jitter {
            Jitter::None => self.ceiling(n),
            Jitter::Full => uniform(rng, 0, self.ceiling(n).as_nanos()),
            Jitter::Equal => {
                let c = self.ceiling(n).as_nanos();
                let half = c / 2;
                uniform(rng, c - half, c)
            }
            Jitter::Decorrelated => {
                let lo = self.base.as_nanos().min(self.max.as_nanos());
                let hi = prev.as_nanos().saturating_mul(3).max(lo);
                uniform(rng, lo, hi).min(self.max)
            }
        }
    }
}

/// A uniform draw in `[lo, hi]` nanoseconds.
fn uniform(rng: &mut fastrand::Rng, lo: u128, hi: u128) -> Duration {
    let lo = lo.min(u64::MAX as u128) as u64;
    let hi = hi.min(u64::MAX as u128) as u64;
    if hi <= lo {
        return Duration::from_nanos(lo);
    }
    Duration::from_nanos(rng.u64(lo..=hi))
}

fn nanos(n: u128) -> Duration {
    let secs = n / 1_000_000_000;
    if secs > u64::MAX as u128 {
        return Duration::MAX;
    }
    Duration::new(secs as u64, (n % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn b(j: Jitter) -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).jitter(j)
    }

    #[test]
    fn ceiling_grows_then_caps() {
        let b = b(Jitter::None);
        let got: Vec<_> = (1..=9).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
    }

    #[test]
    fn no_overflow_at_huge_attempts() {
        let b = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX).jitter(Jitter::None);
        assert_eq!(b.ceiling(1_000), Duration::MAX);
        let b = b.jitter(Jitter::Full);
        let mut rng = fastrand::Rng::with_seed(1);
        for n in [1, 2, 64, 65, 128, 1_000, u32::MAX] {
            let _ = b.delay(n, Duration::MAX, &mut rng);
        }
        let small = Backoff::new(MS, Duration::from_secs(10)).jitter(Jitter::None);
        assert_eq!(small.ceiling(1_000), Duration::from_secs(10));
        assert_eq!(small.ceiling(u32::MAX), Duration::from_secs(10));
        assert_eq!(small.ceiling(0), MS);
    }

    proptest! {
        #[test]
        fn every_jitter_stays_within_its_bounds(
            base_ms in 1u64..5_000,
            extra_ms in 0u64..100_000,
            n in 1u32..2_000,
            prev_ms in 0u64..200_000,
            seed in any::<u64>(),
        ) {
            let base = Duration::from_millis(base_ms);
            let max = base + Duration::from_millis(extra_ms);
            let prev = Duration::from_millis(prev_ms);
            let mut rng = fastrand::Rng::with_seed(seed);
            let c = Backoff::new(base, max).ceiling(n);
            prop_assert!(c >= base && c <= max);

            let full = Backoff::new(base, max).jitter(Jitter::Full).delay(n, prev, &mut rng);
            prop_assert!(full <= c);

            let equal = Backoff::new(base, max).jitter(Jitter::Equal).delay(n, prev, &mut rng);
            prop_assert!(equal <= c && equal >= c / 2);

            let none = Backoff::new(base, max).jitter(Jitter::None).delay(n, prev, &mut rng);
            prop_assert_eq!(none, c);

            let dec = Backoff::new(base, max).jitter(Jitter::Decorrelated).delay(n, prev, &mut rng);
            prop_assert!(dec >= base && dec <= max);
            prop_assert!(dec <= (prev * 3).max(base));
        }

        #[test]
        fn ceiling_is_monotonic(base_ms in 1u64..10_000, extra_ms in 0u64..1_000_000, n in 1u32..500) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(base_ms + extra_ms));
            prop_assert!(b.ceiling(n) <= b.ceiling(n + 1));
        }
    }
}
