//! A real `redis-server` for the fleet-mode tests, in two kinds:
//!
//! - the shared one `scripts/test` starts for the whole run ([`shared_url`]): tests that only
//!   need a working Redis use it, each under its own key prefix ([`unique_prefix`]), so that
//!   tests running side by side never see each other's keys;
//! - a private one a test starts for itself ([`RedisServer`]) when it needs to kill, restart or
//!   stall the server.
//!
//! Only std: commands go as raw RESP over a `TcpStream` ([`command_at`]), so this builds
//! without the `redis` feature and does not depend on the client it tests. Every call here
//! blocks (for milliseconds, with short timeouts): from async code, call them between the
//! futures a test times, not inside them.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shared server's URL, which `scripts/test` sets.
pub const URL_VAR: &str = "PALISADE_REDIS_URL";
/// The `redis-server` binary for private servers, which `scripts/test` sets.
pub const SERVER_VAR: &str = "PALISADE_REDIS_SERVER";
/// Where private servers make their directories (`scripts/test` sets it, and stops any server
/// left running there); else the system's temporary directory.
pub const DIR_VAR: &str = "PALISADE_REDIS_DIR";

/// How long a server has to answer once started.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect, read and write timeout of [`command_at`].
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The shared server's URL, from `PALISADE_REDIS_URL`.
///
/// # Panics
///
/// If it is not set, with a message saying how to run the Redis tests: they fail rather than
/// skip, so that CI cannot pass without them.
pub fn shared_url() -> String {
    shared_url_from(std::env::var(URL_VAR).ok()).unwrap_or_else(|msg| panic!("{msg}"))
}

/// [`shared_url`] for a given value of `PALISADE_REDIS_URL`: the URL, or the message to fail
/// with when there is none.
pub fn shared_url_from(value: Option<String>) -> Result<String, String> {
    match value {
        Some(url) if !url.trim().is_empty() => Ok(url),
        _ => Err(format!(
            "{URL_VAR} is not set: run the tests with `scripts/test`, which starts a Redis for \
             them (or start redis-server and set {URL_VAR}=redis://127.0.0.1:PORT/)"
        )),
    }
}

/// A key prefix unique to this test run and `test` (process id, wall-clock time, a counter and
/// the test's name), ending in `:`; tests sharing one server each use their own.
pub fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "palisade-test:{}:{nanos}:{}:{test}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Sends one command to the Redis at `url` (`redis://HOST:PORT/`, no credentials) and returns
/// its reply as text (see [`RedisServer::command`]).
///
/// # Panics
///
/// If the URL has no host and port, or the server cannot be reached or does not answer within
/// 2 s.
pub fn command_at(url: &str, args: &[&str]) -> String {
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("bad Redis URL {url:?}: {e}"));
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port()) else {
        panic!("Redis URL {url:?} has no host and port");
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}:{port}"));
    send(addr, args, COMMAND_TIMEOUT)
        .unwrap_or_else(|e| panic!("Redis at {url}: {} failed: {e}", args.join(" ")))
}

