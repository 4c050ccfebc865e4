//! H.264 processor: raw camera frames in, checked access units out.
//!
//! Input: one [`RawFrame`] (an Annex-B access unit copied out of shared
//! memory) at a time, from the media thread. Output: an [`AccessUnit`] that
//! shares the frame's buffer and knows its NAL units, whether it is an IDR,
//! and the parameter sets (SPS/PPS) it decodes with.
//!
//! The processor is sans-IO: plain structs, bytes in, values out, so it is
//! unit-tested and fuzzed alone. It keeps one canonical SPS/PPS pair per
//! stream (compared byte for byte, with a generation bumped on change) and
//! guarantees that every IDR it hands on carries SPS and PPS: where the
//! camera sent them only once, [`AccessUnit::prepend_parameter_sets`] is set
//! and consumers emit the cached pair in front ([`AccessUnit::nal_units`],
//! [`AccessUnit::annexb_chunks`]), without copying the frame.
//!
//! Bad input (no start code, forbidden bit set, an IDR with no parameter
//! sets known, an SPS that does not parse) is a [`ProcessError`]; the caller
//! counts it and drops the frame. Nothing here panics on any byte content.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

pub use super::annexb::{split_annexb, starts_with_start_code};
use super::{AccessUnit, NalUnit, Numbering, ParameterSets, RawFrame, VideoInfo};

/// NAL unit types this program cares about (ITU-T H.264 table 7-1).
pub mod nal_type {
    pub const SLICE: u8 = 1;
    pub const IDR: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
    pub const FILLER: u8 = 12;
}

/// The type of a NAL unit from its header byte.
pub fn nal_unit_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// What the SPS says about the stream, parsed from its real bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    /// constraint_set0..5 flags and the two reserved bits, as sent.
    pub constraint_flags: u8,
    pub level_idc: u8,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4 (1 where the profile has no
    /// field for it).
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    /// Picture size after frame cropping.
    pub width: u32,
    pub height: u32,
    /// `(time_scale, 2 * num_units_in_tick)`: frames per second as a
    /// fraction, when the VUI has timing info (None when absent, zero, or
    /// when the VUI does not parse).
    pub frame_rate: Option<(u32, u32)>,
}

impl SpsInfo {
    /// The `profile-level-id` value for SDP (RFC 6184): six hex digits.
    pub fn profile_level_id(&self) -> String {
        format!("{:02x}{:02x}{:02x}", self.profile_idc, self.constraint_flags, self.level_idc)
    }

    /// A 4:2:0 8-bit stream of this profile, level and size, with no frame
    /// rate (what a capability check needs to know of a camera).
    pub fn with_profile(profile_idc: u8, constraint_flags: u8, level_idc: u8, width: u32, height: u32) -> SpsInfo {
        SpsInfo {
            profile_idc,
            constraint_flags,
            level_idc,
            chroma_format_idc: 1,
            bit_depth_luma: 8,
            bit_depth_chroma: 8,
            width,
            height,
            frame_rate: None,
        }
    }

    /// Frames per second from the VUI timing info.
    pub fn fps(&self) -> Option<f64> {
        self.frame_rate.map(|(scale, ticks)| f64::from(scale) / f64::from(ticks))
    }
}

use super::bits::BitReader;
pub use super::bits::{nal_to_rbsp, SpsError};

