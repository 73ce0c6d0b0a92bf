//! The fallback cache: what it stores, what it serves, when, and what it reports. Over the
//! in-memory transport in paused time, except the round trip through a real server.

mod support;

use std::io;
use std::time::Duration;

use palisade::bulkhead::Bulkhead;
use palisade::fallback::{FallbackCache, FallbackReason};
use palisade::rate_limit::RateLimit;
use palisade::{Client, ClientBuilder, ErrorKind, ResponseExt};
use support::{ms, secs, BodyEnd, Events, Mock, Step};

const URL: &str = "http://api.test/items/1";

fn ok(headers: &[(&'static str, &str)], body: &str) -> Step {
    Step::Full(
        200,
        headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        body.as_bytes().to_vec(),
    )
}

/// A client with a fallback cache and nothing else that could move time or refuse calls.
fn client(mock: &Mock, cfg: FallbackCache) -> Client {
    client_with(mock, cfg, |b| b)
}

fn client_with(
    mock: &Mock,
    cfg: FallbackCache,
    f: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> Client {
    mock.client(|b| f(b.no_retry().no_circuit_breaker().fallback_cache(cfg)))
}

/// Sends a GET with these headers; panics on an `Err`.
async fn get(c: &Client, headers: &[(&'static str, &str)]) -> reqwest::Response {
    let mut rb = c.get(URL);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.expect("a response")
}

/// Stores a 200 with `headers` and body `stored`, then makes the server fail with 503: what
/// does the next request get?
async fn stored_then_503(
    cfg: FallbackCache,
    headers: &[(&'static str, &str)],
    after: Duration,
) -> reqwest::Response {
    let mock = Mock::always(ok(headers, "stored"));
    let c = client(&mock, cfg);
    assert_eq!(get(&c, &[]).await.text().await.unwrap(), "stored");
    mock.set(Step::Status(503));
    tokio::time::advance(after).await;
    get(&c, &[]).await
}

/// Sends a GET with these headers and reads its body to the end, as a caller that uses it does:
/// a response is stored once its body has been read.
async fn load(c: &Client, headers: &[(&'static str, &str)]) {
    get(c, headers).await.bytes().await.expect("the body");
}

fn served(resp: &reqwest::Response) -> bool {
    resp.fallback().is_some()
}

#[tokio::test(start_paused = true)]
async fn serves_the_stored_response_with_a_growing_age() {
    let mock = Mock::always(ok(
        &[("content-type", "application/json"), ("etag", "\"v1\"")],
        "{\"id\":1}",
    ));
    let events = Events::default();
    let c = client_with(&mock, FallbackCache::default(), |b| {
        b.on_event(events.hook())
    });
    let first = get(&c, &[]).await;
    assert!(!served(&first));
    let first_headers = first.headers().clone();
    assert_eq!(first.text().await.unwrap(), "{\"id\":1}");

    mock.set(Step::Status(503));
    tokio::time::advance(secs(42)).await;
    let resp = get(&c, &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.url().as_str(), URL);
    let info = resp.fallback().expect("served from the store");
    assert_eq!(info.age(), Some(secs(42)));
    assert_eq!(
        info.reason(),
        FallbackReason::ServerError(503.try_into().unwrap())
    );
    assert!(!info.is_static());
    assert_eq!(resp.headers()["age"], "42");
    let mut without_age = resp.headers().clone();
    without_age.remove("age");
    assert_eq!(without_age, first_headers);
    assert_eq!(resp.text().await.unwrap(), "{\"id\":1}");

    tokio::time::advance(ms(10_500)).await;
    let resp = get(&c, &[]).await;
    assert_eq!(resp.headers()["age"], "52");
    assert_eq!(resp.fallback().unwrap().age(), Some(ms(52_500)));
    assert_eq!(events.count("Fallback"), 2, "{:?}", events.all());
}

#[tokio::test(start_paused = true)]
async fn the_stored_age_starts_from_the_response_age_header() {
    let resp = stored_then_503(FallbackCache::default(), &[("age", "100")], secs(5)).await;
    assert_eq!(resp.headers()["age"], "105");
}

#[tokio::test(start_paused = true)]
async fn a_fresh_success_is_never_replaced() {
    let mock = Mock::always(ok(&[], "v1"));
    let c = client(&mock, FallbackCache::default());
    load(&c, &[]).await;
    mock.set(ok(&[], "v2"));
    let resp = get(&c, &[]).await;
    assert!(!served(&resp));
    assert_eq!(resp.text().await.unwrap(), "v2");
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_store_is_never_stored() {
    let resp = stored_then_503(
        FallbackCache::default(),
        &[("cache-control", "max-age=60, no-store")],
        secs(1),
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert!(!served(&resp));
}

#[tokio::test(start_paused = true)]
async fn a_request_saying_no_store_is_not_stored() {
    let mock = Mock::always(ok(&[], "x"));
    let c = client(&mock, FallbackCache::default());
    load(&c, &[("cache-control", "no-store")]).await;
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.status(), 503);
}

#[tokio::test(start_paused = true)]
async fn a_request_saying_no_cache_is_not_served() {
    let mock = Mock::always(ok(&[], "x"));
    let c = client(&mock, FallbackCache::default());
    load(&c, &[]).await;
    mock.set(Step::Status(503));
    assert_eq!(
        get(&c, &[("cache-control", "no-cache")]).await.status(),
        503
    );
    assert!(served(&get(&c, &[]).await));
}

#[tokio::test(start_paused = true)]
async fn private_is_stored_only_when_opted_in() {
    let h = [("cache-control", "private, max-age=60")];
    let resp = stored_then_503(FallbackCache::default(), &h, secs(1)).await;
    assert_eq!(resp.status(), 503);
    let resp = stored_then_503(FallbackCache::default().store_private(true), &h, secs(1)).await;
    assert!(served(&resp));
}

#[tokio::test(start_paused = true)]
async fn set_cookie_is_stored_only_when_private_is_opted_in() {
    let h = [("set-cookie", "session=abc")];
    let resp = stored_then_503(FallbackCache::default(), &h, secs(1)).await;
    assert_eq!(resp.status(), 503);
    let resp = stored_then_503(FallbackCache::default().store_private(true), &h, secs(1)).await;
    assert!(served(&resp));
}

/// Stores with request headers `req`, response headers `h`, then fails the same request.
async fn credentialed(
    cfg: FallbackCache,
    req: (&'static str, &str),
    h: &[(&'static str, &str)],
) -> bool {
    let mock = Mock::always(ok(h, "secret"));
    let c = client(&mock, cfg);
    load(&c, &[req]).await;
    mock.set(Step::Status(503));
    served(&get(&c, &[req]).await)
}

#[tokio::test(start_paused = true)]
async fn authorization_needs_public_or_an_opt_in() {
    let auth = ("authorization", "Bearer t0ken");
    assert!(!credentialed(FallbackCache::default(), auth, &[]).await);
    assert!(
        credentialed(
            FallbackCache::default(),
            auth,
            &[("cache-control", "public")]
        )
        .await
    );
    let opted = FallbackCache::default().store_with_credentials(true);
    assert!(credentialed(opted, auth, &[]).await);
}

#[tokio::test(start_paused = true)]
async fn cookie_needs_public_or_an_opt_in() {
    let cookie = ("cookie", "session=abc");
    assert!(!credentialed(FallbackCache::default(), cookie, &[]).await);
    assert!(
        credentialed(
            FallbackCache::default(),
            cookie,
            &[("cache-control", "public")]
        )
        .await
    );
    let opted = FallbackCache::default().store_with_credentials(true);
    assert!(credentialed(opted, cookie, &[]).await);
}

#[tokio::test(start_paused = true)]
async fn vary_keeps_users_apart() {
    let mock = Mock::default();
    let c = client(&mock, FallbackCache::default());
    mock.set(ok(&[("vary", "Accept-Language")], "hello"));
    load(&c, &[("accept-language", "en")]).await;
    mock.set(ok(&[("vary", "Accept-Language")], "bonjour"));
    load(&c, &[("accept-language", "fr")]).await;

    mock.set(Step::Status(503));
    let en = get(&c, &[("accept-language", "en")]).await;
    assert_eq!(en.text().await.unwrap(), "hello");
    let fr = get(&c, &[("accept-language", "fr")]).await;
    assert_eq!(fr.text().await.unwrap(), "bonjour");
    let de = get(&c, &[("accept-language", "de")]).await;
    assert_eq!(de.status(), 503, "no variant stored for de");
    let none = get(&c, &[]).await;
    assert_eq!(none.status(), 503, "no variant stored without the header");
}

#[tokio::test(start_paused = true)]
async fn vary_star_is_never_stored() {
    let resp = stored_then_503(FallbackCache::default(), &[("vary", "*")], secs(1)).await;
    assert_eq!(resp.status(), 503);
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_is_served_only_while_fresh() {
    for (cc, at, expect) in [
        ("max-age=10, must-revalidate", ms(9_999), true),
        ("max-age=10, must-revalidate", secs(10), false),
        ("max-age=10, proxy-revalidate", secs(11), false),
        ("s-maxage=10", secs(11), false),
        ("max-age=10", secs(11), true),
    ] {
        let resp = stored_then_503(FallbackCache::default(), &[("cache-control", cc)], at).await;
        assert_eq!(served(&resp), expect, "{cc} at {at:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_cache_is_never_served() {
    let h = [("cache-control", "max-age=60, no-cache")];
    let resp = stored_then_503(FallbackCache::default(), &h, secs(1)).await;
    assert_eq!(resp.status(), 503);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_window_edges() {
    let cc = [("cache-control", "max-age=10, stale-if-error=30")];
    for (at, expect) in [
        (secs(40), true),
        (secs(40) + ms(1), false),
        (secs(25), true),
    ] {
        let resp = stored_then_503(FallbackCache::default(), &cc, at).await;
        assert_eq!(served(&resp), expect, "at {at:?}");
    }
    // stale-if-error wins over max_staleness, both ways.
    let long = FallbackCache::default().max_staleness(secs(3600));
    let resp = stored_then_503(long, &cc, secs(41)).await;
    assert!(!served(&resp));
    let short = FallbackCache::default().max_staleness(secs(1));
    let resp = stored_then_503(short, &cc, secs(40)).await;
    assert!(served(&resp));
}

#[tokio::test(start_paused = true)]
async fn max_staleness_edges() {
    for (at, expect) in [(secs(300), true), (secs(300) + ms(1), false)] {
        let resp = stored_then_503(FallbackCache::default(), &[], at).await;
        assert_eq!(served(&resp), expect, "at {at:?}");
    }
    let cfg = FallbackCache::default().max_staleness(secs(60));
    let h = [("cache-control", "max-age=30")];
    assert!(served(&stored_then_503(cfg.clone(), &h, secs(90)).await));
    assert!(!served(&stored_then_503(cfg, &h, secs(91)).await));
}

#[tokio::test(start_paused = true)]
async fn max_entry_bytes_by_content_length() {
    let cfg = FallbackCache::default().max_entry_bytes(8);
    let mock = Mock::always(Step::Full(200, vec![], b"12345678".to_vec()));
    let c = client(&mock, cfg.clone());
    load(&c, &[]).await;
    mock.set(Step::Status(503));
    assert!(served(&get(&c, &[]).await), "8 bytes fit");

    let mock = Mock::always(Step::Full(200, vec![], b"123456789".to_vec()));
    let c = client(&mock, cfg);
    assert_eq!(get(&c, &[]).await.text().await.unwrap(), "123456789");
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.status(), 503, "9 bytes do not");
}

#[tokio::test(start_paused = true)]
async fn a_body_without_length_over_the_limit_streams_on_and_is_not_stored() {
    let cfg = FallbackCache::default().max_entry_bytes(8);
    let chunks = vec![
        b"1234".to_vec(),
        b"5678".to_vec(),
        b"9abc".to_vec(),
        b"def".to_vec(),
    ];
    let mock = Mock::always(Step::Chunks(200, vec![], chunks, false));
    let c = client(&mock, cfg.clone());
    let resp = get(&c, &[]).await;
    assert_eq!(resp.text().await.unwrap(), "123456789abcdef");
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.status(), 503);

    // At the limit exactly, in chunks: stored, and joined.
    let mock = Mock::always(Step::Chunks(
        200,
        vec![],
        vec![b"1234".to_vec(), b"5678".to_vec()],
        false,
    ));
    let c = client(&mock, cfg);
    assert_eq!(get(&c, &[]).await.text().await.unwrap(), "12345678");
    mock.set(Step::Status(503));
    let resp = get(&c, &[]).await;
    assert!(served(&resp));
    assert_eq!(resp.text().await.unwrap(), "12345678");
}

#[tokio::test(start_paused = true)]
async fn a_response_that_is_not_stored_is_not_buffered() {
    // The body never ends: buffering it would hold the caller until the total timeout.
    let chunks = vec![b"first".to_vec()];
    let h = vec![("cache-control", "no-store".to_owned())];
    let mock = Mock::always(Step::Chunks(200, h, chunks, true));
    let c = client(&mock, FallbackCache::default());
    let start = tokio::time::Instant::now();
    let mut resp = get(&c, &[]).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"first");
}

// Issue 9, defects 10 and 11 (replaces `buffering_a_body_stops_at_the_total_timeout`, which
// pinned the caller waiting for the body until the deadline): the caller gets the head at once
// and reads the whole body as it comes, and the copy is given up at the request's deadline: a
// body that ends after it is not stored, one that ends before it is.
#[tokio::test(start_paused = true)]
async fn copying_a_body_stops_at_the_request_deadline() {
    for (own_timeout, bound) in [(None, secs(5)), (Some(secs(2)), secs(2))] {
        for (second_after, stored) in [(bound + ms(1), false), (bound - ms(1), true)] {
            let c = client_over(
                FallbackCache::default(),
                |b| b.total_timeout(secs(5)).attempt_timeout(secs(1)),
                move |_| {
                    let chunks = vec![(ms(0), &b"part"[..]), (second_after, &b" more"[..])];
                    support::trickle_response(chunks, BodyEnd::Finish)
                },
            );
            let mut rb = c.get(URL);
            if let Some(t) = own_timeout {
                rb = rb.timeout(t);
            }
            let start = tokio::time::Instant::now();
            let resp = rb.send().await.expect("the head at once");
            assert_eq!(start.elapsed(), Duration::ZERO);
            // A per-request timeout covers reading the body too, in reqwest: only the client's
            // total timeout leaves the caller free to read past it. Here the transport is a
            // custom one, which applies no timeout of its own.
            assert_eq!(resp.text().await.unwrap(), "part more");
            let handle = c.fallback_cache().unwrap();
            handle.sync();
            assert_eq!(
                handle.entry_count(),
                u64::from(stored),
                "second chunk after {second_after:?}, bound {bound:?}"
            );
            assert_eq!(handle.copying_bytes(), 0, "every copy given back");
        }
    }
}

// A body that stalls keeps its copy (one buffer, within the budget for copies) until it is
// dropped; dropping it frees the copy and stores nothing.
#[tokio::test(start_paused = true)]
async fn a_stalled_body_frees_its_copy_when_dropped() {
    let c = client_over(
        FallbackCache::default(),
        |b| b,
        |_| support::trickle_response(vec![(ms(0), &b"0123456789"[..])], BodyEnd::Hang),
    );
    let mut resp = c.get(URL).send().await.unwrap();
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"0123456789");
    let handle = c.fallback_cache().unwrap().clone();
    assert!(handle.copying_bytes() >= 10, "{}", handle.copying_bytes());
    assert!(tokio::time::timeout(secs(60), resp.chunk()).await.is_err());
    drop(resp);
    assert_eq!(handle.copying_bytes(), 0);
    handle.sync();
    assert_eq!(handle.entry_count(), 0);
}

// Review of issue 9: the copies of bodies in flight hold at most `max_bytes` in all; a copy
// that would take them past it is given up (its response is not stored), and the others go on.
#[tokio::test(start_paused = true)]
async fn copies_in_flight_are_bounded_by_max_bytes() {
    let cfg = FallbackCache::default()
        .max_bytes(4096)
        .max_entry_bytes(2500);
    let c = client_over(
        cfg,
        |b| b,
        |_| {
            let chunks = vec![(ms(0), &[b'x'; 2100][..]), (secs(1), &b"end"[..])];
            support::trickle_response(chunks, BodyEnd::Finish)
        },
    );
    let handle = c.fallback_cache().unwrap().clone();
    let mut a = c.get("http://api.test/a").send().await.unwrap();
    let mut b = c.get("http://api.test/b").send().await.unwrap();
    a.chunk().await.unwrap().unwrap();
    assert_eq!(handle.copying_bytes(), 2100);
    // The second copy would take the copies past 4,096 bytes: given up.
    b.chunk().await.unwrap().unwrap();
    assert_eq!(handle.copying_bytes(), 2100);
    while a.chunk().await.unwrap().is_some() {}
    while b.chunk().await.unwrap().is_some() {}
    assert_eq!(handle.copying_bytes(), 0);
    handle.sync();
    assert_eq!(
        handle.entry_count(),
        1,
        "the first is stored, the second is not"
    );
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_never_replaced() {
    for status in [400, 404, 408, 429] {
        let mock = Mock::always(ok(&[], "x"));
        let c = client(&mock, FallbackCache::default());
        load(&c, &[]).await;
        mock.set(Step::Status(status));
        let resp = get(&c, &[]).await;
        assert_eq!(resp.status(), status);
        assert!(!served(&resp));
    }
}

#[tokio::test(start_paused = true)]
async fn each_kind_of_failure_is_served_and_can_be_switched_off() {
    // Server error.
    let off = FallbackCache::default().serve_on_server_error(false);
    assert_eq!(stored_then_503(off, &[], secs(1)).await.status(), 503);

    // Timeout (attempt timeout) and network failure.
    for (step, reason) in [
        (Step::Hang, FallbackReason::Timeout),
        (
            Step::Fail(io::ErrorKind::ConnectionReset),
            FallbackReason::Network,
        ),
        (
            Step::Fail(io::ErrorKind::ConnectionRefused),
            FallbackReason::Network,
        ),
    ] {
        for on in [true, false] {
            let cfg = FallbackCache::default()
                .serve_on_timeout(on)
                .serve_on_network_error(on);
            let mock = Mock::always(ok(&[], "x"));
            let c = client_with(&mock, cfg, |b| b.attempt_timeout(secs(1)));
            load(&c, &[]).await;
            mock.set(step.clone());
            let res = c.get(URL).send().await;
            match res {
                Ok(r) if on => assert_eq!(r.fallback().unwrap().reason(), reason),
                Err(e) if !on => {
                    assert!(e.is_timeout() || e.is_connect() || e.kind() == ErrorKind::Transport)
                }
                other => panic!("{step:?} on={on}: {other:?}"),
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn rejections_are_served_and_can_be_switched_off() {
    for on in [true, false] {
        // Open circuit.
        let mock = Mock::always(ok(&[], "x"));
        let cfg = FallbackCache::default().serve_on_circuit_open(on);
        let c = mock.client(|b| b.no_retry().fallback_cache(cfg));
        load(&c, &[]).await;
        c.circuit_breaker().unwrap().isolate(URL);
        let res = c.get(URL).send().await;
        assert_eq!(mock.calls(), 1);
        match res {
            Ok(r) => {
                assert!(on);
                let info = r.fallback().unwrap();
                assert_eq!(info.reason(), FallbackReason::CircuitOpen);
                assert_eq!(r.attempts(), 1, "as the error would have said");
            }
            Err(e) => assert!(!on && e.is_circuit_open()),
        }

        // Rate limit: one call per minute, no waiting.
        let cfg = FallbackCache::default().serve_on_rate_limited(on);
        let limit = RateLimit::per_minute(1).burst(1).fail_fast();
        let mock = Mock::always(ok(&[], "x"));
        let c = client_with(&mock, cfg, |b| b.rate_limit(limit));
        load(&c, &[]).await;
        match c.get(URL).send().await {
            Ok(r) => assert!(on && r.fallback().unwrap().reason() == FallbackReason::RateLimited),
            Err(e) => assert!(!on && e.is_rate_limited(), "{e:?}"),
        }

        // Full bulkhead.
        let cfg = FallbackCache::default().serve_on_bulkhead_full(on);
        let mock = Mock::always(ok(&[], "x"));
        let c = client_with(&mock, cfg, |b| b.bulkhead(Bulkhead::new(1)));
        load(&c, &[]).await;
        mock.set(Step::Hang);
        let held = tokio::spawn({
            let c = c.clone();
            async move { c.get(URL).send().await }
        });
        tokio::task::yield_now().await;
        match c.get(URL).send().await {
            Ok(r) => assert!(on && r.fallback().unwrap().reason() == FallbackReason::BulkheadFull),
            Err(e) => assert!(!on && e.is_bulkhead_full(), "{e:?}"),
        }
        held.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn the_attempts_made_are_reported_on_a_served_response() {
    let mock = Mock::always(ok(&[], "x"));
    let retry = support::exact(ms(100), secs(1));
    let c = mock.client(|b| {
        b.retry(retry)
            .no_circuit_breaker()
            .fallback_cache(FallbackCache::default())
    });
    load(&c, &[]).await;
    mock.set(Step::Status(503));
    let resp = get(&c, &[]).await;
    assert!(served(&resp));
    assert_eq!(resp.attempts(), 3);
    assert_eq!(mock.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn the_static_fallback_answers_what_nothing_stored_can() {
    let cfg = FallbackCache::default().static_fallback(|req| {
        assert_eq!(req.headers()["x-user"], "7");
        (req.url().path() == "/items/1").then(|| http::Response::new(reqwest::Body::from("[]")))
    });
    let mock = Mock::always(Step::Status(503));
    let events = Events::default();
    let c = client_with(&mock, cfg, |b| b.on_event(events.hook()));
    let resp = get(&c, &[("x-user", "7")]).await;
    let info = resp.fallback().expect("static fallback");
    assert!(info.is_static());
    assert_eq!(info.age(), None);
    assert_eq!(resp.url().as_str(), URL);
    assert_eq!(resp.text().await.unwrap(), "[]");
    assert_eq!(events.count("Fallback"), 1);

    // Not for a 4xx, and not where the function says None.
    mock.set(Step::Status(404));
    assert_eq!(get(&c, &[("x-user", "7")]).await.status(), 404);
    mock.set(Step::Status(503));
    let other = c
        .get("http://api.test/other")
        .header("x-user", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 503);

    // A stored response comes first.
    mock.set(ok(&[], "stored"));
    load(&c, &[("x-user", "7")]).await;
    mock.set(Step::Status(503));
    let resp = get(&c, &[("x-user", "7")]).await;
    assert!(!resp.fallback().unwrap().is_static());
    assert_eq!(resp.text().await.unwrap(), "stored");
}

#[tokio::test(start_paused = true)]
async fn a_successful_unsafe_request_voids_the_stored_response() {
    let mock = Mock::always(ok(&[], "before"));
    let c = client(&mock, FallbackCache::default());
    load(&c, &[]).await;

    // A failed DELETE changes nothing.
    mock.set(Step::Status(503));
    c.delete(URL).send().await.unwrap();
    assert!(served(&get(&c, &[]).await));

    mock.set(Step::Status(204));
    c.delete(URL).send().await.unwrap();
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.status(), 503);

    // A later success is stored again.
    mock.set(ok(&[], "after"));
    load(&c, &[]).await;
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.text().await.unwrap(), "after");
}

#[tokio::test(start_paused = true)]
async fn head_is_stored_apart_and_served_without_a_body() {
    let mock = Mock::always(Step::Full(
        200,
        vec![("content-length", "5".into())],
        vec![],
    ));
    let c = client(&mock, FallbackCache::default());
    c.head(URL).send().await.unwrap();
    mock.set(Step::Status(503));
    let resp = c.head(URL).send().await.unwrap();
    assert!(served(&resp));
    assert_eq!(resp.headers()["content-length"], "5");
    assert_eq!(
        get(&c, &[]).await.status(),
        503,
        "a HEAD does not answer a GET"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_function_replaces_the_url() {
    let cfg = FallbackCache::default().key_fn(|req| {
        let mut u = req.url().clone();
        u.set_query(None);
        (u.path() != "/private").then(|| u.to_string())
    });
    let mock = Mock::always(ok(&[], "x"));
    let c = client(&mock, cfg);
    for url in ["http://api.test/items?cb=1", "http://api.test/private"] {
        c.get(url).send().await.unwrap().bytes().await.unwrap();
    }
    mock.set(Step::Status(503));
    let resp = c.get("http://api.test/items?cb=2").send().await.unwrap();
    assert!(served(&resp));
    assert_eq!(
        resp.url().as_str(),
        "http://api.test/items?cb=1",
        "the stored URL"
    );
    let resp = c.get("http://api.test/private").send().await.unwrap();
    assert_eq!(resp.status(), 503);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_store_and_the_handle_reports_it() {
    let mock = Mock::always(Step::Full(200, vec![], vec![b'x'; 1000]));
    let c = client(&mock, FallbackCache::default());
    load(&c, &[]).await;
    let handle = c.fallback_cache().unwrap();
    handle.sync();
    assert_eq!(handle.entry_count(), 1);
    assert!(
        handle.stored_bytes() >= 2024 && handle.stored_bytes() < 2200,
        "{handle:?}"
    );
    mock.set(Step::Status(503));
    assert!(served(&get(&c.clone(), &[]).await));
    handle.clear();
    handle.sync();
    assert_eq!(handle.entry_count(), 0);
    assert_eq!(get(&c, &[]).await.status(), 503);
    assert!(Mock::default().client(|b| b).fallback_cache().is_none());
}

#[tokio::test(start_paused = true)]
async fn bad_configuration_is_a_config_error() {
    let build = |cfg| Client::builder().fallback_cache(cfg).build();
    let e = build(FallbackCache::default().max_entry_bytes(0)).unwrap_err();
    assert_eq!(e.field(), "fallback_cache.max_entry_bytes");
    let e = build(FallbackCache::default().max_bytes(10)).unwrap_err();
    assert_eq!(e.field(), "fallback_cache.max_bytes");
}

/// The round trip over real sockets: a wiremock server answers 200, then 503; then the
/// connection is reset. Real time for the traffic; then paused time shows the `Age` growing.
#[tokio::test]
async fn round_trip_through_a_real_server_200_then_503_then_reset() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock as Route, MockServer, ResponseTemplate};

    let server = MockServer::start().await;
    let body = b"{\"name\":\"widget\",\"price\":\"12.50\"}\n".to_vec();
    Route::given(method("GET"))
        .and(path("/items/1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .insert_header("cache-control", "max-age=0, stale-if-error=600")
                .insert_header("x-request-id", "r-1")
                .set_body_bytes(body.clone()),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Route::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let (proxy, _accepted, reset) = support::net::resetting_proxy(*server.address()).await;

    // No timers, so paused time cannot skip ahead while a socket is waited on.
    let c = Client::builder()
        .http_client_builder(reqwest::Client::builder().pool_max_idle_per_host(0))
        .no_total_timeout()
        .no_attempt_timeout()
        .no_retry()
        .no_circuit_breaker()
        .fallback_cache(FallbackCache::default())
        .build()
        .unwrap();
    let url = format!("http://{proxy}/items/1");

    let first = c.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first_headers = first.headers().clone();
    let first_body = first.bytes().await.unwrap();
    assert_eq!(&first_body[..], &body[..]);

    tokio::time::pause();
    tokio::time::advance(secs(30)).await;
    let second = c.get(&url).send().await.unwrap();
    let info = second.fallback().expect("served after the 503");
    assert_eq!(
        info.reason(),
        FallbackReason::ServerError(503.try_into().unwrap())
    );
    let age1: u64 = second.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!((30..=31).contains(&age1), "age {age1}");
    let mut h = second.headers().clone();
    h.remove("age");
    assert_eq!(h, first_headers, "headers as first received");
    assert_eq!(
        second.bytes().await.unwrap(),
        first_body,
        "body byte-identical"
    );

    reset.on();
    tokio::time::advance(secs(60)).await;
    let third = c.get(&url).send().await.unwrap();
    assert_eq!(third.fallback().unwrap().reason(), FallbackReason::Network);
    let age2: u64 = third.headers()["age"].to_str().unwrap().parse().unwrap();
    assert_eq!(age2, age1 + 60, "Age grows with time");
    assert_eq!(third.bytes().await.unwrap(), first_body);
}

/// A client (fallback cache, no retry, no breaker) whose transport answers call `n` (from 0)
/// with `answer(n)`.
fn client_over(
    cfg: FallbackCache,
    f: impl FnOnce(ClientBuilder) -> ClientBuilder,
    answer: impl Fn(usize) -> reqwest::Response + Send + Sync + 'static,
) -> Client {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let answer = Arc::new(answer);
    let calls = Arc::new(AtomicUsize::new(0));
    let transport = tower::service_fn(move |_req: reqwest::Request| {
        let resp = answer(calls.fetch_add(1, Ordering::SeqCst));
        async move { Ok::<_, palisade::Error>(resp) }
    });
    f(Client::builder()
        .transport(transport)
        .no_retry()
        .no_circuit_breaker()
        .fallback_cache(cfg))
    .build()
    .unwrap()
}

// Kills M8a (Content-Length check removed from `Call::plan`).
#[tokio::test(start_paused = true)]
async fn a_body_announced_too_large_is_handed_on_unread() {
    // 100 bytes announced, 4 sent, the rest never comes: reading it to store it would hold
    // the caller until the total timeout.
    let c = client_over(
        FallbackCache::default().max_entry_bytes(8),
        |b| b.total_timeout(secs(5)).attempt_timeout(secs(1)),
        |_| support::chunked_response(vec![b"1234"], BodyEnd::Hang, Some(100)),
    );
    let start = tokio::time::Instant::now();
    let mut resp = c.get(URL).send().await.expect("handed on at once");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(resp.content_length(), Some(100));
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"1234");
}

// Kills M8d (read the whole body, then refuse it).
#[tokio::test(start_paused = true)]
async fn a_body_without_length_is_handed_on_as_soon_as_it_passes_the_limit() {
    let cfg = FallbackCache::default().max_entry_bytes(8);
    let chunks = vec![b"12345".to_vec(), b"6789".to_vec()];
    // The body never ends: past 8 bytes the caller must get it, not wait for its end.
    let mock = Mock::always(Step::Chunks(200, vec![], chunks, true));
    let c = client_with(&mock, cfg, |b| {
        b.total_timeout(secs(5)).attempt_timeout(secs(1))
    });
    let start = tokio::time::Instant::now();
    let mut resp = get(&c, &[]).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"12345");
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"6789");
}

// Kills M9b (plan ignores the classifier), and pins the 4xx guard for a classifier that calls
// a 4xx a failure (M9a is otherwise killed only through the default 408/429 classes).
#[tokio::test(start_paused = true)]
async fn the_classifier_decides_what_is_stored_but_never_replaces_a_4xx() {
    use palisade::classify::{Classifier, FailureClass};
    let classifier = Classifier::from_fn(|o| match (o.status(), o.headers()) {
        (_, Some(h)) if h.contains_key("x-error") => FailureClass::ServerError,
        (Some(s), _) if s == 404 => FailureClass::ServerError,
        _ => Classifier::default_class(o),
    });
    let mock = Mock::always(ok(&[], "good"));
    let c = client_with(&mock, FallbackCache::default(), |b| {
        b.classifier(classifier)
    });
    load(&c, &[]).await;
    // A 200 the classifier calls a failure: not stored, and answered from the store.
    mock.set(ok(&[("x-error", "1")], "bad"));
    let resp = get(&c, &[]).await;
    assert!(served(&resp));
    assert_eq!(resp.text().await.unwrap(), "good");
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.text().await.unwrap(), "good");
    // A 404, failure or not, is an answer.
    mock.set(Step::Status(404));
    let resp = get(&c, &[]).await;
    assert_eq!(resp.status(), 404);
    assert!(!served(&resp));
}

// Kills M10e (recover ignores `cacheable`) for Range; pins Range at the integration level
// (M10c otherwise killed only by a unit test).
#[tokio::test(start_paused = true)]
async fn a_range_request_is_neither_stored_nor_answered_from_the_store() {
    let mock = Mock::always(ok(&[], "0123456789"));
    let c = client(&mock, FallbackCache::default());
    load(&c, &[("range", "bytes=0-3")]).await;
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.status(), 503, "not stored");
    mock.set(ok(&[], "0123456789"));
    load(&c, &[]).await;
    mock.set(Step::Status(503));
    let resp = get(&c, &[("range", "bytes=0-3")]).await;
    assert_eq!(
        resp.status(),
        503,
        "a full stored body does not answer a Range"
    );
    assert!(!served(&resp));
}

// Kills M10e (via key_fn) and M11d (an unkeyed unsafe request voids by URL).
#[tokio::test(start_paused = true)]
async fn an_unkeyed_request_neither_reads_nor_voids_the_store() {
    let cfg = FallbackCache::default()
        .key_fn(|req| (!req.headers().contains_key("x-unkeyed")).then(|| req.url().to_string()));
    let mock = Mock::always(ok(&[], "x"));
    let c = client(&mock, cfg);
    load(&c, &[]).await;
    mock.set(Step::Status(503));
    assert_eq!(
        get(&c, &[("x-unkeyed", "1")]).await.status(),
        503,
        "not read"
    );
    mock.set(Step::Status(204));
    c.delete(URL).header("x-unkeyed", "1").send().await.unwrap();
    mock.set(Step::Status(503));
    assert!(served(&get(&c, &[]).await), "not voided");
}

// Kills M11b (< 400 widened to < 500) and a narrowing to < 300.
#[tokio::test(start_paused = true)]
async fn only_a_non_error_status_to_an_unsafe_request_voids() {
    let mock = Mock::always(ok(&[], "kept"));
    let c = client(&mock, FallbackCache::default());
    load(&c, &[]).await;
    for status in [400, 404, 409, 412, 500, 503] {
        mock.set(Step::Status(status));
        c.delete(URL).send().await.unwrap();
    }
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.text().await.unwrap(), "kept");
    // 3xx is not an error: it voids.
    mock.set(Step::Status(303));
    c.delete(URL).send().await.unwrap();
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.status(), 503);
}

// Kills M11c (HEAD not voided) and M11g (only DELETE voids).
#[tokio::test(start_paused = true)]
async fn every_unsafe_method_voids_get_and_head() {
    use reqwest::Method;
    for (method, status) in [
        (Method::POST, 200),
        (Method::PUT, 201),
        (Method::PATCH, 204),
        (Method::DELETE, 202),
    ] {
        let mock = Mock::always(ok(&[], "x"));
        let c = client(&mock, FallbackCache::default());
        load(&c, &[]).await;
        c.head(URL).send().await.unwrap();
        mock.set(Step::Status(status));
        c.request(method.clone(), URL).send().await.unwrap();
        mock.set(Step::Status(503));
        assert_eq!(get(&c, &[]).await.status(), 503, "{method} voids the GET");
        let head = c.head(URL).send().await.unwrap();
        assert_eq!(head.status(), 503, "{method} voids the HEAD");
    }
}

// Kills M11f (a new Vary list forgets the void instant).
#[tokio::test(start_paused = true)]
async fn a_voided_variant_stays_void_when_the_vary_list_changes_and_back() {
    let mock = Mock::default();
    let c = client(&mock, FallbackCache::default());
    mock.set(ok(&[("vary", "accept-language")], "en, before the delete"));
    load(&c, &[("accept-language", "en")]).await;
    tokio::time::advance(secs(1)).await;
    mock.set(Step::Status(204));
    c.delete(URL).send().await.unwrap();
    tokio::time::advance(secs(1)).await;
    // The resource stops varying, then varies again.
    mock.set(ok(&[], "plain"));
    load(&c, &[]).await;
    mock.set(ok(&[("vary", "accept-language")], "fr"));
    load(&c, &[("accept-language", "fr")]).await;
    mock.set(Step::Status(503));
    let en = get(&c, &[("accept-language", "en")]).await;
    assert_eq!(en.status(), 503, "the en variant was voided by the DELETE");
    let fr = get(&c, &[("accept-language", "fr")]).await;
    assert_eq!(fr.text().await.unwrap(), "fr");
}

// Kills M12b (the time the response took is left out of its age).
#[tokio::test(start_paused = true)]
async fn the_time_the_response_took_counts_in_its_age() {
    let mock = Mock::always(Step::after(secs(2), ok(&[], "slow")));
    let c = client(&mock, FallbackCache::default());
    load(&c, &[]).await;
    mock.set(Step::Status(503));
    tokio::time::advance(secs(5)).await;
    let resp = get(&c, &[]).await;
    assert_eq!(resp.headers()["age"], "7");
    assert_eq!(resp.fallback().unwrap().age(), Some(secs(7)));
}

// Kills M5c (an absent Vary header keyed like an empty one).
#[tokio::test(start_paused = true)]
async fn vary_an_absent_header_and_an_empty_one_are_two_variants() {
    let mock = Mock::default();
    let c = client(&mock, FallbackCache::default());
    mock.set(ok(&[("vary", "accept-language")], "absent"));
    load(&c, &[]).await;
    mock.set(ok(&[("vary", "accept-language")], "empty"));
    load(&c, &[("accept-language", "")]).await;
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.text().await.unwrap(), "absent");
    let empty = get(&c, &[("accept-language", "")]).await;
    assert_eq!(empty.text().await.unwrap(), "empty");
}

/// The unsafe request and the stored variant share an instant (paused time): what orders them
/// is which request started first, not the clock.
#[tokio::test(start_paused = true)]
async fn a_varied_entry_stored_at_the_instant_of_a_delete_is_voided() {
    let mock = Mock::always(ok(&[("vary", "accept-language")], "old"));
    let c = client(&mock, FallbackCache::default());
    load(&c, &[("accept-language", "en")]).await;
    mock.set(Step::Status(204));
    c.delete(URL).send().await.unwrap();
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[("accept-language", "en")]).await.status(), 503);
}

/// Ages, windows and staleness at the edges of what the numbers hold: no panic, no overflow,
/// and an `Age` header capped at 2^31 s (RFC 9111 §1.2.2).
#[tokio::test(start_paused = true)]
async fn extreme_ages_and_windows_neither_panic_nor_overflow() {
    let endless = FallbackCache::default().max_staleness(Duration::MAX);
    let resp = stored_then_503(
        endless.clone(),
        &[("age", "99999999999999999999999")],
        secs(1),
    )
    .await;
    assert!(
        served(&resp),
        "an endless allowance serves whatever the age"
    );
    assert_eq!(resp.headers()["age"], "2147483648");

    let h = [(
        "cache-control",
        "max-age=99999999999999999999, stale-if-error=99999999999999999999",
    )];
    let resp = stored_then_503(FallbackCache::default(), &h, secs(3600 * 24 * 365 * 10)).await;
    assert!(served(&resp), "2^31 s of freshness is 68 years");

    // Too old when it arrived for any window: not stored.
    let resp = stored_then_503(
        FallbackCache::default(),
        &[
            ("age", "99999999999999999999999"),
            ("cache-control", "stale-if-error=60"),
        ],
        secs(1),
    )
    .await;
    assert_eq!(resp.status(), 503);
}

// Issue 9, defect 7: after retries, a storable response whose body fails reached the caller
// as a fallback that said 1 attempt. The caller now gets the response (the attempts it took)
// and the body's failure, as from reqwest.
#[tokio::test(start_paused = true)]
async fn attempts_are_kept_when_a_stored_body_fails_after_retries() {
    let c = client_over(
        FallbackCache::default(),
        |b| b.retry(support::exact(ms(100), secs(1))),
        |n| match n {
            0 => support::response(200, &[], b"good".to_vec()),
            1 => support::response(503, &[], Vec::new()),
            _ => support::chunked_response(vec![b"12345"], BodyEnd::Fail, Some(10)),
        },
    );
    assert_eq!(
        c.get(URL).send().await.unwrap().text().await.unwrap(),
        "good"
    );
    let resp = c.get(URL).send().await.expect("the response");
    assert_eq!(resp.attempts(), 2, "the attempts the response took");
    assert!(resp.fallback().is_none(), "the head was the server's");
    let err = resp.bytes().await.expect_err("the body's failure");
    assert!(err.is_body() || err.is_decode(), "{err:?}");
}

// A guard beside defect 7's regression test (`attempts_are_kept_when_a_stored_body_fails_after_
// retries`), which it is not: it passed before the fix too. Every served fallback says how many
// attempts the failed request made, from a stored entry and from the static fallback, after
// responses and after errors.
#[tokio::test(start_paused = true)]
async fn every_served_fallback_reports_the_attempts_made() {
    let cfg = FallbackCache::default().static_fallback(|req| {
        (req.url().path() == "/static").then(|| http::Response::new(reqwest::Body::from("[]")))
    });
    for failure in [
        Step::Status(503),
        Step::Fail(io::ErrorKind::ConnectionReset),
    ] {
        let mock = Mock::always(ok(&[], "x"));
        let c = mock.client(|b| {
            b.retry(support::exact(ms(100), secs(1)))
                .no_circuit_breaker()
                .fallback_cache(cfg.clone())
        });
        load(&c, &[]).await;
        mock.set(failure.clone());
        let stored = get(&c, &[]).await;
        assert!(!stored.fallback().unwrap().is_static());
        assert_eq!(stored.attempts(), 3, "stored, after {failure:?}");
        let fixed = c.get("http://api.test/static").send().await.unwrap();
        assert!(fixed.fallback().unwrap().is_static());
        assert_eq!(fixed.attempts(), 3, "static, after {failure:?}");
    }
}

// Issue 9, defect 10: a storable response without a length (a 200 without Cache-Control) was
// read to its end before the caller saw its head: a stream that does not end got
// `Err(Timeout)` at the deadline. The head comes at once and the body streams.
#[tokio::test(start_paused = true)]
async fn a_storable_stream_is_handed_on_at_once() {
    let mock = Mock::always(Step::Chunks(
        200,
        vec![("content-type", "application/x-ndjson".to_owned())],
        vec![b"{\"n\":1}\n".to_vec()],
        true,
    ));
    let c = client_with(&mock, FallbackCache::default(), |b| {
        b.total_timeout(secs(5)).attempt_timeout(secs(1))
    });
    let start = tokio::time::Instant::now();
    let mut resp = c.get(URL).send().await.expect("the head at once");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"{\"n\":1}\n");
}

// Issue 9, defect 10: the copy is stored once the caller has read the body to its end, and
// only then: not when the caller stops early, nor when the body fails.
#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_stored_only_once_read_to_its_end() {
    let chunks = || vec![b"ab".to_vec(), b"cd".to_vec()];
    let mock = Mock::always(Step::Chunks(200, vec![], chunks(), false));
    let c = client(&mock, FallbackCache::default());
    let mut resp = get(&c, &[]).await;
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"ab");
    drop(resp);
    mock.set(Step::Status(503));
    assert_eq!(
        get(&c, &[]).await.status(),
        503,
        "dropped early: nothing stored"
    );

    mock.set(Step::Chunks(200, vec![], chunks(), false));
    assert_eq!(get(&c, &[]).await.text().await.unwrap(), "abcd");
    mock.set(Step::Status(503));
    let served = get(&c, &[]).await;
    assert!(served.fallback().is_some());
    assert_eq!(served.text().await.unwrap(), "abcd");

    let c = client_over(
        FallbackCache::default(),
        |b| b,
        |n| match n {
            0 => support::chunked_response(vec![b"12", b"34"], BodyEnd::Fail, None),
            _ => support::response(503, &[], Vec::new()),
        },
    );
    let resp = c.get(URL).send().await.unwrap();
    assert!(resp.bytes().await.is_err());
    assert_eq!(
        c.get(URL).send().await.unwrap().status(),
        503,
        "failed: nothing stored"
    );
}

// Issue 9, defect 10: a response without a body is stored at once, whether or not the caller
// reads it.
#[tokio::test(start_paused = true)]
async fn a_response_without_a_body_is_stored_unread() {
    let mock = Mock::always(Step::Status(204));
    let c = client(&mock, FallbackCache::default());
    drop(get(&c, &[]).await);
    mock.set(Step::Status(503));
    let served = get(&c, &[]).await;
    assert_eq!(served.status(), 204);
    assert!(served.fallback().is_some());
}

// Issue 9, defect 11: as a standalone layer over a total timeout the cache set no bound on
// reading a body to store it: a body that trickles hung the call. The caller gets the head at
// once and reads the body as it trickles; the copy is given up after the bound (30 s by
// default, `max_body_time`), so a body that ends after it is not stored.
#[tokio::test(start_paused = true)]
async fn a_standalone_layer_gives_up_the_copy_of_a_trickling_body() {
    use palisade::layer::{FallbackCacheLayer, TotalTimeoutLayer};
    use tower::{Service, ServiceExt};

    for (gap, stored) in [(secs(31), false), (secs(29), true)] {
        let fallback = FallbackCacheLayer::new(FallbackCache::default()).unwrap();
        let handle = fallback.handle();
        let transport = tower::service_fn(move |_req: reqwest::Request| {
            let chunks = vec![(ms(0), &b"first"[..]), (gap, &b" last"[..])];
            let resp = support::trickle_response(chunks, BodyEnd::Finish);
            async move { Ok::<_, palisade::Error>(resp) }
        });
        let mut svc = tower::ServiceBuilder::new()
            .layer(fallback)
            .layer(TotalTimeoutLayer::new(secs(5)).unwrap())
            .service(transport);
        let req = reqwest::Request::new(reqwest::Method::GET, URL.parse().unwrap());
        let call = svc.ready().await.unwrap().call(req);
        let start = tokio::time::Instant::now();
        let resp = tokio::time::timeout(secs(60), call)
            .await
            .expect("the head, not a hang")
            .unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(resp.text().await.unwrap(), "first last");
        handle.sync();
        assert_eq!(handle.entry_count(), u64::from(stored), "gap {gap:?}");
        assert_eq!(handle.copying_bytes(), 0);
    }
}

// Issue 9, defect 2: a stored copy must not replay the headers a cache may not store
// (RFC 9111 §3.1: Proxy-Authenticate, Proxy-Authentication-Info, Proxy-Authorization) nor the
// hop-by-hop ones (RFC 9110 §7.6.1: Connection, what it names, Proxy-Connection, Keep-Alive,
// TE, Transfer-Encoding, Upgrade). The response handed on as it arrived keeps them all.
#[tokio::test(start_paused = true)]
async fn a_stored_copy_drops_hop_by_hop_and_proxy_headers() {
    let dropped = [
        ("connection", "close, X-Hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("proxy-authenticate", "Basic realm=\"proxy\""),
        ("proxy-authentication-info", "nextnonce=\"x\""),
        ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
    ];
    let kept = [("content-type", "text/plain"), ("etag", "\"v1\"")];
    let mut headers = dropped.to_vec();
    headers.extend(kept);
    let mock = Mock::always(ok(&headers, "body"));
    let c = client(&mock, FallbackCache::default());
    let first = get(&c, &[]).await;
    for (name, _) in &headers {
        assert!(first.headers().contains_key(*name), "{name} handed on");
    }
    first.text().await.unwrap();
    mock.set(Step::Status(503));
    let served = get(&c, &[]).await;
    assert!(served.fallback().is_some());
    for (name, _) in dropped {
        assert!(!served.headers().contains_key(name), "{name} replayed");
    }
    for (name, value) in kept {
        assert_eq!(served.headers()[name], value);
    }
    assert_eq!(served.text().await.unwrap(), "body");
}

// Issue 9, defect 12: without explicit freshness only heuristically cacheable statuses
// (RFC 9111 §4.2.2) are stored: a 202 Accepted must not be replayed.
#[tokio::test(start_paused = true)]
async fn only_heuristically_cacheable_statuses_are_stored_without_freshness() {
    for (status, headers, expect) in [
        (202, vec![], false),
        (201, vec![], false),
        (200, vec![], true),
        (203, vec![], true),
        (202, vec![("cache-control", "max-age=60".to_owned())], true),
        (201, vec![("cache-control", "public".to_owned())], true),
    ] {
        let mock = Mock::always(Step::With(status, headers.clone()));
        let c = client(&mock, FallbackCache::default());
        get(&c, &[]).await;
        mock.set(Step::Status(503));
        let resp = get(&c, &[]).await;
        assert_eq!(resp.fallback().is_some(), expect, "{status} {headers:?}");
    }
}

// Issue 9, defect 12: a stored response's age counts from when its final request was sent
// (RFC 9111 §4.2.3), not from the first attempt.
#[tokio::test(start_paused = true)]
async fn the_age_counts_from_when_the_final_attempt_was_sent() {
    let mock = Mock::script([Step::after(secs(3), Step::Status(503))]);
    mock.set(ok(&[], "good"));
    let c = mock.client(|b| {
        b.retry(support::exact(ms(100), secs(1)))
            .no_circuit_breaker()
            .fallback_cache(FallbackCache::default())
    });
    let first = get(&c, &[]).await;
    assert_eq!(first.attempts(), 2);
    first.text().await.unwrap();
    mock.set(Step::Status(503));
    tokio::time::advance(secs(5)).await;
    // Three failed attempts, 100 ms and 200 ms apart.
    let served = get(&c, &[]).await;
    assert_eq!(served.fallback().unwrap().age(), Some(ms(5_300)));
    assert_eq!(served.headers()["age"], "5");
}

// Issue 9, defect 12: the key drops the fragment (RFC 9110 §7.1): a POST to the URL voids
// what was stored for it with a fragment, and the two are one resource.
#[tokio::test(start_paused = true)]
async fn the_key_ignores_the_fragment() {
    let mock = Mock::always(ok(&[], "x"));
    let c = client(&mock, FallbackCache::default());
    c.get(format!("{URL}#x"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    mock.set(Step::Status(503));
    let resp = c.get(URL).send().await.unwrap();
    assert!(resp.fallback().is_some(), "one resource");
    assert!(resp.url().fragment().is_none(), "{}", resp.url());
    mock.set(Step::Status(200));
    c.post(URL).send().await.unwrap();
    mock.set(Step::Status(503));
    let resp = c.get(format!("{URL}#x")).send().await.unwrap();
    assert_eq!(resp.status(), 503, "voided by the POST");
}

// Issue 9, defect 12: a request sent with `execute` keeps the userinfo in its URL; the key
// drops it, and the stored copy's URL does not replay it to another request.
#[tokio::test(start_paused = true)]
async fn the_key_and_the_stored_url_drop_the_userinfo() {
    let mock = Mock::always(ok(&[("cache-control", "public")], "x"));
    let c = client(&mock, FallbackCache::default());
    let with_userinfo = "http://user:s3cret@api.test/items/1";
    let req = reqwest::Request::new(reqwest::Method::GET, with_userinfo.parse().unwrap());
    c.execute(req).await.unwrap().text().await.unwrap();
    mock.set(Step::Status(503));
    let resp = c.get(URL).send().await.unwrap();
    assert!(resp.fallback().is_some(), "one resource");
    assert_eq!(resp.url().as_str(), URL, "no userinfo replayed");
    mock.set(Step::Status(204));
    c.delete(URL).send().await.unwrap();
    mock.set(Step::Status(503));
    let req = reqwest::Request::new(reqwest::Method::GET, with_userinfo.parse().unwrap());
    assert_eq!(c.execute(req).await.unwrap().status(), 503, "voided");
}

// Issue 9, more of defect 12's kind: userinfo in the URL is a credential, like
// `Authorization`: without `public` or the opt-in, the response is not stored.
#[tokio::test(start_paused = true)]
async fn userinfo_counts_as_credentials() {
    let mock = Mock::always(ok(&[], "secret"));
    let c = client(&mock, FallbackCache::default());
    let url = "http://user:s3cret@api.test/items/1";
    let send = |c: &Client| {
        c.execute(reqwest::Request::new(
            reqwest::Method::GET,
            url.parse().unwrap(),
        ))
    };
    send(&c).await.unwrap().bytes().await.unwrap();
    mock.set(Step::Status(503));
    assert_eq!(send(&c).await.unwrap().status(), 503);
}

// Issue 9, more of defect 12's kind: percent-encodings that RFC 3986 §6.2.2 makes equivalent
// (hex case, unreserved characters) name one resource in the key.
#[tokio::test(start_paused = true)]
async fn the_key_normalises_percent_encoding() {
    let mock = Mock::always(ok(&[], "x"));
    let c = client(&mock, FallbackCache::default());
    c.get("http://api.test/a%2fb/%7Euser?q=%41")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    mock.set(Step::Status(503));
    let resp = c
        .get("http://api.test/a%2Fb/~user?q=A")
        .send()
        .await
        .unwrap();
    assert!(resp.fallback().is_some(), "one resource");
    mock.set(Step::Status(204));
    c.delete("http://api.test/a%2Fb/%7euser?q=A")
        .send()
        .await
        .unwrap();
    mock.set(Step::Status(503));
    let resp = c
        .get("http://api.test/a%2fb/%7Euser?q=%41")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "voided");
    // A reserved character and its encoding stay two resources.
    mock.set(ok(&[], "x"));
    let stored = c.get("http://api.test/a%2Fb").send().await.unwrap();
    stored.bytes().await.unwrap();
    mock.set(Step::Status(503));
    assert_eq!(
        c.get("http://api.test/a/b").send().await.unwrap().status(),
        503
    );
}

// Issue 9, defect 12: a GET that started before a successful DELETE and ended after it was
// stored, because voiding did nothing when nothing was stored yet.
#[tokio::test(start_paused = true)]
async fn a_get_that_started_before_a_successful_delete_is_not_stored() {
    let mock = Mock::script([Step::after(secs(2), ok(&[], "before")), Step::Status(204)]);
    let c = client(&mock, FallbackCache::default());
    let racing = tokio::spawn({
        let c = c.clone();
        async move { get(&c, &[]).await.text().await.unwrap() }
    });
    tokio::task::yield_now().await;
    c.delete(URL).send().await.unwrap();
    assert_eq!(racing.await.unwrap(), "before");
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.status(), 503, "voided while in flight");
}

// Issue 9, a guard on how defect 12's race is fixed: voiding URLs with nothing stored takes no
// room in the store, so a run of unsafe requests to new URLs evicts nothing.
#[tokio::test(start_paused = true)]
async fn voiding_urls_with_nothing_stored_evicts_nothing() {
    let cfg = FallbackCache::default()
        .max_entry_bytes(1024)
        .max_bytes(16 << 10);
    let mock = Mock::always(ok(&[], "kept"));
    let c = client(&mock, cfg);
    load(&c, &[]).await;
    mock.set(Step::Status(201));
    for i in 0..200 {
        c.post(format!("http://api.test/orders/{i}"))
            .send()
            .await
            .unwrap();
    }
    c.fallback_cache().unwrap().sync();
    mock.set(Step::Status(503));
    assert_eq!(get(&c, &[]).await.text().await.unwrap(), "kept");
}

// Issue 9, more of its kind (memory): a body that came in one chunk was stored as that chunk,
// which for hyper is a slice of the connection's read buffer (8 KiB to 400 KiB): the store held
// the whole buffer while weighing the slice. The stored copy is its own allocation.
#[tokio::test(start_paused = true)]
async fn a_stored_body_does_not_hold_the_buffer_it_was_read_from() {
    let freed = support::Freed::default();
    let buffer = std::sync::Mutex::new(Some(freed.chunk(&[b'x'; 64 << 10])));
    let c = client_over(
        FallbackCache::default(),
        |b| b,
        move |n| match buffer.lock().unwrap().take() {
            // A 10-byte body, sliced from a 64 KiB read buffer.
            Some(buf) => support::chunked_response_of(vec![buf.slice(..10)], BodyEnd::Finish, None),
            None => {
                assert!(n > 0);
                support::response(503, &[], Vec::new())
            }
        },
    );
    let resp = c.get(URL).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), 10);
    let served = c.get(URL).send().await.unwrap();
    assert!(served.fallback().is_some(), "stored");
    assert!(
        freed.is_freed(),
        "the read buffer is not kept with the stored copy"
    );
}

// Issue 9, more of its kind (memory): stored header values were clones of the received ones,
// which hyper slices from the connection's read buffer: the store held the whole buffer while
// weighing the values. The stored values are their own allocation.
#[tokio::test(start_paused = true)]
async fn stored_headers_do_not_hold_the_buffer_they_were_read_from() {
    let freed = support::Freed::default();
    let head = std::sync::Mutex::new(Some(freed.chunk(b"text/plain; charset=utf-8 and more")));
    let c = client_over(
        FallbackCache::default(),
        |b| b,
        move |_| match head.lock().unwrap().take() {
            Some(buf) => {
                let value = http::HeaderValue::from_maybe_shared(buf.slice(..25)).unwrap();
                let mut resp = support::response(200, &[], b"x".to_vec());
                resp.headers_mut().insert("content-type", value);
                resp
            }
            None => support::response(503, &[], Vec::new()),
        },
    );
    let resp = c.get(URL).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    resp.bytes().await.unwrap();
    let served = c.get(URL).send().await.unwrap();
    assert_eq!(
        served.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    drop(served);
    assert!(
        freed.is_freed(),
        "the read buffer is not kept with the stored headers"
    );
}

// Issue 9, defect 10, over a real socket: a chunked feed that sends its head and a first line,
// then waits. Without the cache reqwest hands it on at once; with it the caller got
// `Err(Timeout)` at the total timeout.
#[tokio::test]
async fn a_chunked_feed_from_a_real_server_is_handed_on_at_once() {
    let (addr, heads) = support::net::stalling_server(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
          transfer-encoding: chunked\r\n\r\n8\r\n{\"n\":1}\n\r\n",
    )
    .await;
    let c = Client::builder()
        .total_timeout(secs(2))
        .attempt_timeout(secs(1))
        .no_retry()
        .no_circuit_breaker()
        .fallback_cache(FallbackCache::default())
        .build()
        .unwrap();
    let start = std::time::Instant::now();
    let mut resp = c
        .get(format!("http://{addr}/feed"))
        .send()
        .await
        .expect("the head, not the total timeout");
    assert_eq!(&resp.chunk().await.unwrap().unwrap()[..], b"{\"n\":1}\n");
    assert!(start.elapsed() < secs(1), "{:?}", start.elapsed());
    heads.assert_settles_at(1, "one request").await;
}

// Review of issue 9: the copy's bound was kept by a timer, armed when the body made the caller
// wait, and a tokio runtime built without timers panicked there. It is checked as chunks come.
#[test]
fn a_runtime_without_timers_reads_a_stored_body() {
    use palisade::layer::FallbackCacheLayer;
    use tower::{Service, ServiceExt};

    /// A body that makes its reader wait once, then ends.
    struct WaitOnce(bool);
    impl http_body::Body for WaitOnce {
        type Data = bytes::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>>
        {
            if !self.0 {
                self.0 = true;
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(None)
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime without timers");
    rt.block_on(async {
        let transport = tower::service_fn(|_req: reqwest::Request| async {
            let body = reqwest::Body::wrap(WaitOnce(false));
            Ok::<_, palisade::Error>(reqwest::Response::from(http::Response::new(body)))
        });
        let layer = FallbackCacheLayer::new(FallbackCache::default()).unwrap();
        let handle = layer.handle();
        let mut svc = tower::ServiceBuilder::new().layer(layer).service(transport);
        let req = reqwest::Request::new(reqwest::Method::GET, URL.parse().unwrap());
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert!(resp.bytes().await.unwrap().is_empty());
        handle.sync();
        assert_eq!(handle.entry_count(), 1);
    });
}

// Review of issue 9: a variant voided by a successful DELETE came back. The resource stopped
// varying for a while (the index went), its plain entry expired, a DELETE then found neither
// and only marked the key, and a new `Vary` response wrote a new index that had forgotten the
// void: the old variant was served after the DELETE. The index written keeps the key's mark.
#[tokio::test(start_paused = true)]
async fn a_variant_voided_while_unreachable_stays_voided() {
    let mock = Mock::default();
    let c = client(&mock, FallbackCache::default());
    let en = [("accept-language", "en")];
    // 1. A variant for `en`, servable stale for an hour.
    mock.set(ok(
        &[
            ("vary", "accept-language"),
            ("cache-control", "max-age=0, stale-if-error=3600"),
        ],
        "en-old",
    ));
    load(&c, &en).await;
    // 2. The resource stops varying: the index goes, and a plain entry that moka expires
    //    (on its own clock, in real time) a millisecond after it is stored: it arrives
    //    999 ms into its 1 s of freshness.
    mock.set(Step::after(
        ms(999),
        ok(&[("cache-control", "max-age=1, must-revalidate")], "plain"),
    ));
    load(&c, &[]).await;
    std::thread::sleep(std::time::Duration::from_millis(20));
    let handle = c.fallback_cache().unwrap();
    handle.sync();
    // 3. A DELETE succeeds: it finds no index and no plain entry, and marks the key.
    mock.set(Step::Status(204));
    c.delete(URL).send().await.unwrap();
    // 4. The resource varies again: a new index.
    mock.set(ok(
        &[("vary", "accept-language"), ("cache-control", "max-age=60")],
        "fr-new",
    ));
    load(&c, &[("accept-language", "fr")]).await;
    // 5. The server fails: `en` must not get what was stored before the DELETE.
    mock.set(Step::Status(503));
    let resp = get(&c, &en).await;
    assert_eq!(resp.status(), 503, "served {:?}", resp.fallback());
    // The variant stored after the DELETE is served.
    let resp = get(&c, &[("accept-language", "fr")]).await;
    assert!(served(&resp));
    assert_eq!(resp.text().await.unwrap(), "fr-new");
}

// Review of issue 9 (second pass): a head that announced its length took the budget for copies
// before any data came, so responses held unread stopped others from being stored.
#[tokio::test(start_paused = true)]
async fn an_announced_length_takes_no_budget_before_data_comes() {
    let cfg = FallbackCache::default()
        .max_bytes(4096)
        .max_entry_bytes(2048);
    let c = client_over(
        cfg,
        |b| b,
        |i| {
            if i < 2 {
                support::chunked_response(vec![], BodyEnd::Hang, Some(2048))
            } else {
                support::chunked_response(vec![b"small"], BodyEnd::Finish, Some(5))
            }
        },
    );
    let handle = c.fallback_cache().unwrap().clone();
    let a = c.get("http://api.test/a").send().await.unwrap();
    let b = c.get("http://api.test/b").send().await.unwrap();
    assert_eq!(handle.copying_bytes(), 0);
    let s = c.get("http://api.test/s").send().await.unwrap();
    assert_eq!(s.text().await.unwrap(), "small");
    handle.sync();
    assert_eq!(handle.entry_count(), 1, "stored");
    drop((a, b));
    assert_eq!(handle.copying_bytes(), 0);
}

// Review of issue 9 (second pass): growing a copy asked the budget for twice its size and gave
// the copy up when that did not fit, though its exact size did.
#[tokio::test(start_paused = true)]
async fn a_copy_grows_to_its_exact_size_when_doubling_does_not_fit() {
    static A: [u8; 1500] = [b'a'; 1500];
    static K: [u8; 1000] = [b'k'; 1000];
    static H: [u8; 500] = [b'h'; 500];
    let cfg = FallbackCache::default()
        .max_bytes(8192)
        .max_entry_bytes(4096);
    let c = client_over(
        cfg,
        |b| b,
        |i| match i {
            0 => support::chunked_response(vec![&A[..]], BodyEnd::Hang, None),
            1 => support::chunked_response(vec![&A[..], &A[..], &K[..]], BodyEnd::Hang, None),
            _ => support::chunked_response(vec![&K[..], &K[..], &H[..]], BodyEnd::Finish, None),
        },
    );
    let handle = c.fallback_cache().unwrap().clone();
    let mut a = c.get("http://api.test/a").send().await.unwrap();
    a.chunk().await.unwrap();
    let mut b = c.get("http://api.test/b").send().await.unwrap();
    for _ in 0..3 {
        b.chunk().await.unwrap();
    }
    // 1,500 + 4,096 (the second, 4,000 bytes, grew to its limit) held: room for 2,596 more.
    assert_eq!(handle.copying_bytes(), 1_500 + 4_096);
    let d = c.get("http://api.test/d").send().await.unwrap();
    assert_eq!(d.bytes().await.unwrap().len(), 2_500);
    handle.sync();
    assert_eq!(
        handle.entry_count(),
        1,
        "1,000 → 2,000 → 2,500 fits, 4,000 would not"
    );
    drop((a, b));
    assert_eq!(handle.copying_bytes(), 0);
}
