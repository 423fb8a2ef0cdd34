//! (3) Response compression (`compress = true`, SPEC §8.4), on the way back: gzip, br and
//! zstd by the client's `Accept-Encoding` (q-values honoured; at equal q, zstd, then br, then
//! gzip), for text types, JSON, JavaScript, XML, SVG and `+json`/`+xml`, when the upstream's
//! `Content-Length` is at least 1 KiB or absent; never for a response that already has a
//! `Content-Encoding` or `Cache-Control: no-transform`, a 206 or an answer to a Range request,
//! HEAD, 204 or 304. Every response that qualifies by type and size carries
//! `Vary: Accept-Encoding`, compressed or not; a compressed one loses `Content-Length` and has
//! a strong `ETag` made weak. Streamed: frames are compressed as they pass, never the whole
//! body at once.
//!
//! Levels (see `gateway/benches/compress.rs`): gzip 5, brotli 4, zstd 3, chosen so a JSON
//! response costs a few microseconds per KiB while keeping most of the ratio of higher levels.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::body::{ReqBody, ResBody};
use crate::error::GatewayError;

/// Smallest body (by `Content-Length`) worth compressing.
const MIN_BYTES: u64 = 1024;
const GZIP_LEVEL: u32 = 5;
const BROTLI_QUALITY: u32 = 4;
const BROTLI_WINDOW: u32 = 22;
const ZSTD_LEVEL: i32 = 3;

/// A content coding the gateway produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Br,
    Gzip,
}

impl Coding {
    fn token(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Br => "br",
            Self::Gzip => "gzip",
        }
    }
}

/// The coding to use for `Accept-Encoding`: the highest q, ties broken zstd > br > gzip;
/// `*` stands for the codings not named; q=0 refuses.
pub fn negotiate(headers: &HeaderMap) -> Option<Coding> {
    let mut q = [None::<f32>; 3]; // zstd, br, gzip
    let mut star = None::<f32>;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut weight = 1.0f32;
            for p in parts {
                if let Some(x) = p
                    .trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
                {
                    weight = x.trim().parse().unwrap_or(0.0);
                }
            }
            match name.as_str() {
                "zstd" => q[0] = Some(weight),
                "br" => q[1] = Some(weight),
                "gzip" | "x-gzip" => q[2] = Some(weight),
                "*" => star = Some(weight),
                _ => {}
            }
        }
    }
    let codings = [Coding::Zstd, Coding::Br, Coding::Gzip];
    let mut best: Option<(f32, Coding)> = None;
    for (i, c) in codings.iter().enumerate() {
        let w = q[i].or(star).unwrap_or(0.0);
        if w > 0.0 && best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, *c));
        }
    }
    best.map(|(_, c)| c)
}

/// Whether a response qualifies by type and size (then it gets `Vary: Accept-Encoding`).
fn qualifies(h: &HeaderMap) -> bool {
    let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let by_type = (mime.starts_with("text/") && mime != "text/event-stream")
        || matches!(
            mime.as_str(),
            "application/json" | "application/javascript" | "application/xml" | "image/svg+xml"
        )
        || mime.ends_with("+json")
        || mime.ends_with("+xml");
    let by_size = match h.get(header::CONTENT_LENGTH) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n >= MIN_BYTES),
    };
    by_type && by_size
}

/// What the request said that matters on the way back.
#[derive(Clone, Copy)]
struct Asked {
    coding: Option<Coding>,
    head: bool,
    range: bool,
}

fn decide(asked: Asked, res: &mut Response<ResBody>) -> Option<Coding> {
    let status = res.status();
    if asked.head
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
        || asked.range
    {
        return None;
    }
    let h = res.headers_mut();
    if h.contains_key(header::CONTENT_ENCODING) || !qualifies(h) {
        return None;
    }
    h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    let no_transform = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-transform"));
    if no_transform {
        return None;
    }
    let coding = asked.coding?;
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    if let Some(etag) = h.get(header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&weak) {
                h.insert(header::ETAG, v);
            }
        }
    }
    Some(coding)
}

#[derive(Clone, Debug, Default)]
pub struct CompressLayer;

