//! Control plane on `-http` (`../shared/API.md`): WebRTC signaling
//! (`/offer`, WHEP), recording (`/start`, `/stop`, `/status`), `/health`,
//! each per path under `/NAME/` too, `/paths`, the recordings on disk
//! (`/recordings`, [`recordings`]), the dashboard, viewer and recordings
//! pages; plus the `-metrics` listener.
//!
//! In: HTTP requests, from the Flask app's server, its pages in browsers
//! (CORS), scripts and Prometheus. Out: JSON answers (every error is
//! `{"success":false,"error":"..."}` with `Content-Type:
//! application/json`), commands to a path's
//! [`Recorder`](crate::recorder::Recorder) and
//! [`Viewers`](crate::webrtc::Viewers).
//! Tasks: connection tasks of [`crate::http`] on the process's runtime;
//! recorder start and stop (file creation, fsync) run on tokio's blocking
//! pool. Nothing here runs on, waits for or locks the media path: it reads
//! [`SourceStatus`](crate::stream::SourceStatus) atomics, hub snapshots
//! and recorder status copies.
//!
//! Bad input: unknown paths are 404 before anything else is looked at (no
//! path ever reaches the filesystem; recording names are checked by
//! [`crate::recordings`] before any file is touched), wrong methods 405 with `Allow`, a
//! missing token 401, all decided from the head before any body byte is
//! read; bodies over [`BODY_LIMIT`] 413, malformed JSON or SDP 400. A
//! client cannot tie up the server (see [`crate::http`]), and at most
//! [`MAX_OFFERS_IN_FLIGHT`] negotiations run at once (a burst beyond that
//! waits its turn, see [`OfferQueue`]).

mod recordings;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::health::Health;
use crate::hls;
use crate::http::{self, Body, BoxFuture, Head, Listener, Method, Reply, Request, Service};
use crate::metrics::Metrics;
use crate::paths::{Path, Paths};
use crate::recorder::RecorderError;
use crate::webrtc::{self, OfferError};
use recordings::{RecordingRoutes, RECORDINGS_PAGE};

/// The dashboard served at `GET /`: every path live in a grid.
pub static DASHBOARD_PAGE: &str = include_str!("../../assets/dashboard.html");
/// hls.js (npm, the version in `assets/hls.js/package.json`; the light
/// build: no alternate audio, subtitles or DRM, which a camera has none
/// of), served at [`HLS_JS_ROUTE`] so the viewer page needs no internet.
/// `scripts/check-vendored.sh` checks it equals the npm release's file.
pub static HLS_JS: &[u8] = include_bytes!("../../assets/hls.js/hls.light.min.js");
/// Where the viewer page loads hls.js from.
pub const HLS_JS_ROUTE: &str = "/assets/hls.light.min.js";
/// hls.js's licence (Apache-2.0), served beside it.
pub static HLS_JS_LICENSE: &str = include_str!("../../assets/hls.js/LICENSE");

/// Offers negotiated at once; more wait in the [`OfferQueue`].
pub const MAX_OFFERS_IN_FLIGHT: usize = 4;
/// Offers that may wait for a negotiation slot; more get 503 with
/// `Retry-After` at once.
pub const MAX_OFFERS_WAITING: usize = 64;
/// How long an offer waits for a negotiation slot before its 503.
pub const OFFER_QUEUE_WAIT: Duration = Duration::from_secs(3);
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
    /// The TURN servers' probe results, for `/health`.
    pub turn: crate::turn::TurnMonitor,
}

/// `-cors-origin` as a list (comma separated).
pub fn parse_origins(text: &str) -> Vec<String> {
    text.split(',').map(|s| s.trim().trim_end_matches('/').to_string()).filter(|s| !s.is_empty()).collect()
}

/// Which path a route acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// The unprefixed routes of API.md: `cam`, or the first path.
    Legacy,
    Named(String),
}

