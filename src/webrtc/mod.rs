//! WebRTC viewers: the camera's H.264, as it is, to many browsers.
//!
//! In: SDP offers from the control plane ([`Viewers::offer`], awaited by an
//! HTTP connection task), and access units from the hub (one budgeted
//! subscription per connected viewer). Out: an SDP answer per offer (with
//! our host candidates: no trickle), then SRTP to each viewer.
//!
//! Tasks: each viewer is one task on the process's tokio runtime (plus one
//! for its RTCP feedback) next to the `webrtc` crate's own driver task for
//! its peer connection. Viewer tasks live in a [`TaskSet`] that shutdown
//! waits for, and each owns a `SlotGuard`: its slot, the client gauge and
//! its usage entry are freed when the task ends, however it ends (a panic
//! included). The media thread is never blocked: the hub only pushes into
//! a viewer's queue.
//!
//! Per viewer:
//! 1. negotiation ([`negotiate`]): choose the offered H.264 payload type the
//!    camera's SPS fits, register only that codec, answer, rewrite the
//!    answer's video section to exactly that codec and check it;
//! 2. wait for the peer connection to reach `Connected` (ICE + DTLS up):
//!    nothing is sent before;
//! 3. subscribe to the hub from the GOP cache (the last IDR and what
//!    followed), so the picture starts at once; the catch-up frames get RTP
//!    timestamps 1 tick apart so the browser shows the newest at once
//!    instead of replaying the GOP at camera pace, then live frames keep the
//!    camera's capture cadence (90 kHz from the capture timestamps);
//! 4. each access unit is packetized once for all viewers
//!    ([`crate::rtp::PacketCache`]); a viewer only stamps SSRC, payload type,
//!    sequence number and timestamp on the shared payloads;
//! 5. PLI/FIR (delivered by a small interceptor) restart the viewer from the
//!    cached IDR, at most once per [`KEYFRAME_RESTART_INTERVAL`] (the
//!    [`KeyframeGate`], which publish targets use too); NACKs are
//!    answered by the crate's NACK responder.
//!
//! Instant start, the trade-off: the GOP cache gives the decoder an IDR at
//! once (no wait of up to a GOP for the camera's next one), but those frames
//! are up to a GOP old. Sent with their capture timestamps, a browser would
//! play them at camera pace and stay a GOP behind live for a long while; so
//! the catch-up frames are stamped 1 tick apart and the browser shows the
//! newest at once, then live frames follow at the capture cadence (the page
//! also sets `jitterBufferTarget = 0`). The cost: the whole cached GOP (up
//! to about a second of bitrate) leaves at once. The IDR goes out at once,
//! the rest paced 2 ms a frame (a 30-frame GOP in ~60 ms): back to back it
//! overflowed receivers' socket buffers at every join (measured with the
//! load client); what a lossy link still drops, NACK repairs or a PLI
//! restarts from the IDR. Live frames that arrive meanwhile wait behind it.
//!
//! Capture time: when the viewer's offer has `abs-capture-time`, the last
//! packet of each live frame carries its capture time (the daemon's
//! CLOCK_MONOTONIC stamp mapped to wall-clock NTP), so browsers and the load
//! client can measure capture -> receive; `streaming_capture_to_sent_ms`
//! measures capture -> that packet handed to the viewer's connection.
//! The playout-delay header extension would do the same on Chromium only and
//! costs a header extension per packet per viewer, so it is not used.
//!
//! Overflow: a viewer that cannot keep up fills its hub queue; the hub drops
//! whole frames up to the next IDR for that viewer alone and counts them in
//! `streaming_webrtc_frames_dropped_total`. Bad input: an offer that does
//! not parse, or has no H.264 the stream fits, is refused with an
//! [`OfferError`] whose message says why; nothing a peer sends panics.
//!
//! Departure: a viewer that closes its peer connection sends a DTLS
//! `close_notify` (and some send an RTCP BYE): either ends it within
//! [`CLOSE_POLL`] (the `webrtc` crate reports no DTLS state change, so the
//! viewer polls its DTLS transport's state). [`Viewers::close`] (WHEP
//! DELETE) frees it at once. One that vanishes silently (network gone,
//! process killed) goes when ICE consent fails: [`ICE_DISCONNECTED_TIMEOUT`]
//! plus [`ICE_FAILED_TIMEOUT`], about 5 s of silence.
//!
//! Floods: each client address may have at most [`pending_limit`] offers
//! answered but not yet connected (more get [`OfferError::TooManyPending`],
//! 429), so one LAN client sending offers that never connect cannot keep
//! every slot taken.

