//! Control plane on `-http` (`../shared/API.md`): WebRTC signaling
//! (`/offer`, WHEP), recording (`/start`, `/stop`, `/status`), `/health`
//! and the viewer page; plus the `-metrics` listener.
//!
//! In: HTTP requests, from the Flask app's server, its pages in browsers
//! (CORS), scripts and Prometheus. Out: JSON answers (every error is
//! `{"success":false,"error":"..."}` with `Content-Type:
//! application/json`), commands to the [`Recorder`] and [`Viewers`].
//! Tasks: connection tasks of [`crate::http`] on the process's runtime;
//! recorder start and stop (file creation, fsync) run on tokio's blocking
//! pool. Nothing here runs on, waits for or locks the media path: it reads
//! [`CameraStatus`](crate::shm::CameraStatus) atomics, hub snapshots and
//! recorder status copies.
//!
//! Bad input: unknown paths are 404 before anything else is looked at (no
//! path ever reaches the filesystem), wrong methods 405 with `Allow`, a
//! missing token 401, all decided from the head before any body byte is
//! read; bodies over [`BODY_LIMIT`] 413, malformed JSON or SDP 400. A
//! client cannot tie up the server (see [`crate::http`]), and at most
//! [`MAX_OFFERS_IN_FLIGHT`] negotiations run at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::health::Health;
use crate::http::{self, BoxFuture, Head, Listener, Method, Reply, Request, Service};
use crate::metrics::Metrics;
use crate::pipeline::Media;
use crate::recorder::{Recorder, RecorderError};
use crate::webrtc::{self, OfferError, Viewers};

/// Offers negotiated at once; more get 503 with `Retry-After`.
pub const MAX_OFFERS_IN_FLIGHT: usize = 4;
/// Largest request body (an SDP offer is a few KiB).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Connections the control plane keeps open at once; at the cap the
/// longest-idle one is closed (see [`crate::http`]).
pub const MAX_CONNECTIONS: usize = 256;

/// How the control plane treats clients.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Origins allowed to call from pages (`*` for any).
    pub cors_origins: Vec<String>,
    /// Bearer token for the state-changing routes; `None` leaves them open.
    pub auth_token: Option<String>,
    pub limits: http::Limits,
}

/// Reads `-auth-token-file`: the token is the file's first line, trimmed.
pub fn load_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(format!("{}: empty token", path.display()));
    }
    Ok(token)
}

/// `-cors-origin` as a list (comma separated).
pub fn parse_origins(text: &str) -> Vec<String> {
    text.split(',').map(|s| s.trim().trim_end_matches('/').to_string()).filter(|s| !s.is_empty()).collect()
}

/// The routes of the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Index,
    Offer,
    Whep,
    WhepSession(String),
    Start,
    Stop,
    Status,
    Health,
}

impl Route {
    /// Exact matches only: anything else, `/../`, `%2e`, `//status`, is 404.
    fn parse(path: &str) -> Option<Route> {
        Some(match path {
            "/" => Route::Index,
            "/offer" => Route::Offer,
            "/whep" => Route::Whep,
            "/start" => Route::Start,
            "/stop" => Route::Stop,
            "/status" => Route::Status,
            "/health" => Route::Health,
            _ => {
                let id = path.strip_prefix("/whep/")?;
                let valid = !id.is_empty()
                    && id.len() <= 64
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    return None;
                }
                Route::WhepSession(id.to_string())
            }
        })
    }

    fn allow(&self) -> &'static str {
        match self {
            Route::Index | Route::Status | Route::Health => "GET, HEAD, OPTIONS",
            Route::Offer | Route::Whep | Route::Start | Route::Stop => "POST, OPTIONS",
            Route::WhepSession(_) => "DELETE, OPTIONS",
        }
    }

    fn allows(&self, method: &Method) -> bool {
        match self {
            Route::Index | Route::Status | Route::Health => matches!(method, Method::Get | Method::Head),
            Route::Offer | Route::Whep | Route::Start | Route::Stop => *method == Method::Post,
            Route::WhepSession(_) => *method == Method::Delete,
        }
    }

    /// Routes that change state need the token when one is configured.
    fn needs_auth(&self) -> bool {
        matches!(self, Route::Offer | Route::Whep | Route::WhepSession(_) | Route::Start | Route::Stop)
    }
}

#[derive(Deserialize)]
struct OfferBody {
    #[serde(rename = "type")]
    kind: String,
    sdp: String,
}

/// Everything the handlers need; cheap to clone.
#[derive(Clone)]
pub struct Control {
    media: Media,
    recorder: Recorder,
    viewers: Viewers,
    health: Arc<Health>,
    config: Arc<ControlConfig>,
    offers_in_flight: Arc<AtomicUsize>,
}

/// Counts an offer in flight for its lifetime.
struct OfferSlot(Arc<AtomicUsize>);

