//! Unit tests of the breaker's state machine, its keyed map and its configuration.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::breaker::{millis_ceil, Admission, Breaker, Permit, Transition};
use super::keyed::HostMap;
use super::CircuitBreaker;
use crate::classify::FailureClass::{self, *};
use crate::event::CircuitState::{self, *};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn breaker(cfg: CircuitBreaker) -> Arc<Breaker> {
    cfg.validate().expect("valid test configuration");
    Arc::new(Breaker::new(
        Arc::new(cfg.policy()),
        Arc::from("k"),
        Duration::ZERO,
    ))
}

fn admit(b: &Arc<Breaker>, now: Duration) -> Permit {
    match b.clone().acquire(now).0 {
        Admission::Admitted(p) => p,
        Admission::Rejected(h, _) => panic!("rejected at {now:?} (hint {h:?})"),
    }
}

fn rejected(b: &Arc<Breaker>, now: Duration) -> Option<Duration> {
    match b.clone().acquire(now).0 {
        Admission::Admitted(p) => panic!("admitted at {now:?}: {p:?}"),
        Admission::Rejected(h, _) => h,
    }
}

fn call(b: &Arc<Breaker>, now: Duration, class: FailureClass) -> Option<Transition> {
    admit(b, now).record(class, now)
}

fn to(t: Option<Transition>) -> Option<CircuitState> {
    t.map(|t| t.to)
}

/// The default breaker with the ratio rule alone, to test that rule.
fn ratio_only() -> CircuitBreaker {
    CircuitBreaker::default().no_consecutive_failures()
}

#[test]
fn ratio_needs_the_minimum_throughput() {
    // The ratio alone: with the default run rule, the 12th failure in a row would trip it.
    let b = breaker(ratio_only());
    for i in 0..19 {
        assert_eq!(call(&b, Duration::ZERO, ServerError), None, "call {i}");
    }
    assert_eq!(
        b.state(),
        Closed,
        "19 failures of 19 calls: below min_calls"
    );
    let t = call(&b, Duration::ZERO, Timeout).expect("the 20th failure trips it");
    assert_eq!((t.from, t.to, t.open_for), (Closed, Open, Some(5 * S)));
    assert_eq!(rejected(&b, Duration::ZERO), Some(5 * S));
}

#[test]
fn ratio_opens_exactly_at_the_threshold() {
    // 10 failures of 20 = 0.5: opens on the 20th call.
    let b = breaker(ratio_only());
    for _ in 0..10 {
        assert_eq!(call(&b, Duration::ZERO, Success), None);
    }
    for _ in 0..9 {
        assert_eq!(call(&b, Duration::ZERO, Network), None);
    }
    assert_eq!(to(call(&b, Duration::ZERO, ServerError)), Some(Open));

    // 9 failures of 20 does not, nor do more successes.
    let b = breaker(ratio_only());
    for _ in 0..11 {
        call(&b, Duration::ZERO, ClientError);
    }
    for _ in 0..9 {
        assert_eq!(call(&b, Duration::ZERO, ServerError), None);
    }
    for _ in 0..100 {
        assert_eq!(call(&b, Duration::ZERO, Success), None);
    }
    assert_eq!(b.state(), Closed);
}

#[test]
fn a_success_that_brings_the_window_to_the_minimum_can_trip_it() {
    // 19 failures then a success: 19 of 20 calls failed, the rule holds on that record.
    let b = breaker(ratio_only());
    for _ in 0..19 {
        call(&b, Duration::ZERO, ServerError);
    }
    assert_eq!(to(call(&b, Duration::ZERO, Success)), Some(Open));
}

#[test]
fn outcomes_leave_the_window() {
    // 30 s window in 3 s buckets: failures at 0 s still count at 27 s, not at 30 s.
    let b = breaker(ratio_only());
    for _ in 0..19 {
        call(&b, Duration::ZERO, ServerError);
    }
    assert_eq!(to(call(&b, 27 * S, ServerError)), Some(Open));

    let b = breaker(ratio_only());
    for _ in 0..19 {
        call(&b, Duration::ZERO, ServerError);
    }
    assert_eq!(call(&b, 30 * S, ServerError), None);
    assert_eq!(b.state(), Closed);
}

#[test]
fn ignored_classes_count_for_nothing() {
    let b = breaker(ratio_only());
    for _ in 0..19 {
        call(&b, Duration::ZERO, ServerError);
    }
    // Were they successes, 20 of 1,019 would not trip; were they failures, the first would.
    for class in [Throttled, Cancelled, Rejected] {
        for _ in 0..333 {
            assert_eq!(call(&b, Duration::ZERO, class), None);
        }
    }
    assert_eq!(to(call(&b, Duration::ZERO, ServerError)), Some(Open));
}

#[test]
fn the_run_rule_opens_on_the_nth_failure_in_a_row() {
    let b = breaker(CircuitBreaker::default().consecutive_failures(3));
    for class in [ServerError, Timeout, Success, Network, Network] {
        assert_eq!(call(&b, Duration::ZERO, class), None);
    }
    // Ignored outcomes neither count nor reset the run; a 4xx resets it.
    assert_eq!(call(&b, Duration::ZERO, Throttled), None);
    assert_eq!(b.state(), Closed);
    assert_eq!(to(call(&b, Duration::ZERO, ServerError)), Some(Open));

    let b = breaker(CircuitBreaker::default().consecutive_failures(2));
    for class in [ServerError, ClientError, ServerError, ClientError] {
        assert_eq!(call(&b, Duration::ZERO, class), None);
    }
    assert_eq!(b.state(), Closed);
}