/// A `redis-server` of a test's own, on a free loopback port with its own directory, which the
/// test can kill, restart and stall. No persistence: a restarted server starts empty, as one
/// that crashed without saving would. Dropping it kills it and removes its directory.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits (at most 5 s) until it answers.
    ///
    /// The binary is `PALISADE_REDIS_SERVER`, else `redis-server` on `PATH`. `DEBUG` is
    /// enabled for loopback clients.
    ///
    /// # Panics
    ///
    /// If there is no binary (with a message saying how to get one), or it does not start.
    pub fn start() -> RedisServer {
        let binary = server_binary().unwrap_or_else(|msg| panic!("{msg}"));
        let mut server = RedisServer {
            binary,
            port: 0,
            dir: own_dir(),
            child: None,
        };
        // A free port can be taken by another process between this check and the server's
        // bind: then try another.
        for _ in 0..5 {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                Err(Launch::PortTaken) => continue,
                Err(Launch::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!("redis-server found no free loopback port in 5 attempts");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's process id; `None` while it is killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, by its PID) and waits until it has exited: from then on its
    /// port refuses connections, and connections that were open are reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (killing it first if it runs)
    /// and waits until it answers. It starts empty.
    ///
    /// # Panics
    ///
    /// If the port stays taken for 2 s (by another process), or the server does not start.
    pub fn restart(&mut self) {
        self.kill();
        // Redis binds with SO_REUSEADDR, so a port in TIME_WAIT does not stop it; retry
        // briefly all the same.
        let give_up = Instant::now() + Duration::from_secs(2);
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(Launch::PortTaken) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(Launch::PortTaken) => {
                    panic!(
                        "cannot restart redis-server: port {} stays taken",
                        self.port
                    )
                }
                Err(Launch::Failed(msg)) => panic!("{msg}"),
            }
        }
    }

    /// Makes the server unresponsive for `d`, and returns as soon as it is: a command any
    /// client sends from then on (a PING, a script, a new connection's handshake) is answered
    /// only after `d`. Connections are still accepted, as by a server that is busy.
    ///
    /// This sends `CLIENT PAUSE <ms> ALL`, whose `+OK` comes once the pause holds, rather than
    /// `DEBUG SLEEP` from a background thread: a command the test sends right after could reach
    /// the server before the sleep began, and be answered at once. A stall cannot be ended
    /// early (`CLIENT UNPAUSE` waits too): keep them short.
    pub fn stall(&self, d: Duration) {
        let ms = d.as_millis().max(1).to_string();
        let reply = self.command(&["CLIENT", "PAUSE", &ms, "ALL"]);
        assert_eq!(reply, "OK", "CLIENT PAUSE");
    }

    /// Sends one command on a connection of its own and returns the reply as text: a status or
    /// a string as it is (`OK`, `PONG`, a value), an integer in digits, a nil as `(nil)`, an
    /// error as `(error) ` and its message, an array as its elements, one a line.
    ///
    /// # Panics
    ///
    /// If the server does not answer within 2 s (it is killed, or stalled for longer).
    pub fn command(&self, args: &[&str]) -> String {
        send(self.addr(), args, COMMAND_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "redis-server on port {}: {} failed: {e}",
                self.port,
                args.join(" ")
            )
        })
    }

    /// Replaces `key` with a value of the wrong type for a rate limiter (a list, which string
    /// and hash commands refuse with `WRONGTYPE`).
    pub fn set_garbage(&self, key: &str) {
        self.command(&["DEL", key]);
        self.command(&["RPUSH", key, "not a palisade value"]);
    }

    /// Spawns the server on `self.port` and waits until it answers.
    fn launch(&mut self) -> Result<(), Launch> {
        let log = self.dir.join("redis.log");
        let stderr_log = self.dir.join("stderr.log");
        let _ = fs::remove_file(&log);
        let stderr = fs::File::create(&stderr_log)
            .map_err(|e| Launch::Failed(format!("cannot create {}: {e}", stderr_log.display())))?;
        let mut child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .arg("--pidfile")
            .arg(self.dir.join("redis.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| Launch::Failed(format!("cannot run {}: {e}", self.binary.display())))?;
        let give_up = Instant::now() + START_TIMEOUT;
        let addr = self.addr();
        loop {
            // Its own answer, not that of another server that won the port.
            let dir = send(addr, &["CONFIG", "GET", "dir"], Duration::from_millis(200));
            if dir.is_ok_and(|r| r.lines().nth(1).map(Path::new) == Some(&self.dir)) {
                self.child = Some(child);
                return Ok(());
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= give_up {
                let _ = child.kill();
                let _ = child.wait();
                let logs = read_logs(&[&log, &stderr_log]);
                if logs.contains("Address already in use") {
                    return Err(Launch::PortTaken);
                }
                return Err(Launch::Failed(format!(
                    "redis-server ({}) did not answer on port {} within {START_TIMEOUT:?}; \
                     its log:\n{logs}",
                    self.binary.display(),
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

enum Launch {
    PortTaken,
    Failed(String),
}

/// `PALISADE_REDIS_SERVER`, else `redis-server` on `PATH`, else the message to fail with.
fn server_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(SERVER_VAR).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no redis-server: {SERVER_VAR} is not set and there is none on PATH: run the \
                 tests with `scripts/test`, which installs and starts one (or install \
                 redis-server and set {SERVER_VAR} to its path)"
            )
        })
}

/// A new directory of this server's own.
fn own_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = std::env::var_os(DIR_VAR)
        .filter(|d| !d.is_empty())
        .map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!(
        "palisade-redis-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // A leftover of an earlier process with the same id would be stale.
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    // As the server reports it (`CONFIG GET dir`), symbolic links resolved.
    fs::canonicalize(&dir).unwrap_or(dir)
}

/// A loopback port with nothing listening (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn read_logs(paths: &[&Path]) -> String {
    paths
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends `args` as one RESP command on a new connection and reads one reply.
fn send(addr: SocketAddr, args: &[&str], timeout: Duration) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    stream.write_all(&out)?;
    read_reply(&mut BufReader::new(stream)).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no reply within {timeout:?}"),
        ),
        _ => e,
    })
}

/// Reads one RESP2 reply and renders it as [`RedisServer::command`] says.
fn read_reply(r: &mut impl BufRead) -> io::Result<String> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Ok(format!("(error) {rest}")),
        "$" => {
            let Ok(len) = usize::try_from(rest.parse::<i64>().map_err(|_| bad(line))?) else {
                return Ok("(nil)".to_owned());
            };
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len);
            String::from_utf8(buf).map_err(|_| bad("a bulk string that is not UTF-8"))
        }
        "*" => {
            let Ok(n) = usize::try_from(rest.parse::<i64>().map_err(|_| bad(line))?) else {
                return Ok("(nil)".to_owned());
            };
            let items = (0..n)
                .map(|_| read_reply(r))
                .collect::<io::Result<Vec<_>>>()?;
            Ok(items.join("\n"))
        }
        _ => Err(bad(line)),
    }
}
