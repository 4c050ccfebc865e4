//! One viewer: its peer connection, its hub subscription and its send loop.
//! Runs as a task on the [`super::Viewers`] runtime; see the module doc of
//! [`super`] for the sequence.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::interceptor::{
    Attribute, Interceptor, NackResponderBuilder, Packet, SenderReportBuilder, Slot, StreamInfo, TaggedPacket,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_HEVC};
use rtc::peer_connection::transport::RTCDtlsTransportState;
use rtc::rtcp::goodbye::Goodbye;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, oneshot, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::transport::DtlsTransport;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};
use webrtc::runtime::TokioRuntime;

use super::negotiate::{self, Choice};
use super::{Inner, OfferError, SlotGuard};
use crate::codec::AccessUnit;
use crate::hub::{StartAt, SubscribeOptions, Subscription};
use crate::rtp::PacketizedAu;

/// Peer connection events, as watch channels the viewer task reads.
struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
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
/// reports into its statistics, so the viewer reads them itself.)
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

fn internal(what: &str) -> impl Fn(webrtc::error::Error) -> OfferError + '_ {
    move |e| OfferError::Internal(format!("{what}: {e}"))
}

/// The codec we register: exactly the offered one, so the `rtc` matcher
/// takes its exact path (its MIME-only fallback is what produced malformed
/// answers).
fn codec(choice: &Choice) -> RTCRtpCodec {
    let mime = match choice.codec {
        crate::codec::Codec::H264 => MIME_TYPE_H264,
        crate::codec::Codec::H265 => MIME_TYPE_HEVC,
    };
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: choice.offered_fmtp.clone(),
        rtcp_feedback: vec![RTCPFeedback { typ: "ccm".into(), parameter: "fir".into() }],
    }
}

