//! Load client: N non-decoding WebRTC viewers against a running server.
//!
//! `streaming-server load-client -url http://board:8081 -viewers 20
//! -seconds 30` negotiates each viewer through `POST /offer` (like a
//! browser: recvonly H.264 and/or H.265 (`-codec`), NACK/PLI feedback, the `abs-capture-time` header
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

pub mod hls;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

use crate::codec::Codec;

mod janus;
mod runtime;

pub use crate::webrtc::negotiate::extmap_id;
pub use crate::webrtc::ABS_CAPTURE_TIME_URI;

/// NTP timestamp to seconds since the Unix epoch, as f64.
fn ntp_to_unix_secs(ntp: u64) -> f64 {
    (ntp >> 32) as f64 - crate::clock::NTP_UNIX_OFFSET as f64 + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0
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

/// True if an RTP payload of `codec` carries (the start of) a keyframe:
/// an IDR slice (H.264), an IRAP picture (H.265).
pub fn payload_has_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::H264 => payload_has_idr(payload),
        Codec::H265 => crate::rtp::h265::payload_starts_irap(payload),
    }
}

/// The codec an answer sends: the rtpmap name of the first format on its
/// video line.
pub fn answered_codec(sdp: &str) -> Option<Codec> {
    let lines: Vec<&str> = sdp.lines().map(str::trim).collect();
    let formats = lines.iter().find_map(|l| l.strip_prefix("m=video "))?;
    let first = formats.split_whitespace().nth(2)?;
    let name = lines.iter().find_map(|l| {
        let rest = l.strip_prefix("a=rtpmap:")?;
        let (pt, codec) = rest.split_once(' ')?;
        (pt == first).then(|| codec.split('/').next().unwrap_or(""))
    })?;
    match name.to_ascii_uppercase().as_str() {
        "H264" => Some(Codec::H264),
        "H265" => Some(Codec::H265),
        _ => None,
    }
}

/// The NAL units of a clip as a receiver sees them over RTP (what
/// [`rtp::is_sent`](crate::rtp::is_sent) keeps), in order.
pub fn clip_nal_units(codec: Codec, clip: &[u8]) -> Vec<Bytes> {
    let clip = Bytes::copy_from_slice(clip);
    crate::codec::annexb::split_annexb(&clip)
        .into_iter()
        .map(|range| clip.slice(range))
        .filter(|nal| crate::rtp::is_sent(codec, nal))
        .collect()
}

/// Checks a viewer's NAL units, byte for byte, against the clip the camera
/// plays in a loop (`-verify FILE`): each must be the clip's next one, but
/// for parameter sets, which must only equal one of the clip's (the server
/// puts them in front of every keyframe; a clip may carry them once).
/// Like a browser's jitter buffer it puts packets back in order and waits
/// up to [`ClipCheck::REORDER_WAIT`] for a missing one (a retransmission
/// answering a NACK); a packet given up on breaks the chain, and the check
/// finds its place again from the NAL units that follow (the server resumes
/// at a keyframe). A jump to another place of the clip is allowed where a
/// sender restarts from its cached keyframe (a PLI answered, for this
/// viewer or, through an SFU, for another): at the first NAL unit of an
/// access unit that turns out to hold a keyframe (counted in `restarts`);
/// anywhere else it is a mismatch.
#[derive(Debug)]
pub struct ClipCheck {
    codec: Codec,
    /// The clip's NAL units but its parameter sets, in order.
    clip: Vec<Bytes>,
    parameter_sets: Vec<Bytes>,
    /// Where in the clip the NAL units so far agree (the next index
    /// expected): several while a NAL unit occurs more than once.
    next: Vec<usize>,
    h264: rtc::rtp::codec::h264::H264Packet,
    h265: crate::rtp::h265::Depacketizer,
    /// The extended sequence number of the next packet to check.
    expected: Option<u64>,
    /// Packets after a missing one: extended sequence number -> (payload,
    /// marker, arrival).
    waiting: std::collections::BTreeMap<u64, (Bytes, bool, Instant)>,
    /// The access unit in progress had a lost packet or a mismatch.
    damaged: bool,
    /// The access unit in progress has a keyframe slice.
    keyframe: bool,
    /// The access unit in progress has had a NAL unit other than a
    /// parameter set.
    au_started: bool,
    /// Inside a fragmented NAL unit whose start was seen.
    in_fragment: bool,
    /// The access unit in progress began away from where the clip was:
    /// a restart if it holds a keyframe, else a mismatch.
    restart_pending: bool,
    pub matched: u64,
    pub mismatched: u64,
    /// Keyframe access units received whole, every NAL unit the clip's.
    pub keyframes_matched: u64,
    /// Packets given up on (never arrived within the wait).
    pub packets_missing: u64,
    /// Restarts at a cached keyframe (see the type's doc).
    pub restarts: u64,
    pub first_mismatch: Option<String>,
}

impl ClipCheck {
    /// How long a gap waits for its packet before it counts as lost.
    pub const REORDER_WAIT: Duration = Duration::from_millis(300);
    /// Packets held behind a gap at most.
    const MAX_WAITING: usize = 2048;

