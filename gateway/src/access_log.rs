//! The access log of `[access_log]` (SPEC §8.1): JSON lines with exactly the configured fields,
//! or nginx's `combined` format (the request written `METHOD path PROTOCOL`, never the query)
//! followed by ` key=value` for the other configured fields; to stdout or to a file reopened on
//! SIGUSR1 (log rotation). Without `[access_log]` the first-wave JSON line goes through the
//! process log as before (`policy::observe`).
//!
//! A line is built on the request's task when its response is done and handed to a writer
//! thread through a bounded channel: a slow disk or a full pipe never blocks a request (lines
//! past 65,536 waiting are dropped, and the writer says how many). Credentials never reach it:
//! no field carries a header other than Host, User-Agent and Referer, and paths have no query.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::config::{AccessLog, LogField, LogFormat};

/// Lines waiting for the writer; more are dropped (and counted).
const QUEUE: usize = 65_536;

/// SIGUSR1 was received: every writer reopens its file before its next line.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// One request, as the log sees it (borrowed from the request's state at the end).
pub struct Entry<'a> {
    pub unix_ms: u64,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes_sent: u64,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub route: &'a str,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub listener: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// The access log of a config generation (shared by the generations with the same table).
pub struct AccessLogRt {
    cfg: AccessLog,
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AccessLogRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogRt")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl AccessLogRt {
    /// Open the destination (a file is created if missing) and start its writer.
    pub fn start(cfg: &AccessLog) -> Result<Arc<Self>, String> {
        let sink = Sink::open(cfg.path.clone())?;
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(sink, rx, d))
            .map_err(|e| format!("access log writer: {e}"))?;
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            tx,
            dropped,
        }))
    }

    pub fn config(&self) -> &AccessLog {
        &self.cfg
    }

    pub fn log(&self, e: &Entry<'_>) {
        let line = match self.cfg.format {
            LogFormat::Json => json_line(&self.cfg.fields, e),
            LogFormat::Combined => combined_line(&self.cfg.fields, e),
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Ask every writer to reopen its file (SIGUSR1).
pub fn reopen() {
    REOPEN.fetch_add(1, Ordering::Release);
}

/// SIGUSR1 reopens access-log files (after logrotate moved them).
pub fn spawn_reopen_on_signal() {
    let Ok(mut sig) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
    else {
        return;
    };
    tokio::spawn(async move {
        while sig.recv().await.is_some() {
            reopen();
            tracing::info!("SIGUSR1: access-log files are reopened");
        }
    });
}

enum Sink {
    Stdout,
    File { path: PathBuf, file: std::fs::File },
}

impl Sink {
    fn open(path: Option<PathBuf>) -> Result<Self, String> {
        match path {
            None => Ok(Self::Stdout),
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| format!("access log {}: {e}", path.display()))?;
                Ok(Self::File { path, file })
            }
        }
    }

    fn write(&mut self, buf: &[u8]) {
        let r = match self {
            Self::Stdout => std::io::stdout().lock().write_all(buf),
            Self::File { file, .. } => file.write_all(buf),
        };
        if let Err(e) = r {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %e, "cannot write the access log");
            }
        }
    }

    fn reopen(&mut self) {
        if let Self::File { path, file } = self {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&*path)
            {
                Ok(f) => *file = f,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log")
                }
            }
        }
    }
}

fn write_lines(mut sink: Sink, rx: Receiver<String>, dropped: Arc<AtomicU64>) {
    let mut seen = REOPEN.load(Ordering::Acquire);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        let now = REOPEN.load(Ordering::Acquire);
        if now != seen {
            seen = now;
            sink.reopen();
        }
        buf.clear();
        buf.extend_from_slice(first.as_bytes());
        // Whatever else is waiting goes in the same write.
        while buf.len() < 60 * 1024 {
            match rx.try_recv() {
                Ok(line) => buf.extend_from_slice(line.as_bytes()),
                Err(_) => break,
            }
        }
        sink.write(&buf);
        let d = dropped.swap(0, Ordering::Relaxed);
        if d > 0 {
            tracing::warn!(
                lines = d,
                "access-log lines dropped: the writer fell behind"
            );
        }
    }
}

fn time_rfc3339(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `07/Dec/2026:00:38:15 +0000`, nginx's `$time_local` in UTC.
fn time_local(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_ms / 1000);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = s
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{}/{}/{}:{} +0000",
        s.get(8..10).unwrap_or("01"),
        month,
        s.get(0..4).unwrap_or("1970"),
        s.get(11..19).unwrap_or("00:00:00")
    )
}

enum Value<'a> {
    Str(Option<&'a str>),
    Owned(Option<String>),
    Int(u64),
    Float(Option<f64>),
}

