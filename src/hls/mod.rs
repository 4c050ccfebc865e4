//! LL-HLS per path: the camera's access units, as they are, in
//! fragmented MP4 parts and segments for players that cannot use WebRTC
//! (no UDP on guest Wi-Fi, corporate networks, some phones).
//!
//! In: the path's hub (one budgeted subscription from its GOP cache, like a
//! viewer) while any HLS client has asked within [`HlsConfig::close_after`];
//! requests from the control plane ([`Hls::playlist`], [`Hls::part`],
//! [`Hls::segment`], [`Hls::init`]). Out: playlist text and fMP4 bytes.
//!
//! Work is done once per part for every client: one muxer task per path
//! (spawned by the first request, in the path's [`TaskSet`]) turns access
//! units into parts ([`segmenter`] decides where they begin and end,
//! [`muxer`] makes the fMP4 bytes), puts them in the [`window`] and renders
//! both playlists ([`playlist`]) once; a request only clones `Bytes`.
//! Blocking playlist reloads and requests for the hinted next part wait on
//! a `watch` channel that the task bumps after each change; they hold no
//! lock and no worker while they wait, and the HTTP layer counts them as
//! idle at its connection cap ([`crate::http::Service::may_hold`]).
//!
//! Demand: the task holds the stream's [`Demand`](crate::stream::Demand),
//! so an on-demand source runs while HLS clients watch; after
//! [`HlsConfig::close_after`] without a request it unsubscribes, frees the
//! window and drops the demand.
//!
//! Overflow and bad input: the muxer keeps up easily, but if its queue
//! fills the hub drops frames for it alone up to the next keyframe
//! (`streaming_path_consumer_frames_dropped_total{consumer="hls"}`), which
//! becomes a discontinuity. Parameter sets the MP4 sample entry cannot
//! describe are logged and their frames skipped until the next change.
//! Query parameters are checked ([`PlaylistQuery::parse`]); requests too
//! far ahead are refused as the spec says; media that left the window is
//! gone (404).

pub mod muxer;
pub mod playlist;
pub mod segmenter;
pub mod window;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::clock::monotonic_now;
use crate::hub::{QueueBudget, StartAt, SubscribeOptions};
use crate::shutdown::Shutdown;
use crate::stream::Stream;
use crate::tasks::TaskSet;

use muxer::{Muxer, Output};
use window::{advance_part_limit, Part, Position, Readiness, Window, WindowLimits};

/// The muxer's queue in the hub, like a viewer's: about 5 s at 1080p.
pub const HLS_QUEUE: QueueBudget = QueueBudget { bytes: 4 << 20, frames: 300 };
/// How long the first request waits for the first segment (an on-demand
/// source must start, then a GOP must pass).
pub const START_WAIT: Duration = Duration::from_secs(12);
/// A blocking request waits at most this many target durations (the spec's
/// advice), then gets 503.
pub const HOLD_TARGET_DURATIONS: u32 = 3;
/// How often the muxer task checks whether clients are gone.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// How HLS behaves (`-hls-close-after`).
#[derive(Clone, Debug)]
pub struct HlsConfig {
    /// The muxer stops this long after the last request.
    pub close_after: Duration,
    pub limits: WindowLimits,
    /// `?token=...` ([`token_query`]) when the server has an auth token:
    /// playlists are also published with it in every URI, for players that
    /// cannot send headers. Empty otherwise.
    pub token_query: String,
}

impl Default for HlsConfig {
    fn default() -> HlsConfig {
        HlsConfig { close_after: Duration::from_secs(30), limits: WindowLimits::default(), token_query: String::new() }
    }
}

/// `?token=TOKEN`, percent-encoded, for the URIs of a playlist.
pub fn token_query(token: &str) -> String {
    format!("?token={}", percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC))
}

/// Why an HLS request got no media; the control plane picks the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HlsError {
    /// 400: a malformed `_HLS_*` parameter.
    BadQuery(String),
    /// 400: `_HLS_msn`/`_HLS_part` further ahead than the spec allows.
    TooFarAhead,
    /// 404: not in the window (gone, or never made).
    NotFound,
    /// 503: no segment yet within [`START_WAIT`] (no frames from the camera).
    NotReady,
    /// 503: a blocking request not satisfied within three target durations
    /// (the camera stalled).
    Timeout,
    /// 503: the server is stopping.
    ShuttingDown,
}

