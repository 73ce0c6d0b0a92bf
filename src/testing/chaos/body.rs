//! A body cut short: the `CutBody` fault.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use reqwest::{Response, ResponseBuilderExt};

use super::Injected;
use crate::error::BoxError;

/// `resp` with its body cut after `after` bytes, and marked. Its head is kept whole: the status,
/// the headers (a `Content-Length` too), the URL and the extensions.
pub(super) fn cut(resp: Response, after: usize, injected: Injected) -> Response {
    let url = resp.url().clone();
    let (mut parts, body) = http::Response::<reqwest::Body>::from(resp).into_parts();
    // reqwest keeps the URL in an extension only its own builder can set.
    if let Ok(carrier) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(carrier.into_parts().0.extensions);
    }
    parts.extensions.insert(injected.clone());
    let body = CutBody::new(body, after, injected);
    Response::from(http::Response::from_parts(parts, reqwest::Body::wrap(body)))
}

/// A body that passes the first `left` bytes of the inner one, then fails with an I/O error of
/// kind `UnexpectedEof` (whose inner error is the fault's [`Injected`] mark) where the rest
/// should be, as a connection closed before the message was complete. The inner body is
/// dropped at the cut, as a closed connection's is. It keeps announcing the length the inner
/// one announced (less what it passed), as a truncated body does: it only learns it is short
/// when the connection closes.
struct CutBody {
    inner: Option<reqwest::Body>,
    left: usize,
    /// What the inner body announced and is not passed yet.
    announced: Option<u64>,
    injected: Injected,
}

impl CutBody {
    fn new(inner: reqwest::Body, after: usize, injected: Injected) -> Self {
        CutBody {
            announced: inner.size_hint().exact(),
            inner: Some(inner),
            left: after,
            injected,
        }
    }

    /// The cut: the inner body is dropped, and the error given once.
    fn fail(&mut self) -> BoxError {
        self.inner = None;
        Box::new(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            self.injected.clone(),
        ))
    }
}

impl HttpBody for CutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if this.left == 0 {
            return Poll::Ready(Some(Err(this.fail())));
        }
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    data.truncate(this.left);
                    this.left -= data.len();
                    let passed = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    this.announced = this.announced.map(|n| n.saturating_sub(passed));
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                // Trailers come after the whole body, which a cut body never has.
                Err(_trailers) => Poll::Ready(Some(Err(this.fail()))),
            },
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            // The body ended before the cut: it fails instead of ending.
            None => Poll::Ready(Some(Err(this.fail()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, self.announced) {
            (None, _) => SizeHint::with_exact(0),
            // Not "exactly 0" while an error is still to come: that reads as an empty body.
            (Some(_), Some(n)) if n > 0 => SizeHint::with_exact(n),
            (Some(_), _) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Fault;
    use super::*;
    use http_body_util::BodyExt;

    fn mark() -> Injected {
        Injected {
            rule: "cut".into(),
            index: 0,
            fault: Fault::CutBody { after: 0 },
        }
    }

    /// The frames of `body` cut after `after` bytes: the data passed and whether it failed.
    async fn read(body: reqwest::Body, after: usize) -> (Vec<u8>, Option<BoxError>, CutBody) {
        let mut cut = CutBody::new(body, after, mark());
        let mut data = Vec::new();
        while let Some(frame) = cut.frame().await {
            match frame {
                Ok(f) => data.extend_from_slice(&f.into_data().unwrap()),
                Err(e) => return (data, Some(e), cut),
            }
        }
        (data, None, cut)
    }

    /// A body sent in these chunks, of no announced length.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> reqwest::Body {
        reqwest::Body::wrap(Chunks(
            parts.iter().map(|p| Bytes::from_static(p)).collect(),
        ))
    }

    #[tokio::test]
    async fn passes_the_first_bytes_then_fails_as_an_unexpected_eof() {
        let (data, err, cut) = read(reqwest::Body::from("0123456789"), 4).await;
        assert_eq!(data, b"0123");
        let err = err.expect("the cut");
        let io = err.downcast_ref::<io::Error>().expect("an I/O error");
        assert_eq!(io.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(Injected::in_error(&*err).map(Injected::rule), Some("cut"));
        assert!(cut.inner.is_none(), "the inner body is dropped at the cut");
        assert!(cut.is_end_stream());
    }

    #[tokio::test]
    async fn cuts_across_chunks_and_at_their_edges() {
        for (after, want) in [
            (0, &b""[..]),
            (1, b"a"),
            (2, b"ab"),
            (3, b"abc"),
            (5, b"abcde"),
        ] {
            let (data, err, _) = read(chunks(&[b"ab", b"cd", b"ef"]), after).await;
            assert_eq!(data, want, "{after}");
            assert!(err.is_some(), "{after}");
        }
    }

    #[tokio::test]
    async fn a_body_no_longer_than_the_cut_fails_instead_of_ending() {
        for after in [6, 7, 100] {
            let (data, err, _) = read(chunks(&[b"ab", b"cd", b"ef"]), after).await;
            assert_eq!(data, b"abcdef", "{after}");
            assert!(err.is_some(), "{after}");
        }
        let (data, err, _) = read(reqwest::Body::from(""), 3).await;
        assert!(data.is_empty() && err.is_some());
    }

    #[tokio::test]
    async fn the_announced_length_stays_until_the_cut() {
        let mut cut = CutBody::new(reqwest::Body::from("0123456789"), 4, mark());
        assert_eq!(cut.size_hint().exact(), Some(10));
        assert!(!cut.is_end_stream());
        cut.frame().await.unwrap().unwrap();
        assert_eq!(cut.size_hint().exact(), Some(6), "the rest announced");
        assert!(cut.frame().await.unwrap().is_err());
        assert_eq!(cut.size_hint().exact(), Some(0));
        assert!(cut.frame().await.is_none(), "ended after the error");

        // An empty body announces no length while its error is to come.
        let cut = CutBody::new(reqwest::Body::from(""), 0, mark());
        assert_eq!(cut.size_hint().exact(), None);
        assert!(!cut.is_end_stream());
    }
}
