//! What happens to each depacketized frame, sans-IO: gaps, waiting for a
//! keyframe, parameter-set insertion, capture times, `Connected`.
//!
//! Rules:
//! - A frame that retina reports with `loss() > 0` may be missing its head
//!   (retina cannot tell which access unit the lost packets belonged to), so
//!   it is dropped, never passed on as whole.
//! - After a gap (loss, session end) and at every session start, frames are
//!   dropped until a random-access frame (IDR / IRAP) without loss.
//! - Exactly one `Gap` is emitted between two frames that are not
//!   continuous, and none before the very first frame.
//! - retina strips in-band VPS/SPS/PPS from every frame and keeps a
//!   canonical copy (from the SDP or in band). Every random-access frame
//!   gets that copy back, right after its AUD (the AUD stays first, as
//!   H.264 7.4.1.2.3 / H.265 7.4.2.4.4 require): where the camera sent them
//!   before each keyframe (most do) the frame is again exactly what the
//!   camera sent, so frames from RTSP and from the ring look alike and a
//!   recording of an RTSP path equals the camera's stream access unit by
//!   access unit; where it sent them once, each keyframe now carries them,
//!   which every consumer is glad of.

use std::time::Duration;

use bytes::Bytes;

use super::clock::CaptureClock;
use super::{GapReason, SourceEvent, Transport, VideoCodec};
use crate::codec::annexb::NalUnits;
use crate::codec::{h264, h265};

/// What a session knows about the stream's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// VPS (H.265), SPS, PPS, each behind a 4-byte start code.
    pub annexb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub fps: Option<f64>,
}

/// One frame from retina, Annex-B with 4-byte start codes.
#[derive(Debug)]
pub struct FrameIn {
    pub data: Vec<u8>,
    pub rtp_timestamp: i64,
    pub clock_rate: u32,
    pub arrival: Duration,
    pub is_random_access: bool,
    pub loss: u16,
}

/// What [`Gate::frame`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Emitted,
    /// Lossy, or not a keyframe while waiting for one.
    Dropped,
    /// A keyframe, but no parameter sets known to decode it with.
    NoParameters,
}

/// Counters, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GateStats {
    pub emitted: u64,
    pub dropped_waiting_for_keyframe: u64,
    pub dropped_lossy: u64,
    pub dropped_no_parameters: u64,
}

#[derive(Debug)]
pub struct Gate {
    codec: VideoCodec,
    transport: Transport,
    params: Option<Params>,
    wait_for_keyframe: bool,
    connected_sent: bool,
    clock: CaptureClock,
    max_jump: Duration,
    /// A frame went out since the last `Gap` (across sessions).
    emitted_since_gap: bool,
    /// Frames emitted in the current session.
    pub session_frames: u64,
    pub stats: GateStats,
}

impl Gate {
    pub fn new(max_jump: Duration) -> Gate {
        Gate {
            codec: VideoCodec::H264,
            transport: Transport::Tcp,
            params: None,
            wait_for_keyframe: true,
            connected_sent: false,
            clock: CaptureClock::new(max_jump),
            max_jump,
            emitted_since_gap: false,
            session_frames: 0,
            stats: GateStats::default(),
        }
    }

    /// A session is playing; `params` as known from the SDP, if any.
    pub fn start_session(&mut self, codec: VideoCodec, transport: Transport, params: Option<Params>) {
        self.codec = codec;
        self.transport = transport;
        self.params = params;
        self.wait_for_keyframe = true;
        self.connected_sent = false;
        self.clock = CaptureClock::new(self.max_jump);
        self.session_frames = 0;
    }

    /// The session ended (error, stall, stop): a `Gap` if frames went out
    /// since the last one.
    pub fn end_session(&mut self, emit: &mut dyn FnMut(SourceEvent)) {
        self.gap(GapReason::SessionEnded, emit);
    }

    /// The frame about to be handed to [`Gate::frame`] set new parameters.
    pub fn new_parameters(&mut self, params: Option<Params>) {
        if params.is_some() {
            self.params = params;
        }
    }

