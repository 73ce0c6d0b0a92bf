//! A DNS failure through reqwest's real connector is a connect error of class Network, retried
//! for any method. The resolver is replaced so the test needs no network and cannot hang.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade::retry::{Backoff, Retry};
use palisade::{Client, ErrorKind, FailureClass};
use reqwest::dns::{Name, Resolve, Resolving};

struct NoSuchHost(Arc<AtomicUsize>);

impl Resolve for NoSuchHost {
    fn resolve(&self, name: Name) -> Resolving {
        self.0.fetch_add(1, Ordering::SeqCst);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            Err(Box::new(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no such host: {host}"),
            )) as Box<dyn std::error::Error + Send + Sync>)
        })
    }
}

#[tokio::test]
async fn dns_failure_is_a_connect_error_retried_for_any_method() {
    let lookups = Arc::new(AtomicUsize::new(0));
    let client = Client::builder()
        .http_client_builder(reqwest::Client::builder().dns_resolver(NoSuchHost(lookups.clone())))
        .retry(Retry::default().backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(2),
        )))
        .build()
        .unwrap();
    let err = client
        .post("http://no-such-host.test/orders")
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert!(err.is_connect());
    assert_eq!(FailureClass::from_error(&err), FailureClass::Network);
    assert_eq!(err.attempts(), 3);
    assert_eq!(lookups.load(Ordering::SeqCst), 3);
    assert_eq!(err.url().unwrap().host_str(), Some("no-such-host.test"));
}
