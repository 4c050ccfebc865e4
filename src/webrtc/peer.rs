//! What every peer connection that sends the camera's video shares, whether
//! it answers a viewer's offer ([`super::viewer`]) or offers to an SFU over
//! WHIP ([`crate::publish::whip`]): a media engine with exactly one video
//! codec, the interceptors (NACK responder, sender reports, the keyframe
//! request hand-off), ICE settings, the bind addresses, the event handler,
//! the RTCP feedback reader, and writing one frame's packets.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rtc::interceptor::{
    Attribute, Interceptor, NackResponderBuilder, Packet, SenderReportBuilder, Slot, StreamInfo, TaggedPacket,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_HEVC};
use rtc::rtcp::goodbye::Goodbye;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState, Registry, SettingEngineBuilder,
};
use webrtc::runtime::TokioRuntime;

use super::WebrtcConfig;
use crate::codec::Codec;
use crate::metrics::StreamMetrics;
use crate::rtp::{PacketizedAu, Stamp};

/// Pause between catch-up frames from the GOP cache: a 30-frame GOP leaves
/// in about 60 ms instead of one burst.
pub(crate) const CATCHUP_PACE: Duration = Duration::from_millis(2);

/// Sent packets kept per connection for NACK retransmission: about 0.4 s at
/// 6 Mbit/s, many round trips even on Wi-Fi; a loss older than that is
/// better repaired by a keyframe request. (Each slot costs ~110 bytes per
/// connection: the crate's default 1024 is 112 KiB.)
const NACK_HISTORY_PACKETS: u16 = 256;

/// Packets per write to the peer connection. Each stage of the crate's send
/// pipeline keeps a queue as long as the longest write it has seen, per
/// connection (~200 bytes a slot, seven stages): 32 covers a P frame at
/// 1080p 6 Mbit/s in one write and an IDR frame in two. Matches the
/// driver's burst cap (vendor/webrtc/PATCHES.md).
const WRITE_BATCH_PACKETS: usize = 32;

/// ICE connectivity-check pacing while connecting.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(25);

/// Peer connection events, as watch channels the owning task reads.
pub(crate) struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
}

impl Handler {
    /// A handler and the receivers of its connection state and of "ICE
    /// gathering complete".
    pub(crate) fn new() -> (Arc<Handler>, watch::Receiver<RTCPeerConnectionState>, watch::Receiver<bool>) {
        let (state, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (gathered, gathered_rx) = watch::channel(false);
        (Arc::new(Handler { state, gathered }), state_rx, gathered_rx)
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }
}

/// Hands inbound PLI/FIR, BYE and receiver reports to the application (the
/// track's event stream) and lets every other RTCP packet end with the
/// interceptors that use it (NACKs). Placed application-most, after those,
/// so they have seen everything first. (`rtc` 0.21 does not feed receiver
/// reports into its statistics, so the owner reads them itself.)
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>()
                        || any.is::<FullIntraRequest>()
                        || any.is::<ReceiverReport>()
                        || any.is::<Goodbye>()
                })
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// The one video codec a connection registers: the stream's codec with
/// `fmtp` (for a viewer, exactly the offered one, so the `rtc` matcher
/// takes its exact path; its MIME-only fallback produced malformed answers).
pub(crate) fn video_codec(codec: Codec, fmtp: String) -> RTCRtpCodec {
    let mime = match codec {
        Codec::H264 => MIME_TYPE_H264,
        Codec::H265 => MIME_TYPE_HEVC,
    };
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: fmtp,
        rtcp_feedback: vec![RTCPFeedback { typ: "ccm".into(), parameter: "fir".into() }],
    }
}

/// A send track whose RTP carries `ssrc` (the owner stamps it on every
/// packet).
pub(crate) fn track(ssrc: u32, codec: RTCRtpCodec) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "camera".into(),
        "camera-video".into(),
        "camera".into(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec,
            ..Default::default()
        }],
    )))
}