#[test]
fn by_default_a_run_trips_it_after_a_long_healthy_window_and_so_does_the_ratio() {
    // 30 s of successes at 100 calls a second fill the window with 3,000 of them: the ratio
    // alone would need 3,000 failures more. The run trips it at the 12th failure in a row.
    let b = breaker(CircuitBreaker::default());
    let at = |i: u32| 10 * MS * i;
    for i in 0..3_000 {
        assert_eq!(call(&b, at(i), Success), None);
    }
    for i in 3_000..3_011 {
        assert_eq!(call(&b, at(i), ServerError), None, "call {i}");
    }
    let t = call(&b, at(3_011), Timeout).expect("the 12th failure in a row trips it");
    assert_eq!((t.from, t.to, t.open_for), (Closed, Open, Some(5 * S)));

    // Failures that never come two in a row: the ratio trips it, at 10 of 20.
    let b = breaker(CircuitBreaker::default());
    for i in 0..19 {
        let class = if i % 2 == 0 { ServerError } else { Success };
        assert_eq!(call(&b, Duration::ZERO, class), None);
    }
    assert_eq!(to(call(&b, Duration::ZERO, Success)), Some(Open));
}

#[test]
fn either_rule_can_be_the_only_one() {
    // The run alone: 19 failures of 20, never 12 in a row, leave it closed.
    let b = breaker(CircuitBreaker::default().no_failure_ratio());
    for i in 0..1_000 {
        let class = if i % 12 == 11 { Success } else { ServerError };
        assert_eq!(call(&b, Duration::ZERO, class), None);
    }
    assert_eq!(b.state(), Closed);
    // The ratio alone: 19 failures in a row, below the 20 calls it needs, leave it closed.
    let b = breaker(ratio_only());
    for _ in 0..19 {
        assert_eq!(call(&b, Duration::ZERO, ServerError), None);
    }
    assert_eq!(b.state(), Closed);
    // Both off is refused (nothing would open it).
    let e = CircuitBreaker::default()
        .no_failure_ratio()
        .no_consecutive_failures()
        .validate()
        .unwrap_err();
    assert_eq!(e.field(), "circuit_breaker.consecutive_failures");
    // And either setter turns its rule back on.
    for cfg in [
        CircuitBreaker::default()
            .no_failure_ratio()
            .no_consecutive_failures()
            .failure_ratio(0.5),
        CircuitBreaker::default()
            .no_consecutive_failures()
            .no_failure_ratio()
            .consecutive_failures(3),
    ] {
        cfg.validate().unwrap();
    }
}

/// How many times a breaker with only the run rule (of `n`) trips over `draws` outcomes that
/// fail with probability `p`, closed again after each trip (seeded).
fn trips(n: u32, p: f64, draws: u32, seed: u64) -> u32 {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(n)
            .no_failure_ratio(),
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut trips = 0;
    for _ in 0..draws {
        let class = if rng.f64() < p { ServerError } else { Success };
        if call(&b, Duration::ZERO, class).is_some() {
            trips += 1;
            b.reset();
        }
    }
    trips
}

// Issue 15: the run's default (12) is chosen from `(1 - p)·p^n`, the chance that a run of `n`
// failures starts at a given attempt. This checks that formula against the breaker itself
// where runs are common enough to count, then its consequence at 12.
#[test]
fn scattered_failures_trip_the_run_rule_at_the_rate_the_docs_give() {
    let (p, draws) = (0.3f64, 1_000_000);
    for n in [3, 4, 5, 6] {
        // Closed afresh after each trip, the breaker trips once per (1 - p^n) / ((1 - p)·p^n)
        // attempts on average: the time until a run of n, which is about 1 / ((1 - p)·p^n).
        let pn = p.powi(n as i32);
        let want = f64::from(draws) * (1.0 - p) * pn / (1.0 - pn);
        let got = f64::from(trips(n, p, draws, 15));
        assert!(
            (got - want).abs() <= 4.0 * want.sqrt(),
            "runs of {n}: {got} trips, the formula says {want:.0}"
        );
    }
    // At 12: 0.37 trips expected over these 1,000,000 attempts (two hours at 130 attempts a
    // second); over the 30 % scenario's 15,600 attempts, 0.006.
    assert!(f64::from(draws) * 0.7 * 0.3f64.powi(12) < 0.4);
    assert!(15_600.0 * 0.7 * 0.3f64.powi(12) < 0.01);
    // At 10 % failures a run of 12 does not come.
    assert_eq!(trips(12, 0.1, draws, 15), 0);
}

#[test]
fn a_slow_success_is_a_failure_but_a_slow_4xx_is_not() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(2)
            .slow_call(S),
    );
    for _ in 0..10 {
        let mut p = admit(&b, Duration::ZERO);
        assert_eq!(p.record(ClientError, 10 * S), None);
    }
    let mut p = admit(&b, Duration::ZERO);
    assert_eq!(p.record(Success, S - MS), None);
    let mut p = admit(&b, Duration::ZERO);
    assert_eq!(p.record(Success, S), None);
    let mut p = admit(&b, Duration::ZERO);
    assert_eq!(to(p.record(Success, 2 * S)), Some(Open));
}

#[test]
fn open_to_half_open_is_lazy_and_admits_exactly_the_permits() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .half_open_permits(2),
    );
    call(&b, Duration::ZERO, ServerError);
    assert_eq!(rejected(&b, 5 * S - MS), Some(MS));
    assert_eq!(b.state(), Open, "no timer: still open until a call comes");
    let (a, t) = b.clone().acquire(5 * S);
    let Admission::Admitted(mut p1) = a else {
        panic!("the first call after the break is a probe")
    };
    assert_eq!(t.map(|t| (t.from, t.to)), Some((Open, HalfOpen)));
    assert!(p1.is_probe());
    let mut p2 = admit(&b, 5 * S);
    assert!(p2.is_probe());
    // Both permits are taken: the hint is when the probes will have timed out (1 s each).
    assert_eq!(rejected(&b, 5 * S), Some(S), "both permits are taken");
    assert_eq!(p1.record(Success, 5 * S + MS), None);
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(
        rejected(&b, 5 * S + MS),
        Some(S - MS),
        "a finished probe frees no permit"
    );
    assert_eq!(to(p2.record(ClientError, 6 * S)), Some(Closed));
    assert_eq!(b.probes(), (0, 0));
    let p = admit(&b, 6 * S);
    assert!(!p.is_probe());
}

