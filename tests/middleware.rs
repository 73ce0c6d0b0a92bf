//! palisade's pipeline as a `reqwest-middleware` middleware (feature `middleware`), in real
//! chains with reqwest-tracing, against real local servers (wiremock, or a closed port).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Extensions;
use palisade::circuit_breaker::CircuitBreaker;
use palisade::middleware::{palisade_error, PalisadeMiddleware};
use palisade::retry::{Backoff, Jitter, Retry};
use palisade::{ResponseExt, TimeoutKind};
use reqwest::{Request, Response};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use reqwest_tracing::TracingMiddleware;
use tokio::time::Instant;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Retries at once (1 ms, no jitter) and without a budget, so that tests are quick and exact.
fn quick_retry(attempts: u32) -> Retry {
    Retry::default()
        .max_attempts(attempts)
        .backoff(Backoff::new(ms(1), ms(1)).jitter(Jitter::None))
        .no_budget()
}

/// A chain: `before`, then palisade, then `after`, then reqwest (built as palisade builds its
/// own: no retries of reqwest's).
fn chain(
    before: Vec<Arc<dyn Middleware>>,
    palisade: PalisadeMiddleware,
    after: Vec<Arc<dyn Middleware>>,
) -> ClientWithMiddleware {
    let http = reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .build()
        .expect("reqwest client");
    let mut b = reqwest_middleware::ClientBuilder::new(http);
    for m in before {
        b = b.with_arc(m);
    }
    b = b.with(palisade);
    for m in after {
        b = b.with_arc(m);
    }
    b.build()
}

/// Counts the calls that pass through it.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl Counting {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Middleware for Counting {
    async fn handle(
        &self,
        req: Request,
        ext: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(req, ext).await
    }
}

async fn flaky_server(failures: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(failures)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn each_retry_runs_the_middleware_below_palisade_again() {
    let server = flaky_server(2).await;
    let (above, below) = (Counting::default(), Counting::default());
    let palisade = palisade::Client::builder()
        .retry(quick_retry(3))
        .build_middleware()
        .unwrap();
    let client = chain(
        vec![Arc::new(above.clone())],
        palisade,
        vec![Arc::new(below.clone())],
    );

    let resp = client
        .get(format!("{}/flaky", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.attempts(), 3);
    assert_eq!(below.get(), 3, "the middleware below sees every attempt");
    assert_eq!(above.get(), 1, "the middleware above sees the call once");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    assert_eq!(resp.text().await.unwrap(), "ok");
}

// ---------------------------------------------------------------------------------------------
// reqwest-tracing in the same chain

/// A span as a capturing layer saw it: its name, its fields as recorded, and its parent's name.
#[derive(Clone, Debug)]
struct SpanSeen {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<&'static str>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<SpanSeen>>>);

struct Index(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").replace('"', ""),
        );
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let span = ctx.span(id).expect("a new span is registered");
        let parent = span.parent().map(|p| p.name());
        let mut spans = self.0.lock().unwrap();
        span.extensions_mut().insert(Index(spans.len()));
        spans.push(SpanSeen {
            name: attrs.metadata().name(),
            fields,
            parent,
        });
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let ext = span.extensions();
        let Some(Index(i)) = ext.get::<Index>() else {
            return;
        };
        values.record(&mut Fields(&mut self.0.lock().unwrap()[*i].fields));
    }
}

impl Capture {
    fn named(&self, name: &str) -> Vec<SpanSeen> {
        let spans = self.0.lock().unwrap();
        spans.iter().filter(|s| s.name == name).cloned().collect()
    }
}

/// reqwest-tracing's span for a request.
const TRACING_SPAN: &str = "HTTP request";

#[tokio::test]
async fn reqwest_tracing_after_palisade_has_a_span_per_attempt() {
    use tracing_subscriber::layer::SubscriberExt;
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));

    let server = flaky_server(2).await;
    let palisade = palisade::Client::builder()
        .retry(quick_retry(3))
        .build_middleware()
        .unwrap();
    let client = chain(
        vec![],
        palisade,
        vec![Arc::new(TracingMiddleware::default())],
    );
    let resp = client
        .get(format!("{}/flaky", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let attempts = capture.named(TRACING_SPAN);
    let statuses: Vec<_> = attempts
        .iter()
        .map(|s| s.fields.get("http.response.status_code").cloned())
        .collect();
    assert_eq!(
        statuses,
        ["503", "503", "200"].map(|s| Some(s.to_owned())),
        "{attempts:#?}"
    );
    // Each attempt's span is a child of palisade's span for the call.
    let calls = capture.named("http.request");
    assert_eq!(calls.len(), 1, "{calls:#?}");
    for a in &attempts {
        assert_eq!(a.parent, Some("http.request"), "{a:#?}");
    }
}

#[tokio::test]
async fn reqwest_tracing_before_palisade_has_one_span_per_call() {
    use tracing_subscriber::layer::SubscriberExt;
    let capture = Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));

    let server = flaky_server(2).await;
    let palisade = palisade::Client::builder()
        .retry(quick_retry(3))
        .build_middleware()
        .unwrap();
    let client = chain(
        vec![Arc::new(TracingMiddleware::default())],
        palisade,
        vec![],
    );
    let resp = client
        .get(format!("{}/flaky", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 3);

    let spans = capture.named(TRACING_SPAN);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(
        spans[0]
            .fields
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    let calls = capture.named("http.request");
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].parent, Some(TRACING_SPAN));
}

