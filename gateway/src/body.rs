//! Request and response bodies on the request path. Both are streamed, never buffered.
//!
//! `ReqBody` is the client's body with `max_body_bytes` enforced while it streams (also for
//! chunked bodies with no length). `ResBody` is what a route answers: the upstream's body
//! (which hands its connection back to the pool when it ends) or a small gateway-made one.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::edge::io::ConnState;
use crate::upstream::UpstreamBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error a `ReqBody` yields when the client sends more than `max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than max_body_bytes")]
pub struct BodyTooLarge;

/// The error a `ReqBody` yields when the client's side of the body failed (the client went
/// away mid-upload): the client's fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// When a request body was fully received, for timeouts that start then (`upstream/`).
#[derive(Debug, Default)]
pub struct BodyProgress(OnceLock<Instant>);

impl BodyProgress {
    /// When the body was complete, if it is.
    pub fn done_at(&self) -> Option<Instant> {
        self.0.get().copied()
    }

    fn mark_done(&self) {
        let _ = self.0.set(Instant::now());
    }
}

/// The client's request body, limited to `max_body_bytes`. It holds the body half of its
/// connection's busy count (`edge/io.rs`) until it ends or is dropped.
#[derive(Debug)]
pub struct ReqBody {
    inner: Option<Incoming>,
    remaining: u64,
    conn: Option<Arc<ConnState>>,
    /// Only for bodies still to come (GETs and the like need none).
    progress: Option<Arc<BodyProgress>>,
}

impl ReqBody {
    pub fn new(inner: Incoming, limit: u64, conn: Option<Arc<ConnState>>) -> Self {
        let ended = inner.is_end_stream();
        let mut body = Self {
            inner: Some(inner),
            remaining: limit,
            conn,
            progress: None,
        };
        if ended {
            body.finish();
        } else {
            body.progress = Some(Arc::new(BodyProgress::default()));
        }
        body
    }

    /// A body with nothing in it.
    pub fn empty() -> Self {
        Self {
            inner: None,
            remaining: 0,
            conn: None,
            progress: None,
        }
    }

    /// Tracks when the body is complete; `None` when it already is.
    pub fn progress(&self) -> Option<Arc<BodyProgress>> {
        self.progress.clone()
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.half_done();
        }
        if let Some(p) = &self.progress {
            p.mark_done();
        }
    }
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        self.remaining = 0;
                        self.inner = None;
                        self.finish();
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= len;
                }
                if self.inner.as_ref().is_some_and(|b| b.is_end_stream()) {
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.inner = None;
                self.finish();
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
            }
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Whether an error (from hyper's client, say) was caused by an error of type `E` anywhere in
/// its chain of sources.
pub fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<E>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// What a route answers with.
#[derive(Debug)]
pub enum ResBody {
    /// Made by the gateway: an error, a redirect, an admin answer.
    Full(Option<Bytes>),
    /// Streamed from an upstream.
    Upstream(UpstreamBody),
}

impl ResBody {
    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }

    pub fn empty() -> Self {
        Self::Full(None)
    }

    /// The upstream target that produced this body, if any (for the access log).
    pub fn target(&self) -> Option<&str> {
        match self {
            Self::Full(_) => None,
            Self::Upstream(b) => Some(b.target()),
        }
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Upstream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(data) => data.is_none(),
            Self::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Upstream(b) => b.size_hint(),
        }
    }
}
