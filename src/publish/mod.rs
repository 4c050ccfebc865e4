//! Publishing: a path's stream relayed to other servers, so that an SFU
//! (Janus, mediamtx, LiveKit, Cloudflare) serves the viewers the board never
//! sees, and the board sends one stream however many watch.
//!
//! In: the path's `publish:` list (and `-publish URL` for `cam`), each a
//! target URL ([`parse`]):
//! - `whip+http://HOST[:PORT]/PATH`, `whip+https://...`, with an optional
//!   bearer token: WebRTC to a WHIP endpoint (RFC 9725), see [`whip`];
//! - `rtp://HOST:PORT?pt=96` and `srtp://HOST:PORT?pt=96&key=BASE64`: plain
//!   RTP or SRTP (SDES-style master key and salt, AES_CM_128_HMAC_SHA1_80)
//!   over UDP with RTCP sender reports, as Janus's streaming plugin and many
//!   SFUs take a camera, see [`rtp`].
//!
//! Out: the stream, as the camera sends it (H.264 or H.265, never
//! transcoded), to each target; per target a status for `/paths` (state,
//! bytes and frames sent, last error, reconnects: never a token or a key)
//! and the metrics `streaming_path_publish_*{path,target}`, where `target`
//! is [`PublishConfig::label`]: the URL without credentials, query values
//! (but `pt` and `rtcpport`) or WHIP path, which can hold a stream key.
//!
//! Each target is one task on the runtime, owned by its path's
//! [`Publishers`] (a [`TaskSet`] that shutdown waits for), and a consumer of
//! the path's hub like a WebRTC viewer: it subscribes from the GOP cache (a
//! keyframe at once), takes each frame's RTP payloads from the stream's
//! shared [`PacketCache`](crate::rtp::PacketCache) (packetized once for every
//! viewer and target) and stamps its own headers ([`Stamp`](crate::rtp::Stamp)).
//! A target that cannot keep up fills its own budgeted queue and loses frames
//! up to the next keyframe (counted in `publish_frames_dropped_total`);
//! nothing waits for it, neither the media thread nor anyone else. It holds
//! the path's [`Demand`](crate::stream::Demand) for its whole life, so an
//! on-demand camera runs while it publishes. A PLI/FIR from the target
//! restarts it from the cached keyframe, at most once a second and not while
//! the camera is stalled (as for viewers).
//!
//! Supervision: a session that fails (unreachable, refused, the SFU gone
//! silent, the endpoint restarted) is logged once per distinct error, shown
//! in `/paths` and retried after a capped exponential backoff (0.5 s doubling
//! to 30 s; back to 0.5 s after a session that published for 10 s), forever
//! until shutdown. A codec change of the stream ends the session; the next
//! one carries the new codec. On shutdown a WHIP session is ended with
//! `DELETE` (bounded to [`STOP_TIMEOUT`]).

pub mod rtp;
pub mod whip;

use std::fmt;
use std::sync::atomic::AtomicU16;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backoff::Backoff;
use crate::hub::{StartAt, SubscribeOptions, Subscription};
use crate::metrics::PublishMetrics;
use crate::shutdown::Shutdown;
use crate::stream::Stream;
use crate::tasks::TaskSet;
use crate::webrtc::WebrtcConfig;

/// First retry delay after a failed session; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// A session that published this long resets the backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How long a stopping session may take to say goodbye (WHIP `DELETE`, RTCP
/// BYE) at shutdown.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// An RTP target whose sends failed this recently shows as `error`.
const SEND_ERROR_SHOWN_FOR: Duration = Duration::from_secs(3);

/// One publish target, checked: its URL (kept for the session; shown only as
/// [`label`](PublishConfig::label)) and what the URL says.
#[derive(Clone, PartialEq, Eq)]
pub struct PublishConfig {
    pub url: String,
    pub target: Target,
}

impl fmt::Debug for PublishConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token or the key.
        f.debug_struct("PublishConfig").field("url", &self.label()).finish()
    }
}

/// Where and how a target is published to.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    Whip(whip::WhipTarget),
    Rtp(rtp::RtpTarget),
}