    pub fn frame(&mut self, frame: FrameIn, emit: &mut dyn FnMut(SourceEvent)) -> Outcome {
        if frame.loss > 0 {
            self.gap(GapReason::Loss { packets: frame.loss }, emit);
            self.stats.dropped_lossy += 1;
            return Outcome::Dropped;
        }
        // retina calls an access unit without any non-IDR slice random
        // access, even one with no slice at all (an SEI-only unit): to start
        // decoding, require an IDR slice.
        if self.wait_for_keyframe && !(frame.is_random_access && has_idr_slice(self.codec, &frame.data)) {
            self.stats.dropped_waiting_for_keyframe += 1;
            return Outcome::Dropped;
        }
        let Some(params) = &self.params else {
            // retina saw no SPS/PPS yet (none in the SDP, none in band before
            // this keyframe): it cannot be decoded; wait for the next one.
            self.stats.dropped_no_parameters += 1;
            self.wait_for_keyframe = true;
            return Outcome::NoParameters;
        };
        self.wait_for_keyframe = false;
        if !self.connected_sent {
            self.connected_sent = true;
            emit(SourceEvent::Connected {
                codec: self.codec,
                width: params.width,
                height: params.height,
                fps: params.fps,
                transport: self.transport,
            });
        }
        let data = if frame.is_random_access {
            insert_parameter_sets(self.codec, &frame.data, &params.annexb)
        } else {
            frame.data
        };
        let capture_time = self.clock.map(frame.rtp_timestamp, frame.clock_rate, frame.arrival);
        self.emitted_since_gap = true;
        self.session_frames += 1;
        self.stats.emitted += 1;
        emit(SourceEvent::Frame {
            data: Bytes::from(data),
            capture_time,
            rtp_timestamp: frame.rtp_timestamp,
            is_random_access: frame.is_random_access,
        });
        Outcome::Emitted
    }

    fn gap(&mut self, reason: GapReason, emit: &mut dyn FnMut(SourceEvent)) {
        self.wait_for_keyframe = true;
        if std::mem::take(&mut self.emitted_since_gap) {
            emit(SourceEvent::Gap { reason });
        }
    }
}

/// Whether the Annex-B access unit has an IDR slice NAL unit (H.265:
/// IDR_W_RADL or IDR_N_LP; CRA/BLA are not random access for retina).
fn has_idr_slice(codec: VideoCodec, data: &[u8]) -> bool {
    NalUnits::new(data).any(|nal| match codec {
        VideoCodec::H264 => codec.nal_type(&data[nal]) == h264::nal_type::IDR,
        VideoCodec::H265 => {
            matches!(codec.nal_type(&data[nal]), h265::nal_type::IDR_W_RADL | h265::nal_type::IDR_N_LP)
        }
    })
}

