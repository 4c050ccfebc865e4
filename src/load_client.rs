//! Load client: N non-decoding WebRTC viewers against a running server.
//!
//! `streaming-server load-client -url http://board:8081 -viewers 20
//! -seconds 30` negotiates each viewer through `POST /offer` (like a
//! browser: recvonly H.264, NACK/PLI feedback, the `abs-capture-time` header
//! extension offered), reads its RTP without decoding, and prints one JSON
//! report: per viewer the time to first RTP and to the first complete
//! keyframe, packets, losses (sequence gaps), frames, keyframes, frame rate,
//! inter-frame jitter, and the capture -> receive delay from the
//! `abs-capture-time` extension when the server sends it (wall clocks of
//! sender and receiver must agree: the same machine, or NTP).
//!
//! Runs on its own tokio runtime; viewers join `stagger` apart so they land
//! at different points of the camera's GOP. The per-viewer accounting
//! ([`ReceiverStats`]) is sans-IO: packets in, figures out.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The RTP header extension carrying the capture time (NTP format) of the
/// frame a packet belongs to.
pub const ABS_CAPTURE_TIME_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time";

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A wall-clock time as a 64-bit NTP timestamp (32.32 fixed point).
pub fn ntp_from_system(time: SystemTime) -> u64 {
    let since_unix = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_unix.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// NTP timestamp to seconds since the Unix epoch, as f64.
fn ntp_to_unix_secs(ntp: u64) -> f64 {
    (ntp >> 32) as f64 - NTP_UNIX_OFFSET as f64 + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0
}

/// What one packet tells the accounting.
#[derive(Clone, Copy, Debug)]
pub struct PacketInfo<'a> {
    pub sequence_number: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: &'a [u8],
    /// The `abs-capture-time` extension's NTP capture time, if present.
    pub capture_ntp: Option<u64>,
}

/// True if an RTP H.264 payload (RFC 6184) carries (the start of) an IDR
/// slice: single NAL, STAP-A or FU-A start.
pub fn payload_has_idr(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    let Some(&header) = payload.first() else { return false };
    match header & 0x1f {
        24 => {
            // STAP-A: [hdr] then (u16 size, NAL) repeated.
            let mut rest = &payload[1..];
            while rest.len() >= 3 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if rest[2] & 0x1f == IDR {
                    return true;
                }
                rest = rest.get(2 + size..).unwrap_or_default();
            }
            false
        }
        28 => payload.get(1).is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        kind => kind == IDR,
    }
}

/// Per-viewer accounting, fed one packet at a time.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    started: Option<Instant>,
    first_packet: Option<Instant>,
    first_keyframe: Option<Instant>,
    last_seq: Option<u16>,
    pub packets: u64,
    pub lost: u64,
    pub frames: u64,
    pub keyframes: u64,
    frame_has_idr: bool,
    frame_damaged: bool,
    first_frame_at: Option<Instant>,
    last_frame_at: Option<Instant>,
    frame_intervals_ms: Vec<f64>,
    latencies_ms: Vec<f64>,
}

/// A viewer's figures, as printed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ViewerReport {
    pub viewer: usize,
    pub connected: bool,
    pub error: Option<String>,
    /// POST /offer to the first RTP packet.
    pub first_rtp_ms: Option<f64>,
    /// POST /offer to the last packet of the first complete IDR frame.
    pub first_keyframe_ms: Option<f64>,
    pub packets: u64,
    pub lost: u64,
    pub frames: u64,
    pub keyframes: u64,
    pub fps: f64,
    /// Standard deviation of the intervals between complete frames.
    pub interframe_jitter_ms: f64,
    /// capture -> receive delay (abs-capture-time), when the server sends it.
    pub latency_samples: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// The samples themselves, pooled into the run's percentiles.
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

impl ReceiverStats {
    /// Starts the clock (the moment the offer is sent).
    pub fn start(now: Instant) -> ReceiverStats {
        ReceiverStats { started: Some(now), ..ReceiverStats::default() }
    }