/// Parses an SPS NAL unit (header byte included).
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, SpsError> {
    if nal_unit_type(nal) != nal_type::SPS {
        return Err(SpsError::NotAnSps);
    }
    let rbsp = nal_to_rbsp(nal.get(1..).unwrap_or_default());
    let mut r = BitReader::new(&rbsp);
    let profile_idc = r.bits(8)? as u8;
    let constraint_flags = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    r.ue_max("seq_parameter_set_id", 31)?;
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    let (mut bit_depth_luma, mut bit_depth_chroma) = (8, 8);
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = r.ue_max("chroma_format_idc", 3)?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()? == 1;
        }
        bit_depth_luma = r.ue_max("bit_depth_luma_minus8", 6)? as u8 + 8;
        bit_depth_chroma = r.ue_max("bit_depth_chroma_minus8", 6)? as u8 + 8;
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            // seq_scaling_matrix_present_flag: skip the scaling lists.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            let delta = r.se()?;
                            if !(-128..=127).contains(&delta) {
                                return Err(SpsError::OutOfRange("delta_scale", delta as u32));
                            }
                            next = (last + delta + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue_max("log2_max_frame_num_minus4", 12)?;
    match r.ue_max("pic_order_cnt_type", 2)? {
        0 => {
            r.ue_max("log2_max_pic_order_cnt_lsb_minus4", 12)?;
        }
        1 => {
            r.bit()?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            let cycle = r.ue_max("num_ref_frames_in_pic_order_cnt_cycle", 255)?;
            for _ in 0..cycle {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue_max("max_num_ref_frames", 16)?;
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue_max("pic_width_in_mbs_minus1", 1023)? + 1;
    let height_map_units = r.ue_max("pic_height_in_map_units_minus1", 1023)? + 1;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let mut width = width_mbs * 16;
    let mut height = (2 - frame_mbs_only) * height_map_units * 16;
    if r.bit()? == 1 {
        let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format_idc };
        let (crop_x, crop_y) = match chroma_array_type {
            0 => (1, 2 - frame_mbs_only),
            1 => (2, 2 * (2 - frame_mbs_only)),
            2 => (2, 2 - frame_mbs_only),
            _ => (1, 2 - frame_mbs_only),
        };
        let left = r.ue_max("frame_crop_left_offset", 8192)?;
        let right = r.ue_max("frame_crop_right_offset", 8192)?;
        let top = r.ue_max("frame_crop_top_offset", 8192)?;
        let bottom = r.ue_max("frame_crop_bottom_offset", 8192)?;
        let crop_w = crop_x * (left + right);
        let crop_h = crop_y * (top + bottom);
        if crop_w >= width || crop_h >= height {
            return Err(SpsError::OutOfRange("frame cropping", crop_w.max(crop_h)));
        }
        width -= crop_w;
        height -= crop_h;
    }
    // The VUI only gives the frame rate: an SPS whose VUI does not parse is
    // still usable (as ffmpeg tolerates it), without a frame rate.
    let frame_rate = match r.bit() {
        Ok(1) => vui_frame_rate(&mut r).unwrap_or(None),
        _ => None,
    };
    Ok(SpsInfo {
        profile_idc,
        constraint_flags,
        level_idc,
        chroma_format_idc: chroma_format_idc as u8,
        bit_depth_luma,
        bit_depth_chroma,
        width,
        height,
        frame_rate,
    })
}

/// vui_parameters() (E.1.1) up to the timing info.
fn vui_frame_rate(r: &mut BitReader<'_>) -> Result<Option<(u32, u32)>, SpsError> {
    if r.bit()? == 1 && r.bits(8)? == 255 {
        // aspect_ratio_info_present_flag, aspect_ratio_idc == Extended_SAR
        r.bits(16)?; // sar_width
        r.bits(16)?; // sar_height
    }
    if r.bit()? == 1 {
        r.bit()?; // overscan_appropriate_flag
    }
    if r.bit()? == 1 {
        // video_signal_type_present_flag
        r.bits(4)?; // video_format, video_full_range_flag
        if r.bit()? == 1 {
            r.bits(24)?; // colour_primaries, transfer_characteristics, matrix_coefficients
        }
    }
    if r.bit()? == 1 {
        // chroma_loc_info_present_flag
        r.ue_max("chroma_sample_loc_type_top_field", 5)?;
        r.ue_max("chroma_sample_loc_type_bottom_field", 5)?;
    }
    if r.bit()? == 0 {
        return Ok(None); // timing_info_present_flag
    }
    let num_units_in_tick = r.bits(32)?;
    let time_scale = r.bits(32)?;
    // A frame is two ticks (E.2.1: a tick is one field period).
    let ticks = num_units_in_tick.checked_mul(2).filter(|&t| t != 0);
    Ok(ticks.filter(|_| time_scale != 0).map(|ticks| (time_scale, ticks)))
}

/// `slice_type` of a coded slice NAL unit (header byte included): 0..=9,
/// where `% 5` gives P 0, B 1, I 2, SP 3, SI 4. None for a header too
/// short to say.
pub fn slice_type(nal: &[u8]) -> Option<u32> {
    // The two fields are within the first bytes: ue(v) of a slice header
    // field is at most 32 bits here.
    let head = nal.get(1..).unwrap_or_default();
    let rbsp = nal_to_rbsp(&head[..head.len().min(10)]);
    let mut r = BitReader::new(&rbsp);
    r.ue().ok()?; // first_mb_in_slice
    r.ue().ok()
}

/// Whether a coded slice is a B slice: its picture may be shown before the
/// pictures it is decoded after (the stream reorders pictures).
pub fn is_b_slice(nal: &[u8]) -> bool {
    matches!(nal_unit_type(nal), nal_type::SLICE | nal_type::IDR) && slice_type(nal).is_some_and(|t| t % 5 == 1)
}

/// Why the processor refused a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessError {
    NoNalUnits {
        frame_number: u64,
    },
    TooManyNalUnits {
        frame_number: u64,
        count: usize,
    },
    ForbiddenBit {
        frame_number: u64,
        nal_type: u8,
    },
    BadSps {
        frame_number: u64,
        error: SpsError,
    },
    IdrWithoutParameterSets {
        frame_number: u64,
    },
    /// No SPS yet, and the frame is H.265 by every NAL unit header (a
    /// daemon writing H.265 into ring format 3, or `codec:` left unset).
    LooksLikeH265 {
        frame_number: u64,
    },
}

impl ProcessError {
    /// Label for the error metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProcessError::NoNalUnits { .. } => "no_nal_units",
            ProcessError::TooManyNalUnits { .. } => "too_many_nal_units",
            ProcessError::ForbiddenBit { .. } => "forbidden_bit",
            ProcessError::BadSps { .. } => "bad_sps",
            ProcessError::IdrWithoutParameterSets { .. } => "idr_without_sps_pps",
            ProcessError::LooksLikeH265 { .. } => "looks_like_h265",
        }
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::NoNalUnits { frame_number } => {
                write!(f, "frame {frame_number}: no NAL units (no Annex-B start code)")
            }
            ProcessError::TooManyNalUnits { frame_number, count } => {
                write!(f, "frame {frame_number}: {count} NAL units, more than {MAX_NAL_UNITS} in one access unit")
            }
            ProcessError::ForbiddenBit { frame_number, nal_type } => {
                write!(f, "frame {frame_number}: NAL unit type {nal_type} has forbidden_zero_bit set")
            }
            ProcessError::BadSps { frame_number, error } => write!(f, "frame {frame_number}: {error}"),
            ProcessError::IdrWithoutParameterSets { frame_number } => {
                write!(f, "frame {frame_number}: IDR without SPS/PPS and none cached yet")
            }
            ProcessError::LooksLikeH265 { frame_number } => write!(
                f,
                "frame {frame_number} is H.265, not H.264: set `codec: h265` for this path \
                 (a daemon writing ring format 4 says so itself)"
            ),
        }
    }
}

