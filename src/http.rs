//! The HTTP/1.1 server behind every listener (`-http`, `-metrics`,
//! `-pprof`): connections on the tokio runtime, request heads parsed by
//! `httparse`, one [`Service`] per listener.
//!
//! In: bytes from any client on the listener's address, which this module
//! does not trust. Out: the service's [`Reply`]; every error this module
//! sends itself has a JSON body `{"success":false,"error":"..."}`, as
//! `../shared/API.md` promises for every error.
//!
//! Why not hyper: hyper answers malformed requests itself, with empty
//! bodies and no hook to change them, and offers no way to close the
//! longest-idle connection when at the cap. What is hand-written here is
//! only the framing around `httparse` (the parser hyper uses, chunk sizes
//! included): `Content-Length` and chunked request bodies, keep-alive,
//! `Expect: 100-continue`, `HEAD`.
//!
//! What a client cannot do:
//! - stall the server: each connection is one task (an idle one costs a
//!   socket and a few KiB), the request line and headers must arrive within
//!   [`Limits::header_timeout`] of their first byte (else 408), a body
//!   within [`Limits::body_timeout`] (else 408), a response must be taken
//!   within [`Limits::write_timeout`]; a keep-alive connection idle for
//!   [`Limits::idle_timeout`] is closed quietly;
//! - lock others out: at [`Limits::max_connections`] the longest-idle
//!   connection is closed to make room; a request the service holds open
//!   waiting for news ([`Service::may_hold`]: an HLS blocking playlist
//!   reload) counts as idle there and is answered 503 when closed; only
//!   when every connection is busy with work is a new one refused (503,
//!   closed);
//! - smuggle a request: a body the service refuses (413, 401, 404, ...) is
//!   never read and never parsed as a request: the answer carries
//!   `Connection: close` and the connection ends; a malformed or duplicate
//!   `Content-Length`, or `Transfer-Encoding` with `Content-Length`, is 400;
//! - grow memory: heads over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers
//!   are 431, bodies over the service's limit 413 before a byte is read.
//!
//! A service that panics answers 500; the connection and the listener go
//! on. [`Listener::stop`] stops accepting, lets requests in progress finish
//! within a grace period and closes the rest.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// Largest request line plus headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers a request may have.
pub const MAX_HEADERS: usize = 64;
/// After refusing a request whose body is still coming, this much of it is
/// read and thrown away (never parsed), within [`LINGER`], so that a client
/// that sends its whole body before reading (curl, ureq, Python) gets the
/// answer instead of a reset; then the connection closes.
pub const DRAIN_LIMIT: usize = 256 * 1024;
/// How long a refused body is drained at most.
pub const LINGER: Duration = Duration::from_secs(1);

/// What one listener allows its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once (see the module doc for what happens at the cap).
    pub max_connections: usize,
    /// From a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// For a request's whole body.
    pub body_timeout: Duration,
    /// For writing a response (per write of up to 64 KiB).
    pub write_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// Every deadline set to `timeout` (`-http-timeout-ms`).
    pub fn with_timeout(timeout: Duration, max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_timeout: timeout,
            body_timeout: timeout,
            write_timeout: timeout,
            idle_timeout: timeout,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::with_timeout(Duration::from_secs(10), 256)
    }
}

/// Request methods the services route on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Other(String),
}

impl Method {
    fn parse(text: &str) -> Method {
        match text {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(other) => other,
        };
        f.write_str(text)
    }
}

/// A request's line and headers, before any body byte is read.
#[derive(Clone, Debug)]
pub struct Head {
    pub method: Method,
    /// The path as sent, without the query (not percent-decoded).
    pub path: String,
    pub query: String,
    /// Names in lower case, values as sent (trimmed).
    pub headers: Vec<(String, String)>,
    /// The announced body length (`u64::MAX` for a number past it); 0 for
    /// a chunked body, whose length is known only once read.
    pub content_length: u64,
    pub chunked: bool,
    pub peer: SocketAddr,
}

