//! The key of per-host state.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use url::Url;

/// The longest key kept whole: a DNS name has at most 253 bytes, and `:65535` makes 259. A
/// longer host cannot be resolved, but `url` accepts it and a proxy or a custom transport may
/// still answer it; its key is cut to [`KEPT`] bytes and a hash, so that the per-host maps
/// (`max_hosts` entries each), events and logs hold no more than that per host, whatever the
/// hosts that remote parties choose.
pub(crate) const MAX_WHOLE: usize = 259;
/// What is kept of a longer key, before `#` and the hash of the whole key. No host contains
/// `#`, so a cut key is never the key of a host kept whole.
pub(crate) const KEPT: usize = 200;

/// The key of per-host state (breakers, limiters, bulkheads): `host:port`, with the scheme's
/// default port when the URL gives none, so `https://a` and `https://a:443` share state and
/// `http://a` does not. The host is the URL's (lower case, IDNA), without a trailing dot
/// (`https://a./` is `a:443`). Credentials, path and query play no part. A key longer than any DNS
/// name's is cut to a bounded size ([`MAX_WHOLE`]).
pub(crate) fn host_key(url: &Url) -> String {
    with_host_key(url, str::to_owned)
}

/// `key` itself if it is at most [`MAX_WHOLE`] bytes, else its first [`KEPT`] bytes (or fewer,
/// to end on a character), `#` and 16 hex digits of a hash of the whole key, keyed at random
/// per process so that nobody can choose two long hosts that share a key.
pub(crate) fn cut(key: String) -> String {
    if key.len() <= MAX_WHOLE {
        return key;
    }
    static KEYS: OnceLock<std::hash::RandomState> = OnceLock::new();
    let hash = KEYS
        .get_or_init(std::hash::RandomState::new)
        .hash_one(key.as_str());
    let mut end = KEPT;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}#{hash:016x}", &key[..end])
}

/// Calls `f` with the [`host_key`] of `url`, built on the stack when it fits, so that a stage
/// that only looks its state up (the circuit breaker, on every call) allocates nothing.
pub(crate) fn with_host_key<R>(url: &Url, f: impl FnOnce(&str) -> R) -> R {
    let Some(host) = url.host_str() else {
        return f("");
    };
    let host = crate::hosts::trim_dot(host);
    let Some(port) = url.port_or_known_default() else {
        if host.len() > MAX_WHOLE {
            return f(&cut(host.to_owned()));
        }
        return f(host);
    };
    let digits = PortDigits::of(port);
    let digits = digits.as_bytes();
    let len = host.len() + 1 + digits.len();
    let mut buf = [0u8; 128];
    if len <= buf.len() {
        buf[..host.len()].copy_from_slice(host.as_bytes());
        buf[host.len()] = b':';
        buf[host.len() + 1..len].copy_from_slice(digits);
        // A host (UTF-8), a colon and ASCII digits are UTF-8.
        if let Ok(key) = std::str::from_utf8(&buf[..len]) {
            return f(key);
        }
    }
    let mut key = String::with_capacity(len);
    key.push_str(host);
    key.push(':');
    key.extend(digits.iter().map(|&d| char::from(d)));
    f(&cut(key))
}

/// A port's decimal digits, written on the stack.
pub(crate) struct PortDigits {
    buf: [u8; 5],
    start: usize,
}

impl PortDigits {
    pub(crate) fn of(port: u16) -> PortDigits {
        let mut buf = [0u8; 5];
        let mut start = buf.len();
        let mut n = port;
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        PortDigits { buf, start }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_host_and_port() {
        let k = |s: &str| host_key(&Url::parse(s).unwrap());
        assert_eq!(k("https://api.test/x?y=1"), "api.test:443");
        assert_eq!(k("https://u:p@api.test:443/"), "api.test:443");
        assert_eq!(k("http://api.test/"), "api.test:80");
        assert_eq!(k("http://api.test:8080/"), "api.test:8080");
        assert_eq!(k("http://[::1]:9/"), "[::1]:9");
        assert_eq!(k("http://a.test:65535/"), "a.test:65535");
        assert_eq!(k("http://a.test:10000/"), "a.test:10000");
        assert_eq!(k("http://a.test:1/"), "a.test:1");
        assert_eq!(k("http://a.test:0/"), "a.test:0");
        // A host too long for the stack buffer is built on the heap, the same.
        let long = format!("{}.test", "a".repeat(200));
        assert_eq!(k(&format!("http://{long}:8080/")), format!("{long}:8080"));
    }

    // Issue 9 (more of the same kind): a host is chosen by remote parties and `url` takes one
    // of any length; the breaker, the limiter and the bulkhead each keep up to `max_hosts` of
    // them and log them, so each key is held to a size, the same in every stage.
    #[test]
    fn a_key_longer_than_any_dns_name_is_cut_to_a_bounded_size() {
        let k = |host: &str| host_key(&Url::parse(&format!("http://{host}/")).unwrap());
        let a = k(&format!("{}.test", "a".repeat(100_000)));
        let b = k(&format!("{}.test", "a".repeat(100_001)));
        assert_eq!(a.len(), KEPT + 17);
        assert!(a.starts_with(&"a".repeat(KEPT)) && a[KEPT..].starts_with('#'));
        assert_ne!(a, b, "two hosts, two keys");
        assert_eq!(
            a,
            k(&format!("{}.test", "a".repeat(100_000))),
            "the same host"
        );
        // The longest key a DNS name can have is kept whole.
        let longest = format!("{}.test", "a".repeat(253 - 5));
        assert_eq!(k(&format!("{longest}:65535")), format!("{longest}:65535"));
        // Without a port (a scheme with no default), cut all the same.
        let opaque = Url::parse(&format!("foo://{}/", "b".repeat(1_000))).unwrap();
        assert_eq!(host_key(&opaque).len(), KEPT + 17);
        // Cut on a character boundary.
        let c = cut(format!("{}:80", "é".repeat(200)));
        assert!(c.len() <= KEPT + 17 && c.contains('#'));
    }
}
