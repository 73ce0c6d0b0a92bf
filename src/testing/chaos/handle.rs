//! [`ChaosHandle`]: run-time control of a [`ChaosLayer`](super::ChaosLayer).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{check_rate, Fault, RuleState, Shared};
use crate::error::ConfigError;

/// Switches a [`ChaosLayer`](super::ChaosLayer) on and off, changes its rates and counts its
/// faults, at run time: from a test, or from a staging admin endpoint. Cheap to clone; every
/// clone, the layer and every service it made share one state. No method takes a lock.
///
/// ```
/// use palisade::testing::chaos::{Chaos, ChaosLayer, Fault, Rule};
///
/// let layer = ChaosLayer::new(Chaos::new(1).rule(Rule::new(Fault::Reset).name("reset").rate(0.0)))?;
/// let handle = layer.handle();
/// handle.set_rate("reset", 0.25)?; // by name
/// handle.set_rate(0, 0.5)?; // or by place
/// assert_eq!(handle.rate("reset"), Some(0.5));
/// assert!(handle.set_rate("reset", 1.5).is_err());
/// handle.disable();
/// assert!(!handle.is_enabled());
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ChaosHandle {
    shared: Arc<Shared>,
}

/// A rule of a [`ChaosLayer`](super::ChaosLayer), by its place (from 0, in the order the rules
/// were added) or its name: what [`ChaosHandle`]'s methods take, through `From<usize>` and
/// `From<&str>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleId<'a> {
    /// The rule's place.
    Index(usize),
    /// The rule's name.
    Name(&'a str),
}

impl From<usize> for RuleId<'_> {
    fn from(i: usize) -> Self {
        RuleId::Index(i)
    }
}

impl<'a> From<&'a str> for RuleId<'a> {
    fn from(name: &'a str) -> Self {
        RuleId::Name(name)
    }
}

impl<'a> From<&'a String> for RuleId<'a> {
    fn from(name: &'a String) -> Self {
        RuleId::Name(name)
    }
}

impl fmt::Display for RuleId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleId::Index(i) => write!(f, "#{i}"),
            RuleId::Name(n) => write!(f, "`{n}`"),
        }
    }
}

/// A rule's state at one moment: from [`ChaosHandle::rules`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RuleStats {
    /// The rule's place, from 0.
    pub index: usize,
    /// The rule's name.
    pub name: String,
    /// The fault it injects.
    pub fault: Fault,
    /// Its rate now.
    pub rate: f64,
    /// The faults it injected so far (since [`ChaosHandle::reset_counts`]).
    pub injected: u64,
}