#[test]
fn a_failed_probe_reopens_with_a_growing_capped_break() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .break_duration(S)
            .break_growth(2.0, 5 * S),
    );
    let mut now = Duration::ZERO;
    let t = call(&b, now, ServerError).unwrap();
    assert_eq!(t.open_for, Some(S));
    for want in [2, 4, 5, 5] {
        now += b.last_break().unwrap();
        let t = call(&b, now, Timeout).expect("the probe fails");
        assert_eq!((t.from, t.to), (HalfOpen, Open));
        assert_eq!(t.open_for, Some(want * S));
        assert_eq!(rejected(&b, now), Some(want * S));
    }
    // A successful probe closes it and the break goes back to its base.
    now += 5 * S;
    assert_eq!(to(call(&b, now, Success)), Some(Closed));
    assert_eq!(call(&b, now, ServerError).unwrap().open_for, Some(S));
}

#[test]
fn growth_saturates_at_any_cap() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .break_duration(Duration::from_secs(u64::MAX / 4))
            .break_growth(1e300, Duration::MAX),
    );
    let t = call(&b, Duration::ZERO, ServerError).unwrap();
    assert_eq!(t.open_for, Some(Duration::from_secs(u64::MAX / 4)));
    assert!(rejected(&b, S).is_some());
    // The break ends at the end of representable time (not never: that is isolation).
    let end = Duration::from_nanos(u64::MAX);
    for _ in 0..3 {
        let t = call(&b, end, ServerError).expect("the probe fails");
        assert_eq!(
            (t.from, t.to, t.open_for),
            (HalfOpen, Open, Some(Duration::MAX))
        );
        assert!(!b.is_isolated());
        assert!(rejected(&b, S).is_some());
    }
}

#[test]
fn a_cancelled_or_ignored_probe_gives_its_permit_back() {
    let b = breaker(CircuitBreaker::default().consecutive_failures(1));
    call(&b, Duration::ZERO, ServerError);
    let p = admit(&b, 5 * S);
    assert_eq!(rejected(&b, 5 * S), Some(S));
    drop(p);
    assert_eq!(b.probes(), (0, 0));
    let mut p = admit(&b, 5 * S);
    assert!(p.is_probe());
    for class in [Throttled, Cancelled, Rejected] {
        assert_eq!(p.record(class, 5 * S), None);
        assert_eq!(b.state(), HalfOpen);
        p = admit(&b, 5 * S);
    }
    assert_eq!(to(p.record(Success, 5 * S)), Some(Closed));
}

#[test]
fn late_results_do_not_retrip_or_extend_the_break() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(2)
            .break_growth(2.0, 60 * S),
    );
    let mut late: Vec<Permit> = (0..5).map(|_| admit(&b, Duration::ZERO)).collect();
    call(&b, Duration::ZERO, ServerError);
    call(&b, Duration::ZERO, ServerError);
    assert_eq!(b.state(), Open);
    let gen = b.generation();
    // Late failures while open: no change, the break still ends at 5 s.
    assert_eq!(late.pop().unwrap().record(ServerError, S), None);
    assert_eq!(late.pop().unwrap().record(Network, 2 * S), None);
    assert_eq!(b.generation(), gen);
    assert_eq!(rejected(&b, 2 * S), Some(3 * S));
    // Half-open: a late failure does not fail the probe.
    let mut probe = admit(&b, 5 * S);
    assert_eq!(late.pop().unwrap().record(ServerError, 5 * S), None);
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(to(probe.record(Success, 6 * S)), Some(Closed));
    // Closed again, with a fresh window: a late failure does not count towards the run.
    assert_eq!(late.pop().unwrap().record(ServerError, 6 * S), None);
    assert_eq!(call(&b, 6 * S, ServerError), None);
    assert_eq!(b.state(), Closed);
}

#[test]
fn a_probe_from_an_earlier_half_open_period_does_not_count_in_a_later_one() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .half_open_permits(3),
    );
    call(&b, Duration::ZERO, ServerError);
    let mut p1 = admit(&b, 5 * S);
    let mut stale = admit(&b, 5 * S);
    let dropped = admit(&b, 5 * S);
    assert_eq!(to(p1.record(ServerError, 6 * S)), Some(Open));
    let mut p3 = admit(&b, 11 * S);
    assert!(p3.is_probe());
    assert_eq!(b.probes(), (1, 0));
    // The stale probe fails, or succeeds: neither counts now.
    assert_eq!(stale.record(ServerError, 12 * S), None);
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(b.probes(), (1, 0));
    // Nor does dropping one give a permit of this period back.
    drop(dropped);
    assert_eq!(b.probes(), (1, 0));
    let mut p4 = admit(&b, 12 * S);
    let mut p5 = admit(&b, 12 * S);
    assert_eq!(p3.record(Success, 13 * S), None);
    assert_eq!(p4.record(Success, 13 * S), None);
    assert_eq!(to(p5.record(Success, 13 * S)), Some(Closed));
}

