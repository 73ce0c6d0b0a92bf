//! The host a call carries through the stage, kept inline when short so that taking it from
//! the request allocates nothing.

use std::fmt;
use std::hash::{Hash, Hasher};

use url::Url;

#[cfg(test)]
use crate::host::{cut, KEPT};
use crate::host::{host_key, PortDigits};

/// The longest key kept inline: `api.example.com:443` and most hosts fit; a longer one is
/// put on the heap, as every key was before.
const INLINE: usize = 38;

/// A host key (`host:port`, as [`host_key`] makes it, cut to a bounded size when longer than
/// any DNS name's), or `""`.
///
/// The rate limiter looks its buckets and pauses up by it, and the response future keeps it
/// to pause the host when its response says so; both happen on every call, so it lives on the
/// stack (40 bytes, the size of a `String` and a pointer) unless the host is long.
#[derive(Clone)]
pub(crate) enum HostKey {
    /// The first `len` bytes of `buf` (the rest are zero).
    Inline {
        len: u8,
        buf: [u8; INLINE],
    },
    Heap(Box<str>),
}

impl HostKey {
    /// The key of `url`'s host: [`host_key`]'s, written straight into the inline buffer (this
    /// runs on every call, global limiters included), or cut as
    /// [`MAX_WHOLE`](crate::host::MAX_WHOLE) says.
    pub(crate) fn of(url: &Url) -> HostKey {
        let Some(host) = url.host_str() else {
            return HostKey::default();
        };
        let host = crate::hosts::trim_dot(host).as_bytes();
        let port = url.port_or_known_default().map(PortDigits::of);
        let digits = port.as_ref().map_or(&[][..], PortDigits::as_bytes);
        let colon = usize::from(!digits.is_empty());
        let len = host.len() + colon + digits.len();
        match u8::try_from(len) {
            Ok(n) if len <= INLINE => {
                let mut buf = [0; INLINE];
                buf[..host.len()].copy_from_slice(host);
                if colon == 1 {
                    buf[host.len()] = b':';
                    buf[host.len() + 1..len].copy_from_slice(digits);
                }
                HostKey::Inline { len: n, buf }
            }
            _ => HostKey::long(url),
        }
    }

    /// The key of a host too long to keep inline ([`host_key`] cuts it if it is longer than
    /// any DNS name's).
    #[cold]
    #[inline(never)]
    fn long(url: &Url) -> HostKey {
        HostKey::Heap(host_key(url).into_boxed_str())
    }

    /// The key `key`.
    #[cfg(test)]
    pub(crate) fn new(key: &str) -> HostKey {
        let bytes = key.as_bytes();
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE => {
                let mut buf = [0; INLINE];
                buf[..bytes.len()].copy_from_slice(bytes);
                HostKey::Inline { len, buf }
            }
            _ => HostKey::Heap(key.into()),
        }
    }

    /// The key's bytes (a `&str`'s, so UTF-8).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            HostKey::Inline { len, buf } => &buf[..usize::from(*len).min(INLINE)],
            HostKey::Heap(s) => s.as_bytes(),
        }
    }

    /// The key as text, for events and logs (it is checked as UTF-8 again: not for the hot
    /// path, where [`as_bytes`](Self::as_bytes) is enough).
    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Always valid: the bytes were copied from a `&str`.
            HostKey::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            HostKey::Heap(s) => s,
        }
    }
}

impl Default for HostKey {
    fn default() -> HostKey {
        HostKey::Inline {
            len: 0,
            buf: [0; INLINE],
        }
    }
}

// By content: the same host is the same key whether it is inline or not (it cannot be both,
// but the key's meaning does not depend on where it is kept).
impl PartialEq for HostKey {
    fn eq(&self, other: &HostKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for HostKey {}

impl Hash for HostKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_as_host_key_inline_or_not() {
        for url in [
            "https://api.test/x?y=1",
            "https://u:p@api.test:443/",
            "http://[::1]:9/",
            "http://a.test:65535/",
            "http://a.test:10000/",
            "http://a.test:0/",
            "file:///tmp/x",
            "foo://opaque.test/x",
        ] {
            let url = Url::parse(url).unwrap();
            let key = HostKey::of(&url);
            assert_eq!(key.as_str(), host_key(&url));
            assert!(matches!(key, HostKey::Inline { .. }), "{url}");
        }
        // At the inline limit and one past it.
        for (extra, inline) in [(0, true), (1, false)] {
            let url = format!("http://{}.test/", "a".repeat(INLINE - 8 + extra));
            let url = Url::parse(&url).unwrap();
            let key = HostKey::of(&url);
            assert_eq!(key.as_str(), host_key(&url));
            assert_eq!(key.as_str().len(), INLINE + extra);
            assert_eq!(matches!(key, HostKey::Inline { .. }), inline);
            assert_eq!(key, HostKey::new(&host_key(&url)));
        }
        // The longest key a DNS name can have is kept whole.
        let longest = format!("http://{}.test:65535/", "a".repeat(253 - 5));
        let url = Url::parse(&longest).unwrap();
        let key = HostKey::of(&url);
        assert!(matches!(key, HostKey::Heap(_)));
        assert_eq!(key.as_str().len(), 259);
        assert_eq!(key.as_str(), host_key(&url));
        assert_eq!(key, HostKey::new(&host_key(&url)));
        assert_eq!(format!("{:?}", HostKey::new("a:80")), r#""a:80""#);
        assert_eq!(HostKey::default().as_str(), "");
    }

    // Issue 9 (more of the same kind): a host is chosen by remote parties, and `url` takes one
    // of any length; the limiter keeps up to `max_hosts` of them, so each is held to a size.
    #[test]
    fn a_key_longer_than_any_dns_name_is_cut_to_a_bounded_size() {
        let of = |host: &str| HostKey::of(&Url::parse(&format!("http://{host}/")).unwrap());
        let a = of(&format!("{}.test", "a".repeat(100_000)));
        let b = of(&format!("{}.test", "a".repeat(100_001)));
        assert_eq!(a.as_str().len(), KEPT + 17);
        assert!(a.as_str().starts_with(&"a".repeat(KEPT)));
        assert!(a.as_str()[KEPT..].starts_with('#'));
        assert_ne!(a, b, "two hosts, two keys");
        assert_eq!(
            a,
            of(&format!("{}.test", "a".repeat(100_000))),
            "the same host"
        );
        // Cut on a character boundary: a host of non-ASCII characters (an opaque host keeps
        // them percent-encoded, a domain as punycode: both ASCII) still gives valid text.
        let c = cut(format!("{}:80", "é".repeat(200)));
        assert!(c.len() <= KEPT + 17 && c.contains('#'));
    }

    #[test]
    fn is_no_larger_than_a_string_and_a_pointer() {
        assert!(std::mem::size_of::<HostKey>() <= 40);
    }
}