pub mod negotiate;
pub(crate) mod peer;
mod viewer;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::hub::QueueBudget;
use crate::shutdown::Shutdown;
use crate::stream::Stream;
use crate::tasks::TaskSet;

pub use negotiate::{Choice, NegotiationError};

pub(crate) use crate::random::{random_id, random_u32};

/// The RTP header extension that carries a frame's capture time (64-bit
/// NTP wall clock), sent when the viewer's offer has it; browsers and the
/// load client turn it into a capture -> receive delay.
pub const ABS_CAPTURE_TIME_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time";

/// The viewer page served at `GET /`.
pub static VIEWER_PAGE: &str = include_str!("../../assets/viewer.html");

/// How long [`Viewers::offer`] waits for ICE gathering before answering with
/// the candidates it has (host candidates are there at once; only a STUN
/// server can take longer, and an unreachable one must not delay viewers).
pub const GATHER_TIMEOUT: Duration = Duration::from_millis(1500);
/// Upper bound on a whole negotiation.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(5);
/// A viewer that answered but never connects is dropped after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an offer to an on-demand path waits for its source to start
/// and send parameter sets (an RTSP camera connects in well under a second
/// on a LAN).
pub const ON_DEMAND_WAIT: Duration = Duration::from_secs(10);
/// Offers answered but not yet connected, per client address: at most
/// this many, and one less than `-max-clients`, so an address sending
/// offers that never connect always leaves a slot to everyone else. A
/// dashboard opening a few cameras at once from one browser stays under it
/// (a real viewer is pending for a few hundred milliseconds).
pub const MAX_PENDING_PER_CLIENT: usize = 8;
/// How often a connected viewer checks whether the browser closed DTLS.
pub const CLOSE_POLL: Duration = Duration::from_millis(100);
/// ICE: no traffic for this long is "disconnected".
pub const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(2);
/// ICE: this much longer after "disconnected" is "failed": the viewer is
/// gone (about 5 s of silence in all).
pub const ICE_FAILED_TIMEOUT: Duration = Duration::from_secs(3);
/// Keyframe requests restart a viewer at most this often.
pub const KEYFRAME_RESTART_INTERVAL: Duration = Duration::from_secs(1);
/// No camera frame for this long: the GOP cache is stale, and a keyframe
/// request waits for the camera's next IDR instead of replaying the cache.
pub const STALE_CAMERA: Duration = Duration::from_secs(2);
/// Live frames a viewer may have queued: about 5 s at 1080p 6 Mbit/s. The
/// GOP-cache backlog is not charged (see `hub`), so any GOP length starts
/// at once. Access units are shared, so lagging viewers together pin at
/// most this much more than the GOP cache.
pub const VIEWER_QUEUE: QueueBudget = QueueBudget { bytes: 4 << 20, frames: 300 };

/// Keyframe requests (PLI/FIR from a viewer or a publish target's
/// receiver) restart the sending from the cached keyframe at most once per
/// [`KEYFRAME_RESTART_INTERVAL`], and not while the camera is stalled: the
/// cached GOP is then old, and replaying it would loop the last second;
/// the camera's next keyframe will do.
pub(crate) struct KeyframeGate {
    last: Option<Instant>,
}

impl KeyframeGate {
    /// A gate that lets the first request through.
    pub(crate) fn new() -> KeyframeGate {
        KeyframeGate { last: None }
    }

    /// A gate for sending that has just started from the cached keyframe.
    pub(crate) fn started_now() -> KeyframeGate {
        KeyframeGate { last: Some(Instant::now()) }
    }

    /// True if a keyframe request should restart the sending now.
    pub(crate) fn allow(&mut self, stream: &Stream) -> bool {
        let live = stream.source.last_frame_age().is_some_and(|age| age < STALE_CAMERA);
        let due = self.last.is_none_or(|last| last.elapsed() >= KEYFRAME_RESTART_INTERVAL);
        if live && due {
            self.last = Some(Instant::now());
        }
        live && due
    }
}