// ---------------------------------------------------------------------------------------------
// Timeouts cancel what runs below

/// Records when the calls through it start, finish, and are dropped unfinished.
#[derive(Clone, Default)]
struct Watch(Arc<Mutex<Vec<(&'static str, Instant)>>>);

impl Watch {
    fn log(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|(e, _)| *e).collect()
    }
}

struct Unfinished(Watch, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            (self.0).0.lock().unwrap().push(("dropped", Instant::now()));
        }
    }
}

#[async_trait::async_trait]
impl Middleware for Watch {
    async fn handle(
        &self,
        req: Request,
        ext: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.0.lock().unwrap().push(("started", Instant::now()));
        let mut guard = Unfinished(self.clone(), false);
        let result = next.run(req, ext).await;
        guard.1 = true;
        self.0.lock().unwrap().push(("finished", Instant::now()));
        result
    }
}

#[tokio::test]
async fn an_attempt_timeout_cancels_the_attempt_running_below() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(ms(200)))
        .mount(&server)
        .await;
    let watch = Watch::default();
    let palisade = palisade::Client::builder()
        .attempt_timeout(ms(40))
        .retry(quick_retry(2))
        .build_middleware()
        .unwrap();
    let client = chain(vec![], palisade, vec![Arc::new(watch.clone())]);

    let start = Instant::now();
    let err = client.get(server.uri()).send().await.unwrap_err();
    let took = start.elapsed();
    let e = palisade_error(&err).expect("palisade's own timeout");
    assert_eq!(e.timeout_kind(), Some(TimeoutKind::Attempt));
    assert_eq!(e.attempts(), 2);
    // Each attempt was dropped when its timeout fired, before the next one started: not left
    // to finish, not dropped only with the call.
    assert_eq!(
        watch.log(),
        ["started", "dropped", "started", "dropped"],
        "{:?}",
        watch.0.lock().unwrap()
    );
    // Waiting for the server would take 400 ms (two attempts of 200 ms).
    assert!(took < ms(350), "the call waited for the server: {took:?}");
}

