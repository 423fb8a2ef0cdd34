//! Spans as the request path records them, and their OTLP/HTTP protobuf encoding.
//!
//! A span is kept compact until the exporter task encodes it: attribute keys are `&'static`,
//! values are mostly what the request already holds (shared header values, the route's name,
//! the URI), so recording one costs a single allocation. The export task writes the
//! `ExportTraceServiceRequest` bytes straight from them with prost's wire primitives (the field
//! numbers of `opentelemetry-proto`'s `trace.proto`), without building the generated message
//! tree; a unit test decodes the result with the `opentelemetry-proto` types, and the tests in
//! `tests/it/spans.rs` with Python's official protobuf definitions.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::BufMut;
use http::{HeaderValue, Method, Uri};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

/// An attribute value.
#[derive(Debug, Clone)]
pub enum Val {
    Static(&'static str),
    Owned(String),
    Header(HeaderValue),
    Shared(Arc<str>),
    Method(Method),
    /// The URI's path.
    Path(Uri),
    /// An address, formatted once when recorded (no allocation).
    Inline(Inline),
    Int(i64),
}

/// Up to 46 bytes of text held inline (an IPv6 address at most).
#[derive(Debug, Clone, Copy)]
pub struct Inline {
    buf: [u8; 46],
    len: u8,
}

impl Inline {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl Val {
    /// An address as text.
    pub fn ip(ip: IpAddr) -> Self {
        let mut buf = [0u8; 46];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
        let len = cursor.position() as u8;
        Self::Inline(Inline { buf, len })
    }
}

impl From<&'static str> for Val {
    fn from(s: &'static str) -> Self {
        Self::Static(s)
    }
}

impl From<String> for Val {
    fn from(s: String) -> Self {
        Self::Owned(s)
    }
}

impl Val {
    /// The value as text.
    fn text(&self) -> Option<&str> {
        Some(match self {
            Self::Static(s) => s,
            Self::Owned(s) => s,
            Self::Header(h) => h.to_str().unwrap_or(""),
            Self::Shared(s) => s,
            Self::Method(m) => m.as_str(),
            Self::Path(u) => u.path(),
            Self::Inline(i) => i.as_str(),
            Self::Int(_) => return None,
        })
    }
}

/// `SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

#[derive(Debug, Clone)]
pub struct EventRec {
    pub time_ns: u64,
    pub name: &'static str,
    pub attributes: Vec<(&'static str, Val)>,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct SpanRec {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: Val,
    /// The route's name after the method (`GET users`), when any.
    pub name_suffix: Option<Arc<str>>,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, Val)>,
    pub events: Vec<EventRec>,
    /// Status Error with this message; `None`: unset.
    pub error: Option<Val>,
    pub flags: u32,
}

fn len_delimited(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

/// Length of a field `tag` holding `len` bytes of a length-delimited value.
fn field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + len_delimited(len)
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

fn put_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// `AnyValue` of a value: `string_value` (1) or `int_value` (3).
fn any_len(v: &Val) -> usize {
    match v {
        Val::Int(i) => prost::encoding::key_len(3) + encoded_len_varint(*i as u64),
        other => {
            let t = other.text().unwrap_or("");
            field_len(1, t.len())
        }
    }
}

fn put_any(v: &Val, buf: &mut Vec<u8>) {
    match v {
        Val::Int(i) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(*i as u64, buf);
        }
        other => {
            let t = other.text().unwrap_or("");
            put_bytes(1, t.as_bytes(), buf);
        }
    }
}

/// `KeyValue`: key (1), value (2).
fn kv_len(key: &str, v: &Val) -> usize {
    field_len(1, key.len()) + field_len(2, any_len(v))
}

fn put_kv(tag: u32, key: &str, v: &Val, buf: &mut Vec<u8>) {
    let any = any_len(v);
    put_header(tag, field_len(1, key.len()) + field_len(2, any), buf);
    put_bytes(1, key.as_bytes(), buf);
    put_header(2, any, buf);
    put_any(v, buf);
}

fn attrs_len(tag: u32, attrs: &[(&'static str, Val)]) -> usize {
    attrs
        .iter()
        .map(|(k, v)| field_len(tag, kv_len(k, v)))
        .sum()
}

fn put_attrs(tag: u32, attrs: &[(&'static str, Val)], buf: &mut Vec<u8>) {
    for (k, v) in attrs {
        put_kv(tag, k, v, buf);
    }
}

fn fixed64_len(tag: u32) -> usize {
    prost::encoding::key_len(tag) + 8
}

fn put_fixed64(tag: u32, v: u64, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.put_u64_le(v);
}

/// The span's name: `Val` then ` suffix`.
fn name_len(s: &SpanRec) -> usize {
    s.name.text().map_or(0, str::len) + s.name_suffix.as_ref().map_or(0, |x| 1 + x.len())
}

fn put_name(s: &SpanRec, buf: &mut Vec<u8>) {
    let len = name_len(s);
    put_header(5, len, buf);
    buf.put_slice(s.name.text().unwrap_or("").as_bytes());
    if let Some(x) = &s.name_suffix {
        buf.put_u8(b' ');
        buf.put_slice(x.as_bytes());
    }
}

/// `Event`: time (1), name (2), attributes (3).
fn event_len(e: &EventRec) -> usize {
    fixed64_len(1) + field_len(2, e.name.len()) + attrs_len(3, &e.attributes)
}

/// `Status`: message (2), code (3) = ERROR (2).
fn status_len(msg: &Val) -> usize {
    field_len(2, msg.text().map_or(0, str::len)) + prost::encoding::key_len(3) + 1
}

/// `Span` (trace.proto field numbers).
fn span_len(s: &SpanRec) -> usize {
    let mut n = field_len(1, 16) + field_len(2, 8);
    if s.parent_span_id.is_some() {
        n += field_len(4, 8);
    }
    n += field_len(5, name_len(s));
    n += prost::encoding::key_len(6) + 1;
    n += fixed64_len(7) + fixed64_len(8);
    n += attrs_len(9, &s.attributes);
    n += s
        .events
        .iter()
        .map(|e| field_len(11, event_len(e)))
        .sum::<usize>();
    if let Some(m) = &s.error {
        n += field_len(15, status_len(m));
    }
    n += prost::encoding::key_len(16) + 4;
    n
}

fn put_span(s: &SpanRec, len: usize, buf: &mut Vec<u8>) {
    put_header(2, len, buf);
    put_bytes(1, &s.trace_id, buf);
    put_bytes(2, &s.span_id, buf);
    if let Some(p) = &s.parent_span_id {
        put_bytes(4, p, buf);
    }
    put_name(s, buf);
    encode_key(6, WireType::Varint, buf);
    encode_varint(s.kind as u64, buf);
    put_fixed64(7, s.start_ns, buf);
    put_fixed64(8, s.end_ns, buf);
    put_attrs(9, &s.attributes, buf);
    for e in &s.events {
        put_header(11, event_len(e), buf);
        put_fixed64(1, e.time_ns, buf);
        put_bytes(2, e.name.as_bytes(), buf);
        put_attrs(3, &e.attributes, buf);
    }
    if let Some(m) = &s.error {
        put_header(15, status_len(m), buf);
        put_bytes(2, m.text().unwrap_or("").as_bytes(), buf);
        encode_key(3, WireType::Varint, buf);
        encode_varint(2, buf);
    }
    encode_key(16, WireType::ThirtyTwoBit, buf);
    buf.put_u32_le(s.flags);
}

/// `ExportTraceServiceRequest { resource_spans: [{ resource: { service.name }, scope_spans:
/// [{ scope: { name, version }, spans }] }] }`.
pub fn encode_request(service: &str, scope: (&str, &str), spans: &[SpanRec]) -> Vec<u8> {
    let service_val = Val::Owned(service.to_string());
    let resource = field_len(1, kv_len("service.name", &service_val));
    let scope_msg = field_len(1, scope.0.len()) + field_len(2, scope.1.len());
    let lens: Vec<usize> = spans.iter().map(span_len).collect();
    let spans_len: usize = lens.iter().map(|l| field_len(2, *l)).sum();
    let scope_spans = field_len(1, scope_msg) + spans_len;
    let resource_spans = field_len(1, resource) + field_len(2, scope_spans);
    let mut buf = Vec::with_capacity(field_len(1, resource_spans));
    put_header(1, resource_spans, &mut buf);
    put_header(1, resource, &mut buf);
    put_kv(1, "service.name", &service_val, &mut buf);
    put_header(2, scope_spans, &mut buf);
    put_header(1, scope_msg, &mut buf);
    put_bytes(1, scope.0.as_bytes(), &mut buf);
    put_bytes(2, scope.1.as_bytes(), &mut buf);
    for (s, len) in spans.iter().zip(lens) {
        put_span(s, len, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prost::Message;

    #[test]
    fn decodes_with_the_official_message_types() {
        let server = SpanRec {
            trace_id: [7; 16],
            span_id: [1; 8],
            parent_span_id: Some([9; 8]),
            name: Val::Method(Method::GET),
            name_suffix: Some("users".into()),
            kind: Kind::Server,
            start_ns: 1_700_000_000_000_000_000,
            end_ns: 1_700_000_000_500_000_000,
            attributes: vec![
                ("url.path", Val::Path("/a/b?secret=1".parse().unwrap())),
                ("http.response.status_code", Val::Int(503)),
                ("client.address", Val::ip("2001:db8::1".parse().unwrap())),
                (
                    "user_agent.original",
                    Val::Header(HeaderValue::from_static("curl/8")),
                ),
                ("http.route", Val::Shared("users".into())),
                ("negative", Val::Int(-5)),
            ],
            events: vec![EventRec {
                time_ns: 1_700_000_000_100_000_000,
                name: "policy.refused",
                attributes: vec![("gateway.policy", Val::Static("jwt"))],
            }],
            error: Some(Val::Static("timeout")),
            flags: 0x101,
        };
        let client = SpanRec {
            span_id: [2; 8],
            parent_span_id: Some([1; 8]),
            name: Val::Method(Method::POST),
            name_suffix: None,
            kind: Kind::Client,
            attributes: Vec::new(),
            events: Vec::new(),
            error: None,
            ..server
        };
        let bytes = encode_request("edge", ("gateway", "0.1.0"), &[server, client]);
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &req.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "gateway");
        assert_eq!(ss.scope.as_ref().unwrap().version, "0.1.0");
        let s = &ss.spans[0];
        assert_eq!(s.trace_id, vec![7; 16]);
        assert_eq!(s.span_id, vec![1; 8]);
        assert_eq!(s.parent_span_id, vec![9; 8]);
        assert_eq!(s.name, "GET users");
        assert_eq!(s.kind, 2);
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(s.end_time_unix_nano, 1_700_000_000_500_000_000);
        assert_eq!(s.flags, 0x101);
        let attr = |k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            attr("url.path"),
            Some(any_value::Value::StringValue("/a/b".into()))
        );
        assert_eq!(
            attr("http.response.status_code"),
            Some(any_value::Value::IntValue(503))
        );
        assert_eq!(attr("negative"), Some(any_value::Value::IntValue(-5)));
        assert_eq!(
            attr("client.address"),
            Some(any_value::Value::StringValue("2001:db8::1".into()))
        );
        assert_eq!(
            attr("user_agent.original"),
            Some(any_value::Value::StringValue("curl/8".into()))
        );
        assert_eq!(s.events[0].name, "policy.refused");
        assert_eq!(s.events[0].time_unix_nano, 1_700_000_000_100_000_000);
        assert_eq!(s.events[0].attributes[0].key, "gateway.policy");
        let st = s.status.as_ref().unwrap();
        assert_eq!((st.code, st.message.as_str()), (2, "timeout"));
        let c = &ss.spans[1];
        assert_eq!((c.name.as_str(), c.kind), ("POST", 3));
        assert!(c.status.is_none() && c.attributes.is_empty());
    }
}