#[derive(Clone, Debug)]
pub struct WebrtcConfig {
    pub max_clients: usize,
    /// STUN URLs from `-stun` (empty: none).
    pub stun: Vec<String>,
    /// `-udp-port-range`, inclusive.
    pub udp_port_range: Option<(u16, u16)>,
    /// `-webrtc-ip`: local addresses to offer host candidates on. Empty means
    /// every interface except loopback and link-local; name 127.0.0.1 to
    /// include loopback (tests, a browser on the same machine).
    pub ips: Vec<IpAddr>,
    /// The path's source starts on demand: an offer waits up to
    /// [`ON_DEMAND_WAIT`] for the stream instead of answering 503 at once.
    pub on_demand: bool,
    /// TURN servers (`-turn`, or the path's `turn:`): the server allocates
    /// on the UDP ones; the viewer page gets all of them.
    pub turn: Vec<crate::turn::TurnServer>,
}

impl WebrtcConfig {
    pub fn new(max_clients: usize) -> WebrtcConfig {
        WebrtcConfig {
            max_clients,
            stun: Vec::new(),
            udp_port_range: None,
            ips: Vec::new(),
            on_demand: false,
            turn: Vec::new(),
        }
    }
}

/// Parses `-udp-port-range` (`50000-50100`).
pub fn parse_port_range(text: &str) -> Result<Option<(u16, u16)>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (low, high) = text.split_once(['-', ':']).ok_or_else(|| format!("port range {text:?}: expected LOW-HIGH"))?;
    let low: u16 = low.trim().parse().map_err(|_| format!("port range {text:?}: bad low port"))?;
    let high: u16 = high.trim().parse().map_err(|_| format!("port range {text:?}: bad high port"))?;
    if low == 0 || low > high {
        return Err(format!("port range {text:?}: need 0 < LOW <= HIGH"));
    }
    Ok(Some((low, high)))
}

/// Parses `-webrtc-ip` (comma-separated addresses).
pub fn parse_ips(text: &str) -> Result<Vec<IpAddr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad IP address {s:?}")))
        .collect()
}

/// Parses `-stun` (comma-separated URLs; `stun:` added when missing).
pub fn parse_stun(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| if s.starts_with("stun:") || s.starts_with("turn:") { s.to_string() } else { format!("stun:{s}") })
        .collect()
}

/// A negotiated viewer.
#[derive(Clone, Debug)]
pub struct Session {
    /// Opaque id, used in the WHEP resource URL `/whep/<id>`.
    pub id: String,
    pub answer_sdp: String,
}

/// Why an offer was refused; the control plane maps these to statuses.
#[derive(Clone, Debug)]
pub enum OfferError {
    /// 400: not parseable SDP, or not an offer.
    BadSdp(String),
    /// 400: the offer receives no format the camera's codec (H.264 or
    /// H.265, never transcoded) can be sent as; the message says why.
    NoCompatibleCodec(String),
    /// 503 with Retry-After: `max_clients` viewers already.
    TooManyViewers,
    /// 429 with Retry-After: this client address has [`pending_limit`]
    /// offers that have not connected yet.
    TooManyPending,
    /// 503 with Retry-After: the camera has not sent SPS/PPS yet.
    NoStreamYet,
    /// 500.
    Internal(String),
}

impl fmt::Display for OfferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfferError::BadSdp(why) => write!(f, "bad SDP offer: {why}"),
            OfferError::NoCompatibleCodec(why) => write!(f, "no compatible video codec in the offer: {why}"),
            OfferError::TooManyViewers => write!(f, "too many viewers"),
            OfferError::TooManyPending => write!(f, "too many offers from this address waiting to connect"),
            OfferError::NoStreamYet => write!(f, "the camera stream has not started yet"),
            OfferError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for OfferError {}

/// Counters for tests and the health endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewerStats {
    /// Access units packetized (cache misses).
    pub packetized: u64,
    /// Packetized access units reused by a viewer.
    pub cache_hits: u64,
    /// Keyframe requests that restarted a viewer from the cached IDR.
    pub keyframe_restarts: u64,
    /// Viewers that reached `Connected`.
    pub connected: u64,
}

/// One viewer slot: reserved at offer time, freed when the viewer ends.
struct Slot {
    /// Tells the viewer task to stop; dropping it does too.
    close: Option<tokio::sync::oneshot::Sender<()>>,
    /// Where the offer came from (the pending-offer limit).
    client: IpAddr,
    /// Set once ICE and DTLS are up.
    connected: bool,
}