impl<S> Layer<S> for CompressLayer {
    type Service = Compress<S>;
    fn layer(&self, inner: S) -> Compress<S> {
        Compress { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Compress<S> {
    inner: S,
}

impl<S> Service<Request<ReqBody>> for Compress<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = GatewayError>,
{
    type Response = Response<ResBody>;
    type Error = GatewayError;
    type Future = CompressFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let asked = Asked {
            coding: negotiate(req.headers()),
            head: req.method() == Method::HEAD,
            range: req.headers().contains_key(header::RANGE),
        };
        CompressFuture {
            inner: self.inner.call(req),
            asked,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct CompressFuture<F> {
        #[pin]
        inner: F,
        asked: Asked,
    }
}

impl<F> Future for CompressFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, GatewayError>>,
{
    type Output = Result<Response<ResBody>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = match this.inner.poll(cx) {
            Poll::Ready(Ok(res)) => res,
            other => return other,
        };
        let Some(coding) = decide(*this.asked, &mut res) else {
            return Poll::Ready(Ok(res));
        };
        Poll::Ready(Ok(res.map(|inner| {
            ResBody::Compressed(Box::new(CompressBody::new(inner, coding)))
        })))
    }
}

/// Where the encoders write; drained after every frame.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn take(&self) -> Bytes {
        self.0
            .lock()
            .map(|mut v| Bytes::from(std::mem::take(&mut *v)))
            .unwrap_or_default()
    }
}

enum Encoder {
    Gzip(flate2::write::GzEncoder<Sink>),
    Br(Box<brotli::CompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
}

impl Encoder {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Gzip(e) => e.write_all(data),
            Self::Br(e) => e.write_all(data),
            Self::Zstd(e) => e.write_all(data),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Self::Gzip(e) => e.finish().map(drop),
            Self::Br(e) => {
                let _ = e.into_inner();
                Ok(())
            }
            Self::Zstd(e) => e.finish().map(drop),
        }
    }
}

/// Compress `data` whole with `coding` at the gateway's levels (benchmarks, tests).
pub fn compress_all(coding: Coding, data: &[u8]) -> Vec<u8> {
    let mut body = CompressBody::new(ResBody::empty(), coding);
    if let Some(e) = body.encoder.as_mut() {
        let _ = e.write(data);
    }
    body.finish().to_vec()
}

/// A response body compressed as it streams.
pub struct CompressBody {
    inner: ResBody,
    encoder: Option<Encoder>,
    sink: Sink,
    /// Trailers seen, sent after the last compressed bytes.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl std::fmt::Debug for CompressBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressBody").finish_non_exhaustive()
    }
}

impl CompressBody {
    /// The upstream target that produced the body (for the access log).
    pub fn target(&self) -> Option<&str> {
        self.inner.target()
    }

    pub fn head_time(&self) -> Option<std::time::Duration> {
        self.inner.head_time()
    }

    fn new(inner: ResBody, coding: Coding) -> Self {
        let sink = Sink::default();
        let encoder = match coding {
            Coding::Gzip => Some(Encoder::Gzip(flate2::write::GzEncoder::new(
                sink.clone(),
                flate2::Compression::new(GZIP_LEVEL),
            ))),
            Coding::Br => Some(Encoder::Br(Box::new(brotli::CompressorWriter::new(
                sink.clone(),
                4096,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            )))),
            Coding::Zstd => zstd::stream::write::Encoder::new(sink.clone(), ZSTD_LEVEL)
                .ok()
                .map(Encoder::Zstd),
        };
        Self {
            inner,
            encoder,
            sink,
            trailers: None,
            done: false,
        }
    }

    /// Finish the stream: the last compressed bytes.
    fn finish(&mut self) -> Bytes {
        if let Some(e) = self.encoder.take() {
            if let Err(e) = e.finish() {
                tracing::debug!(error = %e, "compression did not finish");
            }
        }
        self.sink.take()
    }
}

impl Body for CompressBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::body::BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(e) = this.encoder.as_mut() {
                            if let Err(e) = e.write(&data) {
                                tracing::debug!(error = %e, "compression failed");
                            }
                        }
                        let out = this.sink.take();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    let out = this.finish();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
        h
    }

    #[test]
    fn negotiation_follows_q_values_then_zstd_br_gzip() {
        assert_eq!(
            negotiate(&ae("gzip, deflate, br, zstd")),
            Some(Coding::Zstd)
        );
        assert_eq!(negotiate(&ae("gzip, br")), Some(Coding::Br));
        assert_eq!(negotiate(&ae("gzip;q=1.0, br;q=0.5")), Some(Coding::Gzip));
        assert_eq!(negotiate(&ae("zstd;q=0, br;q=0, gzip")), Some(Coding::Gzip));
        assert_eq!(negotiate(&ae("*;q=0.5, gzip;q=0.8")), Some(Coding::Gzip));
        assert_eq!(negotiate(&ae("*")), Some(Coding::Zstd));
        assert_eq!(negotiate(&ae("identity")), None);
        assert_eq!(negotiate(&ae("gzip;q=0")), None);
        assert_eq!(negotiate(&HeaderMap::new()), None);
    }
}
