//! The Redis test support itself (`tests/support/redis.rs`): private servers start, answer,
//! stall, die and come back as the fleet-mode tests expect; the shared server `scripts/test`
//! starts is there.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::redis::{command_at, shared_url, shared_url_from, unique_prefix, RedisServer};

#[test]
fn a_private_server_answers_commands() {
    let server = RedisServer::start();
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert!(server.pid().is_some());
    assert_eq!(server.command(&["PING"]), "PONG");
    assert_eq!(server.command(&["SET", "k", "v w"]), "OK");
    assert_eq!(server.command(&["GET", "k"]), "v w");
    assert_eq!(server.command(&["GET", "missing"]), "(nil)");
    assert_eq!(server.command(&["INCR", "n"]), "1");
    assert_eq!(command_at(&server.url(), &["GET", "k"]), "v w");
    // Enabled for loopback clients, for tests that need it.
    assert_eq!(server.command(&["DEBUG", "SLEEP", "0"]), "OK");
}

#[test]
fn garbage_is_a_key_of_the_wrong_type() {
    let server = RedisServer::start();
    server.command(&["SET", "rate:host", "1"]);
    server.set_garbage("rate:host");
    assert!(
        server
            .command(&["GET", "rate:host"])
            .starts_with("(error) WRONGTYPE"),
        "a string command on the garbage"
    );
    assert!(server
        .command(&["HGET", "rate:host", "tat"])
        .starts_with("(error) WRONGTYPE"));
}

#[test]
fn a_stalled_server_answers_only_when_the_stall_ends() {
    let server = RedisServer::start();
    let stall = Duration::from_millis(300);
    let mut early = TcpStream::connect(server.addr()).expect("a connection before the stall");
    early
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let t0 = Instant::now();
    server.stall(stall);
    assert!(t0.elapsed() < stall / 2, "stall returns at once");
    // On a connection opened before the stall, as a client's would be, and on a new one. The
    // stall began after t0: neither answers before t0 + stall (give or take Redis's clock).
    early.write_all(b"PING\r\n").unwrap();
    assert_eq!(server.command(&["PING"]), "PONG");
    let waited = t0.elapsed();
    let mut reply = [0; 7];
    early
        .read_exact(&mut reply)
        .expect("PONG on the early connection");
    assert_eq!(&reply, b"+PONG\r\n");
    assert!(
        waited >= stall - Duration::from_millis(10),
        "PING answered {waited:?} after a stall of {stall:?} began"
    );
    assert!(
        waited < Duration::from_secs(2),
        "PING answered after {waited:?}"
    );
    // Once it ends, at once again.
    let t1 = Instant::now();
    assert_eq!(server.command(&["PING"]), "PONG");
    assert!(t1.elapsed() < stall, "not stalled any more");
}

#[test]
fn a_killed_server_refuses_connections_and_comes_back_empty_on_the_same_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    server.command(&["SET", "k", "v"]);
    let open = TcpStream::connect(server.addr()).expect("a connection before the kill");

    server.kill();
    assert_eq!(server.pid(), None);
    let refused = TcpStream::connect(server.addr()).expect_err("connect after the kill");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    drop(open);

    server.restart();
    assert_eq!(server.port(), port);
    assert!(server.pid().is_some());
    assert_eq!(server.command(&["PING"]), "PONG");
    assert_eq!(server.command(&["GET", "k"]), "(nil)", "no persistence");
    // Twice, and while it runs (a crash and restart in one).
    server.restart();
    assert_eq!(server.command(&["PING"]), "PONG");
}

#[test]
fn dropping_a_server_stops_it_and_removes_its_directory() {
    let server = RedisServer::start();
    let addr = server.addr();
    let pid = server.pid().expect("running");
    let dir = std::path::PathBuf::from(
        server
            .command(&["CONFIG", "GET", "dir"])
            .lines()
            .nth(1)
            .expect("dir"),
    );
    assert!(
        dir.join("redis.pid").is_file(),
        "{dir:?} holds its PID file"
    );
    drop(server);
    assert!(!dir.exists(), "{dir:?} removed");
    assert!(TcpStream::connect(addr).is_err(), "pid {pid} stopped");
}

#[test]
fn servers_side_by_side_are_apart() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    a.command(&["SET", "k", "a"]);
    assert_eq!(b.command(&["GET", "k"]), "(nil)");
}

#[test]
fn the_shared_url_is_required_with_a_message_saying_how() {
    let msg = shared_url_from(None).expect_err("no URL");
    assert_eq!(
        msg,
        "PALISADE_REDIS_URL is not set: run the tests with `scripts/test`, which starts a Redis \
         for them (or start redis-server and set PALISADE_REDIS_URL=redis://127.0.0.1:PORT/)"
    );
    assert_eq!(shared_url_from(Some(" ".into())), Err(msg));
    assert_eq!(
        shared_url_from(Some("redis://127.0.0.1:7000/".into())),
        Ok("redis://127.0.0.1:7000/".into())
    );
}

/// Fails (does not skip) under a plain `cargo test`, saying to run `scripts/test`.
#[test]
fn the_shared_server_answers() {
    let url = shared_url();
    assert_eq!(command_at(&url, &["PING"]), "PONG");
    let key = format!("{}k", unique_prefix("the_shared_server_answers"));
    assert_eq!(command_at(&url, &["SET", &key, "v", "PX", "10000"]), "OK");
    assert_eq!(command_at(&url, &["GET", &key]), "v");
    command_at(&url, &["DEL", &key]);
}

#[test]
fn prefixes_are_unique_per_test_and_call() {
    let a = unique_prefix("one_test");
    let b = unique_prefix("one_test");
    assert_ne!(a, b);
    assert!(a.ends_with(":one_test:"), "{a}");
    assert!(a.contains(&format!(":{}:", std::process::id())), "{a}");
}