#[tokio::test]
async fn the_total_timeout_bounds_the_chain_below() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).set_delay(ms(30)))
        .mount(&server)
        .await;
    let watch = Watch::default();
    let palisade = palisade::Client::builder()
        .total_timeout(ms(100))
        .attempt_timeout(ms(100))
        .retry(quick_retry(50))
        .build_middleware()
        .unwrap();
    let client = chain(vec![], palisade, vec![Arc::new(watch.clone())]);

    let start = Instant::now();
    let err = client.get(server.uri()).send().await.unwrap_err();
    let e = palisade_error(&err).expect("palisade's own timeout");
    assert_eq!(e.timeout_kind(), Some(TimeoutKind::Total));
    // 50 attempts of 30 ms would take 1.5 s.
    assert!(start.elapsed() < ms(300), "{:?}", start.elapsed());
    let log = watch.log();
    assert_eq!(log.last(), Some(&"dropped"), "{log:?}");
    assert!(
        log.iter().filter(|e| **e == "started").count() >= 2,
        "{log:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The breaker, and what errors come back as

#[tokio::test]
async fn the_circuit_breaker_opens_through_the_middleware() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let below = Counting::default();
    let palisade = palisade::Client::builder()
        .no_retry()
        .circuit_breaker(CircuitBreaker::default().consecutive_failures(3))
        .build_middleware()
        .unwrap();
    let handle = palisade.clone();
    let client = chain(vec![], palisade, vec![Arc::new(below.clone())]);

    for _ in 0..3 {
        let resp = client.get(server.uri()).send().await.unwrap();
        assert_eq!(resp.status(), 500);
    }
    let err = client.get(server.uri()).send().await.unwrap_err();
    assert!(err.is_middleware());
    let e = palisade_error(&err).expect("an open circuit is palisade's");
    assert!(e.is_circuit_open(), "{e:?}");
    assert!(e.retry_after().is_some());
    assert_eq!(below.get(), 3, "the open circuit sent nothing below");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    let host = server.address().to_string();
    assert_eq!(
        handle.circuit_breaker().unwrap().state(&host),
        palisade::CircuitState::Open
    );
    assert_eq!(handle.health().hosts.len(), 1);
}

#[tokio::test]
async fn a_refused_connection_comes_back_as_a_reqwest_connect_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let below = Counting::default();
    let palisade = palisade::Client::builder()
        .retry(quick_retry(3))
        .build_middleware()
        .unwrap();
    let client = chain(vec![], palisade, vec![Arc::new(below.clone())]);

    // A POST too: nothing reached the server, so it is retried like a GET.
    let err = client
        .post(format!("http://{addr}/x"))
        .body("payload")
        .send()
        .await
        .unwrap_err();
    match &err {
        reqwest_middleware::Error::Reqwest(e) => assert!(e.is_connect(), "{e:?}"),
        other => panic!("not a reqwest error: {other:?}"),
    }
    assert!(err.is_connect());
    assert!(palisade_error(&err).is_none());
    assert_eq!(below.get(), 3, "retried as a connect failure");
}

#[tokio::test]
async fn no_error_shows_a_secret_of_the_url() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let palisade = palisade::Client::builder()
        .no_retry()
        .build_middleware()
        .unwrap();
    let handle = palisade.clone();
    let client = chain(vec![], palisade, vec![]);
    let url = format!("http://user:hunter2@{addr}/p?token=s3cret&page=2");
    let secrets = ["hunter2", "s3cret"];
    let shown = |err: &reqwest_middleware::Error| format!("{err} {err:#} {err:?} {err:#?}");

    // A reqwest error, its URL shown by palisade's rules.
    let err = client.get(&url).send().await.unwrap_err();
    let text = shown(&err);
    for s in secrets {
        assert!(!text.contains(s), "{s} leaked: {text}");
    }
    assert!(err.is_connect());
    assert_eq!(
        err.url().map(|u| u.as_str()),
        Some(format!("http://{addr}/p?token=REDACTED&page=REDACTED").as_str())
    );

    // An error of palisade's own.
    handle.circuit_breaker().unwrap().isolate(&addr.to_string());
    let err = client.get(&url).send().await.unwrap_err();
    assert!(palisade_error(&err).unwrap().is_circuit_open());
    let text = shown(&err);
    for s in secrets {
        assert!(!text.contains(s), "{s} leaked: {text}");
    }
    assert!(text.contains("token=REDACTED"), "{text}");
}