async fn build_peer_connection(
    inner: &Inner,
    choice: &Choice,
    handler: Arc<Handler>,
    addrs: Vec<SocketAddr>,
) -> Result<impl PeerConnection, webrtc::error::Error> {
    let mut media_engine = MediaEngine::default();
    media_engine.register_codec(
        RTCRtpCodecParameters { rtp_codec: codec(choice), payload_type: choice.payload_type },
        RtpCodecKind::Video,
    )?;
    // Offered to the browser only if its offer has it (the answer keeps only
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
    let loopback = inner.config.ips.iter().any(|ip| ip.is_loopback());
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
    let mut ice_servers = if inner.config.stun.is_empty() {
        Vec::new()
    } else {
        vec![RTCIceServer { urls: inner.config.stun.clone(), ..Default::default() }]
    };
    // TURN: relay candidates in the answer for viewers that cannot reach
    // this board directly; fresh time-limited credentials per connection.
    let now = std::time::SystemTime::now();
    ice_servers.extend(inner.config.turn.iter().filter(|t| t.url.usable_by_server()).map(|t| t.ice_server(now)));
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

/// Pause between catch-up frames from the GOP cache: a 30-frame GOP leaves
/// in about 60 ms instead of one burst.
const CATCHUP_PACE: Duration = Duration::from_millis(2);

/// Sent packets kept per viewer for NACK retransmission: about 0.4 s at
/// 6 Mbit/s, many round trips even on Wi-Fi; a loss older than that is
/// better repaired by a keyframe request. (Each slot costs ~110 bytes per
/// viewer: the crate's default 1024 is 112 KiB.)
const NACK_HISTORY_PACKETS: u16 = 256;

/// Packets per write to the peer connection. Each stage of the crate's send
/// pipeline keeps a queue as long as the longest write it has seen, per
/// viewer (~200 bytes a slot, seven stages): 32 covers a P frame at 1080p
/// 6 Mbit/s in one write and an IDR frame in two. Matches the driver's burst
/// cap (vendor/webrtc/PATCHES.md).
const WRITE_BATCH_PACKETS: usize = 32;

/// ICE connectivity-check pacing while connecting.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(25);

/// A negotiated peer connection and what the send loop needs of it.
struct Negotiated {
    track: Arc<TrackLocalStaticRTP>,
    payload_type: u8,
    ssrc: u32,
    /// The negotiated abs-capture-time extension id, if the viewer offered it.
    abs_capture_id: Option<u8>,
    /// Polled for the viewer's DTLS close_notify (see the module doc).
    dtls: Option<Arc<dyn DtlsTransport>>,
    answer: String,
}

async fn negotiate(
    inner: &Inner,
    pc: &dyn PeerConnection,
    offer: String,
    choice: &Choice,
    mut gathered: watch::Receiver<bool>,
) -> Result<Negotiated, OfferError> {
    let ssrc = super::random_u32();
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "camera".into(),
        "camera-video".into(),
        "camera".into(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: codec(choice),
            ..Default::default()
        }],
    )));
    let sender = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await.map_err(internal("add_track"))?;
    let offer = RTCSessionDescription::offer(offer).map_err(|e| OfferError::BadSdp(e.to_string()))?;
    pc.set_remote_description(offer).await.map_err(|e| OfferError::BadSdp(e.to_string()))?;
    // Our side is fixed and known good, so a failure here comes from what
    // the offer says (a malformed extmap, say): bad input.
    let answer =
        pc.create_answer(None).await.map_err(|e| OfferError::BadSdp(format!("the offer cannot be answered: {e}")))?;
    pc.set_local_description(answer).await.map_err(internal("set_local_description"))?;
    // Host candidates are gathered at once; only STUN can take long. Bound
    // the wait and answer with what we have.
    if tokio::time::timeout(super::GATHER_TIMEOUT, gathered.wait_for(|done| *done)).await.is_err() {
        log::warn!(
            "webrtc: ICE gathering not complete after {:?}; answering with host candidates",
            super::GATHER_TIMEOUT
        );
    }
    let local = pc.local_description().await.ok_or_else(|| OfferError::Internal("no local description".into()))?;
    let answer = negotiate::finish_answer(&local.sdp, choice);
    // Every well-formed browser offer answers cleanly (tests/webrtc_offers.rs);
    // one that does not is an offer the stack cannot make sense of: bad
    // input (400), logged for diagnosis.
    negotiate::check_answer(&answer, choice).map_err(|e| {
        inner.stream.metrics.webrtc_errors.inc();
        log::warn!("webrtc: cannot answer an offer ({e})");
        OfferError::BadSdp(format!("the offer cannot be answered: {e}"))
    })?;
    let dtls = sender.transport().await.ok().flatten();
    let (payload_type, abs_capture_id) = match sender.get_parameters().await {
        Ok(parameters) => {
            let rtp = &parameters.rtp_parameters;
            let id = rtp.header_extensions.iter().find(|e| e.uri == super::ABS_CAPTURE_TIME_URI).map(|e| e.id);
            (rtp.codecs.first().map_or(choice.payload_type, |c| c.payload_type), id)
        }
        Err(_) => (choice.payload_type, None),
    };
    // The id the sender accepts must be the one the answer tells the viewer,
    // and fit a one-byte header (1..=14); otherwise the extension is not sent.
    let abs_capture_id = abs_capture_id
        .and_then(|id| u8::try_from(id).ok())
        .filter(|id| (1..=14).contains(id))
        .filter(|id| negotiate::extmap_id(&answer, super::ABS_CAPTURE_TIME_URI) == Some(*id));
    Ok(Negotiated { track, payload_type, ssrc, abs_capture_id, dtls, answer })
}

/// The whole life of one viewer. `guard` holds its slot until this ends.
pub(super) async fn run(
    guard: SlotGuard,
    offer: String,
    choice: Choice,
    answer_tx: oneshot::Sender<Result<String, OfferError>>,
    close_rx: oneshot::Receiver<()>,
) {
    let inner = guard.inner.clone();
    let id = guard.id.clone();
    let short = id[..8.min(id.len())].to_string();
    let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
    let (gathered_tx, gathered_rx) = watch::channel(false);
    let handler = Arc::new(Handler { state: state_tx, gathered: gathered_tx });

    let mut built = None;
    let mut last_error = None;
    for addrs in inner.bind_addrs() {
        match build_peer_connection(&inner, &choice, handler.clone(), addrs).await {
            Ok(pc) => {
                built = Some(pc);
                break;
            }
            // A port of the range in use: try the next.
            Err(e) => last_error = Some(e),
        }
    }
    let Some(pc) = built else {
        let why = last_error.map_or("no addresses to bind".to_string(), |e| e.to_string());
        let error = if let Some((low, high)) = inner.config.udp_port_range {
            // Every port of the range is taken: a capacity limit like
            // -max-clients (503), not a fault.
            log::warn!("webrtc: no free UDP port in -udp-port-range {low}-{high} ({why})");
            OfferError::TooManyViewers
        } else {
            OfferError::Internal(format!("peer connection: {why}"))
        };
        let _ = answer_tx.send(Err(error));
        return;
    };
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let negotiated = negotiate(&inner, pc.as_ref(), offer, &choice, gathered_rx).await;
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(error) => {
            let _ = answer_tx.send(Err(error));
            inner.release(&id);
            close(&pc).await;
            return;
        }
    };
    if answer_tx.send(Ok(negotiated.answer.clone())).is_err() {
        // The control plane gave up waiting; nobody will get this answer.
        inner.release(&id);
        close(&pc).await;
        return;
    }
    log::info!("webrtc: viewer {short} negotiated (PT {}, {})", negotiated.payload_type, choice.answer_fmtp);
    let outcome = serve(&inner, &id, &negotiated, state_rx, close_rx).await;
    match &outcome {
        Ok(why) => log::info!("webrtc: viewer {short} ended: {why}"),
        Err(why) => {
            inner.stream.metrics.webrtc_errors.inc();
            log::warn!("webrtc: viewer {short} failed: {why}");
        }
    }
    // The slot is free before the (bounded) close: a viewer that left is
    // gone for the next offer at once.
    inner.release(&id);
    close(&pc).await;
    drop(guard);
}

