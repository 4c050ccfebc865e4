//! Codecs: what the camera sends, taken apart without decoding. One module
//! per codec ([`h264`], [`h265`]) behind the small [`Codec`] enum and the
//! [`Processor`] that picks one; [`annexb`] is what they share.
//!
//! A processor turns a source's [`RawFrame`] into a checked [`AccessUnit`]:
//! its NAL units, whether decoding can start there (an IDR, an H.265 IRAP),
//! and the stream's canonical [`ParameterSets`], put in front of a keyframe
//! that came without them. Nothing downstream of the processor looks inside
//! the bytes: the hub, viewers and the recorder work on access units and
//! these verdicts, whatever the codec.

pub mod annexb;
mod bits;
pub mod h264;
pub mod h265;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// The video codecs a camera may send (never transcoded). H.264 where
/// nothing says otherwise (the ring's older formats, `codec:` unset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Codec {
    #[default]
    H264,
    H265,
}

impl Codec {
    pub const ALL: [Codec; 2] = [Codec::H264, Codec::H265];

    /// `H.264` or `H.265`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "H.264",
            Codec::H265 => "H.265",
        }
    }

    /// The encoding name of SDP's `a=rtpmap` (RFC 6184, RFC 7798).
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::H264 => "H264",
            Codec::H265 => "H265",
        }
    }

    /// The raw elementary stream's file extension: `h264` or `h265`.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
        }
    }

    /// The codec of a raw elementary stream file by its extension (`h264`,
    /// `264`, `avc`; `h265`, `265`, `hevc`), case-insensitive.
    pub fn from_extension(ext: &str) -> Option<Codec> {
        match ext.to_ascii_lowercase().as_str() {
            "h264" | "264" | "avc" => Some(Codec::H264),
            "h265" | "265" | "hevc" => Some(Codec::H265),
            _ => None,
        }
    }

    /// The type of a NAL unit from its header.
    pub fn nal_type(self, nal: &[u8]) -> u8 {
        match self {
            Codec::H264 => h264::nal_unit_type(nal),
            Codec::H265 => h265::nal_unit_type(nal),
        }
    }

    /// Whether a NAL unit is a keyframe's slice: IDR (H.264), IRAP (H.265).
    pub fn is_keyframe_nal(self, nal: &[u8]) -> bool {
        match self {
            Codec::H264 => !nal.is_empty() && h264::nal_unit_type(nal) == h264::nal_type::IDR,
            Codec::H265 => nal.len() >= 2 && h265::is_irap(h265::nal_unit_type(nal)),
        }
    }

    /// Whether a NAL unit is a parameter set: SPS, PPS (H.264), VPS, SPS,
    /// PPS (H.265).
    pub fn is_parameter_set(self, nal: &[u8]) -> bool {
        match self {
            Codec::H264 => {
                !nal.is_empty() && matches!(h264::nal_unit_type(nal), h264::nal_type::SPS | h264::nal_type::PPS)
            }
            Codec::H265 => {
                nal.len() >= 2
                    && matches!(
                        h265::nal_unit_type(nal),
                        h265::nal_type::VPS | h265::nal_type::SPS | h265::nal_type::PPS
                    )
            }
        }
    }

    /// The access unit delimiter's NAL unit type.
    pub fn aud(self) -> u8 {
        match self {
            Codec::H264 => h264::nal_type::AUD,
            Codec::H265 => h265::nal_type::AUD,
        }
    }

    /// Whether a NAL unit is a coded slice (part of a picture).
    pub fn is_vcl(self, nal: &[u8]) -> bool {
        match self {
            Codec::H264 => h264::is_vcl(h264::nal_unit_type(nal)),
            Codec::H265 => h265::is_vcl(h265::nal_unit_type(nal)),
        }
    }

    /// Whether a NAL unit begins a new access unit, given whether the
    /// current one already has a slice ([`h264::starts_access_unit`],
    /// [`h265::starts_access_unit`]). Only the first bytes of the NAL unit
    /// are looked at (3 at most), so a NAL unit's head is enough.
    pub fn starts_access_unit(self, nal: &[u8], seen_vcl: bool) -> bool {
        match self {
            Codec::H264 => h264::starts_access_unit(nal, seen_vcl),
            Codec::H265 => h265::starts_access_unit(nal, seen_vcl),
        }
    }

    /// Groups an Annex-B elementary stream (a `.h264`/`.h265` file) held
    /// in memory into access units: ranges that include their start codes
    /// (with one leading zero of a 4-byte code); consecutive ranges touch.
    /// Bytes before the first start code are left out.
    pub fn split_access_units(self, stream: &[u8]) -> Vec<Range<usize>> {
        let mut units = Vec::new();
        let mut start: Option<usize> = None;
        let mut seen_vcl = false;
        for nal in annexb::NalUnits::new(stream) {
            let bytes = &stream[nal.clone()];
            // This NAL's start code (3 or 4 bytes) belongs to its access unit.
            let mut begin = nal.start.saturating_sub(3);
            if begin > 0 && stream.get(begin - 1) == Some(&0) {
                begin -= 1;
            }
            if self.starts_access_unit(bytes, seen_vcl) {
                if let Some(s) = start {
                    units.push(s..begin);
                }
                start = Some(begin);
                seen_vcl = false;
            }
            start.get_or_insert(begin);
            seen_vcl |= self.is_vcl(bytes);
        }
        if let Some(s) = start {
            units.push(s..stream.len());
        }
        units
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the stream's SPS says, per codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoInfo {
    H264(h264::SpsInfo),
    H265(h265::SpsInfo),
}