impl std::error::Error for ProcessError {}

/// NAL units one access unit may hold: encoders use a few dozen slices at
/// most; the bound keeps a frame's bookkeeping small whatever the bytes say.
pub const MAX_NAL_UNITS: usize = 1024;

/// The stateful part: SPS/PPS cache and sequence numbering.
#[derive(Debug, Default)]
pub struct Processor {
    parameter_sets: Option<Arc<ParameterSets>>,
    /// An SPS seen without its PPS yet (or vice versa) is held here.
    pending_sps: Option<(Bytes, SpsInfo)>,
    pending_pps: Option<Bytes>,
    generation: u64,
    numbering: Numbering,
}

impl Processor {
    pub fn new() -> Processor {
        Processor::default()
    }

    /// The current canonical parameter sets, if the camera sent any.
    pub fn parameter_sets(&self) -> Option<&Arc<ParameterSets>> {
        self.parameter_sets.as_ref()
    }

    /// The reader lost frames: the next access unit handed on is marked
    /// `after_gap`.
    pub fn note_gap(&mut self) {
        self.numbering.note_gap();
    }

    /// Checks one frame and turns it into an access unit.
    pub fn process(&mut self, frame: RawFrame) -> Result<AccessUnit, ProcessError> {
        let frame_number = frame.frame_number;
        let ranges = split_annexb(&frame.data);
        if ranges.is_empty() {
            return Err(ProcessError::NoNalUnits { frame_number });
        }
        if ranges.len() > MAX_NAL_UNITS {
            return Err(ProcessError::TooManyNalUnits { frame_number, count: ranges.len() });
        }
        if self.parameter_sets.is_none() && looks_like_h265(&frame.data, &ranges) {
            return Err(ProcessError::LooksLikeH265 { frame_number });
        }
        let mut nals = Vec::with_capacity(ranges.len());
        let (mut has_sps, mut has_pps, mut is_idr) = (false, false, false);
        let mut new_sps = None;
        let mut new_pps = None;
        for range in ranges {
            let nal = &frame.data[range.clone()];
            if nal[0] & 0x80 != 0 {
                return Err(ProcessError::ForbiddenBit { frame_number, nal_type: nal_unit_type(nal) });
            }
            let kind = nal_unit_type(nal);
            match kind {
                nal_type::SPS => {
                    has_sps = true;
                    new_sps = Some(range.clone());
                }
                nal_type::PPS => {
                    has_pps = true;
                    new_pps = Some(range.clone());
                }
                nal_type::IDR => is_idr = true,
                _ => {}
            }
            nals.push(NalUnit { range, nal_type: kind });
        }
        if let Some(range) = new_sps {
            let sps = frame.data.slice(range);
            let current = self.parameter_sets.as_ref().map(|ps| &ps.sps);
            if current != Some(&sps) && self.pending_sps.as_ref().map(|p| &p.0) != Some(&sps) {
                let info = parse_sps(&sps).map_err(|error| ProcessError::BadSps { frame_number, error })?;
                self.pending_sps = Some((sps, info));
            }
        }
        if let Some(range) = new_pps {
            let pps = frame.data.slice(range);
            if self.parameter_sets.as_ref().map(|ps| &ps.pps) != Some(&pps) {
                self.pending_pps = Some(pps);
            }
        }
        self.apply_pending_parameter_sets();
        let prepend = is_idr && !(has_sps && has_pps);
        if prepend && self.parameter_sets.is_none() {
            return Err(ProcessError::IdrWithoutParameterSets { frame_number });
        }
        let parameter_sets = self.parameter_sets.clone();
        Ok(self.numbering.access_unit(super::Codec::H264, frame, nals, is_idr, parameter_sets, prepend))
    }

