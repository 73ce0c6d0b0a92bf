//! Tracing output: a span per request, an event per attempt, no secrets. In its own test
//! binary, so that no other test's thread registers the callsites first without a subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::{Mock, Step};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn tracing_has_a_span_per_request_and_an_event_per_attempt_without_secrets() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mock = Mock::script([Step::Status(503)]);
    let client = mock.client(|b| b);
    client
        .get("http://user:hunter2@api.test/x?token=s3cret&page=2")
        .header("authorization", "Bearer very-secret-token")
        .header("cookie", "session=also-secret")
        .send()
        .await
        .unwrap();

    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(out.contains("http.request"), "{out}");
    assert!(out.contains("http.request.method=GET"), "{out}");
    assert!(out.contains("server.address=\"api.test\""), "{out}");
    assert!(
        out.contains("url.full=\"http://api.test/x?token=REDACTED&page=REDACTED\""),
        "{out}"
    );
    assert!(out.contains("http.request.resend_count=0"), "{out}");
    assert!(out.contains("http.request.resend_count=1"), "{out}");
    assert!(out.contains("class=server_error"), "{out}");
    assert!(out.contains("retrying"), "{out}");
    for secret in ["very-secret-token", "also-secret", "s3cret", "hunter2"] {
        assert!(!out.contains(secret), "{secret} leaked: {out}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_served_fallback_is_an_info_event() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mock = Mock::always(Step::Full(200, vec![], b"ok".to_vec()));
    let client = mock.client(|b| {
        b.no_retry()
            .fallback_cache(palisade::fallback::FallbackCache::default())
    });
    let url = "http://api.test/x?token=s3cret";
    // Read to its end: a response is stored once its body has been read.
    client.get(url).send().await.unwrap().bytes().await.unwrap();
    mock.set(Step::Status(503));
    tokio::time::advance(std::time::Duration::from_secs(7)).await;
    client.get(url).send().await.unwrap();

    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let line = out
        .lines()
        .find(|l| l.contains("served a fallback response"))
        .unwrap_or_else(|| panic!("no fallback event: {out}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line.contains("fallback.reason=server error (503)"),
        "{line}"
    );
    assert!(line.contains("fallback.age_s=7"), "{line}");
    assert!(!out.contains("s3cret"), "{out}");
}
