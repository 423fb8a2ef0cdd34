//! (5) The keep-alive connection pool of one endpoint, on `hyper::client::conn::http1`; the
//! upstream tier (6) takes connections from it and gives them back.
//!
//! Our own rather than hyper-util's legacy client: a connect error must leave the request
//! untouched so it can move on to the balancer's next choice (the legacy client consumes the
//! body), and later limits (`max_pending`) need a per-endpoint view. Idle connections sit in a
//! lock-free bounded queue: checking out and in costs an atomic, never a lock shared by all
//! requests.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::ReqBody;

/// An idle connection older than this is closed rather than reused: upstream servers close
/// idle keep-alive connections after 60-75 s (nginx 75 s, Node 5 s by default), and reusing one
/// they are closing costs a failed send.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

pub type Sender = SendRequest<ReqBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

pub struct Pool {
    addr: SocketAddr,
    /// `None` when `max_idle_per_target = 0`: every connection closes after its response.
    idle: Option<ArrayQueue<Idle>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Pool {
    /// `max_idle`: idle connections kept (`max_idle_per_target`); more are closed when they
    /// come back, so a burst's connections do not all stay open.
    pub fn new(addr: SocketAddr, max_idle: usize) -> Self {
        Self {
            addr,
            idle: (max_idle > 0).then(|| ArrayQueue::new(max_idle)),
        }
    }

    /// An idle connection that is still open and fresh, if any.
    pub fn take_idle(&self) -> Option<Sender> {
        let idle = self.idle.as_ref()?;
        while let Some(idle) = idle.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Hand a connection back after its response ended.
    pub fn put_back(&self, sender: Sender) {
        if let (false, Some(idle)) = (sender.is_closed(), &self.idle) {
            // A full pool drops (closes) the connection.
            let _ = idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Close idle connections that are closed or too old; keep the others in order.
    pub fn reap(&self) {
        let Some(queue) = &self.idle else { return };
        for _ in 0..queue.len() {
            let Some(idle) = queue.pop() else { break };
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_TIMEOUT {
                let _ = queue.push(idle);
            }
        }
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle.as_ref().map_or(0, ArrayQueue::len)
    }

    /// A new connection; its I/O runs on a task of its own.
    pub async fn connect(&self, timeout: Duration) -> io::Result<Sender> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(s) => s?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {} timed out after {timeout:?}", self.addr),
                ))
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(1 << 20)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
