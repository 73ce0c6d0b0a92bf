//! Unit tests of the breaker's state machine, its keyed map and its configuration.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::breaker::{Admission, Breaker, Permit, Transition};
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

#[test]
fn ratio_needs_the_minimum_throughput() {
    let b = breaker(CircuitBreaker::default());
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
    let b = breaker(CircuitBreaker::default());
    for _ in 0..10 {
        assert_eq!(call(&b, Duration::ZERO, Success), None);
    }
    for _ in 0..9 {
        assert_eq!(call(&b, Duration::ZERO, Network), None);
    }
    assert_eq!(to(call(&b, Duration::ZERO, ServerError)), Some(Open));

    // 9 failures of 20 does not, nor do more successes.
    let b = breaker(CircuitBreaker::default());
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
    let b = breaker(CircuitBreaker::default());
    for _ in 0..19 {
        call(&b, Duration::ZERO, ServerError);
    }
    assert_eq!(to(call(&b, Duration::ZERO, Success)), Some(Open));
}

#[test]
fn outcomes_leave_the_window() {
    // 30 s window in 3 s buckets: failures at 0 s still count at 27 s, not at 30 s.
    let b = breaker(CircuitBreaker::default());
    for _ in 0..19 {
        call(&b, Duration::ZERO, ServerError);
    }
    assert_eq!(to(call(&b, 27 * S, ServerError)), Some(Open));

    let b = breaker(CircuitBreaker::default());
    for _ in 0..19 {
        call(&b, Duration::ZERO, ServerError);
    }
    assert_eq!(call(&b, 30 * S, ServerError), None);
    assert_eq!(b.state(), Closed);
}

#[test]
fn ignored_classes_count_for_nothing() {
    let b = breaker(CircuitBreaker::default());
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
fn consecutive_mode_opens_on_the_nth_failure_in_a_row() {
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
    assert_eq!(rejected(&b, 5 * S), Some(5 * S), "both permits are taken");
    assert_eq!(p1.record(Success, 6 * S), None);
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(
        rejected(&b, 6 * S),
        Some(5 * S),
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
    assert_eq!(rejected(&b, 5 * S), Some(5 * S));
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
        3 => (0u64..2_500).prop_map(Op::Advance),
        1 => Just(Op::Isolate),
        1 => Just(Op::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever the outcomes and their timing: half-open never has more probes than permits,
    /// its count of probes in flight is exactly the live probe permits of its generation, it
    /// can always admit a probe when none is in flight, breaks stay within their bounds, and a
    /// closed breaker opens exactly when its rule (modelled here) says so.
    #[test]
    fn the_state_machine_keeps_its_invariants(
        consecutive in any::<bool>(),
        permits in 1u32..4,
        ops in prop::collection::vec(op(), 1..400),
    ) {
        let (min_calls, n) = (4u32, 3u32);
        let mut cfg = CircuitBreaker::default()
            .window(10 * S)
            .min_calls(min_calls)
            .failure_ratio(0.5)
            .break_duration(2 * S)
            .break_growth(2.0, 10 * S)
            .half_open_permits(permits);
        if consecutive {
            cfg = cfg.consecutive_failures(n);
        }
        let b = breaker(cfg);
        let mut now = Duration::ZERO;
        let mut held: Vec<Permit> = Vec::new();
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
                            held.push(p);
                        }
                        Admission::Rejected(..) => prop_assert_ne!(before, Closed),
                    }
                }
                Op::Complete(i, class) if !held.is_empty() => {
                    let i = i % held.len();
                    let mut p = held.swap_remove(i);
                    let counted = !p.is_probe() && p.gen() == b.generation() && b.state() == Closed;
                    let t = p.record(class, now);
                    if counted && !matches!(class, Throttled | Cancelled | Rejected) {
                        let failed = matches!(class, ServerError | Timeout | Network);
                        let trips = if consecutive {
                            run = if failed { run + 1 } else { 0 };
                            run >= n
                        } else {
                            let idx = now.as_nanos() as u64 / S.as_nanos() as u64;
                            head = head.max(idx);
                            window.push((idx, failed));
                            let live = window.iter().filter(|(j, _)| j + 10 > head);
                            let calls = live.clone().count() as u64;
                            let fails = live.filter(|(_, f)| *f).count() as u64;
                            calls >= u64::from(min_calls) && 2 * fails >= calls
                        };
                        prop_assert_eq!(to(t), trips.then_some(Open), "class {:?}", class);
                    } else if !p.is_probe() {
                        prop_assert_eq!(t, None, "an uncounted result changed the state");
                    }
                }
                Op::Complete(..) => {}
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
                }
            }
            let (in_flight, succeeded) = b.probes();
            if b.state() == HalfOpen {
                let live = held.iter().filter(|p| p.is_probe() && p.gen() == gen).count();
                prop_assert_eq!(in_flight as usize, live);
                prop_assert!(in_flight + succeeded <= permits);
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
        (None, None, false)
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
fn a_snapshot_in_consecutive_mode_counts_the_run() {
    let b = breaker(CircuitBreaker::default().consecutive_failures(3));
    call(&b, Duration::ZERO, ServerError);
    call(&b, Duration::ZERO, Timeout);
    let s = b.snapshot(Duration::ZERO);
    assert_eq!((s.calls, s.failures, s.consecutive), (0, 0, Some(2)));
    call(&b, S, Success);
    assert_eq!(b.snapshot(S).consecutive, Some(0));
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
