//! The retry budget: retries may add only a bounded share to the load.
//!
//! Why a budget and not only a maximum of attempts: with 3 attempts per request, a total outage
//! triples the load on a server that is already failing, exactly when it can least take it.
//! A budget caps the *ratio* of retries to requests across all requests of a client (and its
//! clones), so retries help with scattered failures and fade out during an outage. The defaults
//! are Finagle's (and reqwest's): retries may add 20 % to the request rate, plus 10 retries per
//! second so that a client with little traffic can still retry, counted over a 10 s window.
//!
//! The window is kept in ten slots of atomic counters, so a deposit or a withdrawal is a handful
//! of atomic operations and never a lock. The counts are approximate under contention, never
//! unsafe: two withdrawals may both see the last retry as free (an overdraw of one retry per
//! racing thread), and a deposit or withdrawal made in the instant the window moves to a new
//! slot may be cleared with it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ConfigError;

/// The retry budget's configuration. Default: 20 % extra load, 10 retries per second, 10 s
/// window.
///
/// Every request deposits `retry_ratio` of a retry; the retry stage withdraws one when it
/// decides to retry, before the backoff sleep, so that it never sleeps for a retry it could not
/// make. If the request is dropped during the sleep (the caller left, or its total timeout
/// fired first), the retry was never made and goes back to the budget.
///
/// ```
/// use std::time::Duration;
/// use palisade::retry::RetryBudget;
///
/// let budget = RetryBudget::default()
///     .retry_ratio(0.1)
///     .min_per_second(5)
///     .window(Duration::from_secs(30));
/// # let _ = budget;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use = "a budget does nothing until given to a retry policy"]
pub struct RetryBudget {
    pub(crate) ratio: f64,
    pub(crate) min_per_second: u32,
    pub(crate) window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl RetryBudget {
    /// The share of the request rate that retries may add: 0.2 lets 1,000 requests bring at
    /// most 200 retries (plus the minimum). Default 0.2; must be finite and from 0 to 1,000.
    pub fn retry_ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Retries per second allowed whatever the request rate, so that a quiet client can still
    /// retry. Default 10.
    ///
    /// It is kept as a reserve of `min_per_second × window` retries (100 by default) that a
    /// burst of failures may spend at once; each retry comes back to the reserve when it ages
    /// out of the window. So it allows that many retries per window, not a steady rate.
    pub fn min_per_second(mut self, n: u32) -> Self {
        self.min_per_second = n;
        self
    }

    /// How long a request's deposit and a retry's withdrawal count. Default 10 s; at least
    /// 10 ms.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.ratio.is_finite() || !(0.0..=1000.0).contains(&self.ratio) {
            return Err(ConfigError::new(
                "retry.budget.retry_ratio",
                format!("must be a finite number from 0 to 1000, got {}", self.ratio),
            ));
        }
        if self.window < Duration::from_millis(10) {
            return Err(ConfigError::new(
                "retry.budget.window",
                format!("must be at least 10ms, got {:?}", self.window),
            ));
        }
        Ok(())
    }
}

const SLOTS: usize = 10;

/// A retry taken from the budget, with the slot it was taken from, so that it can be given
/// back ([`Budget::refund`]) when the retry is not made after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a withdrawal is made or refunded"]
pub(crate) struct Withdrawal {
    /// The slot's generation plus one (saturating below the top bit), so that an
    /// `Option<Withdrawal>` takes 8 bytes in every request's retry loop; the top bit says the
    /// retry is being sent ([`sending`](Self::sending)).
    gen_1: std::num::NonZeroU64,
}

/// The top bit of `gen_1`: the retry's attempt is out.
const SENDING: u64 = 1 << 63;

impl Withdrawal {
    fn new(gen: u64) -> Withdrawal {
        Withdrawal {
            gen_1: std::num::NonZeroU64::MIN.saturating_add(gen.min(SENDING - 2)),
        }
    }

    fn gen(self) -> u64 {
        (self.gen_1.get() & !SENDING) - 1
    }

    /// The same withdrawal, marked as the retry whose attempt is out.
    pub(crate) fn sending(self) -> Withdrawal {
        Withdrawal {
            gen_1: self.gen_1 | SENDING,
        }
    }

    /// Whether it was marked [`sending`](Self::sending).
    pub(crate) fn is_sending(self) -> bool {
        self.gen_1.get() & SENDING != 0
    }
}
/// One retry, in the budget's fixed-point units.
const UNIT: i64 = 1_000;

/// The budget's state: a sliding window of `SLOTS` counters. Pure: the caller passes the time
/// elapsed since the budget was made.
#[derive(Debug)]
pub(crate) struct Budget {
    slots: [AtomicI64; SLOTS],
    /// The index (time / slot length) of the newest slot.
    generation: AtomicU64,
    slot_nanos: u64,
    reserve: i64,
    deposit: i64,
}