impl PublishConfig {
    /// `whip`, `rtp` or `srtp`.
    pub fn kind(&self) -> &'static str {
        match &self.target {
            Target::Whip(_) => "whip",
            Target::Rtp(rtp) if rtp.srtp.is_some() => "srtp",
            Target::Rtp(_) => "rtp",
        }
    }

    /// The URL as logs, `/paths` and metric labels show it: no user or
    /// password, no query values but `pt` and `rtcpport`, and a WHIP URL's
    /// path replaced by `/…` (hosted SFUs put stream keys in it).
    pub fn label(&self) -> String {
        redact(&self.url)
    }
}

/// See [`PublishConfig::label`]; unparseable text becomes `(invalid URL)`.
pub fn redact(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else { return "(invalid URL)".into() };
    let mut out = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or(""));
    if let Some(port) = parsed.port() {
        out.push_str(&format!(":{port}"));
    }
    if parsed.scheme().starts_with("whip") {
        if parsed.path() != "/" && !parsed.path().is_empty() {
            out.push_str("/…");
        }
        return out;
    }
    let shown: Vec<String> = query_pairs(parsed.query().unwrap_or(""))
        .into_iter()
        .map(|(key, value)| match key.as_str() {
            "pt" | "rtcpport" => format!("{key}={value}"),
            _ => format!("{key}=***"),
        })
        .collect();
    if !shown.is_empty() {
        out.push('?');
        out.push_str(&shown.join("&"));
    }
    out
}

/// A query's `key=value` pairs, percent-decoded but with `+` kept as it is
/// (base64 keys have them; form decoding would turn them into spaces).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            (decode(key), decode(value))
        })
        .collect()
}

/// Checks a target URL (and a bearer token for WHIP). Errors say what is
/// wrong without repeating a secret.
pub fn parse(url: &str, token: Option<String>) -> Result<PublishConfig, String> {
    let url = url.trim();
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
    let target = match scheme.as_str() {
        "whip+http" | "whip+https" => Target::Whip(whip::WhipTarget::parse(url, token)?),
        "rtp" | "srtp" => {
            if token.is_some() {
                return Err("a token applies to whip+http(s):// targets only".into());
            }
            let parsed = url::Url::parse(url).map_err(|e| format!("{scheme}:// target: not a URL ({e})"))?;
            Target::Rtp(rtp::RtpTarget::parse(&parsed, &query_pairs(parsed.query().unwrap_or("")))?)
        }
        _ => {
            return Err(format!(
                "{}: expected whip+http://, whip+https://, rtp:// or srtp://",
                if url.contains("://") { redact(url) } else { "the target".into() }
            ))
        }
    };
    Ok(PublishConfig { url: url.to_string(), target })
}

/// What a target is doing, as `/paths` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// The stream has no parameter sets yet (camera not started).
    Waiting,
    /// Setting up a session (WHIP: offer, answer, ICE, DTLS).
    Connecting,
    Publishing,
    /// The last session failed; the next starts after the backoff.
    Retrying,
    Stopped,
}

impl TargetState {
    pub fn label(self) -> &'static str {
        match self {
            TargetState::Waiting => "waiting",
            TargetState::Connecting => "connecting",
            TargetState::Publishing => "publishing",
            TargetState::Retrying => "retrying",
            TargetState::Stopped => "stopped",
        }
    }
}

#[derive(Debug)]
struct Mutable {
    state: TargetState,
    /// When the session now up began publishing.
    publishing_since: Option<Instant>,
    last_error: Option<(String, Instant)>,
    /// The last send error of a session that goes on (RTP: ICMP port
    /// unreachable), shown as state `error` for a while.
    last_send_error: Option<Instant>,
    /// What the target's RTCP receiver reports say (RTT, loss).
    rtt_ms: Option<f64>,
    packets_lost: Option<u32>,
}

/// One target's status: written by its task, read by `/paths`.
#[derive(Debug)]
pub struct TargetStatus {
    pub index: usize,
    pub label: String,
    pub kind: &'static str,
    pub metrics: PublishMetrics,
    inner: Mutex<Mutable>,
}