impl HlsError {
    /// Label for `streaming_path_hls_request_errors_total`.
    pub fn label(&self) -> &'static str {
        match self {
            HlsError::BadQuery(_) => "bad_query",
            HlsError::TooFarAhead => "too_far",
            HlsError::NotFound => "not_found",
            HlsError::NotReady => "not_ready",
            HlsError::Timeout => "timeout",
            HlsError::ShuttingDown => "shutting_down",
        }
    }
}

impl std::fmt::Display for HlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HlsError::BadQuery(why) => write!(f, "bad HLS query: {why}"),
            HlsError::TooFarAhead => {
                write!(f, "_HLS_msn/_HLS_part is further ahead than the playlist allows (RFC 8216bis 6.2.5.2)")
            }
            HlsError::NotFound => write!(f, "no such HLS segment, part or init segment (it may have left the window)"),
            HlsError::NotReady => write!(f, "the stream has not started yet (no video from the camera)"),
            HlsError::Timeout => write!(f, "the stream did not advance in time (camera stalled?)"),
            HlsError::ShuttingDown => write!(f, "shutting down"),
        }
    }
}

impl std::error::Error for HlsError {}

/// A playlist request's `_HLS_*` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlaylistQuery {
    /// `_HLS_msn`: wait until this segment is complete (or, with `part`,
    /// until that part of it exists).
    pub msn: Option<u64>,
    /// `_HLS_part`.
    pub part: Option<u32>,
    /// `_HLS_skip=YES` (or `v2`): the delta update.
    pub skip: bool,
}

impl PlaylistQuery {
    /// Parses a query string; other parameters are ignored.
    pub fn parse(query: &str) -> Result<PlaylistQuery, HlsError> {
        let value = |name: &str| crate::http::query_param(query, name);
        let number = |name: &str| -> Result<Option<u64>, HlsError> {
            match value(name) {
                None => Ok(None),
                Some(text) if !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()) => {
                    text.parse().map(Some).map_err(|_| HlsError::BadQuery(format!("{name}={text}")))
                }
                Some(text) => Err(HlsError::BadQuery(format!("{name}={text:?} is not a number"))),
            }
        };
        let msn = number("_HLS_msn")?;
        let part = number("_HLS_part")?
            .map(|p| u32::try_from(p).map_err(|_| HlsError::BadQuery(format!("_HLS_part={p}"))))
            .transpose()?;
        if part.is_some() && msn.is_none() {
            return Err(HlsError::BadQuery("_HLS_part without _HLS_msn".into()));
        }
        let skip = match value("_HLS_skip") {
            None => false,
            Some("YES" | "v2") => true,
            Some(other) => return Err(HlsError::BadQuery(format!("_HLS_skip={other:?}: YES or v2"))),
        };
        Ok(PlaylistQuery { msn, part, skip })
    }
}

/// What the muxer task publishes after each change, for every request.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// The full playlist; `None` until the first segment is complete.
    pub playlist: Option<Bytes>,
    /// The delta update (`_HLS_skip=YES`).
    pub delta: Option<Bytes>,
    /// Both again with [`HlsConfig::token_query`] in every URI (None
    /// without a token).
    pub playlist_with_token: Option<Bytes>,
    pub delta_with_token: Option<Bytes>,
    pub position: Position,
    /// The Advance Part Limit.
    pub part_limit: u32,
    /// Seconds.
    pub target_duration: u64,
}

/// Whether the muxer runs, and when a client last asked.
#[derive(Debug)]
struct RunState {
    running: bool,
    last_request: Instant,
}