impl Head {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value of `name` in the query string (no percent-decoding).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        query_param(&self.query, name)
    }
}

/// A whole request: its head and its body (at most the admitted limit).
#[derive(Clone, Debug)]
pub struct Request {
    pub head: Head,
    pub body: Bytes,
}

/// A response body.
pub enum Body {
    Full(Bytes),
    /// Chunks of a body whose total length is known in advance (a file
    /// range, a remuxed recording): sent with `Content-Length`. A chunk
    /// that fails, or a total that comes out different, ends the connection.
    Stream {
        length: u64,
        chunks: mpsc::Receiver<std::io::Result<Bytes>>,
    },
    /// Buffers already in memory sent one after the other (an HLS segment
    /// is its parts, shared with every other client: nothing is copied).
    Chunks(Vec<Bytes>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Full(bytes) => write!(f, "Body::Full({} bytes)", bytes.len()),
            Body::Stream { length, .. } => write!(f, "Body::Stream({length} bytes)"),
            Body::Chunks(chunks) => write!(f, "Body::Chunks({} bytes)", chunks.iter().map(Bytes::len).sum::<usize>()),
        }
    }
}

/// An answer, built by a service and sent by the connection.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply { status, content_type: content_type.to_string(), headers: Vec::new(), body: Body::Full(body.into()) }
    }

    pub fn json(status: u16, value: &Value) -> Reply {
        Reply::new(status, "application/json", value.to_string())
    }

    /// `{"success":false,"error":"..."}`, the Go server's error shape.
    pub fn error(status: u16, message: impl fmt::Display) -> Reply {
        Reply::json(status, &json!({"success": false, "error": message.to_string()}))
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// 405 with the `Allow` header.
    pub fn method_not_allowed(allow: &str) -> Reply {
        Reply::error(405, "method not allowed").header("Allow", allow)
    }

    pub fn not_found() -> Reply {
        Reply::error(404, "not found")
    }

    /// The body, if it is held in memory (tests and logs).
    pub fn body_bytes(&self) -> Option<&Bytes> {
        match &self.body {
            Body::Full(bytes) => Some(bytes),
            Body::Stream { .. } | Body::Chunks(_) => None,
        }
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

/// A boxed future, as services return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a listener serves.
pub trait Service: Send + Sync + 'static {
    /// Decides on a request from its head alone, before any body byte is
    /// read: `Ok(limit)` reads a body of at most `limit` bytes (larger is
    /// 413) and then calls [`Service::call`]; `Err(reply)` answers at once
    /// (and closes the connection if a body was announced).
    fn admit(&self, head: &Head) -> Result<usize, Reply>;
    /// Answers an admitted request.
    fn call(&self, request: Request) -> BoxFuture<'_, Reply>;
    /// Whether the answer to this admitted request may wait for news
    /// rather than for work (an HLS blocking playlist reload, a part that
    /// is announced but not made yet). While it waits, its connection
    /// counts as idle at the connection cap: the longest-waiting one is
    /// answered 503 and closed to make room, like the longest-idle one, so
    /// held requests never lock other clients out.
    fn may_hold(&self, _head: &Head) -> bool {
        false
    }
}

/// Splits `/path?query` into its parts.
pub fn split_url(url: &str) -> (&str, &str) {
    url.split_once('?').unwrap_or((url, ""))
}

/// The value of `name` in a query string (no percent-decoding: the
/// parameters here are plain numbers and tokens).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// What a `Range` header asks of a body of known length (RFC 9110 14.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// No range, or one this server ignores (another unit, several ranges,
    /// bad syntax: RFC 9110 lets a server answer those with the whole body).
    Full,
    /// Bytes `start..=end`, within the body.
    Partial { start: u64, end: u64 },
    /// A range wholly past the end: 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

impl ByteRange {
    /// Parses `bytes=A-B`, `bytes=A-` or `bytes=-N` against `len` bytes.
    pub fn parse(header: Option<&str>, len: u64) -> ByteRange {
        let Some(spec) = header.map(str::trim) else { return ByteRange::Full };
        let Some(spec) = spec.get(..6).filter(|unit| unit.eq_ignore_ascii_case("bytes=")).map(|_| spec[6..].trim())
        else {
            return ByteRange::Full;
        };
        let Some((first, last)) = spec.split_once('-') else { return ByteRange::Full };
        let (first, last) = (first.trim(), last.trim());
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        // A number past u64 is past any body.
        let value = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
        if digits(first) && (last.is_empty() || digits(last)) {
            let start = value(first);
            let end = (!last.is_empty()).then(|| value(last));
            if end.is_some_and(|end| end < start) {
                return ByteRange::Full; // invalid: ignored
            }
            if start >= len {
                return ByteRange::Unsatisfiable;
            }
            return ByteRange::Partial { start, end: end.map_or(len - 1, |end| end.min(len - 1)) };
        }
        if first.is_empty() && digits(last) {
            let suffix = value(last);
            if suffix == 0 || len == 0 {
                return ByteRange::Unsatisfiable;
            }
            return ByteRange::Partial { start: len - suffix.min(len), end: len - 1 };
        }
        ByteRange::Full
    }
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison,
/// RFC 9110 13.1.2: `W/` prefixes ignored; `*` matches anything).
pub fn etag_matches(header: &str, etag: &str) -> bool {
    let strip = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    header.trim() == "*" || header.split(',').any(|tag| strip(tag) == strip(etag))
}

/// A running listener; [`Listener::stop`] ends it.
pub struct Listener {
    pub name: &'static str,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("name", &self.name).field("addr", &self.addr).finish()
    }
}

/// Connection bookkeeping shared by the accept loop and the connections.
struct Shared {
    name: &'static str,
    limits: Limits,
    connections: Mutex<HashMap<u64, Connection>>,
    next_id: AtomicU64,
    /// Set by [`Listener::stop`]: idle connections close, busy ones after
    /// their response.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Notified whenever a connection ends (stop waits on it).
    closed: Notify,
}

struct Connection {
    /// `None` while a request is being read or answered.
    idle_since: Option<Instant>,
    evict: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
        // Plain map inserts and removes: consistent after any panic.
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, evicting the longest-idle one at the cap;
    /// `None` when every connection is busy.
    fn admit_connection(&self) -> Option<(u64, Arc<Notify>)> {
        let mut connections = self.lock();
        if connections.len() >= self.limits.max_connections {
            let oldest = connections
                .iter()
                .filter_map(|(id, c)| c.idle_since.map(|since| (since, *id)))
                .min()
                .map(|(_, id)| id)?;
            if let Some(evicted) = connections.remove(&oldest) {
                // notify_one stores a permit: the connection sees it even if
                // it is not waiting yet.
                evicted.evict.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        connections.insert(id, Connection { idle_since: Some(Instant::now()), evict: evict.clone() });
        Some((id, evict))
    }

    fn set_idle(&self, id: u64, idle: bool) {
        if let Some(connection) = self.lock().get_mut(&id) {
            connection.idle_since = idle.then(Instant::now);
        }
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.closed.notify_waiters();
    }

    fn count(&self) -> usize {
        self.lock().len()
    }
}

/// Binds `addr` and serves `service` on the current tokio runtime (via
/// `runtime`). Logs `listening: NAME on ADDR` with the bound address (port 0
/// works). A bind error names the address; the caller adds the flag.
pub fn start(
    name: &'static str,
    addr: SocketAddr,
    limits: Limits,
    runtime: &tokio::runtime::Handle,
    service: Arc<dyn Service>,
) -> std::io::Result<Listener> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let listener = {
        let _guard = runtime.enter();
        TcpListener::from_std(std_listener)?
    };
    let (stopping, _) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        name,
        limits,
        connections: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        stopping,
        closed: Notify::new(),
    });
    let accept = runtime.spawn(accept_loop(listener, shared.clone(), service));
    log::info!("listening: {name} on {bound}");
    Ok(Listener { name, addr: bound, shared, accept })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, service: Arc<dyn Service>) {
    let mut stopping = shared.stopping.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE, ECONNABORTED and the like pass; never stop accepting.
                log::debug!("{}: accept: {e}", shared.name);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some((id, evict)) = shared.admit_connection() else {
            tokio::spawn(refuse_busy(stream, shared.limits.write_timeout));
            continue;
        };
        let (shared, service) = (shared.clone(), service.clone());
        tokio::spawn(async move {
            let stopping = shared.stopping.subscribe();
            let mut connection =
                Conn { stream, peer, id, buffer: BytesMut::with_capacity(4096), shared: &shared, evict, stopping };
            connection.serve(service.as_ref()).await;
            shared.remove(id);
        });
    }
}