impl VideoInfo {
    pub fn codec(&self) -> Codec {
        match self {
            VideoInfo::H264(_) => Codec::H264,
            VideoInfo::H265(_) => Codec::H265,
        }
    }

    /// Picture size after cropping.
    pub fn size(&self) -> (u32, u32) {
        match self {
            VideoInfo::H264(info) => (info.width, info.height),
            VideoInfo::H265(info) => (info.width, info.height),
        }
    }

    /// Profile and level for people: `H.264 Constrained Baseline (42c01f)`,
    /// `H.265 Main, tier Main, level 4.1 (level-id=123)`.
    pub fn describe(&self) -> String {
        match self {
            VideoInfo::H264(info) => {
                let profile = crate::webrtc::negotiate::Profile::classify(info.profile_idc, info.constraint_flags);
                format!("H.264 {} ({})", profile.name(), info.profile_level_id())
            }
            VideoInfo::H265(info) => format!("H.265 {}", info.describe()),
        }
    }
}

/// The stream's canonical parameter sets, shared by every access unit that
/// decodes with them.
#[derive(Debug)]
pub struct ParameterSets {
    /// The VPS (H.265 only).
    pub vps: Option<Bytes>,
    pub sps: Bytes,
    pub pps: Bytes,
    pub info: VideoInfo,
    /// Bumped each time the camera sends different parameter sets.
    pub generation: u64,
    /// `00 00 00 01` before each of them, in order, ready to write in front
    /// of a keyframe.
    pub annexb: Bytes,
}

impl ParameterSets {
    /// Builds the set and its Annex-B form.
    pub fn new(vps: Option<Bytes>, sps: Bytes, pps: Bytes, info: VideoInfo, generation: u64) -> ParameterSets {
        let mut annexb = Vec::with_capacity(12 + vps.as_ref().map_or(0, Bytes::len) + sps.len() + pps.len());
        for nal in vps.iter().chain([&sps, &pps]) {
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(nal);
        }
        ParameterSets { vps, sps, pps, info, generation, annexb: annexb.into() }
    }

    pub fn codec(&self) -> Codec {
        self.info.codec()
    }

    /// VPS (H.265), SPS and PPS in order, without start codes.
    pub fn nal_units(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.vps.iter().cloned().chain([self.sps.clone(), self.pps.clone()])
    }

