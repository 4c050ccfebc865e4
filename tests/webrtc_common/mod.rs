//! A real WebRTC receiver (the `webrtc` crate as the client) for the
//! viewer tests: offers H.264 like a browser, depacketizes the RTP it gets
//! with the `rtc` crate's own H.264 depacketizer, and hands out whole frames.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use streaming_server::abi::{Layout, TimeBits};
use streaming_server::metrics::Metrics;
use streaming_server::shutdown::{self, Shutdown, Trigger};
use streaming_server::source;
use streaming_server::source::ring::ReaderConfig;
use streaming_server::stream::Stream;
use streaming_server::webrtc::{OfferError, Session, Viewers, WebrtcConfig};

use bytes::{Bytes, BytesMut};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use streaming_server::codec::h264::split_annexb;
use tokio::sync::watch;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};
use webrtc::runtime::TokioRuntime;

/// Chrome's H.264 payload types and fmtp lines (Chrome 120s, Linux).
pub const CHROME_H264: &[(u8, &str)] = &[
    (102, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
    (104, "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f"),
    (106, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
    (108, "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f"),
    (127, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
    (112, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
];

/// One received access unit.
#[derive(Clone, Debug)]
pub struct Frame {
    pub timestamp: u32,
    pub nals: Vec<Bytes>,
    pub received: Instant,
    /// A sequence-number gap inside or before this frame.
    pub damaged: bool,
}

struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathered: watch::Sender<bool>,
    frames: flume::Sender<Frame>,
    track: Arc<std::sync::Mutex<Option<Arc<dyn TrackRemote>>>>,
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

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        *self.track.lock().unwrap() = Some(track.clone());
        let frames = self.frames.clone();
        tokio::spawn(async move {
            let mut depacketizer = rtc::rtp::codec::h264::H264Packet::default();
            let mut annexb = BytesMut::new();
            let mut last_seq: Option<u16> = None;
            let mut damaged = false;
            while let Some(event) = track.poll().await {
                let TrackRemoteEvent::OnRtpPacket(packet) = event else { continue };
                let seq = packet.header.sequence_number;
                if last_seq.is_some_and(|l| l.wrapping_add(1) != seq) {
                    damaged = true;
                }
                last_seq = Some(seq);
                match depacketizer.depacketize(&packet.payload) {
                    Ok(out) => annexb.extend_from_slice(&out),
                    Err(_) => damaged = true,
                }
                if packet.header.marker {
                    let data = annexb.split().freeze();
                    let nals = split_annexb(&data).into_iter().map(|r| data.slice(r)).collect();
                    let frame = Frame {
                        timestamp: packet.header.timestamp,
                        nals,
                        received: Instant::now(),
                        damaged: std::mem::take(&mut damaged),
                    };
                    if frames.send(frame).is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// A receiving peer connection.
pub struct Client {
    pub pc: Arc<dyn PeerConnection>,
    pub frames: flume::Receiver<Frame>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    pub offer: String,
    track: Arc<std::sync::Mutex<Option<Arc<dyn TrackRemote>>>>,
}

impl Client {
    /// Builds a receiver on 127.0.0.1 offering `h264` (payload type, fmtp)
    /// and returns it with its complete offer (candidates included).
    pub async fn new(h264: &[(u8, &str)]) -> Client {
        Client::build(h264, false).await
    }

    /// Like Firefox and Safari: an audio section first, which the server
    /// rejects (it has no audio), then the video.
    pub async fn with_audio_first(h264: &[(u8, &str)]) -> Client {
        Client::build(h264, true).await
    }

    async fn build(h264: &[(u8, &str)], audio_first: bool) -> Client {
        let mut media_engine = MediaEngine::default();
        if audio_first {
            media_engine
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: RTCRtpCodec {
                            mime_type: "audio/opus".to_owned(),
                            clock_rate: 48_000,
                            channels: 2,
                            sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                            rtcp_feedback: vec![],
                        },
                        payload_type: 111,
                    },
                    RtpCodecKind::Audio,
                )
                .unwrap();
        }
        for (pt, fmtp) in h264 {
            media_engine
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: RTCRtpCodec {
                            mime_type: MIME_TYPE_H264.to_owned(),
                            clock_rate: 90_000,
                            channels: 0,
                            sdp_fmtp_line: fmtp.to_string(),
                            rtcp_feedback: vec![RTCPFeedback { typ: "ccm".into(), parameter: "fir".into() }],
                        },
                        payload_type: *pt,
                    },
                    RtpCodecKind::Video,
                )
                .unwrap();
        }
        let registry = register_default_interceptors(Registry::new(), &mut media_engine).unwrap();
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (gathered_tx, mut gathered) = watch::channel(false);
        let (frames_tx, frames) = flume::bounded(4096);
        let track = Arc::new(std::sync::Mutex::new(None));
        let handler =
            Arc::new(Handler { state: state_tx, gathered: gathered_tx, frames: frames_tx, track: track.clone() });
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(SettingEngineBuilder::new().with_include_loopback_candidate(true).build())
            .with_handler(handler)
            .with_runtime(Arc::new(TokioRuntime))
            .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
            .build()
            .await
            .expect("client peer connection");
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        if audio_first {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() }),
            )
            .await
            .unwrap();
        }
        pc.add_transceiver_from_kind(
            RtpCodecKind::Video,
            Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() }),
        )
        .await
        .unwrap();
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|g| *g)).await.expect("gathering").unwrap();
        let offer = pc.local_description().await.unwrap().sdp;
        Client { pc, frames, state, offer, track }
    }

    /// Sends a Picture Loss Indication for the received video, as a
    /// browser does when it cannot decode.
    pub async fn send_pli(&self) {
        let track = self.track.lock().unwrap().clone().expect("a track arrived");
        let media_ssrc = *track.ssrcs().await.first().expect("the track has an SSRC");
        let pli =
            rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication { sender_ssrc: 0, media_ssrc };
        track.write_rtcp(vec![Box::new(pli)]).await.expect("PLI sent");
    }

    pub async fn accept(&self, answer: String) {
        self.pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap()).await.expect("answer applies");
    }

    /// Waits for `n` frames (or the timeout).
    pub async fn frames(&self, n: usize, timeout: Duration) -> Vec<Frame> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.frames.recv_async()).await {
                Ok(Ok(frame)) => out.push(frame),
                _ => break,
            }
        }
        out
    }

    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pc.close()).await;
    }
}