/// A peer connection that sends `codec`, bound to `addrs`.
async fn build_on(
    config: &WebrtcConfig,
    codec: RTCRtpCodecParameters,
    handler: Arc<Handler>,
    addrs: Vec<SocketAddr>,
) -> Result<impl PeerConnection, webrtc::error::Error> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(codec, RtpCodecKind::Video)?;
    // In the SDP only if the other side has it too (an answer keeps only
    // extensions both sides know): capture -> receive delay without a decoder.
    media_engine.register_header_extension(
        RTCRtpHeaderExtensionCapability { uri: super::ABS_CAPTURE_TIME_URI.to_owned() },
        RtpCodecKind::Video,
        None,
    )?;
    // NACK responder and sender reports; then the PLI/FIR hand-off,
    // application-most. Not `configure_nack`/`configure_rtcp_reports`: their
    // NACK generator and receiver-report interceptors serve streams we
    // receive (none), yet every packet sent passes through each interceptor
    // (a move into and out of its queue, measured in the send profile). No
    // TWCC/REMB: the camera's bitrate is not ours to change.
    for parameter in ["", "pli"] {
        media_engine
            .register_feedback(RTCPFeedback { typ: "nack".into(), parameter: parameter.into() }, RtpCodecKind::Video);
    }
    let registry = Registry::new()
        .with(Slot::NackResponder, NackResponderBuilder::new().with_size(NACK_HISTORY_PACKETS).build())
        .with(Slot::SenderReport, SenderReportBuilder::new().build())
        .with(Slot::from(14_000), KeyframeRequests::default());
    let loopback = config.ips.iter().any(|ip| ip.is_loopback());
    let setting_engine = SettingEngineBuilder::new()
        .with_ice_timeouts(
            Some(super::ICE_DISCONNECTED_TIMEOUT),
            Some(super::ICE_FAILED_TIMEOUT),
            Some(Duration::from_millis(500)),
        )
        // Check every 25 ms while connecting instead of the default 200 ms:
        // the agent only re-checks on this tick, and on a LAN the whole
        // connection is otherwise a few milliseconds (56 attempts keep the
        // default ~1.4 s before a candidate pair is given up).
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(56))
        .with_include_loopback_candidate(loopback)
        // Browsers hide their host addresses behind mDNS names. Resolving
        // them would multicast a query per candidate every second; the
        // browser's own checks to our host candidate give us its address
        // (peer-reflexive) just as fast, so mDNS names are ignored.
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let mut ice_servers = if config.stun.is_empty() {
        Vec::new()
    } else {
        vec![RTCIceServer { urls: config.stun.clone(), ..Default::default() }]
    };
    // TURN: relay candidates for peers that cannot reach this board
    // directly; fresh time-limited credentials per connection.
    let now = std::time::SystemTime::now();
    ice_servers.extend(config.turn.iter().filter(|t| t.url.usable_by_server()).map(|t| t.ice_server(now)));
    let configuration = RTCConfigurationBuilder::new().with_ice_servers(ice_servers).build();
    PeerConnectionBuilder::new()
        .with_configuration(configuration)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting_engine)
        .with_handler(handler)
        .with_runtime(Arc::new(TokioRuntime))
        .with_udp_addrs(addrs)
        .build()
        .await
}

/// Why no peer connection could be built.
#[derive(Debug)]
pub(crate) struct BuildError {
    /// Every port of `-udp-port-range` was taken (a capacity limit, not a
    /// fault).
    pub ports_exhausted: bool,
    pub why: String,
}

/// A peer connection that sends `codec`, on the first of the configured
/// addresses (and ports of `-udp-port-range`) that binds. `next_port`
/// spreads consecutive connections over the range.
pub(crate) async fn build(
    config: &WebrtcConfig,
    next_port: &AtomicU16,
    codec: RTCRtpCodecParameters,
    handler: Arc<Handler>,
) -> Result<Arc<dyn PeerConnection>, BuildError> {
    let mut last_error = None;
    for addrs in bind_addrs(config, next_port) {
        match build_on(config, codec.clone(), handler.clone(), addrs).await {
            Ok(pc) => return Ok(Arc::new(pc)),
            // A port of the range in use: try the next.
            Err(e) => last_error = Some(e),
        }
    }
    let why = last_error.map_or("no addresses to bind".to_string(), |e| e.to_string());
    Err(BuildError { ports_exhausted: config.udp_port_range.is_some(), why })
}

