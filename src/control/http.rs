//! One HTTP listener: a bound socket, tiny_http's accept thread and a
//! bounded pool of worker threads calling one handler.
//!
//! In: requests from any client on the listener's address. Out: the
//! handler's [`Reply`], always with a `Content-Type`. Threads: tiny_http's
//! accept thread and per-connection readers (capped by
//! [`Limits::max_connections`], with socket timeouts and a header deadline,
//! see `vendor/tiny_http/PATCHES.md`), plus `workers` threads owned by the
//! [`Listener`], which stop on the shutdown signal or [`Listener::stop`].
//! A handler that panics answers 500; the worker goes on.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tiny_http::{Header, Request, Response};

use crate::shutdown::Shutdown;

/// What one listener allows a client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Requests handled at once (worker threads).
    pub workers: usize,
    /// Connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// A request's line and headers must arrive within this; an idle
    /// keep-alive connection and a stalled read are cut after it too.
    pub timeout: Duration,
    /// Largest request body accepted (413 above).
    pub body_limit: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { workers: 4, max_connections: 64, timeout: Duration::from_secs(10), body_limit: 64 * 1024 }
    }
}

/// An answer, built by a handler and sent by the worker.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply { status, content_type: content_type.to_string(), headers: Vec::new(), body: body.into() }
    }

    pub fn json(status: u16, value: &Value) -> Reply {
        Reply::new(status, "application/json", value.to_string())
    }

    /// `{"success":false,"error":"..."}`, the Go server's error shape.
    pub fn error(status: u16, message: impl std::fmt::Display) -> Reply {
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
}

/// Request body, at most `limit` bytes, read within `timeout`.
pub fn read_body(request: &mut Request, limit: usize, timeout: Duration) -> Result<Vec<u8>, Reply> {
    let too_large = || Reply::error(413, format!("body over {limit} bytes"));
    if request.body_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let started = Instant::now();
    let mut body = Vec::new();
    let mut buf = [0u8; 8192];
    let reader = request.as_reader();
    loop {
        if started.elapsed() > timeout {
            return Err(Reply::error(408, "body too slow"));
        }
        match reader.read(&mut buf) {
            Ok(0) => return Ok(body),
            Ok(n) if body.len() + n > limit => return Err(too_large()),
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(Reply::error(408, "body too slow"));
            }
            Err(e) => return Err(Reply::error(400, format!("cannot read the body: {e}"))),
        }
    }
}

/// The value of a request header, if present and ASCII.
pub fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request.headers().iter().find(|h| h.field.equiv(name)).map(|h| h.value.as_str())
}

/// Splits `/path?query` into its parts.
pub fn split_url(url: &str) -> (&str, &str) {
    url.split_once('?').unwrap_or((url, ""))
}

/// The value of `name` in a query string (no percent-decoding: the
/// parameters here are plain numbers).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

type Handler = Arc<dyn Fn(&mut Request) -> Reply + Send + Sync>;

/// A running listener; [`Listener::stop`] ends it.
pub struct Listener {
    pub name: &'static str,
    pub addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("name", &self.name).field("addr", &self.addr).finish()
    }
}

/// Binds `addr` and starts serving `handler`. Logs
/// `listening: NAME on ADDR` with the bound address (port 0 works).
pub fn start(
    name: &'static str,
    addr: SocketAddr,
    limits: Limits,
    shutdown: Shutdown,
    handler: impl Fn(&mut Request) -> Reply + Send + Sync + 'static,
) -> Result<Listener, String> {
    let socket = std::net::TcpListener::bind(addr).map_err(|e| format!("{name}: cannot listen on {addr}: {e}"))?;
    let bound = socket.local_addr().map_err(|e| format!("{name}: {e}"))?;
    let server = tiny_http::Server::from_listener_with_limits(
        socket,
        None,
        tiny_http::Limits {
            read_timeout: Some(limits.timeout),
            write_timeout: Some(limits.timeout),
            header_timeout: Some(limits.timeout),
            max_connections: limits.max_connections,
        },
    )
    .map_err(|e| format!("{name}: {e}"))?;
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let handler: Handler = Arc::new(handler);
    let mut workers = Vec::new();
    for i in 0..limits.workers.max(1) {
        let (server, stop, shutdown, handler) = (server.clone(), stop.clone(), shutdown.clone(), handler.clone());
        let worker = std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || work(name, &server, &stop, &shutdown, &handler))
            .map_err(|e| format!("{name}: cannot start a worker: {e}"))?;
        workers.push(worker);
    }
    log::info!("listening: {name} on {bound}");
    Ok(Listener { name, addr: bound, server, stop, workers })
}

fn work(name: &str, server: &tiny_http::Server, stop: &AtomicBool, shutdown: &Shutdown, handler: &Handler) {
    while !stop.load(Ordering::Relaxed) && !shutdown.is_triggered() {
        let mut request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                log::error!("{name}: {e}");
                return;
            }
        };
        let reply = std::panic::catch_unwind(AssertUnwindSafe(|| handler(&mut request))).unwrap_or_else(|_| {
            log::error!("{name}: handler panicked on {} {}", request.method(), request.url());
            Reply::error(500, "internal error")
        });
        log::debug!("{name}: {} {} -> {}", request.method(), request.url(), reply.status);
        respond(request, reply);
    }
}

fn respond(request: Request, reply: Reply) {
    let length = reply.body.len();
    let mut response =
        Response::new(reply.status.into(), Vec::new(), std::io::Cursor::new(reply.body), Some(length), None);
    let headers = std::iter::once(("Content-Type".to_string(), reply.content_type)).chain(reply.headers);
    for (name, value) in headers {
        // Names and values are built here from ASCII; a bad one is a bug,
        // logged rather than sent.
        match Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            Ok(header) => response.add_header(header),
            Err(()) => log::warn!("bad response header {name:?}"),
        }
    }
    // The client may have gone; nothing to do about it.
    let _ = request.respond(response);
}

impl Listener {
    /// Stops taking requests. Waits up to `grace` for requests in progress
    /// (a profile or an offer can take seconds; shutdown must not).
    pub fn stop(self, grace: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + grace;
        for worker in self.workers {
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
        // Dropping the last server handle closes the listening socket.
        drop(self.server);
        log::debug!("{}: stopped", self.name);
    }
}