/// Closes a peer connection, bounded: a stuck close must not keep a slot.
async fn close(pc: &Arc<dyn PeerConnection>) {
    if tokio::time::timeout(Duration::from_secs(1), pc.close()).await.is_err() {
        log::warn!("webrtc: peer connection close timed out");
    }
}

/// RTP header state of one viewer.
struct Stamp {
    ssrc: u32,
    payload_type: u8,
    seq: u16,
    /// Viewer timestamp minus camera timestamp (wrapping).
    offset: Option<u32>,
    last: Option<u32>,
    /// Frames still to send as catch-up (from the GOP cache).
    catchup: usize,
    /// abs-capture-time extension id (None: not negotiated).
    abs_capture_id: Option<u8>,
}

impl Stamp {
    /// The RTP timestamp for a frame captured at `camera` (90 kHz).
    /// Catch-up frames are 1 tick apart, so the browser shows the newest of
    /// them at once; live frames keep the capture cadence. Never goes back.
    fn timestamp(&mut self, camera: u32) -> u32 {
        let ts = match (self.catchup, self.offset, self.last) {
            (1.., _, last) => {
                self.catchup -= 1;
                last.map_or_else(super::random_u32, |l| l.wrapping_add(1))
            }
            (0, Some(offset), Some(last)) => {
                let ts = camera.wrapping_add(offset);
                // Capture times went back or jumped (camera restart): stay
                // monotonic, a frame interval after the last one.
                let step = ts.wrapping_sub(last) as i32;
                if step <= 0 || step > 90_000 * 10 {
                    last.wrapping_add(3000)
                } else {
                    ts
                }
            }
            (0, _, last) => last.map_or_else(super::random_u32, |l| l.wrapping_add(3000)),
        };
        self.offset = Some(ts.wrapping_sub(camera));
        self.last = Some(ts);
        ts
    }

    /// The packets of one frame. `capture_ntp`, when given and negotiated,
    /// goes on the last packet as abs-capture-time: once per frame is all a
    /// receiver needs (libwebrtc interpolates the frame's other packets), and
    /// the last packet is the one that completes the frame, so the receiver's
    /// capture -> receive figure covers the whole frame.
    fn packets<'a>(
        &'a mut self,
        au: &'a PacketizedAu,
        capture_ntp: Option<u64>,
    ) -> impl Iterator<Item = rtc::rtp::Packet> + 'a {
        let live = self.catchup == 0;
        let timestamp = self.timestamp(au.rtp_time);
        let count = au.payloads.len();
        // Catch-up frames from the GOP cache are up to a GOP old by design;
        // their age is not the stream's delay, so they carry no capture time.
        let extension = self.abs_capture_id.filter(|_| live).zip(capture_ntp);
        au.payloads.iter().enumerate().map(move |(i, payload)| {
            let sequence_number = self.seq;
            self.seq = self.seq.wrapping_add(1);
            let last = i + 1 == count;
            let mut packet =
                crate::rtp::rtp_packet(payload, self.ssrc, self.payload_type, sequence_number, timestamp, last);
            if let (true, Some((id, ntp))) = (last, extension) {
                // Short form: the 64-bit NTP capture time only (8 bytes, a
                // one-byte-header element); id 1..=14 checked at negotiation.
                let _ = packet.header.set_extension(id, bytes::Bytes::copy_from_slice(&ntp.to_be_bytes()));
            }
            packet
        })
    }
}

