//! The lean upstream client's response parsing (`gateway/src/endpoint/h1.rs`): a head read with
//! httparse, then the body's framing (length, chunked with extensions and trailers, to the
//! connection's end). No panic; and the result is the same whether the bytes arrive whole or
//! cut in two at any point (the first input byte picks the cut), as they do from a socket; a
//! body delimited by `Content-Length` is exactly that long.
#![no_main]

use bytes::BytesMut;
use gateway::upstream_h1::{read_head, Decoder, Step};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Outcome {
    Error,
    /// Ran out of bytes before the end of the message.
    Short,
    Done {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        keep: bool,
        body: Vec<u8>,
        trailers: Vec<(String, Vec<u8>)>,
    },
}

fn fields(h: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// Feed `pieces` one after the other, as reads from a socket, then end the stream.
fn run(pieces: &[&[u8]], head_req: bool) -> Outcome {
    let mut buf = BytesMut::new();
    let mut next = pieces.iter();
    let mut more = |buf: &mut BytesMut| match next.next() {
        Some(p) => {
            buf.extend_from_slice(p);
            true
        }
        None => false,
    };
    more(&mut buf);
    let (parts, mut decoder, keep): (http::response::Parts, Decoder, bool) = loop {
        match read_head(&mut buf, head_req) {
            Err(_) => return Outcome::Error,
            Ok(Some(Some(head))) => break head,
            Ok(Some(None)) => continue,
            Ok(None) => {
                if !more(&mut buf) {
                    return Outcome::Short;
                }
            }
        }
    };
    let (mut body, mut trailers) = (Vec::new(), Vec::new());
    let mut ended = false;
    loop {
        let step = if ended {
            decoder.eof()
        } else {
            decoder.decode(&mut buf)
        };
        match step {
            Err(_) => return Outcome::Error,
            Ok(Step::Data(d)) => body.extend_from_slice(&d),
            Ok(Step::Trailers(t)) => trailers = fields(&t),
            Ok(Step::End) => break,
            Ok(Step::More) => {
                if !more(&mut buf) {
                    ended = true;
                }
            }
        }
    }
    if let Some(len) = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        let bodiless = head_req || parts.status == 204 || parts.status == 304;
        if !bodiless && !parts.headers.contains_key("transfer-encoding") {
            assert_eq!(body.len() as u64, len, "Content-Length framing");
        }
    }
    Outcome::Done {
        status: parts.status.as_u16(),
        headers: fields(&parts.headers),
        keep,
        body,
        trailers,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let head_req = first & 1 == 1;
    let whole = run(&[rest], head_req);
    let cut = (first as usize * 7) % (rest.len() + 1);
    let (a, b) = rest.split_at(cut);
    let split = run(&[a, b], head_req);
    assert_eq!(whole, split, "cut at {cut}: {:?}", String::from_utf8_lossy(rest));
});
