//! The key of per-host state.

use url::Url;

/// The key of per-host state (breakers, limiters, bulkheads): `host:port`, with the scheme's
/// default port when the URL gives none, so `https://a` and `https://a:443` share state and
/// `http://a` does not. Credentials, path and query play no part.
pub(crate) fn host_key(url: &Url) -> String {
    with_host_key(url, str::to_owned)
}

/// Calls `f` with the [`host_key`] of `url`, built on the stack when it fits, so that a stage
/// that only looks its state up (the circuit breaker, on every call) allocates nothing.
pub(crate) fn with_host_key<R>(url: &Url, f: impl FnOnce(&str) -> R) -> R {
    let Some(host) = url.host_str() else {
        return f("");
    };
    let Some(port) = url.port_or_known_default() else {
        return f(host);
    };
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = port;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[i..];
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
    f(&key)
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
}