/// What a route does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Dashboard,
    PathList,
    Health,
    /// The viewer page of one path (`/NAME/`).
    ViewerPage,
    /// `/NAME` without the slash: redirected to `/NAME/`.
    AddSlash,
    Offer,
    Whep,
    WhepSession(String),
    /// The STUN/TURN servers a page should use (`/NAME/ice-servers`).
    IceServers,
    Start,
    Stop,
    Status,
    /// `GET /recordings`: the JSON list.
    RecordingList,
    /// `GET /recordings/`: the recordings page.
    RecordingsPage,
    /// `/recordings/{id}`: a file (GET, HEAD) or its deletion; the id is
    /// checked by [`crate::recordings::Recordings::resolve`].
    Recording(String),
    /// `index.m3u8`: the LL-HLS media playlist.
    HlsPlaylist,
    /// `init-ID.mp4`.
    HlsInit(u64),
    /// `seg-MSN.m4s`.
    HlsSegment(u64),
    /// `part-MSN-INDEX.m4s`.
    HlsPart(u64, u32),
    /// hls.js and its licence (not per path).
    HlsJs,
    HlsJsLicense,
}

/// A decimal number as the playlist writes them: digits, no leading zero.
fn canonical_number(text: &str) -> Option<u64> {
    let canonical = !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit());
    if !canonical || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// The HLS resource a playlist URI names (see `hls::playlist`).
fn hls_media(name: &str) -> Option<Action> {
    if name == "index.m3u8" {
        return Some(Action::HlsPlaylist);
    }
    if let Some(id) = name.strip_prefix("init-").and_then(|n| n.strip_suffix(".mp4")) {
        return Some(Action::HlsInit(canonical_number(id)?));
    }
    if let Some(msn) = name.strip_prefix("seg-").and_then(|n| n.strip_suffix(".m4s")) {
        return Some(Action::HlsSegment(canonical_number(msn)?));
    }
    let (msn, index) = name.strip_prefix("part-")?.strip_suffix(".m4s")?.split_once('-')?;
    Some(Action::HlsPart(canonical_number(msn)?, u32::try_from(canonical_number(index)?).ok()?))
}

/// A parsed route: what, and on which path.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    target: Target,
    action: Action,
}

fn session_id(id: &str) -> Option<String> {
    let valid =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| id.to_string())
}

impl Route {
    /// Exact matches only: anything else, `/../`, `%2e`, `//status`, is 404.
    /// Path names are checked syntactically here and against the
    /// configured paths by the caller.
    fn parse(path: &str) -> Option<Route> {
        let legacy = |action| Some(Route { target: Target::Legacy, action });
        match path {
            "/" => return legacy(Action::Dashboard),
            "/paths" => return legacy(Action::PathList),
            "/health" => return legacy(Action::Health),
            "/offer" => return legacy(Action::Offer),
            "/whep" => return legacy(Action::Whep),
            "/start" => return legacy(Action::Start),
            "/stop" => return legacy(Action::Stop),
            "/status" => return legacy(Action::Status),
            "/ice-servers" => return legacy(Action::IceServers),
            "/recordings" => return legacy(Action::RecordingList),
            "/recordings/" => return legacy(Action::RecordingsPage),
            _ => {}
        }
        if let Some(id) = path.strip_prefix("/recordings/") {
            return legacy(Action::Recording(id.to_string()));
        }
        if let Some(id) = path.strip_prefix("/whep/") {
            return legacy(Action::WhepSession(session_id(id)?));
        }
        if path == HLS_JS_ROUTE {
            return legacy(Action::HlsJs);
        }
        if path == "/assets/hls.js.LICENSE.txt" {
            return legacy(Action::HlsJsLicense);
        }
        // The legacy playlist's relative URIs: `/seg-12.m4s` and the like
        // (a '.' is never in a path name).
        if let Some(action) = path.strip_prefix('/').and_then(hls_media) {
            return legacy(action);
        }
        let rest = path.strip_prefix('/')?;
        let (name, tail) = rest.split_once('/').unwrap_or((rest, "\u{0}"));
        if !crate::config::valid_name(name) || crate::config::RESERVED_NAMES.contains(&name) {
            return None;
        }
        let action = match tail {
            "\u{0}" => Action::AddSlash,
            "" => Action::ViewerPage,
            "offer" => Action::Offer,
            "whep" => Action::Whep,
            "start" => Action::Start,
            "stop" => Action::Stop,
            "status" => Action::Status,
            "ice-servers" => Action::IceServers,
            other => match other.strip_prefix("whep/") {
                Some(id) => Action::WhepSession(session_id(id)?),
                None => hls_media(other)?,
            },
        };
        Some(Route { target: Target::Named(name.to_string()), action })
    }