fn value<'a>(f: LogField, e: &Entry<'a>) -> Value<'a> {
    match f {
        LogField::Time => Value::Owned(Some(time_rfc3339(e.unix_ms))),
        LogField::RequestId => Value::Str(Some(e.request_id)),
        LogField::TraceId => Value::Str(Some(e.trace_id)),
        LogField::ClientIp => Value::Owned(e.client_ip.map(|ip| ip.to_string())),
        LogField::Method => Value::Str(Some(e.method)),
        LogField::Host => Value::Str(e.host),
        LogField::Path => Value::Str(Some(e.path)),
        LogField::Protocol => Value::Str(Some(e.protocol)),
        LogField::Status => Value::Int(u64::from(e.status)),
        LogField::BytesSent => Value::Int(e.bytes_sent),
        LogField::DurationMs => Value::Float(Some(e.duration_ms)),
        LogField::UpstreamMs => Value::Float(e.upstream_ms),
        LogField::Route => Value::Str(Some(e.route)),
        LogField::Upstream => Value::Str(e.upstream),
        LogField::Target => Value::Str(e.target),
        LogField::Listener => Value::Str(e.listener),
        LogField::UserAgent => Value::Str(e.user_agent),
        LogField::Referer => Value::Str(e.referer),
        LogField::Error => Value::Str(e.error),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One JSON object with exactly `fields` (a missing value is null), and a newline.
pub fn json_line(fields: &[LogField], e: &Entry<'_>) -> String {
    let mut map = serde_json::Map::with_capacity(fields.len());
    for &f in fields {
        let v = match value(f, e) {
            Value::Str(s) => s.map_or(serde_json::Value::Null, |s| s.into()),
            Value::Owned(s) => s.map_or(serde_json::Value::Null, |s| s.into()),
            Value::Int(n) => n.into(),
            Value::Float(x) => x.map_or(serde_json::Value::Null, |x| round3(x).into()),
        };
        map.insert(f.name().to_string(), v);
    }
    let mut line = serde_json::Value::Object(map).to_string();
    line.push('\n');
    line
}

/// A value for `key=value`: `-` when empty; spaces, quotes and control bytes escaped so the
/// line splits on spaces.
fn plain(v: Value<'_>) -> String {
    let s = match v {
        Value::Str(s) => s.map(str::to_string),
        Value::Owned(s) => s,
        Value::Int(n) => Some(n.to_string()),
        Value::Float(x) => x.map(|x| format!("{:.3}", x)),
    };
    match s {
        Some(s) if !s.is_empty() => escape(&s, false),
        _ => "-".into(),
    }
}

/// nginx's escaping of variables in logs: `"`, `\` and bytes outside printable ASCII as `\xHH`
/// (and spaces too, for the `key=value` fields).
fn escape(s: &str, keep_spaces: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) || (b == b' ' && !keep_spaces) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
    out
}

const IN_COMBINED: [LogField; 9] = [
    LogField::ClientIp,
    LogField::Time,
    LogField::Method,
    LogField::Path,
    LogField::Protocol,
    LogField::Status,
    LogField::BytesSent,
    LogField::Referer,
    LogField::UserAgent,
];

/// `$remote_addr - - [$time_local] "METHOD path PROTOCOL" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent"`, then ` key=value` for the other configured fields.
pub fn combined_line(fields: &[LogField], e: &Entry<'_>) -> String {
    let quoted = |v: Option<&str>| match v {
        Some(s) if !s.is_empty() => escape(s, true),
        _ => "-".to_string(),
    };
    let mut line = format!(
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\"",
        e.client_ip
            .map_or_else(|| "-".to_string(), |ip| ip.to_string()),
        time_local(e.unix_ms),
        escape(e.method, false),
        escape(e.path, false),
        e.protocol,
        e.status,
        e.bytes_sent,
        quoted(e.referer),
        quoted(e.user_agent),
    );
    for &f in fields.iter().filter(|f| !IN_COMBINED.contains(f)) {
        let _ = write!(line, " {}={}", f.name(), plain(value(f, e)));
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            unix_ms: 1_796_515_095_131,
            request_id: "abc",
            trace_id: "0af7651916cd43dd8448eb211c80319c",
            client_ip: Some("10.0.0.7".parse().unwrap()),
            method: "GET",
            host: Some("example.com"),
            path: "/a b\"c",
            protocol: "HTTP/1.1",
            status: 200,
            bytes_sent: 42,
            duration_ms: 1.23456,
            upstream_ms: None,
            route: "api",
            upstream: Some("users"),
            target: Some("users-0"),
            listener: Some("web"),
            user_agent: Some("curl/8.0"),
            referer: None,
            error: None,
        }
    }

    #[test]
    fn json_has_exactly_the_fields() {
        let line = json_line(
            &[LogField::Status, LogField::UpstreamMs, LogField::Path],
            &entry(),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 3);
        assert_eq!(v["status"], 200);
        assert!(v["upstream_ms"].is_null());
        assert_eq!(v["path"], "/a b\"c");
    }

    #[test]
    fn combined_is_nginx_combined_then_key_values() {
        let line = combined_line(
            &[LogField::Time, LogField::Route, LogField::Error],
            &entry(),
        );
        assert_eq!(
            line,
            "10.0.0.7 - - [05/Dec/2026:23:58:15 +0000] \"GET /a\\x20b\\x22c HTTP/1.1\" 200 42 \"-\" \"curl/8.0\" route=api error=-\n"
        );
    }
}