/// `frame` with `params` (Annex-B) inserted after a leading AUD, or at the
/// front if there is none. One copy into a buffer of the final size.
pub fn insert_parameter_sets(codec: VideoCodec, frame: &[u8], params: &[u8]) -> Vec<u8> {
    // The AUD ends where the next start code begins.
    let split = match NalUnits::new(frame).next() {
        Some(first) if codec.nal_type(&frame[first.clone()]) == codec.aud() => first.end,
        _ => 0,
    };
    let mut out = Vec::with_capacity(frame.len() + params.len());
    out.extend_from_slice(&frame[..split]);
    out.extend_from_slice(params);
    out.extend_from_slice(&frame[split..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUD: &[u8] = &[0, 0, 0, 1, 0x09, 0xf0];
    const SPS_PPS: &[u8] = &[0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce];
    const IDR: &[u8] = &[0, 0, 0, 1, 0x65, 0x88, 0x84];
    const P: &[u8] = &[0, 0, 0, 1, 0x41, 0x9a];

    fn params() -> Params {
        Params { annexb: SPS_PPS.to_vec(), width: 640, height: 360, fps: Some(30.0) }
    }

    fn frame(parts: &[&[u8]], rtp: i64, rap: bool, loss: u16) -> FrameIn {
        FrameIn {
            data: parts.concat(),
            rtp_timestamp: rtp,
            clock_rate: 90_000,
            arrival: Duration::from_secs(100) + Duration::from_nanos(rtp as u64 * 1_000_000_000 / 90_000),
            is_random_access: rap,
            loss,
        }
    }

    fn run(gate: &mut Gate, frames: Vec<FrameIn>) -> Vec<SourceEvent> {
        let mut events = Vec::new();
        for f in frames {
            let _ = gate.frame(f, &mut |e| events.push(e));
        }
        events
    }

    fn data(e: &SourceEvent) -> &[u8] {
        match e {
            SourceEvent::Frame { data, .. } => data,
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn inserts_after_aud_or_in_front() {
        assert_eq!(
            insert_parameter_sets(VideoCodec::H264, &[AUD, IDR].concat(), SPS_PPS),
            [AUD, SPS_PPS, IDR].concat()
        );
        assert_eq!(insert_parameter_sets(VideoCodec::H264, IDR, SPS_PPS), [SPS_PPS, IDR].concat());
        // An AUD alone, and garbage: no panic, nothing lost.
        assert_eq!(insert_parameter_sets(VideoCodec::H264, AUD, SPS_PPS), [AUD, SPS_PPS].concat());
        assert_eq!(insert_parameter_sets(VideoCodec::H264, &[0, 0], SPS_PPS), [SPS_PPS, &[0, 0]].concat());
        // H.265 AUD: type 35 (header 0x46 0x01).
        let aud265: &[u8] = &[0, 0, 0, 1, 0x46, 0x01, 0x50];
        let idr265: &[u8] = &[0, 0, 0, 1, 0x26, 0x01, 0xaf];
        assert_eq!(
            insert_parameter_sets(VideoCodec::H265, &[aud265, idr265].concat(), SPS_PPS),
            [aud265, SPS_PPS, idr265].concat()
        );
    }

    #[test]
    fn waits_for_keyframe_inserts_at_every_keyframe_and_sends_connected_first() {
        let mut gate = Gate::new(Duration::from_secs(1));
        gate.start_session(VideoCodec::H264, Transport::Tcp, Some(params()));
        let events = run(
            &mut gate,
            vec![
                frame(&[AUD, P], 0, false, 0),
                frame(&[AUD, IDR], 3000, true, 0),
                frame(&[AUD, P], 6000, false, 0),
                frame(&[AUD, IDR], 9000, true, 0),
            ],
        );
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(matches!(events[0], SourceEvent::Connected { width: 640, height: 360, .. }));
        assert_eq!(data(&events[1]), [AUD, SPS_PPS, IDR].concat());
        assert_eq!(data(&events[2]), [AUD, P].concat());
        assert_eq!(data(&events[3]), [AUD, SPS_PPS, IDR].concat(), "restored at every keyframe");
        assert_eq!(gate.stats.dropped_waiting_for_keyframe, 1);
    }

    #[test]
    fn loss_is_one_gap_and_the_lossy_frame_is_dropped() {
        let mut gate = Gate::new(Duration::from_secs(1));
        gate.start_session(VideoCodec::H264, Transport::Tcp, Some(params()));
        let events = run(
            &mut gate,
            vec![
                frame(&[AUD, IDR], 0, true, 0),
                frame(&[AUD, P], 3000, false, 2),
                frame(&[AUD, P], 6000, false, 0),
                frame(&[AUD, IDR], 9000, true, 1),
                frame(&[AUD, IDR], 12000, true, 0),
            ],
        );
        let kinds: Vec<_> = events
            .iter()
            .map(|e| match e {
                SourceEvent::Connected { .. } => "connected",
                SourceEvent::Frame { .. } => "frame",
                SourceEvent::Gap { .. } => "gap",
                SourceEvent::Error { .. } => "error",
            })
            .collect();
        assert_eq!(kinds, ["connected", "frame", "gap", "frame"]);
        assert_eq!(events[2], SourceEvent::Gap { reason: GapReason::Loss { packets: 2 } });
        assert_eq!(data(&events[3]), [AUD, SPS_PPS, IDR].concat());
    }

    #[test]
    fn session_end_gaps_once_and_reinserts() {
        let mut gate = Gate::new(Duration::from_secs(1));
        let mut events = Vec::new();
        gate.end_session(&mut |e| events.push(e));
        assert!(events.is_empty(), "no gap before the first frame");
        gate.start_session(VideoCodec::H264, Transport::Udp, Some(params()));
        events.extend(run(&mut gate, vec![frame(&[AUD, IDR], 0, true, 0)]));
        gate.end_session(&mut |e| events.push(e));
        gate.end_session(&mut |e| events.push(e));
        gate.start_session(VideoCodec::H264, Transport::Udp, Some(params()));
        events.extend(run(&mut gate, vec![frame(&[AUD, IDR], 0, true, 0)]));
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(events[2], SourceEvent::Gap { reason: GapReason::SessionEnded });
        assert!(matches!(events[3], SourceEvent::Connected { transport: Transport::Udp, .. }));
        assert_eq!(data(&events[4]), [AUD, SPS_PPS, IDR].concat());
    }

    #[test]
    fn parameters_in_band_only_and_changes() {
        let mut gate = Gate::new(Duration::from_secs(1));
        gate.start_session(VideoCodec::H264, Transport::Tcp, None);
        // A keyframe before any parameters: dropped.
        let events = run(&mut gate, vec![frame(&[AUD, IDR], 0, true, 0)]);
        assert!(events.is_empty());
        assert_eq!(gate.stats.dropped_no_parameters, 1);
        gate.new_parameters(Some(params()));
        let events = run(&mut gate, vec![frame(&[AUD, IDR], 3000, true, 0), frame(&[AUD, P], 6000, false, 0)]);
        assert_eq!(data(&events[1]), [AUD, SPS_PPS, IDR].concat());
        // New parameters (resolution change): inserted at the next keyframe.
        let mut changed = params();
        changed.annexb = [&[0, 0, 0, 1, 0x67, 0x64][..], &SPS_PPS[6..]].concat();
        gate.new_parameters(Some(changed.clone()));
        let events = run(&mut gate, vec![frame(&[AUD, P], 9000, false, 0), frame(&[AUD, IDR], 12000, true, 0)]);
        assert_eq!(data(&events[0]), [AUD, P].concat());
        assert_eq!(data(&events[1]), [AUD, &changed.annexb[..], IDR].concat());
        // The same parameters again: the same ones in front.
        gate.new_parameters(Some(changed.clone()));
        let events = run(&mut gate, vec![frame(&[AUD, IDR], 15000, true, 0)]);
        assert_eq!(data(&events[0]), [AUD, &changed.annexb[..], IDR].concat());
    }

    #[test]
    fn a_unit_without_slices_does_not_start_decoding() {
        let mut gate = Gate::new(Duration::from_secs(1));
        gate.start_session(VideoCodec::H264, Transport::Tcp, Some(params()));
        let sei: &[u8] = &[0, 0, 0, 1, 0x06, 0x05, 0x01, 0x80];
        let events = run(&mut gate, vec![frame(&[AUD, sei], 0, true, 0), frame(&[AUD, P], 3000, false, 0)]);
        assert!(events.is_empty(), "{events:?}");
        assert!(has_idr_slice(VideoCodec::H264, &[AUD, sei, IDR].concat()));
        assert!(has_idr_slice(VideoCodec::H265, &[0, 0, 1, 0x28, 0x01, 0xaf]));
        assert!(!has_idr_slice(VideoCodec::H265, &[0, 0, 0, 1, 0x2a, 0x01, 0xaf]), "CRA");
    }

    /// Whatever bytes and flags arrive, nothing panics and every emitted
    /// frame holds at least the bytes that came in.
    #[test]
    fn garbage_does_not_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for codec in [VideoCodec::H264, VideoCodec::H265] {
            let mut gate = Gate::new(Duration::from_secs(1));
            let mut count = 0usize;
            for i in 0..5000u64 {
                if i % 97 == 0 {
                    gate.start_session(codec, Transport::Tcp, (next() % 2 == 0).then(params));
                }
                if i % 13 == 0 {
                    gate.new_parameters((next() % 3 != 0).then(params));
                }
                let len = (next() % 40) as usize;
                // Biased towards zeros and start codes.
                let data: Vec<u8> = (0..len)
                    .map(|_| match next() % 6 {
                        0..=2 => 0,
                        3 => 1,
                        _ => next() as u8,
                    })
                    .collect();
                let flags = next();
                let input = FrameIn {
                    data: data.clone(),
                    rtp_timestamp: next() as i64,
                    clock_rate: (next() % 3) as u32 * 45_000,
                    arrival: Duration::from_nanos(next() >> 4),
                    is_random_access: flags & 1 == 1,
                    loss: if flags & 6 == 0 { 1 } else { 0 },
                };
                let _ = gate.frame(input, &mut |e| {
                    if let SourceEvent::Frame { data: out, .. } = &e {
                        assert!(out.len() >= data.len());
                        count += 1;
                    }
                });
                let _ = insert_parameter_sets(codec, &data, SPS_PPS);
                let _ = has_idr_slice(codec, &data);
            }
            assert!(count > 0, "some frames got through");
        }
    }

    #[test]
    fn capture_times_follow_rtp() {
        let mut gate = Gate::new(Duration::from_secs(1));
        gate.start_session(VideoCodec::H264, Transport::Tcp, Some(params()));
        let events = run(&mut gate, vec![frame(&[AUD, IDR], 0, true, 0), frame(&[AUD, P], 3000, false, 0)]);
        let times: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                SourceEvent::Frame { capture_time, rtp_timestamp, .. } => Some((*capture_time, *rtp_timestamp)),
                _ => None,
            })
            .collect();
        assert_eq!(times[1].1 - times[0].1, 3000);
        assert_eq!((times[1].0 - times[0].0).as_nanos(), 33_333_333);
    }
}
