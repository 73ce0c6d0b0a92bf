//! The client's API: request building, clones, `ResponseExt`, tracing.

mod support;

use palisade::{Client, ResponseExt};
use support::{Mock, Step};

#[tokio::test(start_paused = true)]
async fn the_request_builder_passes_everything_to_the_transport() {
    let mock = Mock::always(Step::Full(
        201,
        vec![("x-answer", "42".into())],
        b"made".to_vec(),
    ));
    let client = mock.client(|b| b);
    let resp = client
        .put("http://api.test/items/7?x=1")
        .header("x-trace", "abc")
        .bearer_auth("token-1")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-answer"], "42");
    assert_eq!(resp.attempts(), 1);
    assert_eq!(resp.text().await.unwrap(), "made");
    let seen = &mock.seen()[0];
    assert_eq!(seen.method, reqwest::Method::PUT);
    assert_eq!(seen.url, "http://api.test/items/7?x=1");
    assert_eq!(seen.headers["x-trace"], "abc");
    assert_eq!(seen.headers["authorization"], "Bearer token-1");
}

#[tokio::test(start_paused = true)]
async fn every_method_helper_sets_its_method() {
    let mock = Mock::always(Step::Status(204));
    let client = mock.client(|b| b);
    let url = "http://api.test/";
    client.get(url).send().await.unwrap();
    client.post(url).send().await.unwrap();
    client.put(url).send().await.unwrap();
    client.patch(url).send().await.unwrap();
    client.delete(url).send().await.unwrap();
    client.head(url).send().await.unwrap();
    let req = client.get(url).basic_auth("u", Some("p")).build().unwrap();
    client.execute(req).await.unwrap();
    let methods: Vec<_> = mock.seen().iter().map(|s| s.method.to_string()).collect();
    assert_eq!(
        methods,
        ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "GET"]
    );
    assert!(mock.seen()[6].headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
}

#[tokio::test(start_paused = true)]
async fn a_builder_can_be_cloned_and_sent_twice() {
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| b);
    let b = client.get("http://api.test/").header("a", "b");
    let again = b.try_clone().unwrap();
    b.send().await.unwrap();
    again.send().await.unwrap();
    assert_eq!(mock.calls(), 2);
    let streaming = client
        .post("http://api.test/")
        .body(reqwest::Body::wrap(String::from("s")));
    assert!(streaming.try_clone().is_none());
}

#[tokio::test(start_paused = true)]
async fn futures_are_static_and_send() {
    fn assert_send_static<T: Send + 'static>(_: &T) {}
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| b);
    let fut = client.get("http://api.test/").send();
    assert_send_static(&fut);
    drop(client);
    let resp = tokio::spawn(fut).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn client_and_builder_debug_show_the_pipeline() {
    let client = Client::new();
    let s = format!("{client:?}");
    assert!(
        s.contains(
            "total_timeout(30s) → retry(max_attempts=3) → circuit_breaker → attempt_timeout(10s) → reqwest"
        ),
        "{s}"
    );
    let b = Client::builder().no_retry();
    assert!(format!("{b:?}").contains("retry: None"));
}

#[tokio::test(start_paused = true)]
async fn a_custom_transport_error_converts_into_palisade_error() {
    let svc = tower::service_fn(|_req: reqwest::Request| async {
        Err::<reqwest::Response, _>(std::io::Error::from(std::io::ErrorKind::AddrNotAvailable))
    });
    let client = Client::builder()
        .transport(svc)
        .retry(palisade::retry::Retry::default().max_attempts(2))
        .build()
        .unwrap();
    let err = client.get("http://api.test/").send().await.unwrap_err();
    assert!(err.is_connect());
    assert_eq!(err.attempts(), 2);
    assert_eq!(err.url().unwrap().as_str(), "http://api.test/");
    let source = std::error::Error::source(&err).expect("the io error is the source");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
}

#[tokio::test(start_paused = true)]
async fn error_display_hides_query_values_and_credentials() {
    let mock = Mock::always(Step::Fail(std::io::ErrorKind::ConnectionReset));
    let client = mock.client(|b| b.no_retry());
    let err = client
        .get("http://user:pw@api.test/x?token=s3cret")
        .send()
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("pw@"),
        "{shown}"
    );
    assert!(
        shown.contains("http://api.test/x?token=REDACTED"),
        "{shown}"
    );
    // The URL itself is still there for those who need it.
    assert_eq!(err.url().unwrap().query(), Some("token=s3cret"));
}

#[tokio::test(start_paused = true)]
async fn a_client_is_a_tower_service() {
    use tower::ServiceExt;
    let mock = Mock::always(Step::Status(200));
    let client = mock.client(|b| b);
    let req = reqwest::Request::new(reqwest::Method::GET, "http://api.test/".parse().unwrap());
    let resp = client.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// A transport that is not ready at first: the request waits for it, then goes through.
#[derive(Clone, Default)]
struct Slow {
    polls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tower::Service<reqwest::Request> for Slow {
    type Response = reqwest::Response;
    type Error = palisade::Error;
    type Future = std::future::Ready<Result<reqwest::Response, palisade::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), palisade::Error>> {
        use std::sync::atomic::Ordering;
        // Not ready on the first two polls (the client's own look, then the first poll of the
        // request's future); each wakes the task to try again.
        if self.polls.fetch_add(1, Ordering::SeqCst) < 2 {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: reqwest::Request) -> Self::Future {
        std::future::ready(Ok(reqwest::Response::from(http::Response::new(
            reqwest::Body::from("ok"),
        ))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_transport_that_is_not_ready_at_once_is_waited_for() {
    let slow = Slow::default();
    let client = Client::builder()
        .transport(slow.clone())
        .no_retry()
        .build()
        .unwrap();
    let resp = client.get("http://api.test/").send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "ok");
    assert!(slow.polls.load(std::sync::atomic::Ordering::SeqCst) >= 3);
}

// `execute` calls the pipeline at once (as reqwest's starts its request at once); it must not
// need a runtime for that: a future made outside one is run by one later.
#[test]
fn a_request_made_outside_a_runtime_runs_in_one() {
    for retry in [true, false] {
        let mock = Mock::always(Step::Status(200));
        let client = mock.client(|b| if retry { b } else { b.no_retry() });
        let fut = client.get("http://api.test/").send();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let resp = rt.block_on(fut).unwrap();
        assert_eq!(resp.status(), 200);
    }
}