    fn allow(&self) -> &'static str {
        match self.action {
            Action::Dashboard
            | Action::PathList
            | Action::Health
            | Action::ViewerPage
            | Action::AddSlash
            | Action::Status
            | Action::IceServers
            | Action::RecordingList
            | Action::RecordingsPage
            | Action::HlsPlaylist
            | Action::HlsInit(_)
            | Action::HlsSegment(_)
            | Action::HlsPart(..)
            | Action::HlsJs
            | Action::HlsJsLicense => "GET, HEAD, OPTIONS",
            Action::Offer | Action::Whep | Action::Start | Action::Stop => "POST, OPTIONS",
            Action::WhepSession(_) => "DELETE, OPTIONS",
            Action::Recording(_) => "GET, HEAD, DELETE, OPTIONS",
        }
    }

    fn allows(&self, method: &Method) -> bool {
        match self.action {
            Action::Offer | Action::Whep | Action::Start | Action::Stop => *method == Method::Post,
            Action::WhepSession(_) => *method == Method::Delete,
            Action::Recording(_) => matches!(method, Method::Get | Method::Head | Method::Delete),
            _ => matches!(method, Method::Get | Method::Head),
        }
    }

    /// Requests that change state need the token when one is configured,
    /// and so does HLS: it shows the camera as `/offer` does, so it must
    /// not be a way around the token.
    fn needs_auth(&self) -> bool {
        match self.action {
            // ice-servers hands out TURN credentials: as guarded as the
            // offer that would use them.
            Action::Offer
            | Action::Whep
            | Action::WhepSession(_)
            | Action::Start
            | Action::Stop
            | Action::IceServers => true,
            // Recordings are video like the live stream: reading them needs
            // the token as much as watching does (the page is open).
            Action::RecordingList | Action::Recording(_) => true,
            _ => self.is_hls_media(),
        }
    }

    /// HLS playlists and media: the token may come in the query
    /// (`?token=`), since Safari's native player cannot send a header and
    /// a header would cost hls.js a CORS preflight per part.
    fn is_hls_media(&self) -> bool {
        matches!(self.action, Action::HlsPlaylist | Action::HlsInit(_) | Action::HlsSegment(_) | Action::HlsPart(..))
    }

    /// Where the token may come as `?token=` rather than a header: media a
    /// `<video>` element or a download link fetches (they cannot send one).
    fn takes_query_token(&self, method: &Method) -> bool {
        self.is_hls_media() || (matches!(self.action, Action::Recording(_)) && *method != Method::Delete)
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
    paths: Arc<Paths>,
    health: Arc<Health>,
    config: Arc<ControlConfig>,
    offers: OfferQueue,
    recordings: Arc<RecordingRoutes>,
}