#[derive(Debug, thiserror::Error)]
#[error("no token for {0}")]
struct NoToken(String);

/// Fails every call with [`NoToken`], naming the request's URL in its message when `quote`.
struct FailingAuth {
    calls: Counting,
    quote: bool,
}

#[async_trait::async_trait]
impl Middleware for FailingAuth {
    async fn handle(
        &self,
        req: Request,
        _: &mut Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.calls.0.fetch_add(1, Ordering::SeqCst);
        let what = if self.quote {
            req.url().to_string()
        } else {
            req.url().host_str().unwrap_or("").to_owned()
        };
        Err(reqwest_middleware::Error::middleware(NoToken(what)))
    }
}

#[tokio::test]
async fn a_middleware_error_below_is_not_retried_and_comes_back_as_it_came() {
    let calls = Counting::default();
    let palisade = palisade::Client::builder()
        .retry(quick_retry(3))
        .build_middleware()
        .unwrap();
    let auth = FailingAuth {
        calls: calls.clone(),
        quote: false,
    };
    let client = chain(vec![], palisade, vec![Arc::new(auth)]);

    let err = client.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(calls.get(), 1, "a middleware's failure is not retried");
    let reqwest_middleware::Error::Middleware(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.downcast_ref::<NoToken>().unwrap().0, "api.test");
    assert!(palisade_error(&err).is_none());
}

#[tokio::test]
async fn a_middleware_error_that_quotes_a_secret_comes_back_scrubbed() {
    let calls = Counting::default();
    let palisade = palisade::Client::builder().build_middleware().unwrap();
    let auth = FailingAuth {
        calls: calls.clone(),
        quote: true,
    };
    let client = chain(vec![], palisade, vec![Arc::new(auth)]);

    let err = client
        .get("http://api.test/x?api_key=s3cretkey")
        .send()
        .await
        .unwrap_err();
    let text = format!("{err} {err:#} {err:?} {err:#?}");
    assert!(!text.contains("s3cretkey"), "leaked: {text}");
    // What is left is palisade's, with the message kept, scrubbed.
    let e = palisade_error(&err).expect("the scrubbed copy is palisade's");
    assert_eq!(e.kind(), palisade::ErrorKind::Request);
    assert!(text.contains("no token for"), "{text}");
}

/// Fails every call with a timed-out I/O error, as a middleware that wraps its own I/O might.
struct TimingOut(Counting);

#[async_trait::async_trait]
impl Middleware for TimingOut {
    async fn handle(
        &self,
        _: Request,
        _: &mut Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.0 .0.fetch_add(1, Ordering::SeqCst);
        Err(reqwest_middleware::Error::middleware(io::Error::from(
            io::ErrorKind::TimedOut,
        )))
    }
}

#[tokio::test]
async fn a_middleware_error_is_classed_by_what_its_chain_holds() {
    let calls = Counting::default();
    let palisade = palisade::Client::builder()
        .retry(quick_retry(3))
        .build_middleware()
        .unwrap();
    let client = chain(vec![], palisade, vec![Arc::new(TimingOut(calls.clone()))]);

    let err = client.get("http://api.test/x").send().await.unwrap_err();
    assert_eq!(calls.get(), 3, "a timeout is retried, wrapped or not");
    let reqwest_middleware::Error::Middleware(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        e.downcast_ref::<io::Error>().map(io::Error::kind),
        Some(io::ErrorKind::TimedOut)
    );
}

// ---------------------------------------------------------------------------------------------
// Extensions