/// Every connection busy with a request: tell the new one and close it.
async fn refuse_busy(mut stream: TcpStream, timeout: Duration) {
    let reply = Reply::error(503, "too many connections").header("Retry-After", "1");
    // Short: a flood of refused connections must not hold file descriptors.
    let timeout = timeout.min(Duration::from_secs(1));
    let _ = tokio::time::timeout(timeout, write_reply(&mut stream, reply, false, false, timeout)).await;
}

/// Why reading a request head ended without one.
enum HeadError {
    /// Closed, idle timeout, evicted, or stopping: close quietly.
    Quiet,
    /// Answer this, then close.
    Refuse(Reply),
}

struct Conn<'a> {
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    buffer: BytesMut,
    shared: &'a Shared,
    evict: Arc<Notify>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Conn<'_> {
    async fn serve(&mut self, service: &dyn Service) {
        loop {
            let head = match self.read_head().await {
                Ok(head) => head,
                Err(HeadError::Quiet) => return,
                Err(HeadError::Refuse(reply)) => {
                    if self.send(reply, false, false).await {
                        self.linger().await;
                    }
                    return;
                }
            };
            self.shared.set_idle(self.id, false);
            let keep_alive = head.keep_alive && !*self.stopping.borrow();
            let is_head = head.head.method == Method::Head;
            let Some(keep_alive) = self.handle(service, head.head, keep_alive, head.expect_continue, is_head).await
            else {
                return;
            };
            if !keep_alive {
                return;
            }
            self.shared.set_idle(self.id, true);
        }
    }

    /// Admits, reads the body, calls the service and answers. Returns
    /// whether the connection may carry another request (None: it failed).
    async fn handle(
        &mut self,
        service: &dyn Service,
        head: Head,
        keep_alive: bool,
        expect_continue: bool,
        is_head: bool,
    ) -> Option<bool> {
        let announced = head.content_length;
        let has_body = announced > 0 || head.chunked;
        let chunked = head.chunked;
        let limit = match catch(|| service.admit(&head)) {
            Ok(Ok(limit)) => limit,
            Ok(Err(reply)) => {
                // The body (if any) is never parsed: close rather than let
                // its bytes be read as the next request.
                let keep = keep_alive && !has_body;
                let sent = self.send(reply, keep, is_head).await;
                if sent && has_body {
                    self.linger().await;
                }
                return sent.then_some(keep);
            }
            Err(()) => {
                log::error!("{}: service panicked admitting {} {}", self.shared.name, head.method, head.path);
                return self.send(Reply::error(500, "internal error"), false, is_head).await.then_some(false);
            }
        };
        if announced > limit as u64 {
            let reply = Reply::error(413, format!("body over {limit} bytes"));
            if self.send(reply, false, is_head).await {
                self.linger().await;
            }
            return Some(false);
        }
        if expect_continue && has_body {
            let write = self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            if !matches!(tokio::time::timeout(self.shared.limits.write_timeout, write).await, Ok(Ok(()))) {
                return None;
            }
        }
        let body = if chunked { self.read_chunked(limit).await } else { self.read_body(announced as usize).await };
        let body = match body {
            Ok(body) => body,
            Err(Some(reply)) => {
                if self.send(reply, false, is_head).await {
                    self.linger().await;
                }
                return Some(false);
            }
            Err(None) => return None,
        };
        let (method, path) = (head.method.clone(), head.path.clone());
        let hold = catch(|| service.may_hold(&head)).unwrap_or(false);
        let call = std::panic::AssertUnwindSafe(service.call(Request { head, body })).catch_unwind();
        let answered = if hold { self.held(call).await } else { Some(call.await) };
        let reply = match answered {
            Some(Ok(reply)) => reply,
            Some(Err(_)) => {
                log::error!("{}: service panicked on {method} {path}", self.shared.name);
                Reply::error(500, "internal error")
            }
            None => {
                // Evicted or stopping while waiting: tell the client (it
                // retries), briefly, then close.
                let reply = Reply::error(503, "server busy; retry").header("Retry-After", "1");
                let timeout = self.shared.limits.write_timeout.min(Duration::from_secs(1));
                let _ = write_reply(&mut self.stream, reply, false, is_head, timeout).await;
                return None;
            }
        };
        log::debug!("{}: {method} {path} -> {}", self.shared.name, reply.status);
        let keep = keep_alive && !*self.stopping.borrow();
        self.send(reply, keep, is_head).await.then_some(keep)
    }

    /// Awaits a held request's answer with the connection counted as idle
    /// (see [`Service::may_hold`]); `None` if it was evicted to make room
    /// or the listener is stopping.
    async fn held<F: Future>(&mut self, call: F) -> Option<F::Output> {
        self.shared.set_idle(self.id, true);
        let answered = tokio::select! {
            reply = call => Some(reply),
            _ = self.evict.notified() => None,
            _ = self.stopping.wait_for(|s| *s) => None,
        };
        self.shared.set_idle(self.id, false);
        answered
    }

    /// Ends a connection whose request was refused mid-body: no more
    /// writes, then up to [`DRAIN_LIMIT`] bytes read and dropped within
    /// [`LINGER`].
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(self.shared.limits.write_timeout, self.stream.shutdown()).await;
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut drained = self.buffer.len();
        self.buffer.clear();
        let mut scratch = [0u8; 8192];
        while drained < DRAIN_LIMIT {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => return,
            }
        }
    }

    async fn send(&mut self, reply: Reply, keep_alive: bool, is_head: bool) -> bool {
        write_reply(&mut self.stream, reply, keep_alive, is_head, self.shared.limits.write_timeout).await
    }

    /// Reads the next request head. Quiet for a closed, idle, evicted or
    /// stopped connection; a refusal for a malformed or slow one.
    async fn read_head(&mut self) -> Result<Parsed, HeadError> {
        let limits = self.shared.limits;
        let idle_deadline = tokio::time::Instant::now() + limits.idle_timeout;
        let mut header_deadline = None;
        loop {
            if !self.buffer.is_empty() {
                header_deadline.get_or_insert_with(|| tokio::time::Instant::now() + limits.header_timeout);
                match parse_head(&self.buffer, self.peer) {
                    Ok(Some((parsed, used))) => {
                        let _ = self.buffer.split_to(used);
                        return Ok(parsed);
                    }
                    Ok(None) if self.buffer.len() >= MAX_HEAD => {
                        return Err(HeadError::Refuse(Reply::error(431, "request line and headers too large")))
                    }
                    Ok(None) => {}
                    Err(reply) => return Err(HeadError::Refuse(reply)),
                }
            }
            let deadline = header_deadline.unwrap_or(idle_deadline);
            let idle = header_deadline.is_none();
            let read = self.stream.read_buf(&mut self.buffer);
            tokio::select! {
                result = read => match result {
                    Ok(0) | Err(_) => return Err(HeadError::Quiet),
                    Ok(_) => {
                        if idle {
                            self.shared.set_idle(self.id, false);
                        }
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(if idle {
                        HeadError::Quiet
                    } else {
                        HeadError::Refuse(Reply::error(408, "request headers too slow"))
                    });
                }
                _ = self.evict.notified(), if idle => return Err(HeadError::Quiet),
                _ = self.stopping.wait_for(|s| *s), if idle => return Err(HeadError::Quiet),
            }
        }
    }

    /// Reads exactly `length` body bytes within the body deadline. `Err(Some)`
    /// answers (408), `Err(None)` closes (the client went away).
    async fn read_body(&mut self, length: usize) -> Result<Bytes, Option<Reply>> {
        let deadline = tokio::time::Instant::now() + self.shared.limits.body_timeout;
        while self.buffer.len() < length {
            self.buffer.reserve(length - self.buffer.len());
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
                Err(_) => return Err(Some(Reply::error(408, "request body too slow"))),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(None),
                Ok(Ok(_)) => {}
            }
        }
        Ok(self.buffer.split_to(length).freeze())
    }

    /// Reads a chunked body of at most `limit` bytes within the body
    /// deadline (chunk sizes parsed by `httparse`; trailers skipped).
    async fn read_chunked(&mut self, limit: usize) -> Result<Bytes, Option<Reply>> {
        let deadline = tokio::time::Instant::now() + self.shared.limits.body_timeout;
        let mut body = BytesMut::new();
        loop {
            // A chunk-size line.
            let (used, size) = loop {
                match httparse::parse_chunk_size(&self.buffer) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) if self.buffer.len() < 1024 => self.fill(deadline).await?,
                    _ => return Err(Some(Reply::error(400, "malformed chunked body"))),
                }
            };
            let _ = self.buffer.split_to(used);
            if size > (limit - body.len()) as u64 {
                return Err(Some(Reply::error(413, format!("body over {limit} bytes"))));
            }
            if size == 0 {
                // Trailer lines up to an empty one.
                loop {
                    if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                        let line = self.buffer.split_to(end + 2);
                        if line.len() == 2 {
                            return Ok(body.freeze());
                        }
                    } else if self.buffer.len() > MAX_HEAD {
                        return Err(Some(Reply::error(431, "chunked trailers too large")));
                    } else {
                        self.fill(deadline).await?;
                    }
                }
            }
            let size = size as usize;
            while self.buffer.len() < size + 2 {
                self.fill(deadline).await?;
            }
            body.extend_from_slice(&self.buffer[..size]);
            if &self.buffer[size..size + 2] != b"\r\n" {
                return Err(Some(Reply::error(400, "malformed chunked body")));
            }
            let _ = self.buffer.split_to(size + 2);
        }
    }

    /// One more read into the buffer before `deadline`.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), Option<Reply>> {
        self.buffer.reserve(4096);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buffer)).await {
            Err(_) => Err(Some(Reply::error(408, "request body too slow"))),
            Ok(Ok(0)) | Ok(Err(_)) => Err(None),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// Runs `f`, turning a panic into `Err`.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, ()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| ())
}