    /// The H.264 SPS figures, for an H.264 stream.
    pub fn h264(&self) -> Option<&h264::SpsInfo> {
        match &self.info {
            VideoInfo::H264(info) => Some(info),
            VideoInfo::H265(_) => None,
        }
    }

    /// The H.265 SPS figures, for an H.265 stream.
    pub fn h265(&self) -> Option<&h265::SpsInfo> {
        match &self.info {
            VideoInfo::H265(info) => Some(info),
            VideoInfo::H264(_) => None,
        }
    }
}

/// A NAL unit inside [`AccessUnit::data`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NalUnit {
    pub range: Range<usize>,
    pub nal_type: u8,
}

/// One checked access unit, shared by every consumer through an `Arc`.
#[derive(Debug)]
pub struct AccessUnit {
    pub codec: Codec,
    /// Our own sequence number: consecutive, except across a reported gap.
    pub seq: u64,
    /// The access unit exactly as the camera sent it (Annex-B).
    pub data: Bytes,
    pub nals: Vec<NalUnit>,
    /// Decoding can start here: an IDR (H.264), an IRAP (H.265: IDR, CRA, BLA).
    pub is_keyframe: bool,
    /// The parameter sets this frame decodes with (None before any).
    pub parameter_sets: Option<Arc<ParameterSets>>,
    /// True for a keyframe that arrived without its parameter sets:
    /// consumers put the cached ones in front of it (after its AUD).
    pub prepend_parameter_sets: bool,
    /// The first frame after a gap (reader overrun, camera restart, RTP loss).
    pub after_gap: bool,
    pub frame_number: u64,
    pub capture_time: Duration,
    pub read_time: Duration,
    pub camera_id: i32,
}

impl AccessUnit {
    /// The parameter sets to insert, if this access unit needs them.
    fn prepended(&self) -> Option<&ParameterSets> {
        self.parameter_sets.as_deref().filter(|_| self.prepend_parameter_sets)
    }

    /// How many NAL units stay in front of inserted parameter sets: the
    /// access unit delimiter, which must stay first (H.264 7.4.1.2.3, H.265
    /// 7.4.2.4.4).
    fn leading_aud(&self) -> usize {
        usize::from(self.nals.first().is_some_and(|nal| nal.nal_type == self.codec.aud()))
    }

    /// The NAL units to send, without start codes: the cached parameter sets
    /// where this keyframe lacked them (after its AUD, if any). Zero-copy
    /// slices.
    pub fn nal_units(&self) -> impl Iterator<Item = Bytes> + '_ {
        let lead = self.leading_aud();
        let slice = |nal: &NalUnit| self.data.slice(nal.range.clone());
        let prefix = self.prepended().map(|ps| ps.nal_units().collect::<Vec<_>>());
        self.nals[..lead]
            .iter()
            .map(slice)
            .chain(prefix.into_iter().flatten())
            .chain(self.nals[lead..].iter().map(slice))
    }

    /// The access unit as Annex-B byte chunks, for writing to a file: the
    /// camera's bytes, with the cached parameter sets (if prepended) after
    /// its access unit delimiter, or in front when it has none.
    pub fn annexb_chunks(&self) -> impl Iterator<Item = &[u8]> + Clone {
        let prefix = self.prepended().map(|ps| &ps.annexb[..]);
        // The cut is at the end of the AUD's payload, so the rest begins
        // with the next start code.
        let split = match (prefix.is_some(), self.leading_aud()) {
            (true, 1) => self.nals[0].range.end.min(self.data.len()),
            _ => 0,
        };
        let (head, tail) = self.data.split_at(split);
        std::iter::once(head).filter(|h| !h.is_empty()).chain(prefix).chain(std::iter::once(tail))
    }

    /// Bytes [`AccessUnit::annexb_chunks`] yields.
    pub fn annexb_len(&self) -> usize {
        self.annexb_chunks().map(<[u8]>::len).sum()
    }

    /// What this access unit costs in memory while queued or cached: its
    /// buffer, its NAL bookkeeping and the struct (hub budgets count this).
    pub fn memory_bytes(&self) -> usize {
        self.data.len() + self.nals.capacity() * std::mem::size_of::<NalUnit>() + std::mem::size_of::<AccessUnit>()
    }
}