#[test]
fn threads_racing_in_half_open_take_exactly_the_permits() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .half_open_permits(3),
    );
    call(&b, Duration::ZERO, ServerError);
    let start = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (b, start) = (b.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..1_000)
                    .filter_map(|_| match b.clone().acquire(5 * S).0 {
                        Admission::Admitted(p) => Some(p),
                        Admission::Rejected(..) => None,
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let admitted: Vec<Permit> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(admitted.len(), 3);
    assert!(admitted.iter().all(Permit::is_probe));
    assert_eq!(b.probes(), (3, 0));
    drop(admitted);
    assert_eq!(b.probes(), (0, 0), "dropped probes give their permits back");
}

#[test]
fn a_probe_gets_its_own_timeout_doubled_by_each_cut_in_a_row() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .probe_timeout(S),
    );
    call(&b, Duration::ZERO, ServerError);
    let probe = |at: Duration| match b.clone().acquire(at).0 {
        Admission::Admitted(p) if p.is_probe() => {
            let timeout = p.probe_timeout();
            (p, timeout)
        }
        a => panic!("no probe at {at:?}: {a:?}"),
    };
    let mut sent = 5 * S;
    for want in [1, 2, 4, 8] {
        let (mut p, timeout) = probe(sent);
        assert_eq!(timeout, Some(want * S));
        // While it is out, rejections say when it will have timed out at the latest, or when
        // another probe may relieve it (once it has been out for the base timeout, 1 s),
        // whichever comes first.
        assert_eq!(rejected(&b, sent), Some(S));
        assert_eq!(rejected(&b, sent + S / 4), Some(S * 3 / 4));
        let cut = sent + want * S;
        let t = p
            .record_cut(cut)
            .expect("a cut probe opens the breaker again");
        // The break counts from when the probe was sent: what is left of it (none, once the
        // probe timeout is longer than the break: the next call probes at once).
        let left = (5 * S).saturating_sub(want * S);
        assert_eq!((t.from, t.to, t.open_for), (HalfOpen, Open, Some(left)));
        if !left.is_zero() {
            assert_eq!(rejected(&b, cut), Some(left));
        }
        sent = cut + left;
    }
    assert_eq!(b.probes_cut(), 4);
    // A probe that fails otherwise (a 503) starts again from the base, with a whole break.
    let (mut p, timeout) = probe(sent);
    assert_eq!(timeout, Some(16 * S));
    let t = p.record(ServerError, sent + MS).unwrap();
    assert_eq!((t.to, t.open_for), (Open, Some(5 * S)));
    assert_eq!(b.probes_cut(), 0);
    sent += 5 * S + MS;
    let (mut p, timeout) = probe(sent);
    assert_eq!(timeout, Some(S));
    assert_eq!(p.record_cut(sent + S).unwrap().open_for, Some(4 * S));
    sent += 5 * S;
    // So does one that a timeout below cut (the host is not slow but gone); its break counts
    // from when it was sent too.
    let (mut p, timeout) = probe(sent);
    assert_eq!(timeout, Some(2 * S));
    let t = p.record(Timeout, sent + 3 * S).unwrap();
    assert_eq!((t.to, t.open_for), (Open, Some(2 * S)));
    assert_eq!(b.probes_cut(), 0);
    sent += 5 * S;
    let (mut p, timeout) = probe(sent);
    assert_eq!(timeout, Some(S));
    assert_eq!(p.record_cut(sent + S).unwrap().open_for, Some(4 * S));
    // Closing resets it too.
    sent += 5 * S;
    let (mut p, timeout) = probe(sent);
    assert_eq!(timeout, Some(2 * S));
    assert_eq!(to(p.record(Success, sent + S)), Some(Closed));
    assert_eq!(b.probes_cut(), 0);
    call(&b, sent + S, ServerError);
    assert_eq!(probe(sent + 6 * S).1, Some(S));
}

/// A breaker with the default probe timeout (1 s) whose probes were cut twice (at 5 s and
/// 10 s), as a slow host's are: tripped at 0; at 15 s its next probe gets 4 s.
fn slow_probes() -> Arc<Breaker> {
    let b = breaker(CircuitBreaker::default().consecutive_failures(1));
    call(&b, Duration::ZERO, ServerError);
    for (sent, timeout) in [(5 * S, S), (10 * S, 2 * S)] {
        let mut p = admit(&b, sent);
        assert_eq!(p.probe_timeout(), Some(timeout));
        assert_eq!(to(p.record_cut(sent + timeout)), Some(Open));
    }
    b
}

#[test]
fn a_probe_out_past_the_base_timeout_is_relieved_by_another() {
    let b = slow_probes();
    let mut first = admit(&b, 15 * S);
    assert_eq!(first.probe_timeout(), Some(4 * S));
    // Until it has been out for the base timeout (1 s), calls are turned away, told when the
    // next probe may go.
    assert_eq!(rejected(&b, 15 * S + MS), Some(S - MS));
    let mut second = admit(&b, 16 * S);
    assert!(second.is_probe() && first.is_relieved() && !second.is_relieved());
    assert_eq!(
        second.probe_timeout(),
        Some(4 * S),
        "a relief is no cut: same timeout"
    );
    assert_eq!(b.probes(), (2, 0));
    // The host answers the second at once: closed, a second after the first probe went, not
    // when its timeout cuts it (19 s).
    assert_eq!(to(second.record(Success, 16 * S + MS)), Some(Closed));
    assert_eq!(
        first.record_cut(19 * S),
        None,
        "the relieved probe's cut comes too late"
    );
    assert_eq!(b.state(), Closed);
}

