//! RTSP server: every path as `rtsp://HOST:PORT/NAME`, for NVRs (Frigate,
//! Blue Iris, Synology), home automation (Home Assistant, go2rtc), mediamtx,
//! VLC and ffmpeg. Off unless `-rtsp ADDR` or `rtspAddress:` says where.
//!
//! In: RTSP/1.0 requests on TCP (untrusted: parsed and written with
//! `rtsp-types`, framed and bounded here), and access units from each
//! path's hub. Out: SDP for DESCRIBE, then RTP (RFC 6184 H.264, RFC 7798
//! H.265) and RTCP sender reports, interleaved on the RTSP connection
//! (`RTP/AVP/TCP`) or over UDP unicast to the client's `client_port`.
//!
//! Tasks, all in one [`TaskSet`] that [`RtspServer::stop`] waits for: the
//! accept loop, one task per connection (it reads requests and, for a
//! TCP-interleaved session, writes the media too), one per playing UDP
//! session, and a sweeper that ends sessions idle past the timeout. Each
//! session holds its path's demand (an on-demand source runs while a client
//! plays) and a stop signal that is a child of the server's.
//!
//! A playing client is a hub consumer like a WebRTC viewer: it starts at a
//! keyframe from the GOP cache, its queue has a budget ([`CLIENT_QUEUE`]),
//! and RTP payloads come from the stream's shared [`crate::rtp::PacketCache`]
//! (packetized once for every WebRTC viewer and RTSP client); a client only
//! stamps its own 12-byte header (and the 4-byte interleave prefix) around
//! the shared payloads, written with vectored writes, not copied.
//!
//! Slow clients: a TCP client that stops reading fills its socket buffer
//! (capped at [`SEND_BUFFER_BYTES`]) and then its hub queue; the hub drops
//! its frames up to the next keyframe (`streaming_path_rtsp_frames_dropped_total`),
//! and when no byte could be written for [`STUCK_AFTER`] the connection is
//! closed (`streaming_path_rtsp_clients_stuck_total`). Only that client's
//! task waits on its socket: the media thread, other clients and WebRTC
//! viewers never do.
//!
//! Bad input: a request head over [`MAX_HEAD_BYTES`], a body over
//! [`MAX_BODY_BYTES`], bytes that are no RTSP message, a missing or bad
//! CSeq, an unknown method or a bad Transport get a 4xx/5xx answer (or the
//! connection closed when the framing is lost) and a count in
//! `streaming_rtsp_bad_requests_total{reason}`; nothing a client sends
//! panics. Connections ([`MAX_CONNECTIONS`]) and sessions
//! ([`MAX_SESSIONS`]) are capped. UDP media only ever goes to the address
//! the RTSP connection came from (a `destination=` in Transport is ignored),
//! so the server cannot be made to flood a third party.
//!
//! Auth ([`Auth`]): off, the API's bearer token as the password (any user
//! name), or the config's own user and password; Basic and Digest (RFC
//! 2617, MD5, a nonce per connection) on DESCRIBE, SETUP and PLAY. The other
//! requests name a session, whose random id is the capability.

mod auth;
mod conn;
mod play;
mod sdp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::net::TcpListener;

use crate::hub::QueueBudget;
use crate::metrics::Metrics;
use crate::paths::{Path, Paths};
use crate::shutdown::{Shutdown, Trigger};
use crate::stream::DemandGuard;
use crate::tasks::TaskSet;

pub use auth::Auth;

/// Request line and headers at most; a client sending more is answered 400
/// and closed.
pub const MAX_HEAD_BYTES: usize = 8 << 10;
/// Request body at most (GET/SET_PARAMETER carry a few parameter names).
pub const MAX_BODY_BYTES: usize = 4 << 10;
/// RTSP connections at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 128;
/// Sessions at once (set up or playing); SETUP beyond answers 503.
pub const MAX_SESSIONS: usize = 64;
/// A playing client's hub queue (live frames; the GOP-cache backlog is not
/// charged): about 3 s at 1080p30 6 Mbit/s. Past it the client loses frames
/// up to the next keyframe.
pub const CLIENT_QUEUE: QueueBudget = QueueBudget { bytes: 2 << 20, frames: 90 };
/// A TCP client that accepts no byte for this long is dropped.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
/// Kernel send buffer of an RTSP connection: room for a few 1080p frames
/// and a LAN's bandwidth-delay product, and a bound on what a client that
/// stops reading pins in the kernel (autotuning would let it grow to MBs).
pub const SEND_BUFFER_BYTES: usize = 512 << 10;
/// RTCP sender reports, per session.
pub const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// DESCRIBE of an on-demand path waits this long for its source to start.
pub const ON_DEMAND_WAIT: Duration = crate::webrtc::ON_DEMAND_WAIT;
/// DESCRIBE of an always-on path whose camera has not sent parameter sets
/// yet waits this long before answering 503.
pub const STARTING_WAIT: Duration = Duration::from_secs(3);