    /// Replaces the canonical pair once both halves of a new one are known.
    fn apply_pending_parameter_sets(&mut self) {
        if self.pending_sps.is_none() && self.pending_pps.is_none() {
            return;
        }
        let current = self.parameter_sets.as_deref();
        let sps = self.pending_sps.clone().or_else(|| current.and_then(|ps| Some((ps.sps.clone(), *ps.h264()?))));
        let pps = self.pending_pps.clone().or_else(|| current.map(|ps| ps.pps.clone()));
        let (Some((sps, info)), Some(pps)) = (sps, pps) else {
            return;
        };
        self.pending_sps = None;
        self.pending_pps = None;
        self.generation += 1;
        log::info!(
            "H.264 parameter sets generation {}: profile_idc {} constraints {:#04x} level {} ({}x{})",
            self.generation,
            info.profile_idc,
            info.constraint_flags,
            info.level_idc,
            info.width,
            info.height
        );
        self.parameter_sets =
            Some(Arc::new(ParameterSets::new(None, sps, pps, VideoInfo::H264(info), self.generation)));
    }
}

/// An H.264 access unit has a slice (type 1 or 5). H.265 NAL unit headers
/// are two bytes, layer 0 and a non-zero temporal id plus one (`0x01` for
/// the base layer); read as H.264 their types are 0, 2, 4, 6, 8, ... A
/// frame with no H.264 slice whose every NAL unit has such a header and
/// that has an H.265 slice (type below 32) is H.265.
fn looks_like_h265(data: &[u8], ranges: &[Range<usize>]) -> bool {
    let nals = || ranges.iter().map(|r| &data[r.clone()]);
    let h265_header = |nal: &[u8]| nal.len() >= 2 && nal[0] & 0x81 == 0 && nal[1] >> 3 == 0 && nal[1] & 7 != 0;
    !nals().any(|nal| matches!(nal_unit_type(nal), nal_type::SLICE | nal_type::IDR))
        && nals().all(h265_header)
        && nals().any(|nal| super::h265::nal_unit_type(nal) < 32)
}

