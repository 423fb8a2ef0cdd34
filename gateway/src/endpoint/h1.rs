//! (5) A lean HTTP/1.1 client connection for the commonest proxied request: a GET or HEAD with
//! no body, to a plain-text HTTP/1.1 endpoint. Everything else (bodies, TLS, HTTP/2, upgrades)
//! goes through hyper's client (`pool.rs`).
//!
//! Why: hyper's client runs each connection as a task of its own, fed through channels, with
//! an 8 KiB write buffer and an 8 KiB read buffer made again for every response. Here the
//! request's own future writes the head from one reused buffer and parses the answer with
//! `httparse` (the parser hyper uses) straight from the connection's read buffer; the body is
//! read by whoever polls it. The framing rules are hyper's and RFC 9112 §6.3:
//!
//! * a response to HEAD, a 204 and a 304 have no body; 1xx answers before the final one are
//!   skipped; a 101 (nothing asked for an upgrade) is an error;
//! * `Transfer-Encoding` (not in HTTP/1.0: an error) wins over `Content-Length`, which is then
//!   removed before forwarding and the connection is not reused; chunked when `chunked` is the
//!   last coding, else the body runs to the connection's end;
//! * `Content-Length` values must all be the same number, else an error; none and no
//!   `Transfer-Encoding`: the body runs to the connection's end;
//! * the connection is reused only after HTTP/1.1 without `Connection: close` (or HTTP/1.0
//!   with `Connection: keep-alive`) and a body read to its exact end with nothing after it.
//!
//! Limits: a response head up to 1 MiB and 100 fields (hyper's client's), a chunk-size line up
//! to 4 KiB, trailers up to 64 KiB and 100 fields.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use prometheus::IntGauge;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const MAX_HEAD: usize = 1 << 20;
const MAX_FIELDS: usize = 100;
const MAX_INFORMATIONAL: usize = 16;
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;
/// Room made in the read buffer before a read.
const READ_CHUNK: usize = 8192;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The request could not be written, or the connection ended or failed before any byte of
    /// an answer: on a pooled connection, the upstream had closed it while idle.
    #[error("upstream connection closed before a response{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NothingReceived(Option<io::Error>),
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before the end of the message")]
    Incomplete,
    #[error("invalid upstream response: {0}")]
    Invalid(&'static str),
}

/// An open connection; counted in the endpoint's HTTP/1.1 connection gauge while it lives.
pub struct H1Conn {
    io: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    /// When it was pooled.
    pub(super) since: Instant,
    gauge: IntGauge,
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl Drop for H1Conn {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// How the response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

impl H1Conn {
    /// Boxed: it travels inside the response body, which is moved along the stack.
    pub fn new(io: TcpStream, gauge: IntGauge) -> Box<Self> {
        gauge.inc();
        Box::new(Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            since: Instant::now(),
            gauge,
        })
    }

    /// Nothing arrived while the connection sat idle: no data, no end of stream (an upstream
    /// closing it makes it readable). Costs no system call unless the socket became readable.
    pub fn is_clean(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut one = [0u8; 1];
                matches!(self.io.try_read(&mut one), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Send the request's head (it has no body) and read the answer's head. The body is read
    /// through the returned `H1Body`, which owns the connection.
    pub async fn exchange(
        mut self: Box<Self>,
        req: &http::request::Parts,
    ) -> Result<(http::response::Parts, H1Body), H1Error> {
        encode_head(&mut self.out, req);
        if let Err(e) = self.io.write_all(&self.out).await {
            return Err(H1Error::NothingReceived(Some(e)));
        }
        let head_req = req.method == http::Method::HEAD;
        let mut received = false;
        let mut informational = 0;
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, head_req)? {
                    Some(Parsed::Final(parts, framing, keep)) => {
                        let body = H1Body {
                            conn: Some(self),
                            decoder: Decoder::new(framing),
                            keep,
                        };
                        return Ok((parts, body));
                    }
                    Some(Parsed::Informational) => {
                        informational += 1;
                        if informational > MAX_INFORMATIONAL {
                            return Err(H1Error::Invalid("too many informational responses"));
                        }
                        continue;
                    }
                    None if self.buf.len() >= MAX_HEAD => {
                        return Err(H1Error::Invalid("response head too large"));
                    }
                    None => {}
                }
            }
            let n = match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(n) => n,
                Err(e) if !received => return Err(H1Error::NothingReceived(Some(e))),
                Err(e) => return Err(H1Error::Io(e)),
            };
            if n == 0 {
                return Err(if received {
                    H1Error::Incomplete
                } else {
                    H1Error::NothingReceived(None)
                });
            }
            received = true;
        }
    }

    /// Read what the socket has into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// The request line and fields, in one buffer (reused across requests on the connection).