/// A parsed head and what the framing needs from it.
struct Parsed {
    head: Head,
    keep_alive: bool,
    expect_continue: bool,
}

/// Parses a request head from `buffer`: `Ok(None)` while incomplete,
/// `Err(reply)` for one that must be refused (the connection then closes).
fn parse_head(buffer: &[u8], peer: SocketAddr) -> Result<Option<(Parsed, usize)>, Reply> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let used = match request.parse(buffer) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reply::error(431, format!("more than {MAX_HEADERS} headers")));
        }
        Err(e) => return Err(Reply::error(400, format!("malformed request: {e}"))),
    };
    let method = Method::parse(request.method.unwrap_or(""));
    let target = request.path.unwrap_or("");
    let version = request.version.unwrap_or(1);
    let mut list = Vec::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            return Err(Reply::error(400, format!("header {} is not UTF-8", header.name)));
        };
        list.push((header.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let values = |name: &'static str| list.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str());
    let mut content_length = None;
    for value in values("content-length") {
        // Digits only: `+5`, `5 5`, `0x5` and the like are refused, and
        // copies must agree (RFC 9112 6.3). A number past u64 is simply
        // too large (413 later), not malformed.
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Reply::error(400, format!("malformed Content-Length {value:?}")));
        }
        let length: u64 = value.parse().unwrap_or(u64::MAX);
        if content_length.is_some_and(|seen| seen != length) {
            return Err(Reply::error(400, "conflicting Content-Length headers"));
        }
        content_length = Some(length);
    }
    let mut chunked = false;
    for value in values("transfer-encoding") {
        if content_length.is_some() {
            return Err(Reply::error(400, "both Transfer-Encoding and Content-Length"));
        }
        if !value.eq_ignore_ascii_case("chunked") || chunked {
            return Err(Reply::error(501, format!("Transfer-Encoding {value:?} is not supported")));
        }
        chunked = true;
    }
    let connection = values("connection").collect::<Vec<_>>().join(",").to_ascii_lowercase();
    let tokens: Vec<&str> = connection.split(',').map(str::trim).collect();
    let keep_alive = if version == 0 { tokens.contains(&"keep-alive") } else { !tokens.contains(&"close") };
    let expect_continue = values("expect").any(|v| v.eq_ignore_ascii_case("100-continue"));
    // A target that is not a path (`*`, `http://...`) reaches the service
    // as it is, and matches no route there (404).
    let (path, query) = split_url(target);
    let head = Head {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers: list,
        content_length: content_length.unwrap_or(0),
        chunked,
        peer,
    };
    Ok(Some((Parsed { head, keep_alive, expect_continue }, used)))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes a whole response within `timeout` per write; false if the client