#[derive(Clone, Debug, PartialEq)]
struct Caller(&'static str);

#[derive(Clone, Debug, PartialEq)]
struct LeftBy(usize);

/// Below palisade: checks that each attempt starts from the caller's extensions, and leaves a
/// mark of its own.
#[derive(Clone, Default)]
struct Marking(Counting);

#[async_trait::async_trait]
impl Middleware for Marking {
    async fn handle(
        &self,
        req: Request,
        ext: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let n = self.0 .0.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(ext.get::<Caller>(), Some(&Caller("me")));
        assert_eq!(
            ext.get::<LeftBy>(),
            None,
            "attempt {n} saw an earlier one's mark"
        );
        ext.insert(LeftBy(n));
        next.run(req, ext).await
    }
}

/// Above palisade: what the caller's extensions hold once the call is over.
#[derive(Clone, Default)]
struct After(Arc<Mutex<Option<LeftBy>>>);

#[async_trait::async_trait]
impl Middleware for After {
    async fn handle(
        &self,
        req: Request,
        ext: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let result = next.run(req, ext).await;
        *self.0.lock().unwrap() = ext.get::<LeftBy>().cloned();
        result
    }
}

#[tokio::test]
async fn each_attempt_gets_a_copy_of_the_callers_extensions_and_the_last_is_kept() {
    let server = flaky_server(2).await;
    let marking = Marking::default();
    let after = After::default();
    let palisade = palisade::Client::builder()
        .retry(quick_retry(3))
        .build_middleware()
        .unwrap();
    let client = chain(
        vec![Arc::new(after.clone())],
        palisade,
        vec![Arc::new(marking.clone())],
    );

    let resp = client
        .get(format!("{}/flaky", server.uri()))
        .with_extension(Caller("me"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(marking.0.get(), 3);
    assert_eq!(*after.0.lock().unwrap(), Some(LeftBy(3)));
}

// ---------------------------------------------------------------------------------------------
// Building

#[test]
fn build_middleware_refuses_what_it_would_not_use() {
    let err = palisade::Client::builder()
        .http_client(reqwest::Client::new())
        .build_middleware()
        .unwrap_err();
    assert_eq!(err.field(), "http_client");
    let err = palisade::Client::builder()
        .transport(tower::service_fn(|_: Request| async {
            Err::<Response, _>(palisade::Error::from_source(
                palisade::ErrorKind::Transport,
                "unused",
            ))
        }))
        .build_middleware()
        .unwrap_err();
    assert_eq!(err.field(), "transport");
    // And the stages are checked as `build` checks them.
    let err = palisade::Client::builder()
        .retry(Retry::default().max_attempts(0))
        .build_middleware()
        .unwrap_err();
    assert_eq!(err.field(), "retry.max_attempts");
}

#[test]
fn debug_shows_the_pipeline_over_the_next_middleware() {
    let shown = format!("{:?}", PalisadeMiddleware::new());
    assert!(
        shown.ends_with("attempt_timeout(10s) → next middleware\" }"),
        "{shown}"
    );
}

// Not a chain to build (two retriers multiply their attempts), but each palisade in it must
// send its attempts through its own part of the chain.
#[tokio::test]
async fn two_palisades_in_one_chain_each_run_their_own_attempts() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let (between, below) = (Counting::default(), Counting::default());
    let outer = palisade::Client::builder()
        .retry(quick_retry(2))
        .build_middleware()
        .unwrap();
    let inner = palisade::Client::builder()
        .retry(quick_retry(3))
        .build_middleware()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(outer)
        .with(between.clone())
        .with(inner)
        .with(below.clone())
        .build();

    let resp = client.get(server.uri()).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(between.get(), 2);
    assert_eq!(below.get(), 6);
    assert_eq!(server.received_requests().await.unwrap().len(), 6);
}

#[tokio::test]
async fn host_policies_pick_the_pipeline_as_a_clients_do() {
    let server = flaky_server(2).await;
    let below = Counting::default();
    let palisade = palisade::Client::builder()
        .retry(quick_retry(3))
        .host("127.0.0.1", palisade::HostPolicy::new().no_retry())
        .build_middleware()
        .unwrap();
    let client = chain(vec![], palisade, vec![Arc::new(below.clone())]);

    let resp = client
        .get(format!("{}/flaky", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "the host's policy sends once");
    assert_eq!(below.get(), 1);
}
