//! The standard pipeline through a total outage and its recovery, in paused time: the circuit
//! breaker cuts the downstream load to probes, and traffic returns within one break duration.

mod support;

use std::time::Duration;

use palisade::CircuitState;
use support::{ms, secs, Events, Mock, Step};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn an_outage_is_cut_to_probes_and_recovery_closes_the_circuit() {
    let mock = Mock::always(Step::Status(503));
    let events = Events::default();
    let client = mock.client(|b| b.on_event(events.hook()));
    let start = Instant::now();
    let outage_ends = start + secs(60);
    let mut first_success_after_recovery = None;
    let mut rejected = 0;

    // One request every 100 ms for 80 s; the host is down for the first 60 s.
    for _ in 0..800 {
        if Instant::now() >= outage_ends {
            mock.set(Step::Status(200));
        }
        match client.get("http://api.test/x").send().await {
            Ok(r) if r.status() == 200 => {
                first_success_after_recovery.get_or_insert(Instant::now() - start);
            }
            Ok(_) => {}
            Err(e) => {
                assert!(e.is_circuit_open(), "{e:?}");
                assert!(e.retry_after().is_some());
                rejected += 1;
            }
        }
        tokio::time::sleep(ms(100)).await;
    }

    let during: Vec<Duration> = mock
        .seen()
        .iter()
        .map(|s| s.at - start)
        .filter(|t| *t < secs(60))
        .collect();
    // The breaker opens at the 12th failure in a row (its run rule; the ratio would need 20
    // calls in its window): the 4th request's last attempt, within 2 s (the requests go one
    // after another, each with its retries' backoff)...
    assert!(
        during.len() >= 12,
        "{} calls during the outage",
        during.len()
    );
    // ...and then lets through one probe per break duration (5 s) at most.
    let opened_at = during[11];
    assert!(opened_at <= secs(2), "opened at {opened_at:?}");
    let probes: Vec<Duration> = during[12..].to_vec();
    assert!(
        probes.len() as u128 <= (secs(60) - opened_at).as_millis() / 5_000 + 1,
        "{} probes after opening at {opened_at:?}: {probes:?}",
        probes.len()
    );
    let mut last = opened_at;
    for p in &probes {
        assert!(
            *p - last >= secs(5),
            "probes {probes:?} closer than the break"
        );
        last = *p;
    }
    assert!(
        rejected > 500,
        "{rejected} calls rejected without reaching the host"
    );

    // After the host recovers, the circuit closes within one break duration.
    let back = first_success_after_recovery.expect("traffic came back");
    assert!(
        back >= secs(60) && back <= secs(65),
        "first success at {back:?}"
    );
    assert_eq!(
        client.circuit_breaker().unwrap().state("api.test:80"),
        CircuitState::Closed
    );
    assert!(events.count("to: Open") >= 1);
    assert_eq!(events.count("to: Closed"), 1);
    eprintln!(
        "outage: {} calls reached the host in 60 s (opened at {opened_at:?}, then {} probes); \
         {rejected} rejected; first success {back:?}",
        during.len(),
        probes.len()
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_not_retried_and_other_hosts_are_served() {
    let mock = Mock::always(Step::Status(503));
    let client = mock.client(|b| b);
    // 12 failed attempts in a row open the circuit (the 4th request's last attempt).
    while mock.calls() < 12 {
        let _ = client.get("http://down.test/").send().await;
    }
    assert_eq!(
        client.circuit_breaker().unwrap().state("down.test:80"),
        CircuitState::Open
    );
    let calls = mock.calls();

    // With retries on (the standard pipeline), the rejection is returned at once: one
    // attempt, no sleep, nothing sent.
    let start = Instant::now();
    let err = client.get("http://down.test/").send().await.unwrap_err();
    assert!(err.is_circuit_open());
    assert_eq!(err.attempts(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        mock.calls(),
        calls,
        "the rejected call never reached the host"
    );
    // The hint is what is left of the 5 s break.
    let hint = err.retry_after().unwrap();
    assert!(hint > Duration::ZERO && hint <= secs(5), "{hint:?}");

    mock.set(Step::Status(200));
    let resp = client.get("http://up.test/").send().await.unwrap();
    assert_eq!(resp.status(), 200, "another host is served");
}

// Issue 15: a host that answers past the attempt timeout for 30 s. The breaker opens on the
// timeouts; its probes, each cut by its own timeout (2 s, then 4 s, 8 s), no longer hold it
// half-open for the 10 s attempt timeout, and traffic returns within one break duration (5 s)
// of the host's recovery.
#[tokio::test(start_paused = true)]
async fn a_slow_spell_is_probed_briefly_and_traffic_returns_within_a_break() {
    let mock = Mock::always(Step::after(secs(15), Step::Status(200)));
    let events = Events::default();
    let client = mock.client(|b| b.on_event(events.hook()));
    let start = Instant::now();
    let recovers = start + secs(30);
    let mut tasks = Vec::new();
    // One request every 100 ms for 45 s, each on its own task; slow for the first 30 s.
    for _ in 0..450 {
        if Instant::now() >= recovers {
            mock.set(Step::Status(200));
        }
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = client
                .get("http://slow.test/x")
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            (sent, ok)
        }));
        tokio::time::sleep(ms(100)).await;
    }
    let mut first_success = None;
    for t in tasks {
        let (sent, ok) = t.await.unwrap();
        if ok && sent >= recovers {
            first_success = Some(first_success.map_or(sent, |f: Instant| f.min(sent)));
        }
    }
    let back = first_success.expect("traffic came back") - recovers;
    assert!(
        back <= secs(5),
        "the first success {back:?} after the host recovered"
    );
    let cut = events.count("Timeout { kind: Probe");
    assert!(cut >= 2, "{cut} probes cut by their own timeout");
    assert_eq!(
        client.circuit_breaker().unwrap().state("slow.test:80"),
        CircuitState::Closed
    );
    eprintln!("slow spell: {cut} probes cut; the first success {back:?} after recovery");
}