    pub fn new(codec: Codec, clip: Arc<Vec<Bytes>>) -> ClipCheck {
        let (parameter_sets, clip) = clip.iter().cloned().partition(|nal| codec.is_parameter_set(nal));
        ClipCheck {
            codec,
            clip,
            parameter_sets,
            next: Vec::new(),
            h264: Default::default(),
            h265: Default::default(),
            expected: None,
            waiting: Default::default(),
            damaged: false,
            keyframe: false,
            au_started: false,
            in_fragment: false,
            restart_pending: false,
            matched: 0,
            mismatched: 0,
            keyframes_matched: 0,
            packets_missing: 0,
            restarts: 0,
            first_mismatch: None,
        }
    }

    /// One RTP packet of the video track, as it arrives.
    pub fn on_packet(&mut self, sequence_number: u16, payload: &Bytes, marker: bool, now: Instant) {
        let expected = match self.expected {
            Some(expected) => expected,
            None => u64::from(sequence_number) + (1 << 16), // room below for a late packet
        };
        // Extend the 16-bit number to the one nearest the expected.
        let offset = i64::from(sequence_number.wrapping_sub(expected as u16) as i16);
        let extended = expected.wrapping_add_signed(offset);
        self.expected = Some(expected);
        if extended < expected {
            return; // checked already, or given up on
        }
        self.waiting.entry(extended).or_insert_with(|| (payload.clone(), marker, now));
        self.drain(now);
    }

    /// Checks the packets now in order; gives up on a gap that waited too
    /// long (or holds too much behind it).
    fn drain(&mut self, now: Instant) {
        loop {
            let Some(mut expected) = self.expected else { return };
            while let Some((payload, marker, _)) = self.waiting.remove(&expected) {
                self.check(expected as u16, &payload, marker);
                expected += 1;
            }
            self.expected = Some(expected);
            let Some((&first, &(_, _, arrived))) = self.waiting.iter().next() else { return };
            let oldest = self.waiting.values().map(|(_, _, at)| *at).min().unwrap_or(arrived);
            if now.duration_since(oldest) < Self::REORDER_WAIT && self.waiting.len() < Self::MAX_WAITING {
                return;
            }
            // Lost: carry on after the gap with a broken chain.
            self.packets_missing += first - expected;
            self.expected = Some(first);
            self.next.clear();
            self.h264 = Default::default();
            self.h265 = Default::default();
            self.in_fragment = false;
            self.damaged = true;
        }
    }

    fn check(&mut self, sequence_number: u16, payload: &Bytes, marker: bool) {
        // A fragment whose start was not seen (joined mid-NAL unit, as
        // through an SFU, or after a lost packet) would depacketize into a
        // truncated NAL unit: skipped, its access unit counted damaged.
        match fragment(self.codec, payload) {
            Some((false, _)) if !self.in_fragment => {
                self.damaged = true;
                self.end_of_packet(marker);
                return;
            }
            Some((_, end)) => self.in_fragment = !end,
            None => self.in_fragment = false,
        }
        let nal_units = match self.codec {
            Codec::H264 => {
                use rtc::rtp::packetizer::Depacketizer as _;
                match self.h264.depacketize(payload) {
                    Ok(annexb) => crate::codec::annexb::split_annexb(&annexb)
                        .into_iter()
                        .map(|range| annexb.slice(range))
                        .collect(),
                    Err(e) => {
                        self.mismatch(format!("H.264 payload of packet {sequence_number}: {e}"));
                        Vec::new()
                    }
                }
            }
            Codec::H265 => match self.h265.push(sequence_number, payload, marker) {
                Ok(out) => out.nal_units,
                Err(e) => {
                    self.mismatch(format!("packet {sequence_number}: {e}"));
                    Vec::new()
                }
            },
        };
        for nal in nal_units {
            self.keyframe |= self.codec.is_keyframe_nal(&nal);
            self.nal_unit(&nal);
        }
        self.end_of_packet(marker);
    }

    /// The marker ends an access unit: count it.
    fn end_of_packet(&mut self, marker: bool) {
        if marker {
            if self.restart_pending {
                self.restart_pending = false;
                if self.keyframe {
                    self.restarts += 1;
                } else {
                    self.mismatch("the stream jumped to another place of the clip, not at a keyframe".into());
                }
            }
            if self.keyframe && !self.damaged {
                self.keyframes_matched += 1;
            }
            self.keyframe = false;
            self.damaged = false;
            self.au_started = false;
        }
    }

    fn nal_unit(&mut self, nal: &[u8]) {
        if self.codec.is_parameter_set(nal) {
            if self.parameter_sets.iter().any(|ps| ps == nal) {
                self.matched += 1;
            } else {
                let kind = self.codec.nal_type(nal);
                self.mismatch(format!("a {}-byte parameter set (type {kind}) is none of the clip's", nal.len()));
            }
            return;
        }
        let clip = &self.clip;
        if clip.is_empty() {
            return self.mismatch("the clip has no NAL units".into());
        }
        let au_start = !self.au_started;
        self.au_started = true;
        let places = |nal: &[u8]| -> Vec<usize> {
            (0..clip.len()).filter(|&i| clip[i] == nal).map(|i| (i + 1) % clip.len()).collect()
        };
        if self.next.is_empty() {
            // Find the place: every position of this NAL unit in the clip.
            self.next = places(nal);
        } else {
            self.next.retain(|&i| clip[i] == nal);
            for i in &mut self.next {
                *i = (*i + 1) % clip.len();
            }
            if self.next.is_empty() && au_start {
                // Elsewhere in the clip: a restart if this access unit holds
                // a keyframe (decided at its end).
                self.next = places(nal);
                self.restart_pending = !self.next.is_empty();
            }
        }
        if self.next.is_empty() {
            let kind = self.codec.nal_type(nal);
            return self.mismatch(format!("a {}-byte NAL unit of type {kind} is not the clip's next", nal.len()));
        }
        self.matched += 1;
    }