impl Drop for OfferSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Control {
    pub fn new(
        media: Media,
        recorder: Recorder,
        viewers: Viewers,
        health: Arc<Health>,
        config: ControlConfig,
    ) -> Control {
        Control { media, recorder, viewers, health, config: Arc::new(config), offers_in_flight: Default::default() }
    }

    /// Starts the `-http` listener on `runtime`.
    pub fn serve(self, addr: SocketAddr, runtime: &tokio::runtime::Handle) -> std::io::Result<Listener> {
        let limits = self.config.limits;
        http::start("http", addr, limits, runtime, Arc::new(self))
    }

    fn allowed_origin(&self, head: &Head) -> Option<String> {
        let origin = head.header("Origin")?;
        let origins = &self.config.cors_origins;
        if origins.iter().any(|o| o == "*") {
            Some("*".into())
        } else {
            origins.iter().find(|o| o.eq_ignore_ascii_case(origin)).map(|_| origin.to_string())
        }
    }

    /// CORS headers on every answer to an allowed origin, errors included
    /// (so a page can read why it was refused).
    fn with_cors(&self, head: &Head, reply: Reply) -> Reply {
        match self.allowed_origin(head) {
            Some(allowed) => reply
                .header("Access-Control-Allow-Origin", allowed)
                .header("Access-Control-Expose-Headers", "Location")
                .header("Vary", "Origin"),
            None => reply,
        }
    }

    /// Decides from the head alone: 404, preflights, 405, 401.
    fn check(&self, head: &Head) -> Result<Route, Reply> {
        let Some(route) = Route::parse(&head.path) else {
            return Err(Reply::not_found());
        };
        if head.method == Method::Options {
            return Err(self.preflight(&route, head));
        }
        if !route.allows(&head.method) {
            return Err(Reply::method_not_allowed(route.allow()));
        }
        if route.needs_auth() {
            self.check_auth(head)?;
        }
        Ok(route)
    }

    async fn route(&self, route: Route, request: Request) -> Reply {
        match route {
            Route::Index => Reply::new(200, "text/html; charset=utf-8", webrtc::VIEWER_PAGE),
            Route::Offer => self.offer(&request).await,
            Route::Whep => self.whep(&request).await,
            Route::WhepSession(id) => self.whep_delete(&id),
            Route::Start => {
                let recorder = self.recorder.clone();
                recording_reply(blocking(move || recorder.start()).await)
            }
            Route::Stop => {
                let recorder = self.recorder.clone();
                recording_reply(blocking(move || recorder.stop()).await)
            }
            Route::Status => Reply::json(200, &json!(self.recorder.status())),
            Route::Health => {
                let (status, body) = self.health.report(&self.media, &self.recorder, self.viewers.count());
                Reply::json(status, &body)
            }
        }
    }

    fn check_auth(&self, head: &Head) -> Result<(), Reply> {
        let Some(token) = &self.config.auth_token else {
            return Ok(());
        };
        let given = head.header("Authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(Reply::error(401, "missing or wrong bearer token").header("WWW-Authenticate", "Bearer"))
        }
    }

    fn preflight(&self, route: &Route, head: &Head) -> Reply {
        let allowed = self.allowed_origin(head);
        if head.header("Origin").is_some() && allowed.is_none() {
            return Reply::error(403, "origin not allowed (see -cors-origin)");
        }
        let reply = Reply::new(204, "text/plain", Vec::new()).header("Allow", route.allow());
        if allowed.is_none() {
            return reply;
        }
        reply
            .header("Access-Control-Allow-Methods", route.allow())
            .header("Access-Control-Allow-Headers", "Content-Type, Authorization")
            .header("Access-Control-Max-Age", "600")
    }

    /// Takes an offer slot, or answers 503.
    fn offer_slot(&self) -> Result<OfferSlot, Reply> {
        let taken = self.offers_in_flight.fetch_add(1, Ordering::SeqCst);
        let slot = OfferSlot(self.offers_in_flight.clone());
        if taken >= MAX_OFFERS_IN_FLIGHT {
            return Err(Reply::error(503, "too many offers being negotiated").header("Retry-After", "1"));
        }
        Ok(slot)
    }

    async fn offer(&self, request: &Request) -> Reply {
        let offer: OfferBody = match serde_json::from_slice(&request.body) {
            Ok(offer) => offer,
            Err(e) => return Reply::error(400, format!("malformed offer JSON: {e}")),
        };
        if offer.kind != "offer" {
            return Reply::error(400, format!("expected type \"offer\", got {:?}", offer.kind));
        }
        if offer.sdp.trim().is_empty() {
            return Reply::error(400, "empty SDP");
        }
        let _slot = match self.offer_slot() {
            Ok(slot) => slot,
            Err(reply) => return reply,
        };
        match self.viewers.offer(&offer.sdp, request.head.peer.ip()).await {
            Ok(session) => {
                log::info!("viewer {}: answered an offer from {}", session.id, request.head.peer.ip());
                Reply::json(200, &json!({"type": "answer", "sdp": session.answer_sdp}))
            }
            Err(error) => offer_error(&error),
        }
    }