    pub fn on_packet(&mut self, packet: PacketInfo<'_>, now: Instant, wall_now: SystemTime) {
        self.packets += 1;
        self.first_packet.get_or_insert(now);
        if let Some(last) = self.last_seq {
            let gap = packet.sequence_number.wrapping_sub(last);
            if gap == 0 || gap > 0x8000 {
                return; // duplicate or reordered late packet: not new data
            }
            if gap > 1 {
                self.lost += u64::from(gap - 1);
                self.frame_damaged = true;
            }
        }
        self.last_seq = Some(packet.sequence_number);
        self.frame_has_idr |= payload_has_idr(packet.payload);
        if packet.marker {
            self.frames += 1;
            if self.frame_has_idr {
                self.keyframes += 1;
                if !self.frame_damaged && self.first_keyframe.is_none() {
                    self.first_keyframe = Some(now);
                }
            }
            if let Some(last) = self.last_frame_at {
                self.frame_intervals_ms.push((now - last).as_secs_f64() * 1e3);
            }
            self.first_frame_at.get_or_insert(now);
            self.last_frame_at = Some(now);
            if let Some(ntp) = packet.capture_ntp {
                let received = wall_now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
                self.latencies_ms.push((received - ntp_to_unix_secs(ntp)) * 1e3);
            }
            self.frame_has_idr = false;
            self.frame_damaged = false;
        }
    }

    pub fn report(&self, viewer: usize) -> ViewerReport {
        let since_start = |t: Option<Instant>| Some((t? - self.started?).as_secs_f64() * 1e3);
        let fps = match (self.first_frame_at, self.last_frame_at) {
            (Some(first), Some(last)) if last > first => (self.frames - 1) as f64 / (last - first).as_secs_f64(),
            _ => 0.0,
        };
        let mean = self.frame_intervals_ms.iter().sum::<f64>() / self.frame_intervals_ms.len().max(1) as f64;
        let variance = self.frame_intervals_ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>()
            / self.frame_intervals_ms.len().max(1) as f64;
        let mut latencies = self.latencies_ms.clone();
        latencies.sort_by(f64::total_cmp);
        ViewerReport {
            viewer,
            connected: self.first_packet.is_some(),
            error: None,
            first_rtp_ms: since_start(self.first_packet),
            first_keyframe_ms: since_start(self.first_keyframe),
            packets: self.packets,
            lost: self.lost,
            frames: self.frames,
            keyframes: self.keyframes,
            fps,
            interframe_jitter_ms: variance.sqrt(),
            latency_samples: latencies.len(),
            latency_p50_ms: percentile(&latencies, 0.5),
            latency_p99_ms: percentile(&latencies, 0.99),
            latencies_ms: latencies,
        }
    }
}

/// Totals over all viewers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    pub viewers: usize,
    pub connected: usize,
    pub seconds: f64,
    pub packets: u64,
    pub lost: u64,
    pub frames: u64,
    pub min_fps: f64,
    pub first_keyframe_p50_ms: Option<f64>,
    pub first_keyframe_max_ms: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub per_viewer: Vec<ViewerReport>,
}