/// A coded slice (the NAL units that make a picture: types 1 and 5).
pub fn is_vcl(nal_type: u8) -> bool {
    matches!(nal_type, nal_type::SLICE | nal_type::IDR)
}

/// Whether this NAL unit begins a new access unit, given whether the
/// current one already has a slice (7.4.1.2.3): an AUD, SPS, PPS or SEI
/// after a slice, or a slice whose `first_mb_in_slice` is 0.
pub fn starts_access_unit(nal: &[u8], seen_vcl: bool) -> bool {
    match nal_unit_type(nal) {
        nal_type::AUD | nal_type::SPS | nal_type::PPS | nal_type::SEI => seen_vcl,
        // first_mb_in_slice is ue(v): 0 is the single bit '1'.
        kind if is_vcl(kind) => seen_vcl && nal.get(1).is_some_and(|b| b & 0x80 != 0),
        _ => false,
    }
}

/// Groups a raw Annex-B elementary stream (a `.h264` file) into access
/// units by [`starts_access_unit`].
pub fn split_access_units(stream: &[u8]) -> Vec<Range<usize>> {
    super::Codec::H264.split_access_units(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn raw(data: &[u8], n: u64) -> RawFrame {
        RawFrame {
            codec: super::super::Codec::H264,
            data: Bytes::copy_from_slice(data),
            frame_number: n,
            index: n as u32,
            capture_time: Duration::from_millis(n * 33),
            read_time: Duration::from_millis(n * 33 + 1),
            camera_id: 0,
            width: 0,
            height: 0,
        }
    }

    #[test]
    fn h265_frames_are_named_as_such_until_an_sps_arrives() {
        let hevc = include_bytes!("../../assets/demo.h265");
        let avc = include_bytes!("../../assets/demo.h264");
        let mut processor = Processor::new();
        for (n, au) in crate::codec::Codec::H265.split_access_units(hevc).into_iter().take(40).enumerate() {
            let error = processor.process(raw(&hevc[au], n as u64)).unwrap_err();
            assert_eq!(error.label(), "looks_like_h265", "{error}");
            assert!(error.to_string().contains("codec: h265"), "{error}");
        }
        for (n, au) in split_access_units(avc).into_iter().take(40).enumerate() {
            assert!(processor.process(raw(&avc[au], n as u64)).is_ok(), "H.264 frame {n}");
        }
    }

    // The SPS and PPS of assets/demo.h264 (x264, 640x360 constrained
    // baseline, level 3.1): 360 is not a multiple of 16, so it crops.
    const SPS_640X360: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1f, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00,
        0x03, 0x00, 0xf2, 0x3c, 0x60, 0xca, 0x80,
    ];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter().flat_map(|n| [0, 0, 0, 1].iter().chain(n.iter()).copied()).collect()
    }

    #[test]
    fn splits_three_and_four_byte_start_codes_and_trailing_zeros() {
        let data = [0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x65, 0xaa, 0, 0, 0, 0, 1, 0x41, 0xbb, 0, 0];
        let nals: Vec<&[u8]> = split_annexb(&data).into_iter().map(|r| &data[r]).collect();
        assert_eq!(nals, vec![&[0x09, 0xf0][..], &[0x65, 0xaa], &[0x41, 0xbb]]);
    }

    #[test]
    fn no_start_code_means_no_nal_units() {
        assert!(split_annexb(&[1, 2, 3, 0, 0]).is_empty());
        assert!(split_annexb(&[]).is_empty());
        assert!(split_annexb(&[0, 0, 1]).is_empty());
    }

    #[test]
    fn parses_real_sps_with_cropping() {
        let info = parse_sps(SPS_640X360).unwrap();
        assert_eq!((info.profile_idc, info.constraint_flags, info.level_idc), (66, 0xc0, 31));
        assert_eq!((info.width, info.height), (640, 360));
        assert_eq!(info.profile_level_id(), "42c01f");
        assert_eq!((info.chroma_format_idc, info.bit_depth_luma, info.bit_depth_chroma), (1, 8, 8));
        // x264 writes VUI timing: ffprobe says r_frame_rate 30/1.
        assert_eq!(info.fps(), Some(30.0));
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn parses_chroma_format_bit_depths_and_frame_rate_of_a_high_422_sps() {
        // ffmpeg -f lavfi -i testsrc2=size=320x240:rate=25 -pix_fmt yuv422p10le -c:v libx264 -f h264:
        // ffprobe says High 4:2:2, yuv422p10le, 25/1.
        let info = parse_sps(&hex("677a000db6cd94141fb011000003000100000300320f142996")).unwrap();
        assert_eq!((info.profile_idc, info.width, info.height), (122, 320, 240));
        assert_eq!((info.chroma_format_idc, info.bit_depth_luma, info.bit_depth_chroma), (2, 10, 10));
        assert_eq!(info.fps(), Some(25.0));
    }

    #[test]
    fn tells_b_slices_from_p_and_i_slices() {
        // Slice headers of the same clip: a P slice and a B slice, and the demo's IDR.
        assert_eq!(slice_type(&hex("419a2306bc6c381e")), Some(5));
        assert!(!is_b_slice(&hex("419a2306bc6c381e")));
        assert_eq!(slice_type(&hex("019e624116781efd")), Some(6));
        assert!(is_b_slice(&hex("019e624116781efd")));
        assert!(!is_b_slice(&[0x65, 0x88, 0x84]));
        assert!(!is_b_slice(&[0x06, 0x9e]), "an SEI is no slice");
        assert_eq!(slice_type(&[0x41]), None);
    }

    #[test]
    fn truncated_sps_is_an_error_not_a_panic() {
        for len in 0..SPS_640X360.len() - 2 {
            let _ = parse_sps(&SPS_640X360[..len]);
        }
        assert_eq!(parse_sps(&SPS_640X360[..4]), Err(SpsError::Truncated));
    }

    #[test]
    fn idr_without_parameter_sets_gets_the_cached_ones() {
        let mut p = Processor::new();
        let idr: &'static [u8] = &[0x65, 0x88, 0x84];
        let first = p.process(raw(&annexb(&[SPS_640X360, PPS, idr]), 0)).unwrap();
        assert!(first.is_keyframe && !first.prepend_parameter_sets);
        let second = p.process(raw(&annexb(&[idr]), 1)).unwrap();
        assert!(second.prepend_parameter_sets);
        let nals: Vec<Bytes> = second.nal_units().collect();
        assert_eq!(nals, vec![Bytes::from_static(SPS_640X360), Bytes::from_static(PPS), Bytes::from_static(idr)]);
        let file: Vec<u8> = second.annexb_chunks().flatten().copied().collect();
        assert_eq!(file, annexb(&[SPS_640X360, PPS, idr]));
        assert_eq!(second.annexb_len(), file.len());
        assert_eq!(second.parameter_sets.as_ref().unwrap().generation, 1);
    }

    #[test]
    fn parameter_sets_go_after_the_access_unit_delimiter() {
        let mut p = Processor::new();
        let aud: &[u8] = &[0x09, 0xf0];
        let idr: &[u8] = &[0x65, 0x88, 0x84];
        p.process(raw(&annexb(&[aud, SPS_640X360, PPS, idr]), 0)).unwrap();
        let second = p.process(raw(&annexb(&[aud, idr]), 1)).unwrap();
        assert!(second.prepend_parameter_sets);
        let nals: Vec<Bytes> = second.nal_units().collect();
        assert_eq!(nals, [aud, SPS_640X360, PPS, idr].map(Bytes::from_static));
        let file: Vec<u8> = second.annexb_chunks().flatten().copied().collect();
        assert_eq!(file, annexb(&[aud, SPS_640X360, PPS, idr]));
        assert_eq!(second.annexb_len(), file.len());
    }

    #[test]
    fn idr_before_any_parameter_sets_is_refused() {
        let mut p = Processor::new();
        let err = p.process(raw(&annexb(&[&[0x65, 0x88]]), 7)).unwrap_err();
        assert_eq!(err, ProcessError::IdrWithoutParameterSets { frame_number: 7 });
        // A P-frame before any IDR passes: the hub never starts a consumer on it.
        assert!(p.process(raw(&annexb(&[&[0x41, 0x9a]]), 8)).is_ok());
    }

    #[test]
    fn changed_sps_bumps_the_generation_and_same_bytes_do_not() {
        let mut p = Processor::new();
        let idr: &[u8] = &[0x65, 0x88];
        p.process(raw(&annexb(&[SPS_640X360, PPS, idr]), 0)).unwrap();
        p.process(raw(&annexb(&[SPS_640X360, PPS, idr]), 1)).unwrap();
        assert_eq!(p.parameter_sets().unwrap().generation, 1);
        let new_pps: &[u8] = &[0x68, 0xce, 0x38, 0x81];
        p.process(raw(&annexb(&[SPS_640X360, new_pps, idr]), 2)).unwrap();
        let ps = p.parameter_sets().unwrap();
        assert_eq!((ps.generation, &ps.pps[..]), (2, new_pps));
    }

    #[test]
    fn too_many_nal_units_are_refused() {
        let mut p = Processor::new();
        let many: Vec<&[u8]> = vec![&[0x41, 0x9a]; MAX_NAL_UNITS + 1];
        let err = p.process(raw(&annexb(&many), 4)).unwrap_err();
        assert_eq!(err.label(), "too_many_nal_units");
        let fine: Vec<&[u8]> = vec![&[0x41, 0x9a]; MAX_NAL_UNITS];
        assert!(p.process(raw(&annexb(&fine), 5)).is_ok());
    }

    #[test]
    fn forbidden_bit_is_refused() {
        let mut p = Processor::new();
        let err = p.process(raw(&annexb(&[&[0xe5, 0x88]]), 3)).unwrap_err();
        assert!(matches!(err, ProcessError::ForbiddenBit { frame_number: 3, nal_type: 5 }));
    }

    #[test]
    fn gap_marks_the_next_access_unit() {
        let mut p = Processor::new();
        p.note_gap();
        let p_frame = annexb(&[&[0x41, 0x9a]]);
        assert!(p.process(raw(&p_frame, 0)).unwrap().after_gap);
        let next = p.process(raw(&p_frame, 1)).unwrap();
        assert!(!next.after_gap);
        assert_eq!(next.seq, 1);
    }

    #[test]
    fn groups_a_stream_into_access_units() {
        let stream = [
            annexb(&[&[0x09, 0x10], SPS_640X360, PPS, &[0x65, 0x88], &[0x65, 0x00]]),
            annexb(&[&[0x09, 0x30], &[0x41, 0x9a]]),
            annexb(&[&[0x41, 0x9b]]),
        ];
        let joined: Vec<u8> = stream.concat();
        let units: Vec<&[u8]> = split_access_units(&joined).into_iter().map(|r| &joined[r]).collect();
        assert_eq!(units, vec![&stream[0][..], &stream[1][..], &stream[2][..]]);
    }
}