pub(crate) struct Inner {
    config: WebrtcConfig,
    stream: Stream,
    runtime: tokio::runtime::Handle,
    tasks: TaskSet,
    slots: Mutex<HashMap<String, Slot>>,
    next_port: AtomicU16,
    keyframe_restarts: AtomicU64,
    connected: AtomicU64,
    /// Each viewer's last hub-queue fill, for the buffer-usage gauge (the
    /// fullest viewer is reported).
    usage: Mutex<HashMap<String, i64>>,
    shutdown: Shutdown,
}

/// Frees a viewer's slot when dropped: the viewer task holds it for its
/// whole life, so every way out (a panic included) frees the slot, the
/// client gauge and the usage entry.
pub(crate) struct SlotGuard {
    inner: Arc<Inner>,
    id: String,
    /// Keeps an on-demand source running while this viewer lives.
    _demand: crate::stream::DemandGuard,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.inner.release(&self.id);
        self.inner.forget_usage(&self.id);
    }
}

impl Inner {
    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Only map inserts/removes happen under this lock.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frees a viewer's slot (idempotent); true if it was there.
    pub(crate) fn release(&self, id: &str) -> bool {
        let mut slots = self.slots();
        let removed = slots.remove(id);
        self.stream.metrics.active_clients.set(slots.len() as i64);
        drop(slots);
        match removed {
            Some(mut slot) => {
                if let Some(close) = slot.close.take() {
                    let _ = close.send(());
                }
                true
            }
            None => false,
        }
    }

    /// Marks a viewer connected: it no longer counts as pending.
    pub(crate) fn mark_connected(&self, id: &str) {
        if let Some(slot) = self.slots().get_mut(id) {
            slot.connected = true;
        }
    }

    pub(crate) fn report_usage(&self, id: &str, percent: i64) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage.insert(id.to_string(), percent);
        self.stream.metrics.webrtc_buffer_usage_percent.set(usage.values().copied().max().unwrap_or(0));
    }

    pub(crate) fn forget_usage(&self, id: &str) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        if usage.remove(id).is_some() {
            self.stream.metrics.webrtc_buffer_usage_percent.set(usage.values().copied().max().unwrap_or(0));
        }
    }
}

/// All viewers; cheap to clone. Owns its own tokio runtime.
#[derive(Clone)]
pub struct Viewers {
    inner: Arc<Inner>,
}

impl fmt::Debug for Viewers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Viewers").field("count", &self.count()).field("config", &self.inner.config).finish()
    }
}

impl Viewers {
    /// Viewers served on `runtime` (the process's tokio runtime).
    pub fn new(
        config: WebrtcConfig,
        stream: Stream,
        shutdown: Shutdown,
        runtime: tokio::runtime::Handle,
    ) -> Result<Viewers, String> {
        let inner = Arc::new(Inner {
            config,
            stream,
            runtime,
            tasks: TaskSet::new(),
            slots: Mutex::new(HashMap::new()),
            next_port: AtomicU16::new(0),
            keyframe_restarts: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            usage: Mutex::new(HashMap::new()),
            shutdown,
        });
        Ok(Viewers { inner })
    }

    /// Negotiates a new viewer from `client`: waits until ICE gathering is
    /// complete, bounded by [`GATHER_TIMEOUT`] (and the whole call by
    /// [`OFFER_TIMEOUT`]).
    pub async fn offer(&self, offer_sdp: &str, client: IpAddr) -> Result<Session, OfferError> {
        let inner = &self.inner;
        if inner.shutdown.is_triggered() {
            return Err(OfferError::Internal("shutting down".into()));
        }
        let demand = inner.stream.demand.hold();
        if inner.config.on_demand && inner.stream.hub.parameter_sets().is_none() {
            inner.stream.wait_for_parameter_sets(ON_DEMAND_WAIT).await;
        }
        let parameter_sets = inner.stream.hub.parameter_sets().ok_or(OfferError::NoStreamYet)?;
        let choice = negotiate::choose(offer_sdp, &parameter_sets.info).map_err(|e| match e {
            NegotiationError::BadSdp(why) => OfferError::BadSdp(why),
            NegotiationError::NoCompatibleCodec(why) => OfferError::NoCompatibleCodec(why),
        })?;
        let id = random_id();
        let (close_tx, close_rx) = tokio::sync::oneshot::channel();
        {
            let mut slots = inner.slots();
            if slots.len() >= inner.config.max_clients {
                return Err(OfferError::TooManyViewers);
            }
            let pending = slots.values().filter(|s| s.client == client && !s.connected).count();
            if pending >= pending_limit(inner.config.max_clients) {
                return Err(OfferError::TooManyPending);
            }
            slots.insert(id.clone(), Slot { close: Some(close_tx), client, connected: false });
            inner.stream.metrics.active_clients.set(slots.len() as i64);
        }
        let guard = SlotGuard { inner: inner.clone(), id: id.clone(), _demand: demand };
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let offer = offer_sdp.to_string();
        inner.tasks.spawn(&inner.runtime, viewer::run(guard, offer, choice, answer_tx, close_rx));
        let result = match tokio::time::timeout(OFFER_TIMEOUT, answer_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(OfferError::Internal("the viewer task ended without an answer".into())),
            Err(_) => Err(OfferError::Internal("negotiation timed out".into())),
        };
        match result {
            Ok(answer_sdp) => {
                inner.stream.metrics.total_clients.inc();
                Ok(Session { id, answer_sdp })
            }
            Err(error) => {
                // The task frees the slot itself too; doing it here makes the
                // refusal visible to the next offer at once.
                inner.release(&id);
                if matches!(error, OfferError::Internal(_)) {
                    inner.stream.metrics.webrtc_errors.inc();
                }
                Err(error)
            }
        }
    }