/// did not take it (the connection then ends).
async fn write_reply(stream: &mut TcpStream, reply: Reply, keep_alive: bool, is_head: bool, timeout: Duration) -> bool {
    let length = match &reply.body {
        Body::Full(bytes) => bytes.len() as u64,
        Body::Stream { length, .. } => *length,
        Body::Chunks(chunks) => chunks.iter().map(|c| c.len() as u64).sum(),
    };
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    let mut push = |name: &str, value: &str| {
        // Names and values come from this program; a CR or LF in one is a
        // bug, dropped rather than sent as a split header.
        if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
            log::warn!("bad response header {name:?}");
            return;
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    };
    push("Content-Type", &reply.content_type);
    // 304 has no body: no Content-Length rather than a wrong one.
    if reply.status != 204 && reply.status != 304 && reply.status >= 200 {
        push("Content-Length", &length.to_string());
    }
    for (name, value) in &reply.headers {
        push(name, value);
    }
    if !keep_alive && !reply.has_header("Connection") {
        push("Connection", "close");
    }
    head.push_str("\r\n");
    let no_body = is_head || reply.status == 204 || reply.status == 304;
    let mut head = head.into_bytes();
    // A small body goes out with the head: one write, one segment.
    if let (false, Body::Full(bytes)) = (no_body, &reply.body) {
        if bytes.len() <= 16 * 1024 {
            head.extend_from_slice(bytes);
            return write_all(stream, &head, timeout).await && flush(stream, timeout).await;
        }
    }
    if !write_all(stream, &head, timeout).await {
        return false;
    }
    if no_body {
        return flush(stream, timeout).await;
    }
    match reply.body {
        Body::Full(bytes) => {
            for chunk in bytes.chunks(64 * 1024) {
                if !write_all(stream, chunk, timeout).await {
                    return false;
                }
            }
        }
        Body::Stream { length, mut chunks } => {
            let mut sent = 0u64;
            while let Some(chunk) = chunks.recv().await {
                let Ok(chunk) = chunk else { return false };
                sent += chunk.len() as u64;
                if sent > length || !write_all(stream, &chunk, timeout).await {
                    return false;
                }
            }
            if sent != length {
                return false;
            }
        }
        Body::Chunks(chunks) => {
            for chunk in chunks.iter().flat_map(|c| c.chunks(64 * 1024)) {
                if !write_all(stream, chunk, timeout).await {
                    return false;
                }
            }
        }
    }
    flush(stream, timeout).await
}

