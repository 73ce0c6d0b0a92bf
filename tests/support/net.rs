//! Real sockets on loopback that misbehave: a closed port, a server that resets connections,
//! one that closes them without answering, one that accepts and never answers. Each server
//! counts what it saw, so a test can check it against `attempts()`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A loopback port with nothing listening (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// How many requests (or connections) a server saw; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn add_one(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Waits until the count reaches `expected` (the server's tasks may lag behind the client on
    /// a loaded machine), then a little longer, and asserts it is exactly `expected`.
    pub async fn assert_settles_at(&self, expected: usize, what: &str) {
        let give_up = Instant::now() + Duration::from_secs(1);
        while self.get() < expected && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(self.get(), expected, "{what}");
    }
}

/// Binds a loopback listener and hands each connection it accepts, with the server's counter,
/// to its own `handle` task.
async fn serve<F, Fut>(handle: F) -> (SocketAddr, Counter)
where
    F: Fn(TcpStream, Counter) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let counter = Counter::default();
    let count = counter.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handle(s, count.clone()));
        }
    });
    (addr, counter)
}

/// Reads a request's head; false if the connection ended (or failed) before the head did.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Reads each request's head, then resets the connection (`reset`) or closes it cleanly.
/// Counts the request heads it read.
async fn hangup_server(reset: bool) -> (SocketAddr, Counter) {
    serve(move |mut s, heads| async move {
        if read_head(&mut s).await {
            heads.add_one();
        }
        if reset {
            // Linger 0 sends RST on close without blocking, which is the point here.
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
        }
        drop(s);
    })
    .await
}

/// A server that reads each request's head and resets the connection (RST, via SO_LINGER 0).
/// Counts the request heads it read.
pub async fn reset_server() -> (SocketAddr, Counter) {
    hangup_server(true).await
}

/// A server that reads each request's head and closes the connection cleanly without
/// answering (the client sees an incomplete message). Counts the request heads it read.
pub async fn closing_server() -> (SocketAddr, Counter) {
    hangup_server(false).await
}

/// A server that accepts connections and never answers (it holds them open). Counts the
/// connections it accepted.
pub async fn silent_server() -> (SocketAddr, Counter) {
    serve(|s, accepted| async move {
        accepted.add_one();
        let _held = s;
        std::future::pending::<()>().await;
    })
    .await
}

/// A switch a test flips to change what a [`proxy`] does.
#[derive(Clone, Debug, Default)]
pub struct Switch(Arc<std::sync::atomic::AtomicBool>);

impl Switch {
    pub fn on(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A TCP proxy to `upstream`: pipes each connection through until the switch is on, then
/// reads each new connection's request head and resets it. The same URL answers first as the
/// upstream does, then with a reset connection. Clients must not keep connections alive across
/// the switch (`pool_max_idle_per_host(0)`). Counts the connections it accepted.
pub async fn resetting_proxy(upstream: SocketAddr) -> (SocketAddr, Counter, Switch) {
    let switch = Switch::default();
    let sw = switch.clone();
    let (addr, counter) = serve(move |mut s, accepted| {
        let sw = sw.clone();
        async move {
            accepted.add_one();
            if sw.is_on() {
                read_head(&mut s).await;
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
                drop(s);
                return;
            }
            if let Ok(mut up) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            }
        }
    })
    .await;
    (addr, counter, switch)
}

/// A server that reads each request's head, writes `bytes` (a response head and the start of
/// its body, say) and then holds the connection open without writing more. Counts the
/// request heads it read.
pub async fn stalling_server(bytes: &'static [u8]) -> (SocketAddr, Counter) {
    use tokio::io::AsyncWriteExt;
    serve(move |mut s, heads| async move {
        if read_head(&mut s).await {
            heads.add_one();
            if s.write_all(bytes).await.is_ok() {
                let _ = s.flush().await;
                std::future::pending::<()>().await;
            }
        }
    })
    .await
}