/// The socket addresses a new peer connection may bind, in order of trial.
fn bind_addrs(config: &WebrtcConfig, next_port: &AtomicU16) -> Vec<Vec<SocketAddr>> {
    let ips = if config.ips.is_empty() { vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)] } else { config.ips.clone() };
    match config.udp_port_range {
        None => vec![ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect()],
        Some((low, high)) => {
            // Candidates to try, starting after the last port handed out,
            // so consecutive connections do not race for the same port.
            let span = u32::from(high - low) + 1;
            let start = u32::from(next_port.fetch_add(1, Ordering::Relaxed)) % span;
            (0..span.min(64))
                .map(|i| {
                    let port = low + ((start + i) % span) as u16;
                    ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
                })
                .collect()
        }
    }
}

/// Closes a peer connection, bounded: a stuck close must not hold a slot or
/// a task.
pub(crate) async fn close(pc: &Arc<dyn PeerConnection>) {
    if tokio::time::timeout(Duration::from_secs(1), pc.close()).await.is_err() {
        log::warn!("webrtc: peer connection close timed out");
    }
}

/// Waits until ICE and DTLS are up; an error if the connection failed or
/// closed first. The caller bounds the wait.
pub(crate) async fn connected(state_rx: &mut watch::Receiver<RTCPeerConnectionState>) -> Result<(), String> {
    loop {
        match *state_rx.borrow_and_update() {
            RTCPeerConnectionState::Connected => return Ok(()),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                return Err("connection failed before it came up".to_string())
            }
            _ => {}
        }
        if state_rx.changed().await.is_err() {
            return Err("peer connection went away".to_string());
        }
    }
}

/// What the other side's RTCP receiver reports say, for metrics, status and
/// the log.
#[derive(Clone, Debug, Default)]
pub(crate) struct Quality {
    pub reports: u64,
    /// Cumulative packets lost, as the last report says.
    pub lost: u32,
    pub rtt_ms: f64,
    pub jitter_ms: f64,
}

impl Quality {
    /// One report block about our stream; the viewer metrics (`metrics`)
    /// learn the loss, jitter and RTT too.
    fn update(&mut self, block: &rtc::rtcp::reception_report::ReceptionReport, metrics: Option<&StreamMetrics>) {
        self.reports += 1;
        // Cumulative (24 bits) in the reports: count what is new.
        if block.total_lost > self.lost {
            if let Some(metrics) = metrics {
                metrics.webrtc_packets_lost.inc_by(u64::from(block.total_lost - self.lost));
            }
            self.lost = block.total_lost;
        }
        // Interarrival jitter is in RTP timestamp units (90 kHz).
        self.jitter_ms = f64::from(block.jitter) / 90.0;
        if let Some(metrics) = metrics {
            metrics.webrtc_jitter_ms.observe(self.jitter_ms);
        }
        let now_middle32 = (crate::clock::ntp_now() >> 16) as u32;
        if let Some(rtt) = round_trip(block.last_sender_report, block.delay, now_middle32) {
            self.rtt_ms = rtt;
            if let Some(metrics) = metrics {
                metrics.webrtc_rtt_ms.observe(rtt);
            }
        }
    }
}

/// RFC 3550 6.4.1: RTT = arrival - LSR - DLSR, all in 1/65536 s; None
/// before the other side has seen a sender report, or if clocks disagree.
pub(crate) fn round_trip(last_sender_report: u32, delay: u32, arrival: u32) -> Option<f64> {
    if last_sender_report == 0 {
        return None;
    }
    let rtt = arrival.wrapping_sub(last_sender_report).wrapping_sub(delay);
    // Negative (wrapped) or over a minute: not a measurement.
    (rtt < 60 << 16).then(|| f64::from(rtt) * 1000.0 / 65536.0)
}