impl TargetStatus {
    fn new(index: usize, label: String, kind: &'static str, metrics: PublishMetrics) -> TargetStatus {
        TargetStatus {
            index,
            label,
            kind,
            metrics,
            inner: Mutex::new(Mutable {
                state: TargetState::Waiting,
                publishing_since: None,
                last_error: None,
                last_send_error: None,
                rtt_ms: None,
                packets_lost: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Mutable> {
        // Plain fields: a poisoned lock still holds a consistent value.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> TargetState {
        self.lock().state
    }

    fn set_state(&self, state: TargetState) {
        let mut inner = self.lock();
        inner.state = state;
        if state == TargetState::Publishing {
            inner.publishing_since = Some(Instant::now());
            self.metrics.up.set(1);
        } else {
            inner.publishing_since = None;
            self.metrics.up.set(0);
        }
    }

    /// How long the session now up has published.
    fn published_for(&self) -> Duration {
        self.lock().publishing_since.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// A session failed; shown until the next error replaces it.
    fn set_error(&self, error: &str) {
        self.lock().last_error = Some((error.to_string(), Instant::now()));
    }

    /// A send failed in a session that goes on (counted once per frame).
    pub(crate) fn send_failed(&self, error: &str) {
        let mut inner = self.lock();
        inner.last_error = Some((error.to_string(), Instant::now()));
        inner.last_send_error = Some(Instant::now());
        self.metrics.errors.inc();
    }

    pub(crate) fn set_quality(&self, rtt_ms: Option<f64>, packets_lost: Option<u32>) {
        let mut inner = self.lock();
        inner.rtt_ms = rtt_ms;
        inner.packets_lost = packets_lost;
    }

    /// The last error and how long ago it happened.
    pub fn last_error(&self) -> Option<(String, Duration)> {
        self.lock().last_error.as_ref().map(|(e, at)| (e.clone(), at.elapsed()))
    }

    /// The target as `/paths` shows it.
    pub fn summary(&self) -> Value {
        let inner = self.lock();
        let sending_fails = inner.last_send_error.is_some_and(|at| at.elapsed() < SEND_ERROR_SHOWN_FOR);
        let state = if inner.state == TargetState::Publishing && sending_fails { "error" } else { inner.state.label() };
        let m = &self.metrics;
        let mut summary = json!({
            "target": self.label,
            "kind": self.kind,
            "state": state,
            "bytes_sent": m.bytes.get(),
            "packets_sent": m.packets.get(),
            "frames_sent": m.frames.get(),
            "frames_dropped": m.frames_dropped.get(),
            "reconnects": m.reconnects.get(),
            "errors": m.errors.get(),
            "keyframe_requests": m.keyframe_requests.get(),
            "publishing_for_ms": inner.publishing_since.map(|since| since.elapsed().as_millis() as u64),
        });
        if let Some((error, at)) = &inner.last_error {
            summary["last_error"] = json!(error);
            summary["last_error_age_ms"] = json!(at.elapsed().as_millis() as u64);
        }
        if let Some(rtt) = inner.rtt_ms {
            summary["rtt_ms"] = json!((rtt * 10.0).round() / 10.0);
        }
        if let Some(lost) = inner.packets_lost {
            summary["packets_lost"] = json!(lost);
        }
        summary
    }
}

/// What a session needs: the stream, the WebRTC settings (for WHIP), its
/// status to report into, and the process's shutdown.
pub(crate) struct Context {
    pub stream: Stream,
    pub webrtc: WebrtcConfig,
    /// Spreads WHIP peer connections over `-udp-port-range`.
    pub next_port: Arc<AtomicU16>,
    pub status: Arc<TargetStatus>,
    pub shutdown: Shutdown,
}

impl Context {
    /// A hub subscription from the GOP cache, budgeted like a viewer's.
    pub(crate) fn subscribe(&self) -> Subscription {
        self.stream.hub.subscribe(SubscribeOptions {
            name: format!("publish {}", self.status.index),
            budget: crate::webrtc::VIEWER_QUEUE,
            start: StartAt::GopCache,
            dropped_metric: Some(self.status.metrics.frames_dropped.clone()),
        })
    }

    /// A session that publishes: status and metrics say so.
    pub(crate) fn publishing(&self) {
        self.status.set_state(TargetState::Publishing);
    }

    /// Counts a frame handed to the target.
    pub(crate) fn sent(&self, packets: usize, bytes: usize) {
        let m = &self.status.metrics;
        m.frames.inc();
        m.packets.inc_by(packets as u64);
        m.bytes.inc_by(bytes as u64);
    }
}

/// A path's publish targets and their tasks.
pub struct Publishers {
    stream: Stream,
    webrtc: WebrtcConfig,
    configs: Vec<PublishConfig>,
    targets: Vec<Arc<TargetStatus>>,
    next_port: Arc<AtomicU16>,
    tasks: TaskSet,
}

impl fmt::Debug for Publishers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publishers").field("targets", &self.configs).finish()
    }
}

impl Publishers {
    /// The targets of `stream`'s path (not started yet). Labels are made
    /// unique (`#2`, ...) so that two targets never share a metric series.
    pub fn new(configs: Vec<PublishConfig>, stream: Stream, webrtc: WebrtcConfig) -> Publishers {
        let mut labels: Vec<String> = Vec::new();
        let targets = configs
            .iter()
            .enumerate()
            .map(|(index, config)| {
                let base = config.label();
                let mut label = base.clone();
                let mut n = 1;
                while labels.contains(&label) {
                    n += 1;
                    label = format!("{base}#{n}");
                }
                labels.push(label.clone());
                let metrics = stream.metrics.publish(&label);
                Arc::new(TargetStatus::new(index, label, config.kind(), metrics))
            })
            .collect();
        Publishers { stream, webrtc, configs, targets, next_port: Arc::new(AtomicU16::new(0)), tasks: TaskSet::new() }
    }

    /// Starts one task per target on `runtime`; each runs until `shutdown`.
    pub fn start(&self, runtime: &tokio::runtime::Handle, shutdown: &Shutdown) {
        for (config, status) in self.configs.iter().zip(&self.targets) {
            let context = Context {
                stream: self.stream.clone(),
                webrtc: self.webrtc.clone(),
                next_port: self.next_port.clone(),
                status: status.clone(),
                shutdown: shutdown.clone(),
            };
            self.tasks.spawn(runtime, supervise(config.clone(), context));
        }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn targets(&self) -> &[Arc<TargetStatus>] {
        &self.targets
    }

    /// Every target as `/paths` shows it.
    pub fn summary(&self) -> Vec<Value> {
        self.targets.iter().map(|t| t.summary()).collect()
    }

    /// Waits (from a plain thread, after the shutdown was triggered) until
    /// every target's task has ended: WHIP sessions sent their `DELETE`.
    /// True if all did within `timeout`.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        self.tasks.wait_empty(timeout)
    }

    /// Target tasks alive now.
    pub fn live_tasks(&self) -> usize {
        self.tasks.len()
    }
}

/// One target's life: sessions, one after the other, until shutdown.
async fn supervise(config: PublishConfig, cx: Context) {
    let _demand = cx.stream.demand.hold();
    let status = cx.status.clone();
    let name = format!("{} -> {}", cx.stream.name, status.label);
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut logged: Option<String> = None;
    let mut sessions = 0u64;
    loop {
        status.set_state(TargetState::Waiting);
        // The payload format (and a WHIP offer) needs the stream's codec.
        tokio::select! {
            _ = cx.shutdown.wait() => break,
            () = parameter_sets(&cx.stream) => {}
        }
        sessions += 1;
        if sessions > 1 {
            status.metrics.reconnects.inc();
        }
        status.set_state(TargetState::Connecting);
        let result = match &config.target {
            Target::Whip(target) => whip::run(target, &cx).await,
            Target::Rtp(target) => rtp::run(target, &cx).await,
        };
        let published = status.published_for();
        match result {
            Ok(()) => break,
            Err(error) => {
                status.metrics.errors.inc();
                status.set_error(&error);
                if published >= HEALTHY_AFTER {
                    backoff.reset();
                    logged = None;
                }
                let delay = backoff.next_delay();
                if logged.as_deref() == Some(error.as_str()) {
                    log::debug!("publish: {name}: {error} (again; retrying in {delay:?})");
                } else {
                    log::warn!("publish: {name}: {error} (retrying in {delay:?})");
                    logged = Some(error);
                }
                status.set_state(TargetState::Retrying);
                tokio::select! {
                    _ = cx.shutdown.wait() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    status.set_state(TargetState::Stopped);
    log::debug!("publish: {name}: stopped");
}

/// Resolves once the stream has parameter sets (polled, off the media path).
async fn parameter_sets(stream: &Stream) {
    while stream.hub.parameter_sets().is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_their_labels_hold_no_secret() {
        let key = "WbTBosdVUZqEb6Htqhn+m3z7wUh4RJVR8nE15GbN";
        let srtp = parse(&format!("srtp://10.0.0.5:5004?pt=97&key={key}"), None).unwrap();
        assert_eq!(srtp.kind(), "srtp");
        assert_eq!(srtp.label(), "srtp://10.0.0.5:5004?pt=97&key=***");
        assert!(!format!("{srtp:?}").contains(key));
        let Target::Rtp(rtp) = &srtp.target else { panic!() };
        assert_eq!((rtp.port, rtp.rtcp_port, rtp.payload_type), (5004, Some(5005), 97));

        let whip = parse("whip+https://user:pw@sfu.example/live/SECRETKEY/whip", Some("tok".into())).unwrap();
        assert_eq!(whip.kind(), "whip");
        assert_eq!(whip.label(), "whip+https://sfu.example/…");
        assert!(!format!("{whip:?}").contains("SECRETKEY") && !format!("{whip:?}").contains("tok"));
        let Target::Whip(w) = &whip.target else { panic!() };
        assert_eq!(w.endpoint.as_str(), "https://user:pw@sfu.example/live/SECRETKEY/whip");

        let plain = parse("rtp://127.0.0.1:5004", None).unwrap();
        assert_eq!(plain.label(), "rtp://127.0.0.1:5004");
        let Target::Rtp(rtp) = &plain.target else { panic!() };
        assert_eq!(rtp.payload_type, 96, "the default payload type");
    }

    #[test]
    fn bad_targets_are_refused_with_the_reason() {
        let cases = [
            ("ftp://x/y", "expected whip+http://"),
            ("rtp://127.0.0.1", "needs a port"),
            ("rtp://:5004", "host"),
            ("rtp://h:5004?pt=200", "pt"),
            ("rtp://h:5004?colour=red", "unknown parameter"),
            ("rtp://h:5004?key=AAAA", "srtp:// only"),
            ("srtp://h:5004?pt=96", "needs key="),
            ("srtp://h:5004?key=not*base64", "base64"),
            ("srtp://h:5004?key=AAAA", "needs 30"),
            ("whip+ftp://h/x", "expected whip+http://"),
            ("whip+http://:80/x", "host"),
        ];
        for (url, needle) in cases {
            let error = parse(url, None).unwrap_err();
            assert!(error.contains(needle), "{url}: {error}");
            assert!(!error.contains("not*base64"), "a key is never repeated: {error}");
        }
        assert!(parse("rtp://h:5004", Some("t".into())).unwrap_err().contains("whip"));
    }

    #[test]
    fn duplicate_labels_get_a_suffix() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let stream = Stream::new("cam", &metrics);
        let configs = vec![parse("rtp://h:5004", None).unwrap(), parse("rtp://h:5004", None).unwrap()];
        let publishers = Publishers::new(configs, stream, WebrtcConfig::new(1));
        let labels: Vec<_> = publishers.targets().iter().map(|t| t.label.clone()).collect();
        assert_eq!(labels, ["rtp://h:5004", "rtp://h:5004#2"]);
        let summary = publishers.summary();
        assert_eq!(summary[0]["state"], "waiting");
        assert_eq!(summary[1]["kind"], "rtp");
    }
}