fn subscribe(inner: &Inner, short: &str) -> Subscription {
    inner.stream.hub.subscribe(SubscribeOptions {
        name: format!("viewer {short}"),
        budget: super::VIEWER_QUEUE,
        start: StartAt::GopCache,
        dropped_metric: Some(inner.stream.metrics.webrtc_frames_dropped.clone()),
    })
}

/// Waits for DTLS, then sends frames until the viewer goes. Ok(reason) for
/// an orderly end.
async fn serve(
    inner: &Inner,
    id: &str,
    negotiated: &Negotiated,
    mut state_rx: watch::Receiver<RTCPeerConnectionState>,
    mut close_rx: oneshot::Receiver<()>,
) -> Result<String, String> {
    let short = &id[..8.min(id.len())];
    let shutdown = inner.shutdown.clone();
    let connect = async {
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
    };
    let started = Instant::now();
    tokio::select! {
        _ = &mut close_rx => return Ok("closed before connecting".into()),
        _ = shutdown.wait() => return Ok("shutdown".into()),
        result = tokio::time::timeout(super::CONNECT_TIMEOUT, connect) => match result {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(why),
            Err(_) => return Err(format!("not connected after {:?}", super::CONNECT_TIMEOUT)),
        },
    }
    inner.connected.fetch_add(1, Ordering::Relaxed);
    inner.mark_connected(id);
    log::info!("webrtc: viewer {short} connected in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);

    // PLI/FIR and receiver reports arrive on the track's event stream; a
    // small task turns keyframe requests into a bounded signal (one pending
    // request is as good as many) and receiver reports into metrics.
    let (keyframe_tx, mut keyframe_rx) = mpsc::channel::<()>(1);
    let (goodbye_tx, mut goodbye_rx) = mpsc::channel::<()>(1);
    let track = negotiated.track.clone();
    let metrics = inner.stream.metrics.clone();
    let ssrc = negotiated.ssrc;
    let quality = Arc::new(std::sync::Mutex::new(Quality::default()));
    let feedback_quality = quality.clone();
    let feedback = tokio::spawn(async move {
        while let Some(event) = track.poll().await {
            let TrackLocalEvent::OnRtcpPacket(packets) = event else { continue };
            for packet in &packets {
                let any = packet.as_any();
                if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                    metrics.webrtc_keyframe_requests.inc();
                    let _ = keyframe_tx.try_send(());
                } else if any.is::<Goodbye>() {
                    let _ = goodbye_tx.try_send(());
                } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    let mut quality = feedback_quality.lock().unwrap_or_else(|e| e.into_inner());
                    for block in rr.reports.iter().filter(|b| b.ssrc == ssrc) {
                        quality.update(block, &metrics);
                    }
                }
            }
        }
    });

    let mut subscription = subscribe(inner, short);
    let mut stamp = Stamp {
        ssrc: negotiated.ssrc,
        payload_type: negotiated.payload_type,
        seq: super::random_u32() as u16,
        offset: None,
        last: None,
        catchup: subscription.backlog,
        abs_capture_id: negotiated.abs_capture_id,
    };
    let mut close_poll = tokio::time::interval(super::CLOSE_POLL);
    close_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_restart = Instant::now();
    let mut last_usage = Instant::now();

    let mut first_frame_logged = false;
    let result = loop {
        tokio::select! {
            biased;
            _ = &mut close_rx => break Ok("closed".to_string()),
            _ = shutdown.wait() => break Ok("shutdown".to_string()),
            changed = state_rx.changed() => {
                if changed.is_err() {
                    break Ok("peer connection went away".to_string());
                }
                match *state_rx.borrow_and_update() {
                    // ICE consent failed: the viewer vanished without a word.
                    RTCPeerConnectionState::Failed => {
                        break Ok("the viewer went silent (no ICE consent for about 5 s)".to_string())
                    }
                    RTCPeerConnectionState::Closed => break Ok("connection closed".to_string()),
                    _ => {}
                }
            }
            Some(()) = goodbye_rx.recv() => break Ok("the viewer left (RTCP BYE)".to_string()),
            _ = close_poll.tick(), if negotiated.dtls.is_some() => {
                if let Some(dtls) = &negotiated.dtls {
                    if matches!(dtls.state().await, Ok(RTCDtlsTransportState::Closed)) {
                        break Ok("the viewer closed the connection (DTLS close_notify)".to_string());
                    }
                }
            }
            Some(()) = keyframe_rx.recv() => {
                // A browser asks for keyframes when frames stop coming; with
                // the camera stalled the cached GOP is old, and replaying it
                // would loop the last second. The camera's next IDR will do.
                let live = inner.stream.source.last_frame_age().is_some_and(|age| age < super::STALE_CAMERA);
                if live && last_restart.elapsed() >= super::KEYFRAME_RESTART_INTERVAL {
                    last_restart = Instant::now();
                    drop(subscription);
                    subscription = subscribe(inner, short);
                    stamp.catchup = subscription.backlog;
                    inner.keyframe_restarts.fetch_add(1, Ordering::Relaxed);
                    log::debug!("webrtc: viewer {short} asked for a keyframe: restarting from the cached IDR");
                }
            }
            frame = subscription.frames.recv_async() => {
                let Ok(au) = frame else { break Err("the hub went away".to_string()) };
                if let Err(why) = send(inner, &negotiated.track, &mut stamp, &au).await {
                    break Err(why);
                }
                if stamp.catchup > 0 {
                    // Pace the rest of the cached GOP: sent back to back it
                    // is up to a second of bitrate in a few milliseconds,
                    // which overflows a receiver's socket buffer (measured:
                    // lost packets at every join). The first frame, the IDR,
                    // is never delayed.
                    tokio::time::sleep(CATCHUP_PACE).await;
                }
                if !first_frame_logged {
                    first_frame_logged = true;
                    log::debug!("webrtc: viewer {short} first frame sent {:.0} ms after connect", started.elapsed().as_secs_f64() * 1e3);
                }
                if last_usage.elapsed() >= Duration::from_millis(500) {
                    last_usage = Instant::now();
                    inner.report_usage(id, subscription.usage_percent());
                }
            }
        }
    };
    feedback.abort();
    let quality = quality.lock().unwrap_or_else(|e| e.into_inner());
    log::info!(
        "webrtc: viewer {short}: {} receiver reports, {} packets reported lost, jitter {:.1} ms, RTT {:.1} ms",
        quality.reports,
        quality.lost,
        quality.jitter_ms,
        quality.rtt_ms
    );
    result
}