/// The RTCP the other side sends about our track, as the owner's loop
/// reads it: keyframe requests (one pending is as good as many), a BYE, and
/// the receiver reports' figures. Ends with the track; dropping it stops
/// the reader.
pub(crate) struct Feedback {
    pub keyframe_requests: mpsc::Receiver<()>,
    pub goodbye: mpsc::Receiver<()>,
    pub quality: Arc<Mutex<Quality>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Feedback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Feedback {
    /// Reads `track`'s RTCP events. Each PLI/FIR counts in
    /// `keyframe_counter`; report blocks about `ssrc` update the quality
    /// (and `metrics`, for viewers).
    pub(crate) fn spawn(
        track: Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        keyframe_counter: IntCounter,
        metrics: Option<StreamMetrics>,
    ) -> Feedback {
        let (keyframe_tx, keyframe_requests) = mpsc::channel::<()>(1);
        let (goodbye_tx, goodbye) = mpsc::channel::<()>(1);
        let quality = Arc::new(Mutex::new(Quality::default()));
        let feedback_quality = quality.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                let TrackLocalEvent::OnRtcpPacket(packets) = event else { continue };
                for packet in &packets {
                    let any = packet.as_any();
                    if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                        keyframe_counter.inc();
                        let _ = keyframe_tx.try_send(());
                    } else if any.is::<Goodbye>() {
                        let _ = goodbye_tx.try_send(());
                    } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                        let mut quality = feedback_quality.lock().unwrap_or_else(|e| e.into_inner());
                        for block in rr.reports.iter().filter(|b| b.ssrc == ssrc) {
                            quality.update(block, metrics.as_ref());
                        }
                    }
                }
            }
        });
        Feedback { keyframe_requests, goodbye, quality, task }
    }

    /// The figures so far.
    pub(crate) fn quality(&self) -> Quality {
        self.quality.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What one frame cost on the wire (RTP headers and payloads, before SRTP).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sent {
    pub packets: usize,
    pub bytes: usize,
}

/// The payload type `sender` sends (`default` if it cannot say) and the
/// abs-capture-time extension id to put on packets: only one the `answer`
/// SDP gives the other side too, and that fits a one-byte header (1..=14);
/// otherwise none, and the extension is not sent.
pub(crate) async fn sent_parameters(
    sender: &dyn webrtc::rtp_transceiver::RtpSender,
    answer: &str,
    default: u8,
) -> (u8, Option<u8>) {
    let (payload_type, id) = match sender.get_parameters().await {
        Ok(parameters) => {
            let rtp = &parameters.rtp_parameters;
            let id = rtp.header_extensions.iter().find(|e| e.uri == super::ABS_CAPTURE_TIME_URI).map(|e| e.id);
            (rtp.codecs.first().map_or(default, |c| c.payload_type), id)
        }
        Err(_) => (default, None),
    };
    let id = id
        .and_then(|id| u8::try_from(id).ok())
        .filter(|id| (1..=14).contains(id))
        .filter(|id| super::negotiate::extmap_id(answer, super::ABS_CAPTURE_TIME_URI) == Some(*id));
    (payload_type, id)
}

/// Writes one frame: the shared payloads with this connection's headers
/// (`stamp`), in batches of up to [`WRITE_BATCH_PACKETS`] (one driver event,
/// one channel send and one lock of the peer connection each instead of one
/// per packet: vendor/webrtc/PATCHES.md). The frame's `capture_time` goes
/// on the last packet of a live frame when abs-capture-time was negotiated.
pub(crate) async fn write_frame(
    track: &TrackLocalStaticRTP,
    stamp: &mut Stamp,
    packets: &PacketizedAu,
    capture_time: Duration,
) -> Result<Sent, String> {
    // Only live frames carry it (Stamp::packets): no clock reads for others.
    let live = stamp.catchup == 0;
    let capture_ntp = stamp.abs_capture_id.filter(|_| live).and_then(|_| crate::clock::ntp_of_monotonic(capture_time));
    let mut sent = Sent::default();
    let mut stamped = stamp.packets(packets, capture_ntp);
    loop {
        let batch: Vec<_> = stamped.by_ref().take(WRITE_BATCH_PACKETS).collect();
        if batch.is_empty() {
            break;
        }
        sent.packets += batch.len();
        sent.bytes += batch.iter().map(|p| 12 + p.payload.len()).sum::<usize>();
        track.write_rtp_batch(batch).await.map_err(|e| format!("write_rtp: {e}"))?;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_from_a_receiver_report() {
        // SR sent at t=100 s, held 0.25 s by the receiver, report back at 100.3 s.
        let lsr = 100 << 16;
        let dlsr = 1 << 14;
        let arrival = (100 << 16) + (3 << 16) / 10;
        let rtt = round_trip(lsr, dlsr, arrival).unwrap();
        assert!((rtt - 50.0).abs() < 0.1, "{rtt}");
        assert_eq!(round_trip(0, 0, arrival), None, "no SR seen yet");
        assert_eq!(round_trip(lsr, dlsr, lsr), None, "clock disagreement");
    }
}
