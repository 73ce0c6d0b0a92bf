//! A body made of bytes already read, then the rest: the rest of the real body (one too large
//! to record, handed on as it streams), or an error (a body that failed, as recorded).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::error::BoxError;

pub(crate) enum Tail {
    /// The rest of the body.
    Body(reqwest::Body),
    /// The error the body ended with (once).
    Error(Option<BoxError>),
}

pub(crate) struct Chained {
    head: Option<Bytes>,
    tail: Tail,
}

impl Chained {
    pub(crate) fn new(head: Bytes, tail: Tail) -> Self {
        Chained {
            head: Some(head).filter(|h| !h.is_empty()),
            tail,
        }
    }
}

impl Body for Chained {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        match &mut self.tail {
            Tail::Body(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Tail::Error(e) => Poll::Ready(e.take().map(Err)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        match &self.tail {
            Tail::Body(b) => {
                let t = b.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(t.lower().saturating_add(head));
                if let Some(u) = t.upper() {
                    hint.set_upper(u.saturating_add(head));
                }
                hint
            }
            Tail::Error(_) => SizeHint::default(),
        }
    }
}