/// What a viewer's RTCP receiver reports say, for metrics and the log.
#[derive(Debug, Default)]
struct Quality {
    reports: u64,
    lost: u32,
    rtt_ms: f64,
    jitter_ms: f64,
}

impl Quality {
    fn update(
        &mut self,
        block: &rtc::rtcp::reception_report::ReceptionReport,
        metrics: &crate::metrics::StreamMetrics,
    ) {
        self.reports += 1;
        // Cumulative (24 bits) in the reports: count what is new.
        if block.total_lost > self.lost {
            metrics.webrtc_packets_lost.inc_by(u64::from(block.total_lost - self.lost));
            self.lost = block.total_lost;
        }
        // Interarrival jitter is in RTP timestamp units (90 kHz).
        self.jitter_ms = f64::from(block.jitter) / 90.0;
        metrics.webrtc_jitter_ms.observe(self.jitter_ms);
        if let Some(rtt) = round_trip(block.last_sender_report, block.delay, ntp_now_middle32()) {
            self.rtt_ms = rtt;
            metrics.webrtc_rtt_ms.observe(rtt);
        }
    }
}

/// The middle 32 bits of the NTP time now (1/65536 s units): the clock our
/// sender reports were stamped with (wall clock, via the SR interceptor).
fn ntp_now_middle32() -> u32 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = unix.as_secs().wrapping_add(2_208_988_800);
    let fraction = (u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000;
    ((seconds << 16) as u32) | ((fraction >> 16) as u32)
}

/// RFC 3550 6.4.1: RTT = arrival - LSR - DLSR, all in 1/65536 s; None
/// before the viewer has seen a sender report, or if clocks disagree.
fn round_trip(last_sender_report: u32, delay: u32, arrival: u32) -> Option<f64> {
    if last_sender_report == 0 {
        return None;
    }
    let rtt = arrival.wrapping_sub(last_sender_report).wrapping_sub(delay);
    // Negative (wrapped) or over a minute: not a measurement.
    (rtt < 60 << 16).then(|| f64::from(rtt) * 1000.0 / 65536.0)
}