impl ChaosHandle {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        ChaosHandle { shared }
    }

    fn find(&self, rule: RuleId<'_>) -> Option<&RuleState> {
        match rule {
            RuleId::Index(i) => self.shared.rules.get(i),
            RuleId::Name(n) => self.shared.rules.iter().find(|r| &*r.name == n),
        }
    }

    /// Injects faults again, from the next call (the default, unless
    /// [`Chaos::enabled`](super::Chaos::enabled) said otherwise). The sequence goes on where
    /// it stopped.
    pub fn enable(&self) {
        self.shared.enabled.store(true, Ordering::Relaxed);
    }

    /// Injects no fault from the next call: every call goes to the transport untouched, for
    /// the cost of one atomic load, and takes no number of the sequence. Calls already delayed,
    /// hung or with a body to cut go on as drawn.
    pub fn disable(&self) {
        self.shared.enabled.store(false, Ordering::Relaxed);
    }

    /// Whether the layer injects faults.
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    /// Sets a rule's rate, from the next call. Draws do not depend on rates, so no other
    /// rule's faults change, and a higher rate only adds faults.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field when `rate` is not a finite number from 0 to 1
    /// (`chaos.rule.rate`) or there is no such rule (`chaos.rule`); the rate is then left as
    /// it was.
    pub fn set_rate<'a>(&self, rule: impl Into<RuleId<'a>>, rate: f64) -> Result<(), ConfigError> {
        let id = rule.into();
        let Some(rule) = self.find(id) else {
            return Err(ConfigError::new(
                "chaos.rule",
                format!("must name a rule of the layer, got {id}"),
            ));
        };
        check_rate(&rule.name, rate)?;
        rule.rate.store(rate.to_bits(), Ordering::Relaxed);
        Ok(())
    }

    /// A rule's rate now; `None` if there is no such rule.
    pub fn rate<'a>(&self, rule: impl Into<RuleId<'a>>) -> Option<f64> {
        self.find(rule.into()).map(RuleState::rate)
    }

    /// The faults a rule injected so far (since [`reset_counts`](Self::reset_counts)); `None`
    /// if there is no such rule.
    pub fn injected<'a>(&self, rule: impl Into<RuleId<'a>>) -> Option<u64> {
        self.find(rule.into())
            .map(|r| r.injected.load(Ordering::Relaxed))
    }

    /// The faults all rules injected so far.
    pub fn injected_total(&self) -> u64 {
        self.shared
            .rules
            .iter()
            .map(|r| r.injected.load(Ordering::Relaxed))
            .sum()
    }

    /// The calls drawn for since the layer was made or [`reseed`](Self::reseed)ed: the
    /// number the next call will take. Calls made while disabled are not counted.
    pub fn calls(&self) -> u64 {
        self.shared.next.load(Ordering::Relaxed)
    }

    /// Every rule's state, in order.
    pub fn rules(&self) -> Vec<RuleStats> {
        self.shared
            .rules
            .iter()
            .enumerate()
            .map(|(index, r)| RuleStats {
                index,
                name: r.name.to_string(),
                fault: r.fault.clone(),
                rate: r.rate(),
                injected: r.injected.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Draws with `seed` from now on, and restarts the sequence at call 0: the calls that
    /// follow meet the faults a new layer with this seed (and the current rates) would give
    /// them. Exact only while no call is in flight into the layer: one that races with it may
    /// take its number from either sequence.
    pub fn reseed(&self, seed: u64) {
        self.shared.seed.store(seed, Ordering::Relaxed);
        self.shared.next.store(0, Ordering::Relaxed);
    }

    /// Sets every rule's count of faults injected back to 0.
    pub fn reset_counts(&self) {
        for r in self.shared.rules.iter() {
            r.injected.store(0, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for ChaosHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChaosHandle").field(&self.shared).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Chaos, ChaosLayer, Rule};
    use super::*;

    fn handle() -> ChaosHandle {
        ChaosLayer::new(
            Chaos::new(3)
                .rule(Rule::new(Fault::Reset).rate(0.1))
                .rule(Rule::new(Fault::Hang).name("stuck").rate(0.2)),
        )
        .unwrap()
        .handle()
    }

    #[test]
    fn rules_are_found_by_place_and_name() {
        let h = handle();
        assert_eq!(h.rate(0), Some(0.1));
        assert_eq!(h.rate("reset"), Some(0.1));
        assert_eq!(h.rate("stuck"), Some(0.2));
        assert_eq!(h.rate(&"stuck".to_owned()), Some(0.2));
        assert_eq!(h.rate(2), None);
        assert_eq!(h.rate("hang"), None, "named otherwise");
        assert_eq!(h.injected(1), Some(0));
        assert_eq!(h.injected("nope"), None);
    }

    #[test]
    fn set_rate_checks_the_rate_and_the_rule() {
        let h = handle();
        h.set_rate("stuck", 1.0).unwrap();
        h.set_rate(0, 0.0).unwrap();
        assert_eq!((h.rate(0), h.rate(1)), (Some(0.0), Some(1.0)));
        for bad in [f64::NAN, -1.0, 2.0, f64::INFINITY] {
            let err = h.set_rate("stuck", bad).unwrap_err();
            assert_eq!(err.field(), "chaos.rule.rate");
            assert!(err.rule().contains("`stuck`"), "{}", err.rule());
            assert_eq!(h.rate("stuck"), Some(1.0), "left as it was");
        }
        let err = h.set_rate("nope", 0.5).unwrap_err();
        assert_eq!(err.field(), "chaos.rule");
        assert!(err.rule().contains("`nope`"), "{}", err.rule());
        let err = h.set_rate(7, 0.5).unwrap_err();
        assert!(err.rule().contains("#7"), "{}", err.rule());
    }

    #[test]
    fn enable_disable_and_the_snapshot() {
        let h = handle();
        assert!(h.is_enabled());
        h.disable();
        assert!(!h.is_enabled());
        h.clone().enable();
        assert!(h.is_enabled(), "clones share the state");
        let rules = h.rules();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].name, "stuck");
        assert_eq!(rules[1].fault, Fault::Hang);
        assert_eq!(rules[1].rate, 0.2);
        assert_eq!((rules[1].index, rules[1].injected), (1, 0));
        assert_eq!(
            format!("{h:?}"),
            r#"ChaosHandle(Chaos { enabled: true, rules: ["reset", "stuck"] })"#
        );
    }
}