/// One write within `timeout`; false if the client did not take it.
async fn write_all(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, stream.write_all(bytes)).await, Ok(Ok(())))
}

async fn flush(stream: &mut TcpStream, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, stream.flush()).await, Ok(Ok(())))
}

impl Listener {
    /// Stops accepting; idle connections close at once, requests in progress
    /// get up to `grace` to finish (a profile or a recording stop can take
    /// seconds; shutdown must not). Call from outside the runtime.
    pub fn stop(self, grace: Duration) {
        self.shared.stopping.send_replace(true);
        self.accept.abort();
        let deadline = Instant::now() + grace;
        while self.shared.count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let left = self.shared.count();
        if left > 0 {
            log::debug!("{}: {left} connections still busy at shutdown", self.name);
        }
        log::debug!("{}: stopped", self.name);
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn parsed(text: &str) -> Result<Option<(Parsed, usize)>, Reply> {
        parse_head(text.as_bytes(), peer())
    }

    #[test]
    fn a_complete_head_parses_and_leaves_the_body() {
        let text = "POST /offer?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let (p, used) = parsed(text).unwrap().unwrap();
        assert_eq!((p.head.path.as_str(), p.head.query.as_str(), p.head.content_length), ("/offer", "x=1", 5));
        assert_eq!(&text[used..], "hello");
        assert!(p.keep_alive && !p.expect_continue);
        assert_eq!(p.head.header("HOST"), Some("a"));
        assert!(parsed("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none(), "incomplete");
    }

    #[test]
    fn bad_framing_is_refused_with_json() {
        for (text, status) in [
            ("POST /start HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
            ("POST /start HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            ("POST /start HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            ("POST /start HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
            ("POST /start HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            ("G\x01T / HTTP/1.1\r\n\r\n", 400),
        ] {
            let reply = parsed(text).err().unwrap_or_else(|| panic!("accepted {text:?}"));
            assert_eq!(reply.status, status, "{text:?}");
            assert_eq!(reply.content_type, "application/json");
            let body: Value = serde_json::from_slice(reply.body_bytes().unwrap()).unwrap();
            assert!(body["error"].is_string());
        }
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(parsed(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err().unwrap().status, 431);
        let same = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(parsed(same).unwrap().unwrap().0.head.content_length, 5, "identical copies are fine");
        let huge = "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(parsed(huge).unwrap().unwrap().0.head.content_length, u64::MAX, "too large, not malformed");
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parsed(chunked).unwrap().unwrap().0.head.chunked);
    }

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        use ByteRange::*;
        let r = |h: &str| ByteRange::parse(Some(h), 1000);
        assert_eq!(ByteRange::parse(None, 1000), Full);
        assert_eq!(r("bytes=0-99"), Partial { start: 0, end: 99 });
        assert_eq!(r("bytes=500-"), Partial { start: 500, end: 999 });
        assert_eq!(r("bytes=990-2000"), Partial { start: 990, end: 999 });
        assert_eq!(r("bytes=-100"), Partial { start: 900, end: 999 });
        assert_eq!(r("bytes=-5000"), Partial { start: 0, end: 999 });
        assert_eq!(r("BYTES=1-1"), Partial { start: 1, end: 1 });
        assert_eq!(r("bytes=1000-"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=99999999999999999999999-"), Unsatisfiable);
        for ignored in ["items=0-1", "bytes=5-1", "bytes=0-1,5-6", "bytes=a-b", "bytes=-", "bytes=", "bytes=+1-2"] {
            assert_eq!(r(ignored), Full, "{ignored}");
        }
        assert_eq!(ByteRange::parse(Some("bytes=0-"), 0), Unsatisfiable);
        assert!(etag_matches("\"a\", W/\"b\"", "\"b\""));
        assert!(etag_matches("*", "\"x\""));
        assert!(!etag_matches("\"a\"", "\"b\""));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let ka = |text: &str| parsed(text).unwrap().unwrap().0.keep_alive;
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        let expect = parsed("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n").unwrap().unwrap();
        assert!(expect.0.expect_continue);
    }
}
