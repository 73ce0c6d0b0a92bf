//! [`Match`]: which requests a rule may hit.

use std::fmt;
use std::sync::Arc;

use http::Method;
use reqwest::Request;

type MatchFn = dyn Fn(&Request) -> bool + Send + Sync;

/// Which requests a [`Rule`](super::Rule) may hit: a host, a path prefix, methods and a
/// closure, all of which must match. Default ([`Match::any`]): every request.
///
/// ```
/// use http::Method;
/// use palisade::testing::chaos::Match;
///
/// // GET and HEAD to api.example.com under /v1 (`/v1`, `/v1/users`, not `/v10`).
/// let m = Match::host("api.example.com").path_prefix("/v1").method(Method::GET).method(Method::HEAD);
/// let get = reqwest::Request::new(Method::GET, "https://api.example.com/v1/users".parse()?);
/// assert!(m.matches(&get));
/// let other = reqwest::Request::new(Method::GET, "https://api.example.com/v10".parse()?);
/// assert!(!m.matches(&other));
///
/// // Any host under example.com, and a closure for what the rest cannot say.
/// let m = Match::host("*.example.com").filter(|req| req.headers().contains_key("x-canary"));
/// # let _ = m;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
#[must_use = "a predicate does nothing until given to a rule"]
pub struct Match {
    host: Option<Host>,
    path_prefix: Option<String>,
    methods: Vec<Method>,
    filter: Option<Arc<MatchFn>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    /// The host itself, lowercase.
    Exact(String),
    /// `*.example.com`: any host that ends with `.example.com` (lowercase), not the apex.
    Suffix(String),
}

impl Match {
    /// Every request.
    pub fn any() -> Self {
        Match::default()
    }

    /// Requests to this host, on any port: a name (compared without regard to case), an IP
    /// address as URLs write it (`127.0.0.1`, `[::1]`), or `*.example.com` for every host
    /// under `example.com` (not `example.com` itself). Give it without a port: `host:port`
    /// matches no request.
    pub fn host(host: impl Into<String>) -> Self {
        let host = host.into().to_ascii_lowercase();
        let host = match host.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => Host::Suffix(suffix.to_owned()),
            _ => Host::Exact(host),
        };
        Match {
            host: Some(host),
            ..Match::default()
        }
    }

    /// Requests whose path is `prefix` or lies under it, segment by segment: `/v1` matches
    /// `/v1`, `/v1/` and `/v1/users`, not `/v10`; a prefix that ends with `/` matches whatever
    /// starts with it. The path is compared as the URL holds it (percent-encoded), without its
    /// query. Default: any path.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Requests with this method; called again, with any of the methods given. Default: any
    /// method.
    pub fn method(mut self, method: Method) -> Self {
        if !self.methods.contains(&method) {
            self.methods.push(method);
        }
        self
    }

    /// Requests for which `f` returns `true` (besides the host, path and methods given). It runs
    /// on the caller's task, for every request the rule's draw would hit: keep it quick. Called
    /// again, the new closure replaces the old.
    pub fn filter<F>(mut self, f: F) -> Self
    where
        F: Fn(&Request) -> bool + Send + Sync + 'static,
    {
        self.filter = Some(Arc::new(f));
        self
    }

    /// The requests for which `f` returns `true`: [`Match::any`] with [`filter`](Match::filter).
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&Request) -> bool + Send + Sync + 'static,
    {
        Match::any().filter(f)
    }

    /// Whether `req` matches.
    pub fn matches(&self, req: &Request) -> bool {
        let url = req.url();
        if let Some(host) = &self.host {
            let Some(h) = url.host_str() else {
                return false;
            };
            let hit = match host {
                Host::Exact(e) => h.eq_ignore_ascii_case(e),
                Host::Suffix(s) => {
                    h.len() > s.len()
                        && h.is_char_boundary(h.len() - s.len())
                        && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
                }
            };
            if !hit {
                return false;
            }
        }
        if let Some(prefix) = &self.path_prefix {
            if !under(url.path(), prefix) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(req.method()) {
            return false;
        }
        self.filter.as_ref().is_none_or(|f| f(req))
    }
}