/// The clip's NAL units in order, as a WebRTC receiver should see them
/// (access unit delimiters and filler are not sent).
pub fn clip_nals(clip: &[u8]) -> Vec<Bytes> {
    streaming_server::load_client::clip_nal_units(streaming_server::codec::Codec::H264, clip)
}

/// Where `received` sits in the looping clip: the index in `clip` such that
/// `received` equals the clip from there on (wrapping), or None.
pub fn find_in_loop(clip: &[Bytes], received: &[Bytes]) -> Option<usize> {
    (0..clip.len()).find(|&start| received.iter().enumerate().all(|(i, nal)| clip[(start + i) % clip.len()] == *nal))
}

/// A fake camera process, the real media thread and `Viewers`, in process.
/// Tests that measure the whole process (fds, threads, RSS) take this for
/// writing; every rig holds it for reading, so those measurements never
/// count another test's sockets.
pub static PROCESS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Excludes every other rig of this test binary while held.
pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    PROCESS.write().unwrap_or_else(|e| e.into_inner())
}

pub struct Rig {
    _camera: crate::common::Proc,
    pub media: Stream,
    pub viewers: Viewers,
    trigger: Option<Trigger>,
    media_thread: Option<std::thread::JoinHandle<()>>,
    shutdown: Shutdown,
    runtime: Option<tokio::runtime::Runtime>,
    /// Last: released after everything above is gone.
    _shared: Option<std::sync::RwLockReadGuard<'static, ()>>,
}