#[test]
fn probes_of_a_host_that_hangs_go_one_base_timeout_apart() {
    let b = slow_probes();
    let mut held = Vec::new();
    for k in 15..=17u32 {
        held.push(admit(&b, k * S));
        assert_eq!(rejected(&b, k * S), Some(S));
    }
    assert_eq!(b.probes(), (3, 0));
    assert_eq!(b.state(), HalfOpen);
    // The relieved probes' cuts and failures change nothing; the latest probe's cut opens the
    // breaker again, for a break that counts from when it was sent (1 s of it is left).
    let mut latest = held.pop().unwrap();
    assert_eq!(held[0].record_cut(19 * S), None);
    assert_eq!(held[1].record(Timeout, 19 * S), None);
    assert_eq!(b.probes(), (1, 0));
    assert_eq!(b.probes_cut(), 2, "a relieved probe's cut doubles nothing");
    let t = latest
        .record_cut(21 * S)
        .expect("the latest probe's cut counts");
    assert_eq!((t.from, t.to, t.open_for), (HalfOpen, Open, Some(S)));
    assert_eq!(b.probes_cut(), 3);
    assert_eq!(admit(&b, 22 * S).probe_timeout(), Some(8 * S));
}

#[test]
fn a_relieved_probe_that_succeeds_still_closes_the_breaker() {
    // A host slower than the base timeout but within the doubled one is let in by the first
    // probe that gets through, even when a later one relieved it.
    let b = slow_probes();
    let mut first = admit(&b, 15 * S);
    let _second = admit(&b, 16 * S);
    assert_eq!(to(first.record(Success, 17 * S)), Some(Closed));
}

#[test]
fn a_cut_counts_once_for_the_probe_of_its_period_only() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .half_open_permits(2),
    );
    let mut closed_call = admit(&b, Duration::ZERO);
    call(&b, Duration::ZERO, ServerError);
    assert_eq!(closed_call.record_cut(S), None, "not a probe");
    let mut p1 = admit(&b, 5 * S);
    let mut p2 = admit(&b, 5 * S);
    assert_eq!(to(p1.record_cut(6 * S)), Some(Open));
    assert_eq!(p1.record_cut(6 * S), None, "recorded once");
    // The other probe of that period is stale: its cut changes nothing, and it is spent.
    assert_eq!(p2.record_cut(6 * S), None);
    assert_eq!(b.probes_cut(), 1);
    assert_eq!(
        rejected(&b, 6 * S),
        Some(4 * S),
        "the break counts from 5 s"
    );
}

#[test]
fn without_a_probe_timeout_a_probe_runs_on_and_the_hint_is_the_break() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .no_probe_timeout(),
    );
    call(&b, Duration::ZERO, ServerError);
    let (a, _) = b.clone().acquire(5 * S);
    assert!(matches!(a, Admission::Admitted(ref p) if p.is_probe() && p.probe_timeout().is_none()));
    assert_eq!(rejected(&b, 100 * S), Some(5 * S));
    assert!(
        matches!(b.clone().acquire(100 * S).0, Admission::Rejected(..)),
        "without probe timeouts no probe relieves another"
    );
    // With them, overdue probes (their timer never fired) are relieved once the latest has
    // been out for the base timeout: that is the hint.
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .probe_timeout(S),
    );
    call(&b, Duration::ZERO, ServerError);
    let _probe = admit(&b, 5 * S);
    assert_eq!(rejected(&b, 5 * S + S / 2), Some(S / 2));
    assert!(admit(&b, 7 * S).is_probe(), "an overdue probe is relieved");
}

#[test]
fn the_probe_timeout_saturates() {
    let policy = CircuitBreaker::default()
        .probe_timeout(Duration::from_secs(u64::MAX / 2))
        .policy();
    assert_eq!(policy.probe_timeout_after(2), Some(Duration::MAX));
    assert_eq!(policy.probe_timeout_after(u32::MAX), Some(Duration::MAX));
    let policy = CircuitBreaker::default().probe_timeout(MS).policy();
    assert_eq!(policy.probe_timeout_after(3), Some(8 * MS));
    // A permit keeps it in whole milliseconds, rounded up, at most u32::MAX of them.
    assert_eq!(millis_ceil(Duration::from_nanos(1)), 1);
    assert_eq!(millis_ceil(MS), 1);
    assert_eq!(millis_ceil(MS + Duration::from_nanos(1)), 2);
    assert_eq!(millis_ceil(Duration::MAX), u32::MAX);
    assert_eq!(
        CircuitBreaker::default()
            .no_probe_timeout()
            .policy()
            .probe_timeout_after(3),
        None
    );
}

#[test]
fn isolate_and_reset() {
    let b = breaker(CircuitBreaker::default().consecutive_failures(1));
    let t = b.isolate().unwrap();
    assert_eq!((t.from, t.to, t.open_for), (Closed, Open, None));
    assert!(b.is_isolated());
    assert_eq!(rejected(&b, Duration::from_secs(1_000_000)), None);
    assert_eq!(b.isolate(), None, "already open");
    let t = b.reset().unwrap();
    assert_eq!((t.from, t.to), (Open, Closed));
    assert!(!b.is_isolated());
    assert_eq!(b.reset(), None, "already closed");
    // A reset breaker trips again as usual, with the base break.
    assert_eq!(call(&b, S, ServerError).unwrap().open_for, Some(5 * S));
}