    /// Ends a viewer at once (WHEP DELETE); false if unknown.
    pub fn close(&self, session_id: &str) -> bool {
        self.inner.release(session_id)
    }

    /// Viewers connected or negotiating now (each holds a slot).
    /// What a page should give `new RTCPeerConnection({iceServers})` to
    /// reach this path's viewers' peers: the `-stun` servers and every TURN
    /// server (with fresh time-limited credentials where a secret is set).
    pub fn ice_servers_for_browsers(&self, now: std::time::SystemTime) -> Vec<serde_json::Value> {
        let config = &self.inner.config;
        let stun = (!config.stun.is_empty()).then(|| serde_json::json!({"urls": config.stun}));
        stun.into_iter().chain(config.turn.iter().map(|t| t.browser_json(now))).collect()
    }

    pub fn count(&self) -> usize {
        self.inner.slots().len()
    }

    /// Counters (packetize-once, keyframe restarts).
    pub fn stats(&self) -> ViewerStats {
        ViewerStats {
            packetized: self.inner.stream.packets.packetized(),
            cache_hits: self.inner.stream.packets.hits(),
            keyframe_restarts: self.inner.keyframe_restarts.load(Ordering::Relaxed),
            connected: self.inner.connected.load(Ordering::Relaxed),
        }
    }

    /// Closes every viewer and waits up to `timeout` for their tasks to end
    /// (each closes its peer connection: DTLS close_notify). Call from a
    /// plain thread, not the runtime. True if every task ended.
    pub fn close_all(&self, timeout: Duration) -> bool {
        let ids: Vec<String> = self.inner.slots().keys().cloned().collect();
        for id in &ids {
            self.inner.release(id);
        }
        self.inner.tasks.wait_empty(timeout)
    }

    /// Viewer tasks alive now (a leak check for tests).
    pub fn live_tasks(&self) -> usize {
        self.inner.tasks.len()
    }
}

/// Pending offers one address may have (see [`MAX_PENDING_PER_CLIENT`]).
pub fn pending_limit(max_clients: usize) -> usize {
    max_clients.saturating_sub(1).clamp(1, MAX_PENDING_PER_CLIENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyframe_gate_waits_for_a_live_camera_and_a_second() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let stream = Stream::new("cam", &metrics);
        let mut gate = KeyframeGate::new();
        assert!(!gate.allow(&stream), "no frame yet: the cache is not live");
        stream.source.frame_arrived(1, 640, 360, 0);
        assert!(gate.allow(&stream));
        assert!(!gate.allow(&stream), "at most once a second");
    }

    #[test]
    fn flags_parse() {
        assert_eq!(parse_port_range("").unwrap(), None);
        assert_eq!(parse_port_range("50000-50100").unwrap(), Some((50000, 50100)));
        assert!(parse_port_range("50100-50000").is_err());
        assert!(parse_port_range("x").is_err());
        assert_eq!(parse_ips("127.0.0.1, ::1").unwrap().len(), 2);
        assert!(parse_ips("nope").is_err());
        assert_eq!(parse_stun("stun.example:3478,stun:a:1"), vec!["stun:stun.example:3478", "stun:a:1"]);
    }
}