struct Inner {
    stream: Stream,
    config: HlsConfig,
    runtime: tokio::runtime::Handle,
    tasks: TaskSet,
    shutdown: Shutdown,
    /// Lock order: `run`, then `window`. Neither is held across an await.
    run: Mutex<RunState>,
    window: Mutex<Window>,
    published: tokio::sync::watch::Sender<Arc<Published>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data updated in whole steps: usable after a panic elsewhere.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One path's HLS; cheap to clone.
#[derive(Clone)]
pub struct Hls {
    inner: Arc<Inner>,
}

/// Counts a request as held for the HLS gauge while alive.
struct Held<'a>(&'a prometheus::IntGauge);

impl<'a> Held<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Held<'a> {
        gauge.inc();
        Held(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Hls {
    pub fn new(stream: Stream, config: HlsConfig, runtime: tokio::runtime::Handle, shutdown: Shutdown) -> Hls {
        Hls {
            inner: Arc::new(Inner {
                window: Mutex::new(Window::new(config.limits, first_number())),
                stream,
                config,
                runtime,
                tasks: TaskSet::new(),
                shutdown,
                run: Mutex::new(RunState { running: false, last_request: Instant::now() }),
                published: tokio::sync::watch::channel(Arc::new(Published::default())).0,
            }),
        }
    }

    /// Whether the muxer runs now.
    pub fn running(&self) -> bool {
        lock(&self.inner.run).running
    }

    /// Muxer tasks alive (0 or 1; shutdown waits for it).
    pub fn tasks(&self) -> &TaskSet {
        &self.inner.tasks
    }

    /// Notes a request and starts the muxer if it is not running.
    fn touch(&self) {
        let inner = &self.inner;
        if inner.shutdown.is_triggered() {
            return;
        }
        let mut run = lock(&inner.run);
        run.last_request = Instant::now();
        if !run.running {
            run.running = true;
            inner.stream.metrics.hls_muxing.set(1);
            log::info!("{}: HLS muxer started", inner.stream.name);
            let task = inner.clone();
            inner.tasks.spawn(&inner.runtime, async move { run_muxer(task).await });
        }
    }

    /// The media playlist, once the request's `_HLS_msn`/`_HLS_part` are
    /// satisfied (RFC 8216bis 6.2.5.2); `with_token`: the one with
    /// [`HlsConfig::token_query`] in every URI.
    pub async fn playlist(&self, query: &PlaylistQuery, with_token: bool) -> Result<Bytes, HlsError> {
        let metrics = &self.inner.stream.metrics;
        metrics.hls_request(if query.msn.is_some() { "blocking_playlist" } else { "playlist" });
        let mut published = self.inner.published.subscribe();
        let _held = Held::new(&metrics.hls_held_requests);
        let started = tokio::time::Instant::now();
        let result = loop {
            // A client waiting is a client asking: the muxer keeps running.
            self.touch();
            let now = published.borrow_and_update().clone();
            let deadline = match (&now.playlist, query.msn) {
                (None, _) => started + START_WAIT,
                (Some(_), None) => break Ok(now),
                (Some(_), Some(msn)) => match now.position.readiness(msn, query.part, now.part_limit) {
                    Readiness::Ready => break Ok(now),
                    Readiness::TooFar => break Err(HlsError::TooFarAhead),
                    Readiness::Wait => started + hold_time(now.target_duration),
                },
            };
            match tokio::time::timeout_at(deadline, published.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break Err(HlsError::ShuttingDown),
                Err(_) if now.playlist.is_none() => break Err(HlsError::NotReady),
                Err(_) => break Err(HlsError::Timeout),
            }
        };
        let result = result.and_then(|now| {
            let text = match (with_token, query.skip) {
                (false, false) => &now.playlist,
                (false, true) => &now.delta,
                (true, false) => &now.playlist_with_token,
                (true, true) => &now.delta_with_token,
            };
            text.clone().ok_or(HlsError::NotReady)
        });
        self.count_error(&result);
        result
    }

    /// A part; the next one (the preload hint) and the few after it are
    /// waited for, as the spec asks of a hinted resource.
    pub async fn part(&self, msn: u64, index: u32) -> Result<Bytes, HlsError> {
        let metrics = &self.inner.stream.metrics;
        metrics.hls_request("part");
        let mut published = self.inner.published.subscribe();
        let started = tokio::time::Instant::now();
        let mut held = None;
        let result = loop {
            self.touch();
            let now = published.borrow_and_update().clone();
            if let Some(part) = lock(&self.inner.window).part(msn, index) {
                break Ok(part.data.clone());
            }
            let deadline = match now.position.readiness(msn, Some(index), now.part_limit) {
                // Made and gone, or never made (an index past a segment's end).
                Readiness::Ready | Readiness::TooFar => break Err(HlsError::NotFound),
                Readiness::Wait if now.playlist.is_none() => started + START_WAIT,
                Readiness::Wait => started + hold_time(now.target_duration),
            };
            held.get_or_insert_with(|| Held::new(&metrics.hls_held_requests));
            match tokio::time::timeout_at(deadline, published.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break Err(HlsError::ShuttingDown),
                Err(_) => break Err(HlsError::Timeout),
            }
        };
        self.count_error(&result);
        result
    }

    /// A complete segment: its parts, in order.
    pub fn segment(&self, msn: u64) -> Result<Vec<Bytes>, HlsError> {
        self.inner.stream.metrics.hls_request("segment");
        self.touch();
        let window = lock(&self.inner.window);
        let result = match window.segment(msn) {
            Some(segment) if segment.complete => Ok(segment.parts.iter().map(|p| p.data.clone()).collect()),
            _ => Err(HlsError::NotFound),
        };
        drop(window);
        self.count_error(&result);
        result
    }

    /// An init segment.
    pub fn init(&self, id: u64) -> Result<Bytes, HlsError> {
        self.inner.stream.metrics.hls_request("init");
        self.touch();
        let result = lock(&self.inner.window).init(id).map(|i| i.data.clone()).ok_or(HlsError::NotFound);
        self.count_error(&result);
        result
    }

    fn count_error<T>(&self, result: &Result<T, HlsError>) {
        if let Err(error) = result {
            self.inner.stream.metrics.hls_request_error(error.label());
        }
    }

    /// What `/paths` shows.
    pub fn summary(&self) -> serde_json::Value {
        let running = self.running();
        let window = lock(&self.inner.window);
        let position = window.position();
        serde_json::json!({
            "muxing": running,
            "segments": window.segments().iter().filter(|s| s.complete).count(),
            "window_bytes": window.bytes(),
            "last_msn": position.last_complete,
            "codecs": window.current_init().map(|i| i.codecs.clone()),
        })
    }
}

/// The first MSN and init id of this process: its start in milliseconds
/// since 1970, so a restarted server never serves different media under a
/// URI a browser may have cached (segments are at least tens of
/// milliseconds long, so the numbers of one process never reach the next's).
fn first_number() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How long a blocking request waits: three target durations.
fn hold_time(target_duration: u64) -> Duration {
    Duration::from_secs(target_duration.max(1) * u64::from(HOLD_TARGET_DURATIONS))
}

/// The capture time `capture` (CLOCK_MONOTONIC) on the wall clock.
fn wall_clock(capture: Duration) -> SystemTime {
    let age = monotonic_now().saturating_sub(capture);
    SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Inner {
    /// Stops the run if no client asked within `close_after` (or `force`):
    /// marks it stopped, frees the window. Under the run lock, so a request
    /// racing with it starts a fresh run.
    fn try_stop(&self, force: bool) -> bool {
        let mut run = lock(&self.run);
        if !force && run.last_request.elapsed() < self.config.close_after {
            return false;
        }
        run.running = false;
        let mut window = lock(&self.window);
        window.clear();
        self.stream.metrics.hls_window_bytes.set(0);
        self.stream.metrics.hls_muxing.set(0);
        // Waiting requests see the change and find nothing: a new run
        // (started by the next request) publishes again.
        self.published.send_replace(Arc::new(Published { position: window.position(), ..Published::default() }));
        true
    }

    /// Applies a batch of muxer output to the window and publishes the
    /// playlists rendered once for everyone.
    fn apply(&self, outputs: &mut Vec<Output>, init: &mut Option<u64>) {
        if outputs.is_empty() {
            return;
        }
        let metrics = &self.stream.metrics;
        let mut window = lock(&self.window);
        let mut made_part = false;
        for output in outputs.drain(..) {
            match output {
                Output::Init { data, codecs } => *init = Some(window.add_init(data, codecs)),
                Output::BeginSegment { discontinuity, capture_time } => {
                    if let Some(init) = *init {
                        window.begin_segment(init, discontinuity, wall_clock(capture_time));
                    }
                }
                Output::Part { data, duration, independent, first_capture } => {
                    if window.add_part(Part { data, duration, independent }) {
                        metrics.hls_parts.inc();
                        let age = monotonic_now().saturating_sub(first_capture);
                        metrics.hls_capture_to_part_ms.observe(age.as_secs_f64() * 1e3);
                        made_part = true;
                    }
                }
                Output::EndSegment => {
                    let before = window.position().last_complete;
                    window.end_segment();
                    if window.position().last_complete != before {
                        metrics.hls_segments.inc();
                    }
                }
            }
        }
        metrics.hls_window_bytes.set(window.bytes() as i64);
        if !made_part && window.position() == self.published.borrow().position {
            return;
        }
        let token = &self.config.token_query;
        let with_token = |skip| (!token.is_empty()).then(|| playlist::render(&window, skip, token)).flatten();
        let published = Published {
            playlist: playlist::render(&window, false, "").map(Bytes::from),
            delta: playlist::render(&window, true, "").map(Bytes::from),
            playlist_with_token: with_token(false).map(Bytes::from),
            delta_with_token: with_token(true).map(Bytes::from),
            position: window.position(),
            part_limit: advance_part_limit(window.part_target()),
            target_duration: window.target_duration(),
        };
        drop(window);
        self.published.send_replace(Arc::new(published));
    }
}

/// The muxer task of one run: hub in, window out, until no client asked
/// for [`HlsConfig::close_after`] or shutdown.
async fn run_muxer(inner: Arc<Inner>) {
    let stream = &inner.stream;
    let _demand = stream.demand.hold();
    let subscription = stream.hub.subscribe(SubscribeOptions {
        name: "hls".into(),
        budget: HLS_QUEUE,
        start: StartAt::GopCache,
        dropped_metric: Some(stream.metrics.consumer_dropped("hls")),
    });
    let mut muxer = Muxer::new();
    let mut outputs = Vec::new();
    let mut init = None;
    let mut idle = tokio::time::interval(IDLE_CHECK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            frame = subscription.frames.recv_async() => {
                let Ok(au) = frame else { break "the stream ended" };
                muxer.push(&au, &mut outputs);
                inner.apply(&mut outputs, &mut init);
            }
            _ = idle.tick() => {
                if inner.try_stop(false) {
                    log::info!(
                        "{}: HLS muxer stopped: no HLS request for {} s ({} frames skipped, {} errors)",
                        stream.name,
                        inner.config.close_after.as_secs(),
                        muxer.skipped(),
                        muxer.errors()
                    );
                    return;
                }
            }
            _ = inner.shutdown.wait() => break "shutting down",
        }
    };
    inner.try_stop(true);
    log::info!("{}: HLS muxer stopped: {why}", stream.name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playlist_queries_are_checked() {
        let q = |text: &str| PlaylistQuery::parse(text);
        assert_eq!(q("").unwrap(), PlaylistQuery::default());
        assert_eq!(
            q("_HLS_msn=12&_HLS_part=3&_HLS_skip=YES&token=x").unwrap(),
            PlaylistQuery { msn: Some(12), part: Some(3), skip: true }
        );
        assert_eq!(q("_HLS_msn=7").unwrap().msn, Some(7));
        assert!(q("_HLS_skip=v2").unwrap().skip);
        for bad in [
            "_HLS_part=1",
            "_HLS_msn=-1",
            "_HLS_msn=+1",
            "_HLS_msn=",
            "_HLS_msn=1e3",
            "_HLS_msn=99999999999999999999",
            "_HLS_msn=1&_HLS_part=4294967296",
            "_HLS_skip=NO",
        ] {
            assert!(matches!(q(bad), Err(HlsError::BadQuery(_))), "{bad}");
        }
    }
}
