//! Real sockets on loopback that misbehave: a closed port, a server that resets connections,
//! one that accepts and never answers.

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A loopback port with nothing listening (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

async fn read_head(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A server that reads each request's head and resets the connection (RST, via SO_LINGER 0).
pub async fn reset_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                read_head(&mut s).await;
                // Linger 0 sends RST on close without blocking, which is the point here.
                #[allow(deprecated)]
                let _ = s.set_linger(Some(std::time::Duration::ZERO));
                drop(s);
            });
        }
    });
    addr
}

/// A server that reads each request's head and closes the connection cleanly without
/// answering (the client sees an incomplete message).
pub async fn closing_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                read_head(&mut s).await;
                drop(s);
            });
        }
    });
    addr
}

/// A server that accepts connections and never answers (it holds them open).
pub async fn silent_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}