#[test]
fn bad_configuration_names_the_field() {
    let cases: Vec<(CircuitBreaker, &str)> = vec![
        (
            CircuitBreaker::default().failure_ratio(0.0),
            "circuit_breaker.failure_ratio",
        ),
        (
            CircuitBreaker::default().failure_ratio(1.5),
            "circuit_breaker.failure_ratio",
        ),
        (
            CircuitBreaker::default().failure_ratio(-0.5),
            "circuit_breaker.failure_ratio",
        ),
        (
            CircuitBreaker::default().failure_ratio(f64::NAN),
            "circuit_breaker.failure_ratio",
        ),
        (
            CircuitBreaker::default().failure_ratio(f64::INFINITY),
            "circuit_breaker.failure_ratio",
        ),
        (
            CircuitBreaker::default().window(Duration::ZERO),
            "circuit_breaker.window",
        ),
        (
            CircuitBreaker::default().window(9 * MS),
            "circuit_breaker.window",
        ),
        (
            CircuitBreaker::default().min_calls(0),
            "circuit_breaker.min_calls",
        ),
        (
            CircuitBreaker::default().consecutive_failures(0),
            "circuit_breaker.consecutive_failures",
        ),
        (
            CircuitBreaker::default().slow_call(Duration::ZERO),
            "circuit_breaker.slow_call",
        ),
        (
            CircuitBreaker::default().probe_timeout(Duration::ZERO),
            "circuit_breaker.probe_timeout",
        ),
        (
            CircuitBreaker::default().probe_timeout(Duration::from_micros(999)),
            "circuit_breaker.probe_timeout",
        ),
        (
            CircuitBreaker::default()
                .no_consecutive_failures()
                .no_failure_ratio(),
            "circuit_breaker.consecutive_failures",
        ),
        (
            CircuitBreaker::default().break_duration(Duration::ZERO),
            "circuit_breaker.break_duration",
        ),
        (
            CircuitBreaker::default().break_growth(0.5, 60 * S),
            "circuit_breaker.break_growth.factor",
        ),
        (
            CircuitBreaker::default().break_growth(f64::NAN, 60 * S),
            "circuit_breaker.break_growth.factor",
        ),
        (
            CircuitBreaker::default().break_growth(f64::INFINITY, 60 * S),
            "circuit_breaker.break_growth.factor",
        ),
        (
            CircuitBreaker::default().break_growth(2.0, S),
            "circuit_breaker.break_growth.max",
        ),
        (
            CircuitBreaker::default().half_open_permits(0),
            "circuit_breaker.half_open_permits",
        ),
        (
            CircuitBreaker::default().max_hosts(0),
            "circuit_breaker.max_hosts",
        ),
    ];
    for (cfg, field) in cases {
        let e = cfg.validate().expect_err(field);
        assert_eq!(e.field(), field, "{cfg:?}");
    }
    for ok in [
        CircuitBreaker::default(),
        CircuitBreaker::default().failure_ratio(1.0),
        CircuitBreaker::default().failure_ratio(1e-9),
        CircuitBreaker::default().break_growth(1.0, 5 * S),
        CircuitBreaker::default().min_calls(1).max_hosts(1).global(),
    ] {
        ok.validate().unwrap();
    }
}

#[test]
fn an_unvalidated_configuration_cannot_hang_half_open() {
    // `from_parts` trusts its caller; even so, zero permits become one.
    let cfg = CircuitBreaker::default()
        .consecutive_failures(0)
        .half_open_permits(0)
        .break_duration(Duration::ZERO);
    let b = Arc::new(Breaker::new(
        Arc::new(cfg.policy()),
        Arc::from("k"),
        Duration::ZERO,
    ));
    call(&b, Duration::ZERO, ServerError);
    assert_eq!(to(call(&b, Duration::ZERO, Success)), Some(Closed));
}

fn map(max_hosts: usize, idle: Duration) -> HostMap {
    HostMap::new(
        Arc::new(CircuitBreaker::default().policy()),
        max_hosts,
        idle,
    )
}

#[test]
fn the_map_is_bounded_and_evicts_idle_hosts() {
    let m = map(100, 10 * S);
    for i in 0..10_000 {
        m.get(&format!("h{i}:80"), Duration::ZERO);
        assert!(m.len() <= 100);
    }
    // Idle for longer than 10 s: swept by the next call.
    assert!(m.len() > 50);
    m.get("new:80", 10 * S + MS);
    assert_eq!(m.len(), 1);
}

#[test]
fn a_map_below_its_cap_keeps_every_host() {
    // With one host per shard, two hosts that hash to the same shard would evict each other.
    for cap in [2, 10, 64, 127, 200] {
        let m = map(cap, 60 * S);
        for i in 0..cap {
            m.get(&format!("h{i}:80"), Duration::ZERO);
        }
        assert_eq!(m.len(), cap, "cap {cap}");
    }
}