    async fn whep(&self, request: &Request) -> Reply {
        let content_type = request.head.header("Content-Type").unwrap_or("");
        if !content_type.trim().to_ascii_lowercase().starts_with("application/sdp") {
            return Reply::error(415, "WHEP offers must be Content-Type: application/sdp");
        }
        let Ok(sdp) = std::str::from_utf8(&request.body) else {
            return Reply::error(400, "SDP is not UTF-8");
        };
        if sdp.trim().is_empty() {
            return Reply::error(400, "empty SDP");
        }
        let _slot = match self.offer_slot() {
            Ok(slot) => slot,
            Err(reply) => return reply,
        };
        match self.viewers.offer(sdp, request.head.peer.ip()).await {
            Ok(session) => {
                log::info!("viewer {}: answered a WHEP offer from {}", session.id, request.head.peer.ip());
                Reply::new(201, "application/sdp", session.answer_sdp)
                    .header("Location", format!("/whep/{}", session.id))
            }
            Err(error) => offer_error(&error),
        }
    }

    fn whep_delete(&self, id: &str) -> Reply {
        if self.viewers.close(id) {
            Reply::json(200, &json!({"success": true}))
        } else {
            Reply::error(404, "no such session")
        }
    }
}

impl Service for Control {
    fn admit(&self, head: &Head) -> Result<usize, Reply> {
        match self.check(head) {
            Ok(_) => Ok(if head.method == Method::Post { BODY_LIMIT } else { 0 }),
            Err(reply) => Err(self.with_cors(head, reply)),
        }
    }

    fn call(&self, request: Request) -> BoxFuture<'_, Reply> {
        Box::pin(async move {
            let head = request.head.clone();
            let reply = match self.check(&head) {
                Ok(route) => self.route(route, request).await,
                Err(reply) => reply,
            };
            self.with_cors(&head, reply)
        })
    }
}

/// Runs blocking work (file creation, fsync) off the runtime's workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        // The closure panicked: the same as a panicking handler.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn offer_error(error: &OfferError) -> Reply {
    match error {
        OfferError::BadSdp(_) | OfferError::NoCompatibleCodec(_) => Reply::error(400, error),
        OfferError::TooManyViewers | OfferError::NoStreamYet => Reply::error(503, error).header("Retry-After", "2"),
        OfferError::TooManyPending => Reply::error(429, error).header("Retry-After", "2"),
        OfferError::Internal(_) => {
            log::error!("offer: {error}");
            Reply::error(500, error)
        }
    }
}

fn recording_reply(result: Result<crate::recorder::RecordingStatus, RecorderError>) -> Reply {
    match result {
        Ok(status) => Reply::json(200, &json!({"success": true, "status": status})),
        Err(error) => {
            let status = match error {
                RecorderError::AlreadyRecording | RecorderError::NotRecording | RecorderError::Stopping => 409,
                RecorderError::ShuttingDown => 503,
                RecorderError::Io(_) => 500,
            };
            Reply::error(status, error)
        }
    }
}

/// Equal-time comparison, so the token cannot be guessed byte by byte from
/// response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `-metrics` listener: `GET /metrics` in the Prometheus text format;
/// nothing else.
struct MetricsService(Arc<Metrics>);

impl Service for MetricsService {
    fn admit(&self, head: &Head) -> Result<usize, Reply> {
        if head.path != "/metrics" {
            return Err(Reply::not_found());
        }
        if !matches!(head.method, Method::Get | Method::Head) {
            return Err(Reply::method_not_allowed("GET, HEAD"));
        }
        Ok(0)
    }

    fn call(&self, _request: Request) -> BoxFuture<'_, Reply> {
        Box::pin(async move { Reply::new(200, "text/plain; version=0.0.4; charset=utf-8", self.0.encode()) })
    }
}

/// Starts the `-metrics` listener.
pub fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    limits: http::Limits,
    runtime: &tokio::runtime::Handle,
) -> std::io::Result<Listener> {
    let limits = http::Limits { max_connections: 32, ..limits };
    http::start("metrics", addr, limits, runtime, Arc::new(MetricsService(metrics)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_paths_route() {
        assert_eq!(Route::parse("/status"), Some(Route::Status));
        assert_eq!(Route::parse("/whep/abc-1_2"), Some(Route::WhepSession("abc-1_2".into())));
        for odd in ["/status/", "//status", "/../status", "/%73tatus", "/whep/", "/whep/../x", "/whep/a%2fb", ""] {
            assert_eq!(Route::parse(odd), None, "{odd}");
        }
        assert_eq!(Route::parse(&format!("/whep/{}", "a".repeat(65))), None);
    }

    #[test]
    fn origins_and_tokens() {
        assert_eq!(parse_origins("http://a:8080, http://b/ ,"), vec!["http://a:8080", "http://b"]);
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