    fn mismatch(&mut self, why: String) {
        self.damaged = true;
        self.mismatched += 1;
        self.first_mismatch.get_or_insert(why);
    }
}

/// For a fragment of a NAL unit (FU-A, H.265 FU): whether it starts and
/// whether it ends its NAL unit.
fn fragment(codec: Codec, payload: &[u8]) -> Option<(bool, bool)> {
    let fu = match codec {
        Codec::H264 => payload.first().filter(|h| *h & 0x1f == 28).and(payload.get(1)),
        Codec::H265 => (payload.len() >= 3 && Codec::H265.nal_type(payload) == 49).then(|| &payload[2]),
    }?;
    Some((fu & 0x80 != 0, fu & 0x40 != 0))
}

/// Per-viewer accounting, fed one packet at a time.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    started: Option<Instant>,
    first_packet: Option<Instant>,
    first_keyframe: Option<Instant>,
    last_seq: Option<u16>,
    codec: Codec,
    pub packets: u64,
    pub lost: u64,
    pub late: u64,
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
    /// The codec the server answered with (`H.264`, `H.265`).
    pub codec: String,
    /// POST /offer to the first RTP packet.
    pub first_rtp_ms: Option<f64>,
    /// POST /offer to the last packet of the first complete IDR frame.
    pub first_keyframe_ms: Option<f64>,
    pub packets: u64,
    /// Sequence gaps when packets arrived (a later retransmission may
    /// have filled some: `late`).
    pub lost: u64,
    /// Packets that arrived after a later one (retransmissions, reordering).
    pub late: u64,
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
    /// STUN/TURN servers the server handed out (GET /NAME/ice-servers).
    pub ice_servers: usize,
    /// TURN relay candidates in this viewer's offer and in the answer.
    pub local_relay_candidates: usize,
    pub remote_relay_candidates: usize,
    /// With `-verify`: NAL units equal to the clip's, and those not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_nal_units_matched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_nal_units_mismatched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_keyframes_matched: Option<u64>,
    /// Packets that never arrived, even late (after the jitter wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_packets_missing: Option<u64>,
    /// Restarts at a cached keyframe (a sender answering a PLI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_restarts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_first_mismatch: Option<String>,
}

/// The sum of the values present; None when none is.
fn sum_some(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.flatten().reduce(|a, b| a + b)
}

/// The `p` quantile (0..=1) of `sorted` values, nearest rank.
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

    /// The codec the answer chose (what tells keyframes apart).
    pub fn set_codec(&mut self, codec: Codec) {
        self.codec = codec;
    }

    pub fn on_packet(&mut self, packet: PacketInfo<'_>, now: Instant, wall_now: SystemTime) {
        self.packets += 1;
        self.first_packet.get_or_insert(now);
        if let Some(last) = self.last_seq {
            let gap = packet.sequence_number.wrapping_sub(last);
            if gap == 0 || gap > 0x8000 {
                // A duplicate, or late: a retransmission answering a NACK,
                // or reordering. Counted, not new data here.
                self.late += 1;
                return;
            }
            if gap > 1 {
                self.lost += u64::from(gap - 1);
                self.frame_damaged = true;
            }
        }
        self.last_seq = Some(packet.sequence_number);
        self.frame_has_idr |= payload_has_keyframe(self.codec, packet.payload);
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
            codec: self.codec.name().to_string(),
            error: None,
            first_rtp_ms: since_start(self.first_packet),
            first_keyframe_ms: since_start(self.first_keyframe),
            packets: self.packets,
            lost: self.lost,
            late: self.late,
            frames: self.frames,
            keyframes: self.keyframes,
            fps,
            interframe_jitter_ms: variance.sqrt(),
            latency_samples: latencies.len(),
            latency_p50_ms: percentile(&latencies, 0.5),
            latency_p99_ms: percentile(&latencies, 0.99),
            latencies_ms: latencies,
            ..ViewerReport::default()
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
    /// With `-verify`: NAL units equal to the clip's, and those not, over
    /// all viewers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_nal_units_matched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_nal_units_mismatched: Option<u64>,
    /// Keyframes received whole and equal to the clip's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_keyframes_matched: Option<u64>,
    pub per_viewer: Vec<ViewerReport>,
    /// With `-hls N`: the LL-HLS clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hls: Option<hls::HlsReport>,
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
            clip_nal_units_matched: sum_some(per_viewer.iter().map(|v| v.clip_nal_units_matched)),
            clip_nal_units_mismatched: sum_some(per_viewer.iter().map(|v| v.clip_nal_units_mismatched)),
            clip_keyframes_matched: sum_some(per_viewer.iter().map(|v| v.clip_keyframes_matched)),
            per_viewer,
            hls: None,
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
    /// Codecs offered, in preference order.
    pub codecs: Vec<Codec>,
    /// The clip the camera loops, its codec and [`clip_nal_units`]: every
    /// viewer checks what it receives against it.
    pub verify: Option<(Codec, Arc<Vec<Bytes>>)>,
    /// Watch this mountpoint of a Janus streaming plugin instead: `url` is
    /// then Janus's HTTP API (`http://HOST:8088/janus`), Janus offers and
    /// each viewer answers.
    pub janus_mountpoint: Option<u64>,
    /// LL-HLS clients ([`hls`]) to run beside the WebRTC viewers.
    pub hls: usize,
}