impl Rig {
    pub fn start(tag: &str, max_clients: usize) -> Rig {
        Rig::start_with(tag, max_clients, |_| {})
    }

    pub fn start_with(tag: &str, max_clients: usize, configure: impl FnOnce(&mut WebrtcConfig)) -> Rig {
        let shared = Some(PROCESS.read().unwrap_or_else(|e| e.into_inner()));
        Rig::build(shared, tag, max_clients, None, configure)
    }

    /// A rig for a test that holds [`exclusive`] already.
    pub fn start_alone(tag: &str, max_clients: usize) -> Rig {
        Rig::build(None, tag, max_clients, None, |_| {})
    }

    /// A rig whose camera plays `clip` instead of the demo clip.
    pub fn start_clip(tag: &str, max_clients: usize, clip: &std::path::Path) -> Rig {
        let shared = Some(PROCESS.read().unwrap_or_else(|e| e.into_inner()));
        Rig::build(shared, tag, max_clients, Some(clip), |_| {})
    }

    fn build(
        shared: Option<std::sync::RwLockReadGuard<'static, ()>>,
        tag: &str,
        max_clients: usize,
        clip: Option<&std::path::Path>,
        configure: impl FnOnce(&mut WebrtcConfig),
    ) -> Rig {
        let shm = crate::common::unique_shm(tag);
        let mut camera_args = vec!["-fps", "30"];
        if let Some(clip) = clip {
            camera_args.extend(["-file", clip.to_str().unwrap()]);
        }
        let camera = crate::common::fake_camera(&shm, &camera_args);
        let media = Stream::new("cam", &Arc::new(Metrics::new()));
        let (trigger, shutdown) = shutdown::channel();
        let config = ReaderConfig {
            name: shm,
            layout: Layout::new(TimeBits::Native),
            format3: streaming_server::codec::Codec::H264,
        };
        let media_thread = source::spawn_ring(config, media.clone(), shutdown.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while media.hub.gop_cache_len() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(media.hub.parameter_sets().is_some(), "the camera's SPS/PPS never arrived");
        let mut config = WebrtcConfig::new(max_clients);
        config.ips = vec!["127.0.0.1".parse().unwrap()];
        configure(&mut config);
        // The server's own runtime, as in main: the viewer tasks run there,
        // the test's client on the test's runtime.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let viewers = Viewers::new(config, media.clone(), shutdown.clone(), runtime.handle().clone()).unwrap();
        Rig {
            _shared: shared,
            _camera: camera,
            media,
            viewers,
            trigger: Some(trigger),
            media_thread: Some(media_thread),
            shutdown,
            runtime: Some(runtime),
        }
    }

    /// An offer from 127.0.0.1, as the HTTP listener hands it on.
    pub async fn offer(&self, sdp: &str) -> Result<Session, OfferError> {
        self.offer_from(sdp, "127.0.0.1".parse().unwrap()).await
    }

    pub async fn offer_from(&self, sdp: &str, client: std::net::IpAddr) -> Result<Session, OfferError> {
        self.viewers.offer(sdp, client).await
    }

    /// A viewer that has connected (ICE and DTLS up) when this returns.
    pub async fn connect(&self) -> (Client, String) {
        let client = Client::new(CHROME_H264).await;
        let session = self.offer(&client.offer).await.expect("offer accepted");
        client.accept(session.answer_sdp).await;
        let mut state = client.state.clone();
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| *s == RTCPeerConnectionState::Connected))
            .await
            .expect("connected within 10 s")
            .expect("the client is alive");
        (client, session.id)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.viewers.close_all(Duration::from_secs(2));
        drop(self.trigger.take());
        if let Some(thread) = self.media_thread.take() {
            let _ = thread.join();
        }
        assert!(self.shutdown.is_triggered());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
