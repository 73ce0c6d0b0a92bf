//! The loopback server of the benches that go over real HTTP.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// The body of every answer: 26 bytes of JSON.
pub const BODY: &[u8] = br#"{"id":1,"name":"palisade"}"#;

/// Starts an HTTP/1.1 server (keep-alive) on `127.0.0.1` on a thread and a `current_thread`
/// runtime of its own, answering every request with `200 OK` and [`BODY`].
pub fn loopback_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    std::thread::Builder::new()
        .name("loopback-server".into())
        .spawn(move || {
            super::current_thread().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    // A failed accept (out of descriptors, say) is the client's to notice.
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(|_req| async {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(BODY),
                            )))
                        });
                        // A client that closes its connection ends it here; nothing to report.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            })
        })
        .expect("server thread");
    addr
}