mod peer {
    //! One receiving peer connection (the `webrtc` crate as the client).

    use super::*;
    use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_HEVC};
    use rtc::peer_connection::configuration::{RTCConfigurationBuilder, RTCIceServer};
    use rtc::rtp_transceiver::rtp_sender::{
        RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
    };
    use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
    use tokio::sync::watch;
    use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
    use webrtc::peer_connection::{
        register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
        RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    };

    /// Chrome's H.265 offer (payload type, fmtp), Main and Main 10.
    const H265_OFFER: &[(u8, &str)] = &[
        (49, "level-id=180;profile-id=1;tier-flag=0;tx-mode=SRST"),
        (51, "level-id=180;profile-id=2;tier-flag=0;tx-mode=SRST"),
    ];

    /// Chrome's H.264 offer (payload type, fmtp).
    const H264_OFFER: &[(u8, &str)] = &[
        (102, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
        (106, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
        (127, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
        (112, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
    ];

    struct Handler {
        gathered: watch::Sender<bool>,
        state: watch::Sender<RTCPeerConnectionState>,
        stats: Arc<Mutex<ReceiverStats>>,
        /// With `-verify`, set once the answer names the codec.
        check: Arc<Mutex<Option<ClipCheck>>>,
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

        async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
            self.state.send_replace(state);
        }

        async fn on_track(&self, track: Arc<dyn TrackRemote>) {
            let stats = self.stats.clone();
            let check = self.check.clone();
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
                    if let Some(check) = check.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                        let header = &packet.header;
                        check.on_packet(header.sequence_number, &packet.payload, header.marker, Instant::now());
                    }
                }
            });
        }
    }

    /// A receiving peer connection with its accounting, before any SDP.
    struct Receiver {
        pc: Arc<dyn PeerConnection>,
        gathered: watch::Receiver<bool>,
        stats: Arc<Mutex<ReceiverStats>>,
        check: Arc<Mutex<Option<ClipCheck>>>,
        abs_capture_id: Arc<Mutex<Option<u8>>>,
        state: watch::Receiver<RTCPeerConnectionState>,
        /// STUN/TURN servers it was given.
        ice_servers: usize,
    }

    /// Builds a receiving peer connection that accepts `codecs` (MIME type,
    /// payload type, fmtp) with NACK/PLI/FIR feedback and abs-capture-time,
    /// using `ice_servers`.
    async fn receiver(
        options: &LoadOptions,
        codecs: &[(String, u8, String)],
        ice_servers: Vec<RTCIceServer>,
    ) -> Result<Receiver, String> {
        let mut media_engine = MediaEngine::default();
        for (mime_type, pt, fmtp) in codecs {
            let codec = RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime_type.clone(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: fmtp.clone(),
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
        let (gathered_tx, gathered) = watch::channel(false);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let stats = Arc::new(Mutex::new(ReceiverStats::default()));
        let abs_capture_id = Arc::new(Mutex::new(None));
        let check = Arc::new(Mutex::new(None));
        let handler = Arc::new(Handler {
            gathered: gathered_tx,
            state: state_tx,
            stats: stats.clone(),
            check: check.clone(),
            abs_capture_id: abs_capture_id.clone(),
        });
        // A browser's SRTP replay window (libwebrtc: 1024 packets), not the
        // crate's 64: a retransmission answering a NACK arrives behind the
        // rest of a large keyframe and must still be accepted.
        let settings = SettingEngineBuilder::new()
            .with_include_loopback_candidate(options.local_ip.is_loopback())
            .with_srtp_replay_protection_window(1024)
            // No mDNS: the server offers plain addresses, and joining the
            // multicast group fails where there is no multicast route (a
            // network namespace with no default route).
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            // Give up on candidate pairs after ~5 s of checks, as the
            // server does after ~1.4 s: a viewer that cannot connect says so
            // instead of waiting out the crate's default.
            .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(100))
            .with_ice_timeouts(Some(Duration::from_secs(2)), Some(Duration::from_secs(3)), None)
            .build();
        let ice_server_count = ice_servers.len();
        let configuration = RTCConfigurationBuilder::new().with_ice_servers(ice_servers).build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_runtime(Arc::new(super::runtime::LoadClientRuntime))
            .with_udp_addrs(vec![format!("{}:0", options.local_ip)])
            .build()
            .await
            .map_err(|e| format!("peer connection: {e}"))?;
        Ok(Receiver { pc: Arc::new(pc), gathered, stats, check, abs_capture_id, state, ice_servers: ice_server_count })
    }

    impl Receiver {
        /// Our local description once ICE gathering is complete (no trickle).
        async fn gathered_description(&mut self) -> Result<String, String> {
            tokio::time::timeout(Duration::from_secs(5), self.gathered.wait_for(|g| *g))
                .await
                .map_err(|_| "ICE gathering did not complete")?
                .map_err(|e| e.to_string())?;
            Ok(self.pc.local_description().await.ok_or("no local description")?.sdp)
        }

        /// The sender's SDP (its answer, or Janus's offer) chose `sdp`'s
        /// codec: accounting and the clip check follow it.
        fn expect(&self, sdp: &str, options: &LoadOptions) -> Result<(), String> {
            *self.abs_capture_id.lock().unwrap_or_else(|e| e.into_inner()) = extmap_id(sdp, ABS_CAPTURE_TIME_URI);
            let codec = answered_codec(sdp).ok_or("the sender sends no H.264 or H.265")?;
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).set_codec(codec);
            if let Some((clip_codec, clip)) = &options.verify {
                if *clip_codec != codec {
                    return Err(format!("the sender sends {codec}, the clip to verify against is {clip_codec}"));
                }
                *self.check.lock().unwrap_or_else(|e| e.into_inner()) = Some(ClipCheck::new(codec, clip.clone()));
            }
            Ok(())
        }

        /// Receives for the run's duration (or until the connection fails),
        /// closes, and reports. `relay_candidates`: TURN relay candidates in
        /// our description and in the sender's.
        async fn finish(
            mut self,
            viewer: usize,
            options: &LoadOptions,
            relay_candidates: (usize, usize),
        ) -> Result<ViewerReport, String> {
            let failed = tokio::select! {
                _ = tokio::time::sleep(options.duration) => false,
                _ = self.state.wait_for(|s| *s == RTCPeerConnectionState::Failed) => true,
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), self.pc.close()).await;
            if failed {
                let hint = if self.ice_servers > 0 && relay_candidates == (0, 0) {
                    ": no TURN relay candidate on either side (the TURN server refused or did not answer: \
                     see the server's /health)"
                } else {
                    ""
                };
                return Err(format!("connection failed: ICE found no working path to the sender{hint}"));
            }
            let mut report = self.stats.lock().unwrap_or_else(|e| e.into_inner()).report(viewer);
            report.ice_servers = self.ice_servers;
            (report.local_relay_candidates, report.remote_relay_candidates) = relay_candidates;
            if let Some(check) = self.check.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                report.clip_nal_units_matched = Some(check.matched);
                report.clip_nal_units_mismatched = Some(check.mismatched);
                report.clip_keyframes_matched = Some(check.keyframes_matched);
                report.clip_packets_missing = Some(check.packets_missing);
                report.clip_restarts = Some(check.restarts);
                report.clip_first_mismatch = check.first_mismatch.clone();
            }
            Ok(report)
        }
    }

    /// Connects one viewer and receives for `duration`; returns its report.
    pub async fn run_viewer(viewer: usize, options: &LoadOptions) -> Result<ViewerReport, String> {
        match options.janus_mountpoint {
            Some(mountpoint) => run_janus_viewer(viewer, mountpoint, options).await,
            None => run_offering_viewer(viewer, options).await,
        }
    }

    /// Like a browser: our offer to `POST /offer`, the server's answer.
    async fn run_offering_viewer(viewer: usize, options: &LoadOptions) -> Result<ViewerReport, String> {
        let codecs: Vec<(String, u8, String)> = options
            .codecs
            .iter()
            .flat_map(|codec| match codec {
                Codec::H264 => H264_OFFER.iter().map(|(pt, fmtp)| (MIME_TYPE_H264, *pt, *fmtp)).collect::<Vec<_>>(),
                Codec::H265 => H265_OFFER.iter().map(|(pt, fmtp)| (MIME_TYPE_HEVC, *pt, *fmtp)).collect(),
            })
            .map(|(mime, pt, fmtp)| (mime.to_string(), pt, fmtp.to_string()))
            .collect();
        // The STUN/TURN servers the server hands to its pages, as a browser
        // behind NAT would use them.
        let ice_servers = fetch_ice_servers(&options.url, &options.path, options.token.as_deref()).await?;
        let mut rx = receiver(options, &codecs, ice_servers).await?;
        let recvonly = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() };
        rx.pc.add_transceiver_from_kind(RtpCodecKind::Video, Some(recvonly)).await.map_err(|e| e.to_string())?;
        let offer = rx.pc.create_offer(None).await.map_err(|e| e.to_string())?;
        rx.pc.set_local_description(offer).await.map_err(|e| e.to_string())?;
        let offer = rx.gathered_description().await?;

        *rx.stats.lock().unwrap_or_else(|e| e.into_inner()) = ReceiverStats::start(Instant::now());
        let answer = post_offer(&options.url, &options.path, &offer, options.token.as_deref()).await?;
        log::debug!("viewer {viewer}: answer:\n{answer}");
        rx.expect(&answer, options)?;
        let relay_candidates = (count_relay_candidates(&offer), count_relay_candidates(&answer));
        rx.pc
            .set_remote_description(RTCSessionDescription::answer(answer).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| format!("answer: {e}"))?;
        rx.finish(viewer, options, relay_candidates).await
    }

    /// Through Janus's streaming plugin: Janus offers what the mountpoint
    /// carries, the viewer answers (see [`super::janus`]).
    async fn run_janus_viewer(viewer: usize, mountpoint: u64, options: &LoadOptions) -> Result<ViewerReport, String> {
        let started = Instant::now();
        let janus = super::janus::Session::create(&options.url).await?;
        let result = async {
            let offer = janus.watch(mountpoint).await?;
            log::debug!("viewer {viewer}: Janus offer:\n{offer}");
            let mut rx = receiver(options, &super::janus::offered_codecs(&offer), Vec::new()).await?;
            *rx.stats.lock().unwrap_or_else(|e| e.into_inner()) = ReceiverStats::start(started);
            rx.expect(&offer, options)?;
            let offered_relays = count_relay_candidates(&offer);
            rx.pc
                .set_remote_description(RTCSessionDescription::offer(offer).map_err(|e| e.to_string())?)
                .await
                .map_err(|e| format!("Janus's offer: {e}"))?;
            let answer = rx.pc.create_answer(None).await.map_err(|e| e.to_string())?;
            rx.pc.set_local_description(answer).await.map_err(|e| e.to_string())?;
            let answer = rx.gathered_description().await?;
            janus.start(&answer).await?;
            let keepalive = janus.keep_alive();
            let relay_candidates = (count_relay_candidates(&answer), offered_relays);
            let report = rx.finish(viewer, options, relay_candidates).await;
            keepalive.abort();
            report
        }
        .await;
        janus.destroy().await;
        result
    }

    /// `a=candidate` lines of type relay in an SDP.
    pub fn count_relay_candidates(sdp: &str) -> usize {
        sdp.lines().filter(|l| l.starts_with("a=candidate:") && l.contains(" typ relay")).count()
    }

    /// GET /NAME/ice-servers: the servers this crate can use (STUN, and
    /// TURN over UDP; it skips `turns:` and TCP). A server without the
    /// route (404) means none.
    async fn fetch_ice_servers(url: &str, path: &str, token: Option<&str>) -> Result<Vec<RTCIceServer>, String> {
        let prefix = if path.is_empty() { String::new() } else { format!("/{path}") };
        let endpoint = format!("{}{prefix}/ice-servers", url.trim_end_matches('/'));
        let token = token.map(str::to_owned);
        let answer = tokio::task::spawn_blocking(move || {
            let mut request = ureq::get(&endpoint).timeout(Duration::from_secs(10));
            if let Some(token) = &token {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            match request.call() {
                Ok(response) => serde_json::from_reader::<_, serde_json::Value>(response.into_reader())
                    .map(Some)
                    .map_err(|e| format!("GET {endpoint}: {e}")),
                Err(ureq::Error::Status(404, _)) => Ok(None),
                Err(e) => Err(format!("GET {endpoint}: {e}")),
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        let Some(answer) = answer else { return Ok(Vec::new()) };
        let mut servers = Vec::new();
        for entry in answer["iceServers"].as_array().into_iter().flatten() {
            let urls: Vec<String> = match &entry["urls"] {
                serde_json::Value::String(url) => vec![url.clone()],
                serde_json::Value::Array(list) => list.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect(),
                _ => Vec::new(),
            };
            let usable: Vec<String> = urls
                .into_iter()
                .filter(|u| u.starts_with("stun:") || (u.starts_with("turn:") && !u.contains("transport=tcp")))
                .collect();
            if usable.is_empty() {
                continue;
            }
            servers.push(RTCIceServer {
                urls: usable,
                username: entry["username"].as_str().unwrap_or_default().to_owned(),
                credential: entry["credential"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Ok(servers)
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

/// Runs the viewers (and HLS clients) and collects the report.
pub async fn run(options: LoadOptions) -> LoadReport {
    let started = Instant::now();
    let hls = (options.hls > 0).then(|| {
        let path = if options.path.is_empty() { String::new() } else { format!("/{}", options.path) };
        let hls_options = hls::HlsClientOptions {
            playlist_url: format!("{}{path}/index.m3u8", options.url.trim_end_matches('/')),
            duration: options.duration,
            token: options.token.clone(),
        };
        let (clients, stagger) = (options.hls, options.stagger);
        tokio::task::spawn_blocking(move || hls::run(clients, stagger, &hls_options))
    });
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
    let hls = match hls {
        Some(task) => Some(task.await.unwrap_or_else(|e| hls::HlsReport {
            per_client: vec![hls::HlsClientReport { error: Some(e.to_string()), ..Default::default() }],
            ..Default::default()
        })),
        None => None,
    };
    let mut report = LoadReport::from_viewers(per_viewer, started.elapsed().as_secs_f64());
    report.hls = hls;
    report
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
        info.capture_ntp = crate::clock::ntp_of_unix(captured.duration_since(UNIX_EPOCH).unwrap());
        stats.on_packet(info, t0, received);
        let latency = stats.report(0).latency_p50_ms.unwrap();
        assert!((latency - 12.0).abs() < 0.01, "{latency}");
    }

    #[test]
    fn keyframes_by_codec() {
        // H.265: an IDR_W_RADL (type 19) NAL header, a TRAIL_R (type 1) one,
        // and an FU (type 49) starting a CRA (type 21).
        assert!(payload_has_keyframe(Codec::H265, &[19 << 1, 1, 0xaf]));
        assert!(!payload_has_keyframe(Codec::H265, &[1 << 1, 1, 0xaf]));
        assert!(payload_has_keyframe(Codec::H265, &[49 << 1, 1, 0x80 | 21, 0xaf]));
        assert!(!payload_has_keyframe(Codec::H265, &[49 << 1, 1, 21, 0xaf]));
        // The H.264 reading of an H.265 IDR header is not a keyframe.
        assert!(!payload_has_keyframe(Codec::H264, &[19 << 1, 1, 0xaf]));
    }

    /// An H.265 NAL unit of `kind` with `len` bytes of a pattern.
    fn hevc_nal(kind: u8, len: usize, seed: u8) -> Bytes {
        let mut nal = vec![kind << 1, 1];
        nal.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
        Bytes::from(nal)
    }

    /// A looping clip of two GOPs: parameter sets, a large IRAP, slices.
    fn hevc_clip() -> Vec<Bytes> {
        let mut clip = Vec::new();
        for gop in 0..2u8 {
            clip.extend([hevc_nal(32, 20, 0), hevc_nal(33, 40, 0), hevc_nal(34, 8, 0)]);
            clip.push(hevc_nal(19, 5000, gop));
            clip.extend((0..3).map(|n| hevc_nal(1, 300 + usize::from(n) * 700, gop * 10 + n)));
        }
        clip
    }

    /// The RTP packets (sequence number, payload, marker) of `clip` played
    /// `times`, starting at access unit `from`: one access unit per IRAP
    /// with its parameter sets, one per other slice.
    fn hevc_packets(clip: &[Bytes], from: usize, times: usize) -> Vec<(u16, Bytes, bool)> {
        let mut units: Vec<Vec<Bytes>> = Vec::new();
        for nal in clip {
            let kind = Codec::H265.nal_type(nal);
            if kind == 32 || kind == 1 || units.is_empty() {
                units.push(Vec::new());
            }
            units.last_mut().unwrap().push(nal.clone());
        }
        let mut out = Vec::new();
        let mut seq = 65_000u16; // wraps
        for unit in units.iter().cycle().skip(from).take(units.len() * times) {
            let payloads = crate::rtp::h265::packetize_nals(unit.iter().cloned(), 1000);
            let last = payloads.len() - 1;
            for (i, payload) in payloads.into_iter().enumerate() {
                out.push((seq, payload, i == last));
                seq = seq.wrapping_add(1);
            }
        }
        out
    }

    /// Arrival times 10 ms apart.
    fn at(i: usize) -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now) + Duration::from_millis(10 * i as u64)
    }

    #[test]
    fn the_clip_check_follows_a_looping_clip_through_fragments_and_aggregates() {
        let clip = Arc::new(hevc_clip());
        // Joined mid-clip (at the second GOP), around the loop twice.
        let mut check = ClipCheck::new(Codec::H265, clip.clone());
        for (i, (seq, payload, marker)) in hevc_packets(&clip, 4, 2).into_iter().enumerate() {
            check.on_packet(seq, &payload, marker, at(i));
        }
        assert_eq!((check.matched, check.mismatched), (2 * clip.len() as u64, 0), "{:?}", check.first_mismatch);
        assert_eq!((check.keyframes_matched, check.packets_missing), (4, 0));
    }

    #[test]
    fn the_clip_check_puts_late_packets_back_in_order() {
        let clip = Arc::new(hevc_clip());
        let mut packets = hevc_packets(&clip, 0, 2);
        // Packet 3 (inside the first IRAP) arrives 20 packets late, as a
        // retransmission would; packets 30 and 31 swap places.
        let late = packets.remove(3);
        packets.insert(23, late);
        packets.swap(30, 31);
        let mut check = ClipCheck::new(Codec::H265, clip.clone());
        for (i, (seq, payload, marker)) in packets.iter().enumerate() {
            check.on_packet(*seq, payload, *marker, at(0) + Duration::from_millis(i as u64));
        }
        assert_eq!((check.mismatched, check.packets_missing), (0, 0), "{:?}", check.first_mismatch);
        assert_eq!((check.matched, check.keyframes_matched), (2 * clip.len() as u64, 4));
    }

    #[test]
    fn the_clip_check_counts_a_changed_byte_and_survives_loss() {
        let clip = Arc::new(hevc_clip());
        let packets = hevc_packets(&clip, 0, 2);
        // A lost packet (the middle of the first IRAP): once the wait is
        // over, that IRAP is not counted, nothing is a mismatch and the
        // check finds its place again.
        let mut check = ClipCheck::new(Codec::H265, clip.clone());
        for (i, (seq, payload, marker)) in packets.iter().enumerate() {
            if i != 3 {
                check.on_packet(*seq, payload, *marker, at(i));
            }
        }
        assert_eq!(check.mismatched, 0, "{:?}", check.first_mismatch);
        assert_eq!((check.keyframes_matched, check.packets_missing), (3, 1));
        // One byte changed in a P slice: a mismatch, and the slice's access
        // unit is damaged.
        let mut check = ClipCheck::new(Codec::H265, clip.clone());
        for (i, (seq, payload, marker)) in packets.iter().enumerate() {
            let mut payload = payload.to_vec();
            if i == packets.len() - 1 {
                *payload.last_mut().unwrap() ^= 1;
            }
            check.on_packet(*seq, &Bytes::from(payload), *marker, at(i));
        }
        assert_eq!(check.mismatched, 1);
        assert_eq!(check.keyframes_matched, 4);
        assert!(check.first_mismatch.as_deref().is_some_and(|m| m.contains("type 1")), "{:?}", check.first_mismatch);
    }

    /// `packets`, renumbered from 1000 on, as one sender's sequence.
    fn renumbered(packets: impl IntoIterator<Item = (u16, Bytes, bool)>) -> Vec<(u16, Bytes, bool)> {
        packets.into_iter().enumerate().map(|(i, (_, payload, marker))| (1000 + i as u16, payload, marker)).collect()
    }

    #[test]
    fn a_restart_at_a_cached_keyframe_is_allowed_and_a_jump_elsewhere_is_not() {
        let clip = Arc::new(hevc_clip());
        // Access units 0-5 of the clip, then (a PLI answered from the GOP
        // cache) from the keyframe of the second GOP again, then on.
        let one_loop = hevc_packets(&clip, 0, 1);
        let second_gop = hevc_packets(&clip, 4, 1);
        let restarted = renumbered(one_loop.iter().cloned().chain(second_gop.iter().cloned()));
        let mut check = ClipCheck::new(Codec::H265, clip.clone());
        for (i, (seq, payload, marker)) in restarted.iter().enumerate() {
            check.on_packet(*seq, payload, *marker, at(i));
        }
        assert_eq!((check.mismatched, check.restarts), (0, 1), "{:?}", check.first_mismatch);
        // A jump to a P slice (access unit 2) is not a restart.
        let jumped = renumbered(one_loop.iter().cloned().chain(hevc_packets(&clip, 2, 1)));
        let mut check = ClipCheck::new(Codec::H265, clip.clone());
        for (i, (seq, payload, marker)) in jumped.iter().enumerate() {
            check.on_packet(*seq, payload, *marker, at(i));
        }
        assert_eq!((check.mismatched, check.restarts), (1, 0));
    }

    #[test]
    fn joining_in_the_middle_of_a_fragmented_nal_unit_is_no_mismatch() {
        // rtc's FU-A depacketizer turns the rest of a fragmented NAL unit
        // into a truncated one; a viewer joining an SFU's stream mid-frame
        // gets exactly that first.
        let nal = |header: u8, len: usize| {
            let mut n = vec![header];
            n.extend((0..len).map(|i| (i * 7) as u8));
            Bytes::from(n)
        };
        let clip = Arc::new(vec![nal(0x67, 10), nal(0x68, 4), nal(0x65, 3000), nal(0x41, 500)]);
        let mut packets = Vec::new();
        for unit in [&clip[..3], &clip[3..], &clip[..3], &clip[3..]] {
            let payloads = crate::rtp::h264::packetize_nals(unit.iter().cloned(), 1000);
            let last = payloads.len() - 1;
            packets.extend(payloads.into_iter().enumerate().map(|(i, p)| (p, i == last)));
        }
        // Packet 0 is the STAP-A of SPS and PPS, 1-4 the IDR's fragments.
        let mut check = ClipCheck::new(Codec::H264, clip.clone());
        for (i, (payload, marker)) in packets.iter().enumerate().skip(2) {
            check.on_packet(i as u16, payload, *marker, at(i));
        }
        assert_eq!(check.mismatched, 0, "{:?}", check.first_mismatch);
        assert_eq!(check.keyframes_matched, 1, "the damaged first keyframe is not counted, the second is");
    }

    #[test]
    fn parameter_sets_in_front_of_every_keyframe_need_only_equal_the_clips() {
        // The clip carries its parameter sets once; the server sends them
        // in front of both IRAPs.
        let full = hevc_clip();
        let clip: Vec<Bytes> = full[..7].iter().chain(&full[10..]).cloned().collect();
        let mut check = ClipCheck::new(Codec::H265, Arc::new(clip.clone()));
        for (i, (seq, payload, marker)) in hevc_packets(&full, 0, 1).into_iter().enumerate() {
            check.on_packet(seq, &payload, marker, at(i));
        }
        assert_eq!((check.mismatched, check.keyframes_matched), (0, 2), "{:?}", check.first_mismatch);
        // A parameter set the clip does not have is a mismatch.
        let mut check = ClipCheck::new(Codec::H265, Arc::new(clip));
        let mut changed = full[1].to_vec();
        *changed.last_mut().unwrap() ^= 1;
        for (i, payload) in crate::rtp::h265::packetize_nals([Bytes::from(changed)], 1000).into_iter().enumerate() {
            check.on_packet(i as u16, &payload, true, at(i));
        }
        assert_eq!(check.mismatched, 1);
    }

    #[test]
    fn the_clip_check_reads_h264_too() {
        let nal = |header: u8, len: usize| {
            let mut n = vec![header];
            n.extend((0..len).map(|i| i as u8));
            Bytes::from(n)
        };
        let clip = Arc::new(vec![nal(0x67, 10), nal(0x68, 4), nal(0x65, 3000), nal(0x41, 500)]);
        let mut check = ClipCheck::new(Codec::H264, clip.clone());
        let mut seq = 0u16;
        for unit in [&clip[..3], &clip[3..], &clip[..3]] {
            let payloads = crate::rtp::h264::packetize_nals(unit.iter().cloned(), 1000);
            let last = payloads.len() - 1;
            for (i, payload) in payloads.into_iter().enumerate() {
                check.on_packet(seq, &payload, i == last, at(seq.into()));
                seq += 1;
            }
        }
        assert_eq!((check.matched, check.mismatched, check.keyframes_matched), (7, 0, 2), "{:?}", check.first_mismatch);
    }

    #[test]
    fn the_answer_names_the_codec() {
        let answer = |first: &str| {
            format!(
                "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF {first}\r\na=rtpmap:102 H264/90000\r\na=rtpmap:49 H265/90000\r\n"
            )
        };
        assert_eq!(answered_codec(&answer("102")), Some(Codec::H264));
        assert_eq!(answered_codec(&answer("49")), Some(Codec::H265));
        assert_eq!(answered_codec(&answer("96")), None);
        assert_eq!(answered_codec("v=0\r\n"), None);
    }

    #[test]
    fn finds_the_extmap_id_in_an_answer() {
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
                   a=extmap:7 http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time\r\n";
        assert_eq!(extmap_id(sdp, ABS_CAPTURE_TIME_URI), Some(7));
        assert_eq!(extmap_id("v=0\r\n", ABS_CAPTURE_TIME_URI), None);
    }
}
