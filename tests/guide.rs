//! The README's "Prove your policy" guide, as the test it shows: a recorded session
//! (`tests/cassettes/prices.har`, recorded by `cargo run --example prove_your_policy`) replayed
//! in paused time with faults on top, and what users would see asserted.
#![cfg(feature = "testing")]

use std::time::Duration;

use palisade::fallback::FallbackCache;
use palisade::testing::cassette::{AfterLast, Cassette};
use palisade::testing::chaos::{Chaos, ChaosLayer, Fault, Match, Rule};
use palisade::ResponseExt;
use tower::Layer;

#[tokio::test(start_paused = true)]
async fn users_see_answers_through_503s_resets_and_hangs() {
    // Replay the recorded session (no network), each URL's answer again for repeated requests.
    let replay = Cassette::new("tests/cassettes/prices.har")
        .after_last(AfterLast::RepeatLast)
        .build_replay()
        .expect("the cassette");
    // Faults on every attempt, as a bad day at the API would bring them.
    let chaos = ChaosLayer::new(
        Chaos::new(7)
            .rule(Rule::new(Fault::Status(503)).rate(0.20))
            .rule(Rule::new(Fault::Reset).rate(0.05))
            .rule(
                Rule::new(Fault::Hang)
                    .rate(0.02)
                    .when(Match::host("prices.example.test")),
            ),
    )
    .expect("valid chaos");
    let faults = chaos.handle();
    // The policy under test: the standard pipeline, a 2 s attempt timeout, a fallback cache.
    let client = palisade::Client::builder()
        .transport(chaos.layer(replay))
        .attempt_timeout(Duration::from_secs(2))
        .fallback_cache(FallbackCache::default())
        .build()
        .expect("valid policy");

    let (mut answered, mut stale, mut attempts) = (0, 0, 0);
    let mut slowest = Duration::ZERO;
    for i in 0..1_000u32 {
        let url = format!(
            "http://prices.example.test/prices/{}?api_key=any",
            i % 3 + 1
        );
        let start = tokio::time::Instant::now();
        let resp = client.get(url).send().await.expect("an answer");
        attempts += resp.attempts();
        answered += u32::from(resp.status().is_success());
        stale += u32::from(resp.fallback().is_some());
        resp.bytes().await.expect("a whole body");
        slowest = slowest.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What users see: every request answered, a few with a stored copy, none waiting more
    // than two attempt timeouts and the two backoffs between three attempts (at most 100 ms
    // and 200 ms: full jitter draws each below its ceiling), at the cost of about a third more
    // attempts.
    assert_eq!(answered, 1_000);
    assert!(stale > 0 && stale < 50, "{stale} stale answers");
    assert!(slowest <= Duration::from_millis(4_300), "{slowest:?}");
    assert!((1_200..1_450).contains(&attempts), "{attempts} attempts");
    assert!(
        faults.injected_total() > 250,
        "{} faults",
        faults.injected_total()
    );
}