impl LoadReport {
    pub fn from_viewers(per_viewer: Vec<ViewerReport>, seconds: f64) -> LoadReport {
        let mut first: Vec<f64> = per_viewer.iter().filter_map(|v| v.first_keyframe_ms).collect();
        first.sort_by(f64::total_cmp);
        let mut latencies: Vec<f64> = per_viewer.iter().flat_map(|v| v.latencies_ms.iter().copied()).collect();
        latencies.sort_by(f64::total_cmp);
        LoadReport {
            viewers: per_viewer.len(),
            connected: per_viewer.iter().filter(|v| v.connected).count(),
            seconds,
            packets: per_viewer.iter().map(|v| v.packets).sum(),
            lost: per_viewer.iter().map(|v| v.lost).sum(),
            frames: per_viewer.iter().map(|v| v.frames).sum(),
            min_fps: per_viewer.iter().map(|v| v.fps).reduce(f64::min).unwrap_or(0.0),
            first_keyframe_p50_ms: percentile(&first, 0.5),
            first_keyframe_max_ms: first.last().copied(),
            latency_p50_ms: percentile(&latencies, 0.5),
            latency_p99_ms: percentile(&latencies, 0.99),
            per_viewer,
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The server's control plane, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    pub viewers: usize,
    /// How long each viewer receives after it joined.
    pub duration: Duration,
    /// Pause between two viewers' offers.
    pub stagger: Duration,
    /// Local IP for the viewers' ICE candidates (the server must reach it).
    pub local_ip: IpAddr,
    /// Bearer token for `-auth-token-file` servers.
    pub token: Option<String>,
    /// The path to watch (`/NAME/offer`); empty for the legacy `/offer`.
    pub path: String,
}

mod peer {
    //! One receiving peer connection (the `webrtc` crate as the client).

    use super::*;
    use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
    use rtc::rtp_transceiver::rtp_sender::{
        RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
    };
    use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
    use tokio::sync::watch;
    use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
    use webrtc::peer_connection::{
        register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
        RTCIceGatheringState, RTCSessionDescription, Registry, SettingEngineBuilder,
    };
    use webrtc::runtime::TokioRuntime;

    /// Chrome's H.264 offer (payload type, fmtp).
    const H264_OFFER: &[(u8, &str)] = &[
        (102, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
        (106, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
        (127, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
        (112, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
    ];

    struct Handler {
        gathered: watch::Sender<bool>,
        stats: Arc<Mutex<ReceiverStats>>,
        /// The negotiated abs-capture-time extension id, once answered.
        abs_capture_id: Arc<Mutex<Option<u8>>>,
    }

    #[async_trait::async_trait]
    impl PeerConnectionEventHandler for Handler {
        async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
            if state == RTCIceGatheringState::Complete {
                self.gathered.send_replace(true);
            }
        }

        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let stats = self.stats.clone();
            let ext_id = *self.abs_capture_id.lock().unwrap_or_else(|e| e.into_inner());
            tokio::spawn(async move {
                while let Some(event) = track.poll().await {
                    let TrackRemoteEvent::OnRtpPacket(packet) = event else { continue };
                    let capture_ntp = ext_id
                        .and_then(|id| packet.header.get_extension(id))
                        .and_then(|ext| ext.get(..8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default())));
                    let info = PacketInfo {
                        sequence_number: packet.header.sequence_number,
                        timestamp: packet.header.timestamp,
                        marker: packet.header.marker,
                        payload: &packet.payload,
                        capture_ntp,
                    };
                    stats.lock().unwrap_or_else(|e| e.into_inner()).on_packet(info, Instant::now(), SystemTime::now());
                }
            });
        }
    }

    /// The id the answer gives abs-capture-time (`a=extmap:N URI`), if any.
    pub fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
        sdp.lines().filter_map(|l| l.trim().strip_prefix("a=extmap:")).find_map(|rest| {
            let mut parts = rest.split_whitespace();
            let id = parts.next()?.split('/').next()?.parse().ok()?;
            (parts.next()? == uri).then_some(id)
        })
    }

    /// Connects one viewer and receives for `duration`; returns its report.
    pub async fn run_viewer(viewer: usize, options: &LoadOptions) -> Result<ViewerReport, String> {
        let mut media_engine = MediaEngine::default();
        for (pt, fmtp) in H264_OFFER {
            let codec = RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_H264.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: fmtp.to_string(),
                    rtcp_feedback: ["nack", "nack pli", "ccm fir"]
                        .iter()
                        .map(|fb| {
                            let (typ, parameter) = fb.split_once(' ').unwrap_or((fb, ""));
                            RTCPFeedback { typ: typ.into(), parameter: parameter.into() }
                        })
                        .collect(),
                },
                payload_type: *pt,
            };
            media_engine.register_codec(codec, RtpCodecKind::Video).map_err(|e| e.to_string())?;
        }
        media_engine
            .register_header_extension(
                RTCRtpHeaderExtensionCapability { uri: ABS_CAPTURE_TIME_URI.to_owned() },
                RtpCodecKind::Video,
                None,
            )
            .map_err(|e| e.to_string())?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine).map_err(|e| e.to_string())?;
        let (gathered_tx, mut gathered) = watch::channel(false);
        let stats = Arc::new(Mutex::new(ReceiverStats::default()));
        let abs_capture_id = Arc::new(Mutex::new(None));
        let handler =
            Arc::new(Handler { gathered: gathered_tx, stats: stats.clone(), abs_capture_id: abs_capture_id.clone() });
        let settings =
            SettingEngineBuilder::new().with_include_loopback_candidate(options.local_ip.is_loopback()).build();
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_runtime(Arc::new(TokioRuntime))
            .with_udp_addrs(vec![format!("{}:0", options.local_ip)])
            .build()
            .await
            .map_err(|e| format!("peer connection: {e}"))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let recvonly = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() };
        pc.add_transceiver_from_kind(RtpCodecKind::Video, Some(recvonly)).await.map_err(|e| e.to_string())?;
        let offer = pc.create_offer(None).await.map_err(|e| e.to_string())?;
        pc.set_local_description(offer).await.map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|g| *g))
            .await
            .map_err(|_| "ICE gathering did not complete")?
            .map_err(|e| e.to_string())?;
        let offer = pc.local_description().await.ok_or("no local description")?.sdp;

        let started = Instant::now();
        *stats.lock().unwrap_or_else(|e| e.into_inner()) = ReceiverStats::start(started);
        let answer = post_offer(&options.url, &options.path, &offer, options.token.as_deref()).await?;
        *abs_capture_id.lock().unwrap_or_else(|e| e.into_inner()) = extmap_id(&answer, ABS_CAPTURE_TIME_URI);
        pc.set_remote_description(RTCSessionDescription::answer(answer).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| format!("answer: {e}"))?;
        tokio::time::sleep(options.duration).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), pc.close()).await;
        let report = stats.lock().unwrap_or_else(|e| e.into_inner()).report(viewer);
        Ok(report)
    }

    /// What one POST /offer came to.
    enum Attempt {
        Answer(String),
        /// 503 or 429: try again after this many seconds.
        Busy(f64),
        Failed(String),
    }

    fn post_once(endpoint: &str, body: &str, token: Option<&str>) -> Attempt {
        let mut request = ureq::post(endpoint).timeout(Duration::from_secs(10)).set("Content-Type", "application/json");
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.send_string(body) {
            Ok(response) => response,
            // 503: every slot or negotiation busy; 429: this address has
            // too many offers waiting to connect. Both pass.
            Err(ureq::Error::Status(503 | 429, response)) => {
                return Attempt::Busy(response.header("Retry-After").and_then(|s| s.trim().parse().ok()).unwrap_or(0.2))
            }
            Err(ureq::Error::Status(code, response)) => {
                return Attempt::Failed(format!("POST /offer: {code} {}", response.into_string().unwrap_or_default()))
            }
            Err(e) => return Attempt::Failed(format!("POST /offer: {e}")),
        };
        match serde_json::from_reader::<_, serde_json::Value>(response.into_reader()) {
            Ok(json) => match json["sdp"].as_str() {
                Some(sdp) => Attempt::Answer(sdp.to_owned()),
                None => Attempt::Failed("answer has no sdp".into()),
            },
            Err(e) => Attempt::Failed(format!("answer is not JSON: {e}")),
        }
    }

    /// POST /offer on a blocking thread (ureq); returns the answer SDP. A 503
    /// (all negotiation slots busy, or the camera not started yet) is retried
    /// after its Retry-After, as the viewer page does, for up to 15 s.
    async fn post_offer(url: &str, path: &str, offer: &str, token: Option<&str>) -> Result<String, String> {
        let prefix = if path.is_empty() { String::new() } else { format!("/{path}") };
        let endpoint = format!("{}{prefix}/offer", url.trim_end_matches('/'));
        let body = serde_json::json!({"type": "offer", "sdp": offer}).to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (endpoint, body, token) = (endpoint.clone(), body.clone(), token.map(str::to_owned));
            let attempt = tokio::task::spawn_blocking(move || post_once(&endpoint, &body, token.as_deref()))
                .await
                .map_err(|e| e.to_string())?;
            match attempt {
                Attempt::Answer(sdp) => return Ok(sdp),
                Attempt::Busy(wait) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_secs_f64(wait.clamp(0.05, 2.0))).await;
                }
                Attempt::Busy(_) => return Err("POST /offer: still 503 after 15 s".into()),
                Attempt::Failed(error) => return Err(error),
            }
        }
    }
}