#[test]
fn the_map_evicts_the_least_recently_used_host_and_never_an_isolated_one() {
    let m = map(1, 60 * S);
    let a = m.get("a:80", Duration::ZERO);
    assert!(Arc::ptr_eq(&a, &m.get("a:80", S)));
    m.get("b:80", 2 * S);
    assert!(m.peek("a:80").is_none() && m.peek("b:80").is_some());
    // Isolation is kept beyond the cap and through idleness.
    m.isolate("a:80", 3 * S);
    assert_eq!(m.len(), 1, "b made room for a");
    m.isolate("c:80", 3 * S);
    assert_eq!(m.len(), 2);
    m.get("d:80", 1_000 * S);
    assert!(m.peek("a:80").unwrap().is_isolated());
    assert!(m.peek("c:80").unwrap().is_isolated());
    // The shard is full of isolated hosts: a new one gets a breaker that is not stored.
    assert!(m.peek("d:80").is_none());
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Complete(usize, FailureClass),
    Cut(usize),
    Drop(usize),
    Advance(u64),
    Isolate,
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    let class = prop::sample::select(vec![
        Success,
        ClientError,
        Throttled,
        ServerError,
        Timeout,
        Network,
        Cancelled,
        Rejected,
    ]);
    prop_oneof![
        6 => Just(Op::Acquire),
        8 => (any::<usize>(), class).prop_map(|(i, c)| Op::Complete(i, c)),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::Cut),
        3 => (0u64..2_500).prop_map(Op::Advance),
        1 => Just(Op::Isolate),
        1 => Just(Op::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever the outcomes and their timing: half-open never has more probes than permits
    /// besides those a later probe relieved,
    /// its count of probes in flight is exactly the live probe permits of its generation, it
    /// can always admit a probe when none is in flight, breaks stay within their bounds, a
    /// closed breaker opens exactly when its rules (modelled here: the ratio, the run, or
    /// both) say so, a probe cut by its timeout opens it again and doubles the next probe's
    /// timeout (unless a later probe relieved it), and a half-open breaker's rejection never
    /// asks to wait past the next probe.
    #[test]
    fn the_state_machine_keeps_its_invariants(
        rules in 0u8..3,
        permits in 1u32..4,
        ops in prop::collection::vec(op(), 1..400),
    ) {
        let (min_calls, n) = (4u32, 3u32);
        let (ratio, consecutive) = (rules != 1, rules != 0);
        let mut cfg = CircuitBreaker::default()
            .window(10 * S)
            .min_calls(min_calls)
            .failure_ratio(0.5)
            .consecutive_failures(n)
            .probe_timeout(S)
            .break_duration(2 * S)
            .break_growth(2.0, 10 * S)
            .half_open_permits(permits);
        if !ratio {
            cfg = cfg.no_failure_ratio();
        }
        if !consecutive {
            cfg = cfg.no_consecutive_failures();
        }
        let b = breaker(cfg);
        let mut now = Duration::ZERO;
        let mut held: Vec<(Permit, Option<Duration>)> = Vec::new();
        // Probes cut in a row: each doubles the next probe's timeout; closing resets them.
        let mut cuts = 0u32;
        // (Kept in whole milliseconds, up to u32::MAX of them.)
        let probe_timeout =
            |cuts: u32| Duration::from_millis((1_000u64 << cuts.min(31)).min(u64::from(u32::MAX)));
        // The model of the closed state: (bucket index, failed) of this generation, and the run.
        let mut window: Vec<(u64, bool)> = Vec::new();
        let mut run = 0u32;
        let mut head = 0u64;
        let mut gen = b.generation();
        for op in ops {
            match op {
                Op::Acquire => {
                    let before = b.state();
                    match b.clone().acquire(now).0 {
                        Admission::Admitted(p) => {
                            prop_assert_eq!(p.is_probe(), before != Closed);
                            let timeout = p.probe_timeout();
                            prop_assert_eq!(timeout, p.is_probe().then(|| probe_timeout(cuts)));
                            held.push((p, timeout));
                        }
                        Admission::Rejected(hint, _) => {
                            prop_assert_ne!(before, Closed);
                            if b.state() == HalfOpen {
                                // Another probe may relieve the ones out within the base probe
                                // timeout.
                                prop_assert!(hint.is_some_and(|h| h <= S), "hint {:?}", hint);
                            }
                        }
                    }
                }
                Op::Complete(i, class) if !held.is_empty() => {
                    let i = i % held.len();
                    let (mut p, _) = held.swap_remove(i);
                    let counted = !p.is_probe() && p.gen() == b.generation() && b.state() == Closed;
                    let t = p.record(class, now);
                    if counted && !matches!(class, Throttled | Cancelled | Rejected) {
                        let failed = matches!(class, ServerError | Timeout | Network);
                        let mut trips = false;
                        if consecutive {
                            run = if failed { run + 1 } else { 0 };
                            trips |= run >= n;
                        }
                        if ratio {
                            let idx = now.as_nanos() as u64 / S.as_nanos() as u64;
                            head = head.max(idx);
                            window.push((idx, failed));
                            let live = window.iter().filter(|(j, _)| j + 10 > head);
                            let calls = live.clone().count() as u64;
                            let fails = live.filter(|(_, f)| *f).count() as u64;
                            trips |= calls >= u64::from(min_calls) && 2 * fails >= calls;
                        }
                        prop_assert_eq!(to(t), trips.then_some(Open), "class {:?}", class);
                    } else if !p.is_probe() {
                        prop_assert_eq!(t, None, "an uncounted result changed the state");
                    }
                }
                Op::Complete(..) => {}
                Op::Cut(i) if !held.is_empty() => {
                    let i = i % held.len();
                    let (mut p, _) = held.swap_remove(i);
                    let current = p.is_probe()
                        && p.gen() == b.generation()
                        && b.state() == HalfOpen
                        && !p.is_relieved();
                    let t = p.record_cut(now);
                    if current {
                        prop_assert_eq!(t.map(|t| (t.from, t.to)), Some((HalfOpen, Open)));
                        cuts += 1;
                        prop_assert_eq!(b.probes_cut(), cuts);
                    } else {
                        prop_assert_eq!(t, None, "a stale or closed call's cut changed the state");
                    }
                }
                Op::Cut(_) => {}
                Op::Drop(i) if !held.is_empty() => {
                    let i = i % held.len();
                    drop(held.swap_remove(i));
                }
                Op::Drop(_) => {}
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Isolate => { b.isolate(); }
                Op::Reset => { b.reset(); }
            }
            if b.generation() != gen {
                gen = b.generation();
                if b.state() == Closed {
                    window.clear();
                    run = 0;
                    cuts = 0;
                }
            }
            let (in_flight, succeeded) = b.probes();
            if b.state() == HalfOpen {
                let live = held.iter().filter(|(p, _)| p.is_probe() && p.gen() == gen);
                prop_assert_eq!(in_flight as usize, live.clone().count());
                // Probes a later one relieved are out beyond the permits; the others are not.
                let fresh = live.filter(|(p, _)| !p.is_relieved()).count() as u32;
                prop_assert!(fresh + succeeded <= permits);
                // So with no probe in flight, there is always a permit to admit one.
                prop_assert!(succeeded < permits, "all probes succeeded but it did not close");
            } else {
                prop_assert_eq!((in_flight, succeeded), (0, 0));
            }
            if let Some(brk) = b.last_break() {
                prop_assert!(brk >= 2 * S && brk <= 10 * S);
            }
        }
    }
}

#[test]
fn a_slow_call_is_timed_from_when_it_left_for_the_host() {
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(1)
            .slow_call(S),
    );
    // Admitted at 0, waited 5 s below the breaker, answered 500 ms after it left: not slow.
    let mut p = admit(&b, Duration::ZERO);
    assert_eq!(p.record_left(Success, 5 * S + S / 2, Some(5 * S)), None);
    assert_eq!(b.state(), Closed);
    // A `left` before admission (it cannot be) changes nothing: timed from admission.
    let mut p = admit(&b, 10 * S);
    assert_eq!(to(p.record_left(Success, 12 * S, Some(S))), Some(Open));
}