/// One of a limited number of slots (offers being negotiated, recordings
/// being streamed), held for the work's lifetime and freed on drop.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot of `counter` if fewer than `max` are taken; otherwise a 503
    /// saying `busy`, with `Retry-After: retry_after`.
    pub(crate) fn take(counter: &Arc<AtomicUsize>, max: usize, busy: &str, retry_after: &str) -> Result<Slot, Reply> {
        let taken = counter.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(counter.clone());
        if taken >= max {
            return Err(Reply::error(503, busy).header("Retry-After", retry_after));
        }
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Negotiation slots for offers. A burst of viewers (the dashboard
/// opening every camera, a room of phones) waits for a slot rather than
/// meeting 503s; the wait and the number waiting are bounded so that a
/// flood still gets its 503 promptly.
#[derive(Clone)]
struct OfferQueue {
    slots: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl OfferQueue {
    fn new() -> OfferQueue {
        OfferQueue { slots: Arc::new(tokio::sync::Semaphore::new(MAX_OFFERS_IN_FLIGHT)), waiting: Default::default() }
    }

    /// A negotiation slot, or 503 when too many wait or none came free
    /// within [`OFFER_QUEUE_WAIT`].
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Reply> {
        const BUSY: &str = "too many offers being negotiated";
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _waiting = Slot::take(&self.waiting, MAX_OFFERS_WAITING, BUSY, "1")?;
        match tokio::time::timeout(OFFER_QUEUE_WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Reply::error(503, BUSY).header("Retry-After", "1")),
        }
    }
}

impl Control {
    pub fn new(paths: Arc<Paths>, health: Arc<Health>, config: ControlConfig) -> Control {
        let recordings = Arc::new(RecordingRoutes::new(crate::recordings::Recordings::new(paths.clone())));
        Control { paths, health, config: Arc::new(config), offers: OfferQueue::new(), recordings }
    }

    /// The path a route acts on; `None` for an unknown name.
    fn path(&self, target: &Target) -> Option<&Arc<Path>> {
        match target {
            Target::Legacy => Some(self.paths.legacy()),
            Target::Named(name) => self.paths.get(name),
        }
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
                .header("Access-Control-Expose-Headers", "Location, Content-Range, Accept-Ranges, ETag")
                .header("Vary", "Origin"),
            None => reply,
        }
    }

    /// Decides from the head alone: 404, preflights, 405, 401.
    fn check(&self, head: &Head) -> Result<Route, Reply> {
        let Some(route) = Route::parse(&head.path) else {
            return Err(Reply::not_found());
        };
        if let Target::Named(name) = &route.target {
            if self.paths.get(name).is_none() {
                return Err(Reply::error(404, format!("no path named {name:?} (GET /paths lists them)")));
            }
        }
        if head.method == Method::Options {
            return Err(self.preflight(&route, head));
        }
        if !route.allows(&head.method) {
            return Err(Reply::method_not_allowed(route.allow()));
        }
        if route.needs_auth() {
            self.check_auth(head, route.takes_query_token(&head.method))?;
        }
        Ok(route)
    }

    async fn route(&self, route: Route, request: Request) -> Reply {
        let Some(path) = self.path(&route.target).cloned() else {
            return Reply::not_found();
        };
        match route.action {
            Action::Dashboard => Reply::new(200, "text/html; charset=utf-8", DASHBOARD_PAGE),
            Action::ViewerPage => Reply::new(200, "text/html; charset=utf-8", webrtc::VIEWER_PAGE),
            Action::AddSlash => Reply::error(308, "the viewer page is at the path with a trailing slash")
                .header("Location", format!("/{}/", path.name())),
            Action::PathList => {
                let list: Vec<_> = self.paths.iter().map(|p| p.summary(&self.health)).collect();
                Reply::json(200, &json!({"paths": list, "legacy": self.paths.legacy().name()}))
            }
            Action::Offer => self.offer(&path, &request).await,
            Action::Whep => self.whep(&path, &request).await,
            Action::WhepSession(id) => self.whep_delete(&route.target, &path, &id),
            Action::Start => {
                let recorder = path.recorder.clone();
                recording_reply(blocking(move || recorder.start()).await)
            }
            Action::Stop => {
                let recorder = path.recorder.clone();
                recording_reply(blocking(move || recorder.stop()).await)
            }
            Action::Status => Reply::json(200, &json!(path.recorder.status())),
            Action::IceServers => {
                let servers = path.viewers.ice_servers_for_browsers(std::time::SystemTime::now());
                // Credentials inside: never cached.
                Reply::json(200, &json!({"iceServers": servers})).header("Cache-Control", "no-store")
            }
            Action::RecordingList => self.recordings.list().await,
            Action::RecordingsPage => Reply::new(200, "text/html; charset=utf-8", RECORDINGS_PAGE),
            Action::Recording(id) => self.recordings.file(&request, &id).await,
            Action::Health => self.health_reply(),
            Action::HlsPlaylist => self.hls_playlist(&path, &request.head).await,
            Action::HlsInit(id) => hls_media_reply(&path, path.hls.init(id).map(Body::Full)),
            Action::HlsSegment(msn) => hls_media_reply(&path, path.hls.segment(msn).map(Body::Chunks)),
            Action::HlsPart(msn, index) => hls_media_reply(&path, path.hls.part(msn, index).await.map(Body::Full)),
            Action::HlsJs => Reply::new(200, "text/javascript; charset=utf-8", HLS_JS)
                .header("Cache-Control", "public, max-age=86400"),
            Action::HlsJsLicense => Reply::new(200, "text/plain; charset=utf-8", HLS_JS_LICENSE),
        }
    }

    /// The playlist, after any blocking reload is satisfied. A token the
    /// client sent in the query goes into every URI of the playlist, so a
    /// player that cannot send headers fetches the media too.
    async fn hls_playlist(&self, path: &Path, head: &Head) -> Reply {
        let query = match hls::PlaylistQuery::parse(&head.query) {
            Ok(query) => query,
            Err(error) => {
                path.stream.metrics.hls_request_error(error.label());
                return hls_error(&error);
            }
        };
        // The token was checked: it is the server's, which the published
        // playlist with the token carries.
        let with_token = self.config.auth_token.is_some() && query_token(head).is_some();
        match path.hls.playlist(&query, with_token).await {
            Ok(text) => Reply::new(200, "application/vnd.apple.mpegurl", text).header("Cache-Control", "no-cache"),
            Err(error) => hls_error(&error),
        }
    }

    /// API.md's `/health` for the legacy path, plus a line per path.
    fn health_reply(&self) -> Reply {
        let legacy = self.paths.legacy();
        let (status, mut body) = self.health.report(&legacy.stream, &legacy.recorder.status(), legacy.viewers.count());
        let paths: serde_json::Map<String, serde_json::Value> = self
            .paths
            .iter()
            .map(|p| {
                let summary = json!({
                    "status": Health::verdict(&p.stream),
                    "state": p.stream.source.state().label(),
                    "fps": (self.health.fps(p.name()) * 10.0).round() / 10.0,
                    "webrtc_clients": p.viewers.count(),
                    "recording": p.recorder.status().recording,
                });
                (p.name().to_string(), summary)
            })
            .collect();
        body["path"] = json!(legacy.name());
        body["paths"] = serde_json::Value::Object(paths);
        if !self.config.turn.is_empty() {
            body["turn"] = self.config.turn.report();
        }
        Reply::json(status, &body)
    }

    /// The bearer token, from `Authorization: Bearer` or, where
    /// `query_allowed` (HLS), from `?token=`.
    fn check_auth(&self, head: &Head, query_allowed: bool) -> Result<(), Reply> {
        let Some(token) = &self.config.auth_token else {
            return Ok(());
        };
        let given = head.header("Authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        let matches = |given: &str| constant_time_eq(given.trim().as_bytes(), token.as_bytes());
        if matches(given) || (query_allowed && query_token(head).is_some_and(|t| matches(&t))) {
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
            .header("Access-Control-Allow-Headers", "Content-Type, Authorization, Range, If-None-Match, If-Range")
            .header("Access-Control-Max-Age", "600")
    }

    async fn offer(&self, path: &Arc<Path>, request: &Request) -> Reply {
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
        let _slot = match self.offers.slot().await {
            Ok(slot) => slot,
            Err(reply) => return reply,
        };
        match self.negotiate(path, &offer.sdp, request).await {
            Ok((served, session)) => {
                let mut answer = json!({"type": "answer", "sdp": session.answer_sdp});
                if served.name() != path.name() {
                    answer["fallback"] = json!(served.name());
                }
                Reply::json(200, &answer)
            }
            Err(reply) => reply,
        }
    }

    /// Answers an offer with `path`'s stream or, when the offer cannot
    /// receive its codec (a browser without H.265), with its configured
    /// `fallback` path's: the returned path is the one that serves.
    async fn negotiate(
        &self,
        path: &Arc<Path>,
        sdp: &str,
        request: &Request,
    ) -> Result<(Arc<Path>, webrtc::Session), Reply> {
        let client = request.head.peer.ip();
        let error = match path.viewers.offer(sdp, client).await {
            Ok(session) => {
                log::info!("{}: viewer {}: answered an offer from {client}", path.name(), session.id);
                return Ok((path.clone(), session));
            }
            Err(error) => error,
        };
        let OfferError::NoCompatibleCodec(why) = &error else {
            return Err(offer_error(&error));
        };
        let fallback = path.config.fallback.as_deref().and_then(|name| self.paths.get(name));
        let Some(fallback) = fallback else {
            return Err(no_codec_reply(path, &error));
        };
        match fallback.viewers.offer(sdp, client).await {
            Ok(session) => {
                log::info!(
                    "{}: viewer {}: answered an offer from {client} with fallback path {} ({why})",
                    path.name(),
                    session.id,
                    fallback.name()
                );
                Ok((fallback.clone(), session))
            }
            Err(OfferError::NoCompatibleCodec(_)) => Err(no_codec_reply(path, &error)),
            Err(other) => Err(offer_error(&other)),
        }
    }

    async fn whep(&self, path: &Arc<Path>, request: &Request) -> Reply {
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
        let _slot = match self.offers.slot().await {
            Ok(slot) => slot,
            Err(reply) => return reply,
        };
        match self.negotiate(path, sdp, request).await {
            Ok((served, session)) => {
                // The session belongs to the path that serves it (the
                // fallback's when one was used).
                let location = match request.head.path.strip_suffix("/whep") {
                    Some(prefix) if !prefix.is_empty() && served.name() == path.name() => {
                        format!("{prefix}/whep/{}", session.id)
                    }
                    Some(prefix) if !prefix.is_empty() => format!("/{}/whep/{}", served.name(), session.id),
                    _ => format!("/whep/{}", session.id),
                };
                let reply = Reply::new(201, "application/sdp", session.answer_sdp).header("Location", location);
                if served.name() != path.name() {
                    reply.header("X-Fallback-Path", served.name().to_string())
                } else {
                    reply
                }
            }
            Err(reply) => reply,
        }
    }

    fn whep_delete(&self, target: &Target, path: &Path, id: &str) -> Reply {
        // A legacy /whep/ID may name a session of any path.
        let closed = match target {
            Target::Legacy => self.paths.close_session(id),
            Target::Named(_) => path.viewers.close(id),
        };
        if closed {
            Reply::json(200, &json!({"success": true}))
        } else {
            Reply::error(404, "no such session")
        }
    }
}

impl Service for Control {
    /// Playlists and parts may wait for the stream (blocking reloads,
    /// the hinted next part): they must not lock others out.
    fn may_hold(&self, head: &Head) -> bool {
        Route::parse(&head.path).is_some_and(|r| matches!(r.action, Action::HlsPlaylist | Action::HlsPart(..)))
    }

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

/// `?token=` percent-decoded, if given.
fn query_token(head: &Head) -> Option<String> {
    let raw = head.query_param("token")?;
    Some(percent_encoding::percent_decode_str(raw).decode_utf8_lossy().into_owned())
}

/// Init segments, parts and segments: named once and never changed, so
/// immutable (URIs are never reused, not even by a restarted server).
fn hls_media_reply(path: &Path, body: Result<Body, hls::HlsError>) -> Reply {
    match body {
        Ok(body) => Reply {
            status: 200,
            content_type: "video/mp4".into(),
            headers: vec![("Cache-Control".into(), "max-age=31536000, immutable".into())],
            body,
        },
        Err(error) => {
            log::debug!("{}: HLS: {error}", path.name());
            hls_error(&error)
        }
    }
}

fn hls_error(error: &hls::HlsError) -> Reply {
    use hls::HlsError;
    match error {
        HlsError::BadQuery(_) | HlsError::TooFarAhead => Reply::error(400, error),
        HlsError::NotFound => Reply::error(404, error),
        HlsError::NotReady | HlsError::Timeout | HlsError::ShuttingDown => {
            Reply::error(503, error).header("Retry-After", "1")
        }
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

/// 400 for an offer that cannot receive the camera's codec, naming it so
/// a page can say so in words.
fn no_codec_reply(path: &Path, error: &OfferError) -> Reply {
    let camera_codec = path.stream.hub.parameter_sets().map(|ps| ps.codec().name());
    Reply::json(400, &json!({"success": false, "error": error.to_string(), "camera_codec": camera_codec}))
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

/// Equal-time comparison, so a token or password cannot be guessed byte by
/// byte from response times.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
        let route = |p: &str| Route::parse(p);
        let legacy = |action| Some(Route { target: Target::Legacy, action });
        let named = |name: &str, action| Some(Route { target: Target::Named(name.into()), action });
        assert_eq!(route("/status"), legacy(Action::Status));
        assert_eq!(route("/whep/abc-1_2"), legacy(Action::WhepSession("abc-1_2".into())));
        assert_eq!(route("/day/"), named("day", Action::ViewerPage));
        assert_eq!(route("/day"), named("day", Action::AddSlash));
        assert_eq!(route("/day/offer"), named("day", Action::Offer));
        assert_eq!(route("/day/whep/x1"), named("day", Action::WhepSession("x1".into())));
        assert_eq!(route("/day_2-b/status"), named("day_2-b", Action::Status));
        assert_eq!(route("/recordings"), legacy(Action::RecordingList));
        assert_eq!(route("/recordings/"), legacy(Action::RecordingsPage));
        // Ids are checked against the recorder's names later, by recordings.
        assert_eq!(route("/recordings/a/../b"), legacy(Action::Recording("a/../b".into())));
        assert_eq!(route("/index.m3u8"), legacy(Action::HlsPlaylist));
        assert_eq!(route("/day/index.m3u8"), named("day", Action::HlsPlaylist));
        assert_eq!(route("/day/init-1700000000000.mp4"), named("day", Action::HlsInit(1_700_000_000_000)));
        assert_eq!(route("/seg-0.m4s"), legacy(Action::HlsSegment(0)));
        assert_eq!(route("/day/part-12-3.m4s"), named("day", Action::HlsPart(12, 3)));
        assert_eq!(route("/assets/hls.light.min.js"), legacy(Action::HlsJs));
        for odd in [
            "/day/seg-012.m4s",
            "/day/seg-+1.m4s",
            "/day/seg-1.mp4",
            "/day/part-1.m4s",
            "/day/part-1-4294967296.m4s",
            "/day/part-1--2.m4s",
            "/day/init-.mp4",
            "/day/seg-99999999999999999999.m4s",
            "/day/index.m3u",
            "/index.m3u8/",
            "/assets/hls.js",
            "/status/",
            "//status",
            "/../status",
            "/%73tatus",
            "/whep/",
            "/whep/../x",
            "/whep/a%2fb",
            "",
            "/day/offer/",
            "/day/nope",
            "/day/whep/",
            "/da.y/",
            "/health/",
            "/paths/x",
        ] {
            assert_eq!(Route::parse(odd), None, "{odd}");
        }
        assert_eq!(Route::parse(&format!("/whep/{}", "a".repeat(65))), None);
        assert_eq!(Route::parse(&format!("/{}/", "a".repeat(65))), None);
    }

    #[test]
    fn origins_and_tokens() {
        assert_eq!(parse_origins("http://a:8080, http://b/ ,"), vec!["http://a:8080", "http://b"]);
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