/// What `-rtsp` and the config file set.
#[derive(Clone, Debug)]
pub struct RtspServerConfig {
    pub addr: SocketAddr,
    pub auth: Auth,
    /// Announced in `Session: ID;timeout=SECONDS`; a session with no request
    /// and no RTCP for this long ends (a playing TCP session lives as long
    /// as its connection takes data).
    pub session_timeout: Duration,
    /// Server RTP/RTCP UDP ports, inclusive; ephemeral when `None`.
    pub udp_port_range: Option<(u16, u16)>,
}

/// Server-wide counters (per-path ones are in [`crate::metrics::StreamMetrics`]).
#[derive(Clone, Debug)]
struct ServerMetrics {
    /// By reason: `head_too_large`, `body_too_large`, `parse`, `version`,
    /// `cseq`, `method`, `transport`, `uri`, `session`, `interleaved`.
    bad_requests: IntCounterVec,
    /// By result: `missing` (challenged), `wrong`.
    auth_failures: IntCounterVec,
    connections: IntGauge,
}

impl ServerMetrics {
    fn new(metrics: &Metrics) -> ServerMetrics {
        let bad_requests = IntCounterVec::new(
            Opts::new("streaming_rtsp_bad_requests_total", "RTSP requests refused as malformed, by reason"),
            &["reason"],
        )
        .expect("a static, valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new("streaming_rtsp_auth_failures_total", "RTSP requests without valid credentials"),
            &["result"],
        )
        .expect("a static, valid metric");
        let connections =
            IntGauge::new("streaming_rtsp_connections", "RTSP connections open now").expect("a static, valid metric");
        for metric in [
            Box::new(bad_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(auth_failures.clone()),
            Box::new(connections.clone()),
        ] {
            // Registered once per process (one RTSP server); a second server
            // in one process (tests) keeps its own unregistered counters.
            let _ = metrics.registry.register(metric);
        }
        for reason in ["parse", "cseq", "method"] {
            bad_requests.with_label_values(&[reason]);
        }
        for result in ["missing", "wrong"] {
            auth_failures.with_label_values(&[result]);
        }
        ServerMetrics { bad_requests, auth_failures, connections }
    }

    fn bad_request(&self, reason: &str) {
        self.bad_requests.with_label_values(&[reason]).inc();
    }
}

/// How a session's RTP reaches its client.
#[derive(Debug)]
enum Transport {
    /// Interleaved on the RTSP connection that set it up.
    Tcp { rtp_channel: u8, rtcp_channel: u8 },
    /// UDP unicast from our port pair to the client's.
    Udp(Arc<play::UdpPair>),
}

/// One client session: one path, one track.
struct Session {
    id: String,
    path: Arc<Path>,
    transport: Transport,
    /// The connection that set it up; a TCP session ends with it.
    connection: u64,
    ssrc: u32,
    /// Monotonic milliseconds of the last request naming it or RTCP from its
    /// client.
    last_seen_ms: AtomicU64,
    /// True while its media goes out (RTP-Info of the first PLAY is kept
    /// for a repeated one).
    playing: AtomicBool,
    rtp_info: Mutex<Option<(u16, u32)>>,
    /// Ends the session's player; a child of the server's shutdown.
    stop: Trigger,
    stopped: Shutdown,
    _demand: DemandGuard,
}

impl Session {
    fn touch(&self) {
        self.last_seen_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)))
    }

    fn is_tcp(&self) -> bool {
        matches!(self.transport, Transport::Tcp { .. })
    }
}

fn now_ms() -> u64 {
    crate::clock::monotonic_now().as_millis() as u64
}

struct Inner {
    config: RtspServerConfig,
    paths: Arc<Paths>,
    metrics: ServerMetrics,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    tasks: TaskSet,
    runtime: tokio::runtime::Handle,
    shutdown: Shutdown,
    connections: AtomicUsize,
    next_connection: AtomicU64,
    next_udp_port: AtomicU16,
}

impl Inner {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        // Map inserts and removes only: consistent after any panic.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions().get(id).cloned()
    }

    /// Ends a session (idempotent): its player stops, its demand goes.
    fn end_session(&self, id: &str, why: &str) {
        if let Some(session) = self.sessions().remove(id) {
            session.stop.trigger();
            log::info!("rtsp: session {} on {} ended: {why}", short(&session.id), session.path.name());
        }
    }

    /// The path a request URI names: `/NAME`, `/NAME/`, `/NAME/trackID=0`;
    /// `cam` is also the legacy path whatever its name.
    fn path_of(&self, name: &str) -> Option<Arc<Path>> {
        self.paths
            .get(name)
            .cloned()
            .or_else(|| (name == crate::config::LEGACY_PATH).then(|| self.paths.legacy().clone()))
    }
}

/// The running server.
pub struct RtspServer {
    inner: Arc<Inner>,
    stop: Trigger,
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
}

