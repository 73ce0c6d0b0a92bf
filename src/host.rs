//! The key of per-host state.

use url::Url;

/// The key of per-host state (breakers, limiters, bulkheads): `host:port`, with the scheme's
/// default port when the URL gives none, so `https://a` and `https://a:443` share state and
/// `http://a` does not. Credentials, path and query play no part.
pub(crate) fn host_key(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
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
    }
}