/// Whether `path` is `prefix` or under it, segment by segment.
fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl fmt::Debug for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Match");
        match &self.host {
            Some(Host::Exact(h)) => d.field("host", h),
            Some(Host::Suffix(s)) => d.field("host", &format!("*{s}")),
            None => d.field("host", &"any"),
        };
        if let Some(p) = &self.path_prefix {
            d.field("path_prefix", p);
        }
        if !self.methods.is_empty() {
            d.field("methods", &self.methods);
        }
        if self.filter.is_some() {
            d.field("filter", &"custom");
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, url: &str) -> Request {
        Request::new(method, url.parse().unwrap())
    }

    fn get(url: &str) -> Request {
        req(Method::GET, url)
    }

    #[test]
    fn any_matches_everything() {
        assert!(Match::any().matches(&get("http://a.test/x")));
        assert!(Match::any().matches(&req(Method::POST, "https://[::1]:8443/")));
    }

    #[test]
    fn hosts_match_exactly_or_by_suffix_without_case_or_port() {
        let m = Match::host("API.Example.com");
        assert!(m.matches(&get("https://api.example.com/")));
        assert!(m.matches(&get("http://api.example.com:8080/x")));
        assert!(!m.matches(&get("https://other.example.com/")));
        assert!(!m.matches(&get("https://api.example.com.evil.test/")));

        let m = Match::host("*.example.com");
        assert!(m.matches(&get("https://api.example.com/")));
        assert!(m.matches(&get("https://a.b.example.com/")));
        assert!(!m.matches(&get("https://example.com/")), "not the apex");
        assert!(!m.matches(&get("https://badexample.com/")));

        assert!(Match::host("127.0.0.1").matches(&get("http://127.0.0.1:3000/")));
        assert!(Match::host("[::1]").matches(&get("http://[::1]:3000/")));
        // A pattern that is not a wildcard is taken as it is.
        assert!(!Match::host("*example.com").matches(&get("http://example.com/")));
    }

    #[test]
    fn path_prefixes_match_by_segment() {
        let m = Match::any().path_prefix("/v1");
        for p in ["/v1", "/v1/", "/v1/users", "/v1/users/1?x=1"] {
            assert!(m.matches(&get(&format!("http://h{p}"))), "{p}");
        }
        for p in ["/v10", "/v", "/", "/x/v1"] {
            assert!(!m.matches(&get(&format!("http://h{p}"))), "{p}");
        }
        let m = Match::any().path_prefix("/v1/");
        assert!(m.matches(&get("http://h/v1/x")));
        assert!(!m.matches(&get("http://h/v1")));
        let m = Match::any().path_prefix("/");
        assert!(m.matches(&get("http://h/anything")));
    }

    #[test]
    fn methods_closures_and_all_together() {
        let m = Match::any().method(Method::GET).method(Method::HEAD);
        assert!(m.matches(&get("http://h/")));
        assert!(m.matches(&req(Method::HEAD, "http://h/")));
        assert!(!m.matches(&req(Method::POST, "http://h/")));

        let m = Match::host("h")
            .path_prefix("/a")
            .method(Method::POST)
            .filter(|r| r.url().query().is_some());
        assert!(m.matches(&req(Method::POST, "http://h/a/b?q=1")));
        assert!(!m.matches(&req(Method::POST, "http://h/a/b")), "filter");
        assert!(!m.matches(&req(Method::GET, "http://h/a/b?q=1")), "method");
        assert!(!m.matches(&req(Method::POST, "http://h/b?q=1")), "path");
        assert!(!m.matches(&req(Method::POST, "http://g/a?q=1")), "host");

        assert!(!Match::from_fn(|_| false).matches(&get("http://h/")));
    }

    #[test]
    fn debug_names_the_parts() {
        let m = Match::host("*.x.test")
            .path_prefix("/v1")
            .method(Method::GET)
            .filter(|_| true);
        assert_eq!(
            format!("{m:?}"),
            r#"Match { host: "*.x.test", path_prefix: "/v1", methods: [GET], filter: "custom" }"#
        );
    }
}