impl RtspServer {
    /// Binds `config.addr` and serves every path of `paths` on `runtime`.
    /// Logs `listening: rtsp on ADDR`. Call from outside the runtime.
    pub fn start(
        config: RtspServerConfig,
        paths: Arc<Paths>,
        metrics: &Metrics,
        runtime: &tokio::runtime::Handle,
        shutdown: &Shutdown,
    ) -> std::io::Result<RtspServer> {
        let std_listener = std::net::TcpListener::bind(config.addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _enter = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let (stop, stopped) = shutdown.child();
        let inner = Arc::new(Inner {
            config,
            paths,
            metrics: ServerMetrics::new(metrics),
            sessions: Mutex::new(HashMap::new()),
            tasks: TaskSet::new(),
            runtime: runtime.clone(),
            shutdown: stopped,
            connections: AtomicUsize::new(0),
            next_connection: AtomicU64::new(0),
            next_udp_port: AtomicU16::new(0),
        });
        log::info!("listening: rtsp on {addr}");
        inner.tasks.spawn(runtime, accept_loop(inner.clone(), listener));
        inner.tasks.spawn(runtime, sweep_sessions(inner.clone()));
        Ok(RtspServer { inner, stop, addr })
    }

    /// Stops accepting, ends every session and connection, and waits up to
    /// `timeout` for their tasks. Call from a plain thread.
    pub fn stop(&self, timeout: Duration) -> bool {
        self.stop.trigger();
        let ids: Vec<String> = self.inner.sessions().keys().cloned().collect();
        for id in ids {
            self.inner.end_session(&id, "shutdown");
        }
        let done = self.inner.tasks.wait_empty(timeout);
        if !done {
            log::warn!("rtsp: {} tasks still running at shutdown", self.inner.tasks.len());
        }
        done
    }

    /// Sessions set up or playing now.
    pub fn sessions(&self) -> usize {
        self.inner.sessions().len()
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.wait() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                log::warn!("rtsp: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if inner.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            log::warn!("rtsp: {MAX_CONNECTIONS} connections open; refusing {peer}");
            inner.metrics.bad_request("too_many_connections");
            drop(stream);
            continue;
        }
        let id = inner.next_connection.fetch_add(1, Ordering::Relaxed);
        let connection = ConnectionCount::new(&inner);
        inner.tasks.spawn(&inner.runtime, conn::run(inner.clone(), stream, peer, id, connection));
    }
}

/// Counts an open connection until dropped (however its task ends).
struct ConnectionCount(Arc<Inner>);

impl ConnectionCount {
    fn new(inner: &Arc<Inner>) -> ConnectionCount {
        let open = inner.connections.fetch_add(1, Ordering::Relaxed) + 1;
        inner.metrics.connections.set(open as i64);
        ConnectionCount(inner.clone())
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        let open = self.0.connections.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.metrics.connections.set(open as i64);
    }
}

/// Ends sessions nobody has spoken for within the timeout. A TCP session
/// that is playing is exempt: its connection carries its media, and a dead
/// client there is caught by [`STUCK_AFTER`].
async fn sweep_sessions(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let timeout = inner.config.session_timeout;
        let expired: Vec<String> = inner
            .sessions()
            .values()
            .filter(|s| !(s.is_tcp() && s.playing.load(Ordering::Relaxed)) && s.idle() > timeout)
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            inner.end_session(&id, &format!("no request or RTCP for {}s (session timeout)", timeout.as_secs()));
        }
    }
}

/// The first 8 characters of an id, for logs.
fn short(id: &str) -> &str {
    &id[..8.min(id.len())]
}

/// 64 random bits from the OS as 16 hex digits: session ids are
/// capabilities (TEARDOWN, keep-alives), nonces must not repeat.
fn random_hex() -> String {
    crate::random::hex(&crate::random::random_bytes::<8>())
}

/// `-rtsp-session-timeout`: `60s`, `2m`; at least 5 s.
pub fn parse_session_timeout(text: &str) -> Result<Duration, String> {
    let timeout =
        crate::recorder::parse_duration(text)?.ok_or_else(|| format!("session timeout {text:?}: must be > 0"))?;
    if timeout < Duration::from_secs(5) {
        return Err(format!("session timeout {text:?}: at least 5s"));
    }
    Ok(timeout)
}

/// Where clients reach the server, for logs: `rtsp://IP:PORT/NAME`.
pub fn url_of(addr: SocketAddr, name: &str) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    };
    format!("rtsp://{}/{name}", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_timeouts_parse() {
        assert_eq!(parse_session_timeout("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_session_timeout("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_session_timeout("1s").is_err());
        assert!(parse_session_timeout("0").is_err());
        assert!(parse_session_timeout("soon").is_err());
    }

    #[test]
    fn ids_are_random_hex() {
        let (a, b) = (random_hex(), random_hex());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