/// Sends one access unit: the shared packets with this viewer's header.
async fn send(inner: &Inner, track: &TrackLocalStaticRTP, stamp: &mut Stamp, au: &AccessUnit) -> Result<(), String> {
    let packets = inner.stream.packets.get(au);
    let live = stamp.catchup == 0;
    let capture_ntp = stamp.abs_capture_id.and_then(|_| crate::clock::ntp_of_monotonic(au.capture_time));
    // Driver events of up to WRITE_BATCH_PACKETS packets: one channel send
    // and one lock of the peer connection each instead of one per packet
    // (vendor/webrtc/PATCHES.md).
    let mut stamped = stamp.packets(&packets, capture_ntp);
    loop {
        let batch: Vec<_> = stamped.by_ref().take(WRITE_BATCH_PACKETS).collect();
        if batch.is_empty() {
            break;
        }
        track.write_rtp_batch(batch).await.map_err(|e| format!("write_rtp: {e}"))?;
    }
    if live {
        // Handed to the peer connection's driver task, which seals and sends
        // it at once (its queue is bounded; this await waits when it is full).
        let sent = crate::clock::monotonic_now();
        inner.stream.metrics.capture_to_sent_ms.observe(crate::clock::millis_between(au.capture_time, sent));
    }
    inner.stream.metrics.webrtc_frames_sent.inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(catchup: usize) -> Stamp {
        Stamp { ssrc: 1, payload_type: 96, seq: 0, offset: None, last: None, catchup, abs_capture_id: None }
    }

    #[test]
    fn catch_up_frames_are_packed_then_live_keeps_cadence() {
        let mut s = stamp(3);
        let a = s.timestamp(1000);
        let b = s.timestamp(4000);
        let c = s.timestamp(7000);
        assert_eq!((b.wrapping_sub(a), c.wrapping_sub(b)), (1, 1));
        let d = s.timestamp(10_000);
        assert_eq!(d.wrapping_sub(c), 3000, "live frames keep the camera's spacing");
        // A restart from the cache: older capture times, still monotonic.
        s.catchup = 2;
        let e = s.timestamp(1000);
        let f = s.timestamp(4000);
        assert_eq!((e.wrapping_sub(d), f.wrapping_sub(e)), (1, 1));
        let g = s.timestamp(13_000);
        assert_eq!(g.wrapping_sub(f), 9000);
        // Capture time going backwards (camera restart): still forward.
        let h = s.timestamp(5);
        assert_eq!(h.wrapping_sub(g), 3000);
    }

    #[test]
    fn round_trip_from_a_receiver_report() {
        // SR sent at t=100 s, held 0.25 s by the viewer, report back at 100.3 s.
        let lsr = 100 << 16;
        let dlsr = 1 << 14;
        let arrival = (100 << 16) + (3 << 16) / 10;
        let rtt = round_trip(lsr, dlsr, arrival).unwrap();
        assert!((rtt - 50.0).abs() < 0.1, "{rtt}");
        assert_eq!(round_trip(0, 0, arrival), None, "no SR seen yet");
        assert_eq!(round_trip(lsr, dlsr, lsr), None, "clock disagreement");
    }

    #[test]
    fn headers_are_stamped_per_viewer() {
        let au = PacketizedAu {
            seq: 0,
            rtp_time: 0,
            payloads: vec![bytes::Bytes::from_static(b"\x65a"), bytes::Bytes::from_static(b"\x65b")],
            bytes: 4,
        };
        let mut s = Stamp {
            ssrc: 7,
            payload_type: 102,
            seq: u16::MAX,
            offset: None,
            last: None,
            catchup: 0,
            abs_capture_id: Some(5),
        };
        let packets: Vec<_> = s.packets(&au, Some(0x0123_4567_89ab_cdef)).collect();
        assert_eq!(packets.len(), 2);
        assert_eq!((packets[0].header.sequence_number, packets[1].header.sequence_number), (u16::MAX, 0));
        assert!(!packets[0].header.marker && packets[1].header.marker);
        assert!(packets.iter().all(|p| p.header.ssrc == 7 && p.header.payload_type == 102));
        assert_eq!(packets[0].payload.as_ptr(), au.payloads[0].as_ptr(), "payloads are shared, not copied");
        assert!(packets[0].header.extensions.is_empty(), "capture time only on the last packet");
        assert_eq!(packets[1].header.get_extension(5).as_deref(), Some(&0x0123_4567_89ab_cdef_u64.to_be_bytes()[..]));
        // A catch-up frame (from the GOP cache) carries none.
        s.catchup = 1;
        assert!(s.packets(&au, Some(1)).all(|p| p.header.extensions.is_empty()));
    }
}