pub use peer::extmap_id;

/// Runs the viewers and collects the report.
pub async fn run(options: LoadOptions) -> LoadReport {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for viewer in 0..options.viewers {
        let viewer_options = options.clone();
        tasks.push(tokio::spawn(async move {
            match peer::run_viewer(viewer, &viewer_options).await {
                Ok(report) => report,
                Err(error) => ViewerReport { viewer, error: Some(error), ..ViewerReport::default() },
            }
        }));
        tokio::time::sleep(options.stagger).await;
    }
    let mut per_viewer = Vec::new();
    for task in tasks {
        per_viewer
            .push(task.await.unwrap_or_else(|e| ViewerReport { error: Some(e.to_string()), ..Default::default() }));
    }
    LoadReport::from_viewers(per_viewer, started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> PacketInfo<'_> {
        PacketInfo { sequence_number: seq, timestamp: ts, marker, payload, capture_ntp: None }
    }

    #[test]
    fn recognises_idr_in_every_packetization() {
        assert!(payload_has_idr(&[0x65, 0x88]));
        assert!(!payload_has_idr(&[0x41, 0x9a]));
        // STAP-A with SPS, PPS, IDR.
        assert!(payload_has_idr(&[0x78, 0, 2, 0x67, 0x42, 0, 1, 0x68, 0, 2, 0x65, 0x88]));
        assert!(!payload_has_idr(&[0x78, 0, 2, 0x67, 0x42, 0, 1, 0x68]));
        // FU-A: start of an IDR, and a middle fragment.
        assert!(payload_has_idr(&[0x7c, 0x85, 0xaa]));
        assert!(!payload_has_idr(&[0x7c, 0x05, 0xaa]));
        assert!(!payload_has_idr(&[]));
    }

    #[test]
    fn counts_frames_keyframes_and_losses() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut stats = ReceiverStats::start(t0);
        let ms = |n| t0 + Duration::from_millis(n);
        stats.on_packet(packet(10, 0, false, &[0x7c, 0x85, 1]), ms(5), wall);
        stats.on_packet(packet(11, 0, true, &[0x7c, 0x45, 2]), ms(6), wall);
        stats.on_packet(packet(12, 3000, true, &[0x41, 1]), ms(39), wall);
        // 13 lost.
        stats.on_packet(packet(14, 6000, true, &[0x41, 2]), ms(72), wall);
        stats.on_packet(packet(14, 6000, true, &[0x41, 2]), ms(73), wall); // duplicate
        let report = stats.report(0);
        assert_eq!((report.packets, report.lost, report.frames, report.keyframes), (5, 1, 3, 1));
        assert_eq!(report.first_rtp_ms, Some(5.0));
        assert_eq!(report.first_keyframe_ms, Some(6.0));
        assert!((report.fps - 2.0 / 0.066).abs() < 0.01, "{}", report.fps);
    }

    #[test]
    fn a_damaged_keyframe_does_not_count_as_the_first() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut stats = ReceiverStats::start(t0);
        stats.on_packet(packet(1, 0, false, &[0x7c, 0x85]), t0, wall);
        stats.on_packet(packet(3, 0, true, &[0x7c, 0x45]), t0, wall); // 2 lost
        stats.on_packet(packet(4, 90, true, &[0x65, 0]), t0 + Duration::from_millis(9), wall);
        assert_eq!(stats.report(0).first_keyframe_ms, Some(9.0));
    }

    #[test]
    fn capture_latency_from_abs_capture_time() {
        let t0 = Instant::now();
        let captured = SystemTime::now();
        let received = captured + Duration::from_millis(12);
        let mut stats = ReceiverStats::start(t0);
        let mut info = packet(1, 0, true, &[0x65]);
        info.capture_ntp = Some(ntp_from_system(captured));
        stats.on_packet(info, t0, received);
        let latency = stats.report(0).latency_p50_ms.unwrap();
        assert!((latency - 12.0).abs() < 0.01, "{latency}");
    }

    #[test]
    fn finds_the_extmap_id_in_an_answer() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
                   a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\n";
        assert_eq!(extmap_id(sdp, ABS_CAPTURE_TIME_URI), Some(7));
        assert_eq!(extmap_id("v=0\r\n", ABS_CAPTURE_TIME_URI), None);
    }
}