fn encode_head(out: &mut Vec<u8>, req: &http::request::Parts) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

enum Parsed {
    Final(http::response::Parts, Framing, bool),
    Informational,
}

/// One response head off the front of `buf`, as the client reads it: `Ok(None)` when more
/// bytes are needed, `Ok(Some(None))` for a 1xx that is skipped, else the head, its body's
/// decoder and whether the connection may be reused. For the fuzz target.
#[allow(clippy::type_complexity)]
pub fn read_head(
    buf: &mut BytesMut,
    head_req: bool,
) -> Result<Option<Option<(http::response::Parts, Decoder, bool)>>, H1Error> {
    Ok(match parse_head(buf, head_req)? {
        None => None,
        Some(Parsed::Informational) => Some(None),
        Some(Parsed::Final(parts, framing, keep)) => {
            Some(Some((parts, Decoder::new(framing), keep)))
        }
    })
}

/// Parse one response head from the front of `buf` (consumed when complete).
fn parse_head(buf: &mut BytesMut, head_req: bool) -> Result<Option<Parsed>, H1Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Invalid("too many header fields"))
        }
        Err(_) => return Err(H1Error::Invalid("malformed response head")),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(H1Error::Invalid("status code"))?;
    let version = match res.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each field's name and value sit, so they can be slices of the frozen head.
    let base = buf.as_ptr() as usize;
    let count = res.headers.len();
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_FIELDS];
    for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
        let n = h.name.as_ptr() as usize - base;
        let v = h.value.as_ptr() as usize - base;
        *span = (
            n as u32,
            (n + h.name.len()) as u32,
            v as u32,
            (v + h.value.len()) as u32,
        );
    }
    let head = buf.split_to(len).freeze();
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Invalid(
                "101 to a request that asked for no upgrade",
            ));
        }
        return Ok(Some(Parsed::Informational));
    }
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| H1Error::Invalid("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| H1Error::Invalid("header value"))?;
        headers.append(name, value);
    }
    let (framing, keep) = framing(status, version, &mut headers, head_req)?;
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Parsed::Final(parts, framing, keep)))
}

/// The body's framing and whether the connection may carry another request (RFC 9112 §6.3, §9.3).
fn framing(
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
    head_req: bool,
) -> Result<(Framing, bool), H1Error> {
    let mut keep = if version == Version::HTTP_11 {
        !has_token(headers, header::CONNECTION, "close")
    } else {
        has_token(headers, header::CONNECTION, "keep-alive")
    };
    if head_req || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Empty, keep));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(H1Error::Invalid(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep = false;
        }
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        if last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
            return Ok((Framing::Chunked, keep));
        }
        return Ok((Framing::Close, false));
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        let len = content_length(headers).ok_or(H1Error::Invalid("Content-Length"))?;
        return Ok((Framing::Length(len), keep));
    }
    Ok((Framing::Close, false))
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Every `Content-Length` value (fields and comma lists) the same number of digits only.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut len = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.to_str().ok()?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = part.parse().ok()?;
            if len.is_some_and(|l| l != n) {
                return None;
            }
            len = Some(n);
        }
    }
    len
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Close,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Done,
}

/// What the bytes at the front of the buffer are.
#[derive(Debug)]
pub enum Step {
    Data(bytes::Bytes),
    Trailers(HeaderMap),
    /// The body ended.
    End,
    /// More bytes are needed.
    More,
}