/// Why a processor refused a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessError {
    H264(h264::ProcessError),
    H265(h265::ProcessError),
}

impl ProcessError {
    /// Label for the error metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProcessError::H264(e) => e.label(),
            ProcessError::H265(e) => e.label(),
        }
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::H264(e) => write!(f, "H.264: {e}"),
            ProcessError::H265(e) => write!(f, "H.265: {e}"),
        }
    }
}

impl std::error::Error for ProcessError {}

/// Sequence numbers and the gap mark of a processor, the same for every
/// codec.
#[derive(Debug, Default)]
struct Numbering {
    next_seq: u64,
    gap_pending: bool,
}

impl Numbering {
    fn note_gap(&mut self) {
        self.gap_pending = true;
    }

    /// `frame` as the next access unit of `codec`, given what that codec's
    /// processor found in it.
    fn access_unit(
        &mut self,
        codec: Codec,
        frame: RawFrame,
        nals: Vec<NalUnit>,
        is_keyframe: bool,
        parameter_sets: Option<Arc<ParameterSets>>,
        prepend_parameter_sets: bool,
    ) -> AccessUnit {
        let seq = self.next_seq;
        self.next_seq += 1;
        AccessUnit {
            codec,
            seq,
            data: frame.data,
            nals,
            is_keyframe,
            parameter_sets,
            prepend_parameter_sets,
            after_gap: std::mem::take(&mut self.gap_pending),
            frame_number: frame.frame_number,
            capture_time: frame.capture_time,
            read_time: frame.read_time,
            camera_id: frame.camera_id,
        }
    }
}

/// The processor of one codec: the stateful part (parameter-set cache,
/// sequence numbers) of a stream.
#[derive(Debug)]
pub enum Processor {
    H264(h264::Processor),
    H265(h265::Processor),
}

impl Processor {
    pub fn new(codec: Codec) -> Processor {
        match codec {
            Codec::H264 => Processor::H264(h264::Processor::new()),
            Codec::H265 => Processor::H265(h265::Processor::new()),
        }
    }

    pub fn codec(&self) -> Codec {
        match self {
            Processor::H264(_) => Codec::H264,
            Processor::H265(_) => Codec::H265,
        }
    }

    /// Checks one frame and turns it into an access unit.
    pub fn process(&mut self, frame: RawFrame) -> Result<AccessUnit, ProcessError> {
        match self {
            Processor::H264(p) => p.process(frame).map_err(ProcessError::H264),
            Processor::H265(p) => p.process(frame).map_err(ProcessError::H265),
        }
    }

    /// Frames were lost: the next access unit is marked `after_gap`.
    pub fn note_gap(&mut self) {
        match self {
            Processor::H264(p) => p.note_gap(),
            Processor::H265(p) => p.note_gap(),
        }
    }
}

/// One access unit as a source delivered it: Annex-B bytes plus timing
/// (from the camera daemon's ring header, or an RTSP camera's RTP clock).
#[derive(Clone, Debug)]
pub struct RawFrame {
    /// What the bytes are (the ring's `format`, the RTSP camera's SDP).
    pub codec: Codec,
    /// The access unit, Annex-B, exactly as the source delivered it.
    pub data: Bytes,
    /// The daemon's `frame_number`, or the source's own count.
    pub frame_number: u64,
    /// The ring position (`write_index` value) the frame was written at; a
    /// source without a ring counts frames here.
    pub index: u32,
    /// Capture time on CLOCK_MONOTONIC (the daemon's `timestamp`, or the RTP
    /// timestamp mapped onto that clock).
    pub capture_time: Duration,
    /// When the source had the whole frame, on CLOCK_MONOTONIC.
    pub read_time: Duration,
    pub camera_id: i32,
    pub width: i32,
    pub height: i32,
}