impl Budget {
    pub(crate) fn new(cfg: &RetryBudget) -> Self {
        let window = cfg.window.as_nanos().min(u64::MAX as u128) as u64;
        let secs = cfg.window.as_secs_f64();
        let reserve =
            (f64::from(cfg.min_per_second) * secs * UNIT as f64).min(i64::MAX as f64 / 4.0);
        Budget {
            slots: Default::default(),
            generation: AtomicU64::new(0),
            slot_nanos: (window / SLOTS as u64).max(1),
            reserve: reserve as i64,
            deposit: (cfg.ratio * UNIT as f64).round() as i64,
        }
    }

    fn slot_at(&self, now: Duration) -> usize {
        (self.generation_at(now) % SLOTS as u64) as usize
    }

    /// Moves the window to `now` if it is behind, and returns the generation of the newest slot.
    fn generation_at(&self, now: Duration) -> u64 {
        let gen = (now.as_nanos() / u128::from(self.slot_nanos)).min(u64::MAX as u128) as u64;
        let mut cur = self.generation.load(Ordering::Acquire);
        while gen > cur {
            match self.generation.compare_exchange_weak(
                cur,
                gen,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // We moved the window: clear the slots that fell out of it.
                    let stale = (gen - cur).min(SLOTS as u64);
                    for g in (gen - stale + 1)..=gen {
                        self.slots[(g % SLOTS as u64) as usize].store(0, Ordering::Release);
                    }
                    break;
                }
                Err(actual) => cur = actual,
            }
        }
        gen.max(cur)
    }

    /// Records a request (each request deposits `ratio` of a retry).
    pub(crate) fn deposit(&self, now: Duration) {
        let i = self.slot_at(now);
        self.slots[i].fetch_add(self.deposit, Ordering::AcqRel);
    }

    /// Takes one retry if the window holds one; `None` when the budget is spent.
    pub(crate) fn try_withdraw(&self, now: Duration) -> Option<Withdrawal> {
        let gen = self.generation_at(now);
        let balance: i64 = self
            .slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .sum::<i64>()
            + self.reserve;
        if balance < UNIT {
            return None;
        }
        self.slots[(gen % SLOTS as u64) as usize].fetch_sub(UNIT, Ordering::AcqRel);
        Some(Withdrawal::new(gen))
    }

    /// Gives back a retry that was withdrawn but never made (its caller left during the
    /// backoff). A withdrawal that has left the window already is not given back: the window
    /// no longer counts it.
    pub(crate) fn refund(&self, w: Withdrawal) {
        let (cur, gen) = (self.generation.load(Ordering::Acquire), w.gen());
        if cur.saturating_sub(gen) < SLOTS as u64 {
            self.slots[(gen % SLOTS as u64) as usize].fetch_add(UNIT, Ordering::AcqRel);
        }
    }

    /// The balance at `now` and the reserve, in the budget's units ([`UNIT`] a retry), read
    /// without moving the window: the slots hold the generations `generation - SLOTS + 1 ..=
    /// generation` (the move of `generation` cleared the others), and of those the window at
    /// `now` keeps the ones above `now`'s generation less `SLOTS`.
    fn balance_at(&self, now: Duration) -> (i64, i64) {
        let at = (now.as_nanos() / u128::from(self.slot_nanos)).min(u64::MAX as u128) as u64;
        let cur = self.generation.load(Ordering::Acquire);
        let keep = SLOTS as u64 - 1;
        let first = cur.saturating_sub(keep).max(at.saturating_sub(keep));
        let window = (first..=cur)
            .map(|g| self.slots[(g % SLOTS as u64) as usize].load(Ordering::Acquire))
            .fold(0i64, i64::saturating_add);
        (window.saturating_add(self.reserve), self.reserve)
    }

    /// What the budget holds at `now`, read only: (whole retries it would allow, the balance
    /// in retries, the reserve in retries).
    pub(crate) fn health(&self, now: Duration) -> (u64, f64, f64) {
        let (balance, reserve) = self.balance_at(now);
        let whole = u64::try_from(balance / UNIT).unwrap_or(0);
        (
            whole,
            balance as f64 / UNIT as f64,
            reserve as f64 / UNIT as f64,
        )
    }

    /// Retries that could be withdrawn now.
    #[cfg(test)]
    pub(crate) fn available(&self, now: Duration) -> i64 {
        let _ = self.slot_at(now);
        (self
            .slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .sum::<i64>()
            + self.reserve)
            / UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn reserve_alone_gives_min_per_second_times_window() {
        let b = Budget::new(&RetryBudget::default());
        let mut n = 0;
        while b.try_withdraw(Duration::ZERO).is_some() {
            n += 1;
        }
        assert_eq!(n, 100);
        // The withdrawals leave the window after 10 s and the reserve is whole again.
        assert!(b.try_withdraw(9 * S).is_none());
        assert_eq!(b.available(10 * S), 100);
    }

    #[test]
    fn deposits_add_a_fifth_of_a_retry_each() {
        let b = Budget::new(&RetryBudget::default().min_per_second(0));
        for _ in 0..50 {
            b.deposit(Duration::ZERO);
        }
        let mut n = 0;
        while b.try_withdraw(Duration::ZERO).is_some() {
            n += 1;
        }
        assert_eq!(n, 10);
    }

    #[test]
    fn old_deposits_expire() {
        let b = Budget::new(&RetryBudget::default().min_per_second(0));
        for _ in 0..50 {
            b.deposit(Duration::ZERO);
        }
        assert_eq!(b.available(9 * S), 10);
        assert_eq!(b.available(10 * S), 0);
        // A jump far ahead clears everything.
        assert_eq!(b.available(1_000 * S), 0);
    }

    #[test]
    fn a_refund_gives_the_retry_back_while_its_slot_is_in_the_window() {
        let b = Budget::new(&RetryBudget::default().min_per_second(0));
        for _ in 0..10 {
            b.deposit(Duration::ZERO);
        }
        assert_eq!(b.available(Duration::ZERO), 2);
        let w = b.try_withdraw(Duration::ZERO).unwrap();
        assert_eq!(b.available(S), 1);
        b.refund(w);
        assert_eq!(b.available(S), 2);
        // A withdrawal whose slot has left the window is not given back: it would be credit
        // out of nothing.
        let w = b.try_withdraw(S).unwrap();
        assert_eq!(b.available(20 * S), 0);
        b.refund(w);
        assert_eq!(b.available(20 * S), 0);
    }

    #[test]
    fn the_balance_is_read_without_moving_the_window() {
        let b = Budget::new(&RetryBudget::default());
        assert_eq!(b.health(Duration::ZERO), (100, 100.0, 100.0));
        for _ in 0..10 {
            b.deposit(Duration::ZERO);
        }
        let _ = b.try_withdraw(Duration::ZERO).unwrap();
        let _ = b.try_withdraw(2 * S).unwrap();
        // Two retries deposited, two withdrawn.
        assert_eq!(b.health(2 * S), (100, 100.0, 100.0));
        // At 10 s the deposits and the first withdrawal have left the window; the second has
        // not: 99 retries. Read as often as you like, the slots stay as they were.
        for _ in 0..3 {
            assert_eq!(b.health(10 * S), (99, 99.0, 100.0));
        }
        assert_eq!(b.health(2 * S), (100, 100.0, 100.0), "nothing was cleared");
        assert_eq!(b.health(12 * S), (100, 100.0, 100.0));
        assert_eq!(b.health(Duration::MAX), (100, 100.0, 100.0));
        // Fractions of a retry, and no reserve.
        let b = Budget::new(&RetryBudget::default().min_per_second(0));
        for _ in 0..7 {
            b.deposit(Duration::ZERO);
        }
        assert_eq!(b.health(S), (1, 1.4, 0.0));
        assert_eq!(b.available(S), 1);
    }

    #[test]
    fn bad_config_is_rejected() {
        for r in [f64::NAN, -0.1, f64::INFINITY, 1e9] {
            let e = RetryBudget::default()
                .retry_ratio(r)
                .validate()
                .unwrap_err();
            assert_eq!(e.field(), "retry.budget.retry_ratio");
        }
        let e = RetryBudget::default()
            .window(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), "retry.budget.window");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Over any run, retries granted within one window never exceed
        /// ratio · requests in that window + the reserve.
        #[test]
        fn retries_in_any_window_are_bounded(
            steps in proptest::collection::vec((0u64..200, any::<bool>()), 1..800),
        ) {
            let cfg = RetryBudget::default();
            let b = Budget::new(&cfg);
            let mut now = Duration::ZERO;
            let mut log: Vec<(Duration, bool)> = Vec::new(); // (time, is_retry)
            for (dt_ms, want_retry) in steps {
                now += Duration::from_millis(dt_ms);
                if want_retry {
                    if b.try_withdraw(now).is_some() {
                        log.push((now, true));
                    }
                } else {
                    b.deposit(now);
                    log.push((now, false));
                }
            }
            // Retries granted in any interval one slot shorter than the window are at most the
            // reserve plus `ratio` of the requests made in that interval and the window before.
            let span = cfg.window - cfg.window / SLOTS as u32;
            for (t0, _) in &log {
                let ret = log.iter().filter(|(t, r)| *r && *t >= *t0 && *t <= *t0 + span).count();
                let req = log
                    .iter()
                    .filter(|(t, r)| !*r && *t + cfg.window > *t0 && *t <= *t0 + span)
                    .count();
                let bound = 100.0 + cfg.ratio * req as f64;
                prop_assert!((ret as f64) <= bound, "{} retries for {} requests", ret, req);
            }
        }
    }
}