/// Reads a body's framing off the front of a buffer: no I/O, so it is tested and fuzzed on
/// bytes alone (`gateway/fuzz/fuzz_targets/http1_response.rs`).
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    fn new(framing: Framing) -> Self {
        Self {
            state: match framing {
                Framing::Empty | Framing::Length(0) => State::Done,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::ChunkSize,
                Framing::Close => State::Close,
            },
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The next step, consuming what it reads from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, H1Error> {
        loop {
            let state = self.state;
            match state {
                State::Done => return Ok(Step::End),
                _ if buf.is_empty() => return Ok(Step::More),
                State::Length(left) | State::ChunkData(left) => {
                    let n = (buf.len() as u64).min(left);
                    let data = buf.split_to(n as usize).freeze();
                    let left = left - n;
                    self.state = match (state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), l) => State::Length(l),
                        (_, 0) => State::ChunkEnd,
                        (_, l) => State::ChunkData(l),
                    };
                    return Ok(Step::Data(data));
                }
                State::Close => return Ok(Step::Data(buf.split().freeze())),
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(H1Error::Invalid("chunk size line too long"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err(H1Error::Invalid("chunk size")),
                },
                State::ChunkEnd if buf.len() < 2 => {
                    if buf[0] != b'\r' {
                        return Err(H1Error::Invalid("chunk not ended by CRLF"));
                    }
                    return Ok(Step::More);
                }
                State::ChunkEnd => {
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Invalid("chunk not ended by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for f in fields.iter() {
                                let (Ok(name), Ok(value)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) else {
                                    return Err(H1Error::Invalid("trailer field"));
                                };
                                trailers.append(name, value);
                            }
                            buf.advance(used);
                            self.state = State::Done;
                            if !trailers.is_empty() {
                                return Ok(Step::Trailers(trailers));
                            }
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                            return Err(H1Error::Invalid("trailers too large"));
                        }
                        Ok(httparse::Status::Partial) => return Ok(Step::More),
                        Err(_) => return Err(H1Error::Invalid("malformed trailers")),
                    }
                }
            }
        }
    }

    /// The connection ended: the end of a body delimited by it, else a cut message.
    pub fn eof(&mut self) -> Result<Step, H1Error> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(Step::End)
            }
            _ => Err(H1Error::Incomplete),
        }
    }

    fn exact_left(&self) -> Option<u64> {
        match self.state {
            State::Done => Some(0),
            State::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// A response body read from its connection as it is polled.
#[derive(Debug)]
pub struct H1Body {
    conn: Option<Box<H1Conn>>,
    decoder: Decoder,
    keep: bool,
}

impl H1Body {
    /// The connection, when the body was read to its exact end and the connection may carry
    /// another request.
    pub fn reusable(&mut self) -> Option<Box<H1Conn>> {
        if !self.decoder.is_done() || !self.keep {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<bytes::Bytes>, H1Error>>> {
        self.conn = None;
        self.decoder.state = State::Done;
        self.keep = false;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for H1Body {
    type Data = bytes::Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match this.decoder.decode(&mut conn.buf) {
                Ok(Step::More) => match ready!(conn.poll_fill(cx)) {
                    Ok(0) => match this.decoder.eof() {
                        Ok(_) => {
                            // Delimited by the connection's end: not reusable.
                            this.keep = false;
                            return Poll::Ready(None);
                        }
                        Err(e) => return this.fail(e),
                    },
                    Ok(_) => continue,
                    Err(e) => return this.fail(H1Error::Io(e)),
                },
                Ok(step) => step,
                Err(e) => return this.fail(e),
            };
            return Poll::Ready(match step {
                Step::Data(d) => Some(Ok(Frame::data(d))),
                Step::Trailers(t) => Some(Ok(Frame::trailers(t))),
                Step::End | Step::More => None,
            });
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.exact_left() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Serve `answer` to one request on a loopback socket; returns the request's bytes.
    async fn exchange(
        method: &str,
        answer: &'static [u8],
    ) -> (Result<(http::response::Parts, H1Body), H1Error>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            // Trickled, to exercise partial heads and bodies.
            for piece in answer.chunks(7) {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            got
        });
        let io = TcpStream::connect(addr).await.unwrap();
        let gauge = IntGauge::new("t", "t").unwrap();
        let conn = H1Conn::new(io, gauge);
        let req = http::Request::builder()
            .method(method)
            .uri("/a?b=1")
            .header("host", "up")
            .header("x-one", "1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let r = conn.exchange(&req).await;
        let got = if r.is_ok() {
            server.await.unwrap()
        } else {
            server.abort();
            Vec::new()
        };
        (r, got)
    }

    async fn body(b: H1Body) -> (Result<Vec<u8>, H1Error>, Option<HeaderMap>) {
        match b.collect().await {
            Ok(c) => {
                let t = c.trailers().cloned();
                (Ok(c.to_bytes().to_vec()), t)
            }
            Err(e) => (Err(e), None),
        }
    }

    #[tokio::test]
    async fn writes_one_head_and_reads_a_length_delimited_answer() {
        let (r, got) = exchange(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: a\r\nX-A: b\r\n\r\nhello",
        )
        .await;
        assert_eq!(
            got,
            b"GET /a?b=1 HTTP/1.1\r\nhost: up\r\nx-one: 1\r\n\r\n".to_vec()
        );
        let (parts, mut b) = r.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(b.size_hint().exact(), Some(5));
        let frame = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await;
        let mut data = frame.unwrap().unwrap().into_data().unwrap().to_vec();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {
            data.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        assert_eq!(data, b"hello");
        assert!(b.is_end_stream());
        assert!(b.reusable().is_some(), "read to its end: reusable");
    }

    #[tokio::test]
    async fn decodes_chunked_with_extensions_and_trailers() {
        let (r, _) = exchange(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 9\r\n\r\n",
        )
        .await;
        let (_, b) = r.unwrap();
        let (data, trailers) = body(b).await;
        assert_eq!(data.unwrap(), b"hello world");
        assert_eq!(trailers.unwrap().get("x-sum").unwrap(), "9");
    }

    #[tokio::test]
    async fn transfer_encoding_wins_over_content_length_which_is_removed() {
        let (r, _) = exchange(
            "GET",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        let (parts, mut b) = r.unwrap();
        assert!(parts.headers.get("content-length").is_none());
        let mut data = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {
            data.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        assert_eq!(data, b"abc");
        assert!(b.reusable().is_none(), "a message with both is not reused");
    }

    #[tokio::test]
    async fn no_length_runs_to_the_end_and_is_not_reused() {
        let (r, _) = exchange("GET", b"HTTP/1.1 200 OK\r\n\r\nuntil close").await;
        let (_, mut b) = r.unwrap();
        let mut data = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {
            data.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        assert_eq!(data, b"until close");
        assert!(b.reusable().is_none());
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_and_1xx_are_skipped() {
        let (r, _) = exchange("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n").await;
        let (parts, mut b) = r.unwrap();
        assert_eq!(parts.headers.get("content-length").unwrap(), "50");
        assert!(b.is_end_stream());
        assert!(b.reusable().is_some());
        let (r, _) = exchange(
            "GET",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        )
        .await;
        let (parts, b) = r.unwrap();
        assert_eq!(parts.status, 304);
        assert!(b.is_end_stream());
    }

    #[tokio::test]
    async fn refuses_what_hyper_refuses() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A : a\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let (r, _) = exchange("GET", bad).await;
            assert!(
                matches!(r, Err(H1Error::Invalid(_))),
                "{:?} -> {:?}",
                String::from_utf8_lossy(bad),
                r.map(|(p, _)| p.status)
            );
        }
    }

    #[tokio::test]
    async fn a_short_body_or_bad_chunk_is_an_error() {
        let (r, _) = exchange("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
        let (_, b) = r.unwrap();
        assert!(matches!(body(b).await.0, Err(H1Error::Incomplete)));
        let (r, _) = exchange(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        )
        .await;
        let (_, b) = r.unwrap();
        assert!(matches!(body(b).await.0, Err(H1Error::Invalid(_))));
        let (r, _) = exchange(
            "GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        )
        .await;
        let (_, b) = r.unwrap();
        assert!(matches!(body(b).await.0, Err(H1Error::Invalid(_))));
    }

    #[tokio::test]
    async fn nothing_received_is_told_apart() {
        let (r, _) = exchange("GET", b"").await;
        assert!(matches!(r, Err(H1Error::NothingReceived(_))));
        let (r, _) = exchange("GET", b"HTTP/1.1 200").await;
        assert!(matches!(r, Err(H1Error::Incomplete)));
    }
}