#[test]
fn a_snapshot_reads_the_window_as_it_stands_at_now_and_changes_nothing() {
    // A 10 s window in 1 s buckets, at least 4 calls, opening at half of them failing.
    let b = breaker(
        CircuitBreaker::default()
            .window(10 * S)
            .min_calls(4)
            .break_duration(5 * S),
    );
    let s = b.snapshot(Duration::ZERO);
    assert_eq!((s.state, s.calls, s.failures), (Closed, 0, 0));
    assert_eq!(
        (s.consecutive, s.half_open_in, s.isolated),
        (Some(0), None, false)
    );
    call(&b, Duration::ZERO, ServerError);
    call(&b, S, Success);
    call(&b, 2 * S, Success);
    let s = b.snapshot(2 * S);
    assert_eq!((s.state, s.calls, s.failures), (Closed, 3, 1));
    // The first call leaves the window at 10 s, the others at 11 s and 12 s, though no call
    // moved the window since: the snapshot leaves out what fell out, without clearing it.
    assert_eq!(
        (b.snapshot(10 * S).calls, b.snapshot(10 * S).failures),
        (2, 0)
    );
    assert_eq!(b.snapshot(12 * S).calls, 0);
    assert_eq!(b.snapshot(2 * S).calls, 3, "nothing was cleared");
    // A call after a long gap moves the window: only the new call counts.
    call(&b, 30 * S, Success);
    assert_eq!(b.snapshot(30 * S).calls, 1);
}

#[test]
fn a_snapshot_of_an_open_breaker_tells_the_break_left_and_does_not_half_open_it() {
    let b = breaker(
        CircuitBreaker::default()
            .window(10 * S)
            .min_calls(2)
            .break_duration(5 * S),
    );
    call(&b, Duration::ZERO, ServerError);
    assert_eq!(to(call(&b, S, ServerError)), Some(Open));
    let s = b.snapshot(3 * S);
    assert_eq!((s.state, s.calls, s.failures), (Open, 2, 2));
    assert_eq!(s.half_open_in, Some(3 * S));
    // The break is over: still open, zero left, until a call makes the move.
    for _ in 0..3 {
        let s = b.snapshot(7 * S);
        assert_eq!((s.state, s.half_open_in), (Open, Some(Duration::ZERO)));
    }
    assert_eq!(b.state(), Open);
    let gen = b.generation();
    let probe = admit(&b, 7 * S);
    assert_eq!(
        b.generation(),
        gen + 1,
        "the call, not the snapshot, made the move"
    );
    let s = b.snapshot(7 * S);
    assert_eq!((s.state, s.half_open_in), (HalfOpen, None));
    drop(probe);
    b.isolate();
    let s = b.snapshot(8 * S);
    assert_eq!((s.state, s.half_open_in, s.isolated), (Open, None, true));
    b.reset();
    let s = b.snapshot(8 * S);
    assert_eq!((s.state, s.calls, s.isolated), (Closed, 0, false));
}

#[test]
fn a_snapshot_counts_the_run_with_either_rule_set() {
    // Both rules (the default): the window and the run.
    let b = breaker(CircuitBreaker::default().consecutive_failures(3));
    call(&b, Duration::ZERO, ServerError);
    call(&b, Duration::ZERO, Timeout);
    let s = b.snapshot(Duration::ZERO);
    assert_eq!((s.calls, s.failures, s.consecutive), (2, 2, Some(2)));
    call(&b, S, Success);
    let s = b.snapshot(S);
    assert_eq!((s.calls, s.failures, s.consecutive), (3, 2, Some(0)));
    // The run only: no window.
    let b = breaker(
        CircuitBreaker::default()
            .consecutive_failures(3)
            .no_failure_ratio(),
    );
    call(&b, Duration::ZERO, ServerError);
    call(&b, Duration::ZERO, Timeout);
    let s = b.snapshot(Duration::ZERO);
    assert_eq!((s.calls, s.failures, s.consecutive), (0, 0, Some(2)));
    // The ratio only: no run.
    let b = breaker(CircuitBreaker::default().no_consecutive_failures());
    call(&b, Duration::ZERO, ServerError);
    let s = b.snapshot(Duration::ZERO);
    assert_eq!((s.calls, s.failures, s.consecutive), (1, 1, None));
}

#[test]
fn the_map_is_read_whole_without_sweep_eviction_or_touch() {
    let m = map(1_000, 10 * S);
    for i in 0..1_000 {
        m.get(&format!("h{i}:80"), Duration::ZERO);
    }
    let marks = |m: &HostMap| {
        let mut v = Vec::new();
        m.for_each(|b| v.push((b.key().to_owned(), b.last_used())));
        v.sort();
        v
    };
    let before = marks(&m);
    assert_eq!(before.len(), 1_000);
    assert!(before.iter().all(|(_, used)| *used == 0));
    // Every host is idle by now: a call would sweep them all. Reading keeps them, and their
    // marks.
    let mut n = 0;
    m.for_each(|b| {
        n += 1;
        let _ = b.snapshot(100 * S);
    });
    assert_eq!(n, 1_000);
    assert_eq!(marks(&m), before);
    assert_eq!(m.len(), 1_000);
    m.get("new:80", 100 * S);
    assert_eq!(m.len(), 1, "the next call sweeps them");
}
