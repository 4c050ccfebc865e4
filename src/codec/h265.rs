//! H.265 (HEVC) processor: raw camera frames in, checked access units out.
//!
//! Input: one [`RawFrame`] (an Annex-B access unit copied out of shared
//! memory) at a time, from the media thread. Output: an [`AccessUnit`] that
//! shares the frame's buffer and knows its NAL units, whether it is an IRAP
//! (keyframe), and the parameter sets (VPS/SPS/PPS) it decodes with.
//!
//! The processor is sans-IO: plain structs, bytes in, values out, so it is
//! unit-tested and fuzzed alone. It keeps one canonical VPS/SPS/PPS triple
//! per stream (compared byte for byte, with a generation bumped on change,
//! the SPS parsed again only when its bytes change) and guarantees that
//! every IRAP it hands on carries VPS, SPS and PPS: where the camera sent
//! them only once, [`AccessUnit::prepend_parameter_sets`] is set and
//! consumers emit the cached triple in front ([`AccessUnit::nal_units`],
//! [`AccessUnit::annexb_chunks`]), without copying the frame.
//!
//! Only base-layer (`nuh_layer_id` 0) parameter sets and pictures count:
//! layered extensions (MV-HEVC, SHVC) pass through as ordinary NAL units.
//!
//! Bad input (no start code, more than [`MAX_NAL_UNITS`] NAL units, a NAL
//! unit shorter than its 2-byte header or with `nuh_temporal_id_plus1` 0,
//! forbidden bit set, an SPS that does not parse, an IRAP with no parameter
//! sets known) is a [`ProcessError`]; the caller counts it by
//! [`ProcessError::label`] and drops the frame. [`parse_sps`] and
//! [`split_access_units`] take any bytes too. Nothing here panics on any
//! byte content: every index is a `get` or follows a length check.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::annexb::split_annexb;
use super::{AccessUnit, NalUnit, Numbering, ParameterSets, RawFrame, VideoInfo};

/// NAL unit types (ITU-T H.265 table 7-1; 48 and 49 are RFC 7798's).
pub mod nal_type {
    pub const TRAIL_N: u8 = 0;
    pub const TRAIL_R: u8 = 1;
    pub const TSA_N: u8 = 2;
    pub const TSA_R: u8 = 3;
    pub const STSA_N: u8 = 4;
    pub const STSA_R: u8 = 5;
    pub const RADL_N: u8 = 6;
    pub const RADL_R: u8 = 7;
    pub const RASL_N: u8 = 8;
    pub const RASL_R: u8 = 9;
    pub const BLA_W_LP: u8 = 16;
    pub const BLA_W_RADL: u8 = 17;
    pub const BLA_N_LP: u8 = 18;
    pub const IDR_W_RADL: u8 = 19;
    pub const IDR_N_LP: u8 = 20;
    pub const CRA_NUT: u8 = 21;
    pub const VPS: u8 = 32;
    pub const SPS: u8 = 33;
    pub const PPS: u8 = 34;
    pub const AUD: u8 = 35;
    pub const EOS: u8 = 36;
    pub const EOB: u8 = 37;
    pub const FD: u8 = 38;
    pub const PREFIX_SEI: u8 = 39;
    pub const SUFFIX_SEI: u8 = 40;
    /// RFC 7798 aggregation packet.
    pub const AP: u8 = 48;
    /// RFC 7798 fragmentation unit.
    pub const FU: u8 = 49;
    /// RFC 7798 payload content information (never sent here).
    pub const PACI: u8 = 50;
    /// What [`super::nal_unit_type`] returns for an empty slice: an
    /// unspecified type, so it is neither VCL nor IRAP nor a parameter set.
    pub const UNSPECIFIED: u8 = 63;
}

/// NAL units an access unit may have at most: real ones have a handful
/// (tens with many slices); thousands are garbage or an attack.
pub const MAX_NAL_UNITS: usize = 1024;

/// The type of a NAL unit from its 2-byte header
/// (`forbidden_zero_bit | nal_unit_type(6) | nuh_layer_id(6) | tid_plus1(3)`).
/// An empty slice gives [`nal_type::UNSPECIFIED`].
pub fn nal_unit_type(nal: &[u8]) -> u8 {
    nal.first().map_or(nal_type::UNSPECIFIED, |b| (b >> 1) & 0x3f)
}

/// True if the header's `forbidden_zero_bit` is set (the NAL unit is damaged).
pub fn forbidden_bit(nal: &[u8]) -> bool {
    nal.first().is_some_and(|b| b & 0x80 != 0)
}

/// `nuh_layer_id`: 0 for the base layer (all a single-layer camera sends).
pub fn nuh_layer_id(nal: &[u8]) -> u8 {
    match nal {
        [a, b, ..] => ((a & 1) << 5) | (b >> 3),
        _ => 0,
    }
}

/// `nuh_temporal_id_plus1`; 0 is forbidden, and so is a missing byte.
pub fn nuh_temporal_id_plus1(nal: &[u8]) -> u8 {
    nal.get(1).map_or(0, |b| b & 7)
}

/// IRAP pictures (BLA, IDR, CRA and the reserved 22-23): decoding can start
/// here, so they are the keyframes.
pub fn is_irap(nal_type: u8) -> bool {
    (16..=23).contains(&nal_type)
}

/// Coded slice segments (types 0-31, reserved ones included).
pub fn is_vcl(nal_type: u8) -> bool {
    nal_type < 32
}

/// `first_slice_segment_in_pic_flag` of a slice segment: the first bit after
/// the 2-byte header. False for anything shorter.
pub fn first_slice_segment_in_pic(nal: &[u8]) -> bool {
    nal.get(2).is_some_and(|b| b & 0x80 != 0)
}

/// What the SPS says about the stream, parsed from its real bits.
///
/// Everything an MP4 `hvcC` box needs from the SPS is here
/// (`mp4_atom::Hvcc` is filled from these fields plus the parameter-set
/// bytes; `min_spatial_segmentation_idc`, `parallelism_type`,
/// `avg_frame_rate` and `constant_frame_rate` may be 0, "unknown").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpsInfo {
    /// `general_profile_space` (0 for every profile in use).
    pub general_profile_space: u8,
    /// `general_tier_flag`: false Main tier, true High tier.
    pub general_tier_flag: bool,
    /// `general_profile_idc`: 1 Main, 2 Main 10, 3 Main Still Picture, 4 RExt...
    pub general_profile_idc: u8,
    /// `general_profile_compatibility_flag[0..32]`, flag j in bit 31-j (as
    /// sent, big-endian: `hvcC` writes these 4 bytes as they are).
    pub general_profile_compatibility_flags: u32,
    /// The 48 bits from `general_progressive_source_flag` to
    /// `general_inbld_flag`/reserved bit, as sent (SDP `interop-constraints`).
    pub general_constraint_indicator_flags: u64,
    /// `general_level_idc`: 30 x level (93 = 3.1, 120 = 4, 123 = 4.1).
    pub general_level_idc: u8,
    /// `sps_max_sub_layers_minus1` + 1 (`hvcC` numTemporalLayers).
    pub max_sub_layers: u8,
    /// `sps_temporal_id_nesting_flag` (`hvcC` temporalIdNested).
    pub temporal_id_nesting: bool,
    /// 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4.
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    /// Picture size after the conformance window.
    pub width: u32,
    pub height: u32,
    /// `(vui_time_scale, vui_num_units_in_tick)`: pictures per second as a
    /// fraction, when the VUI has timing info (None when absent, zero, or
    /// when the VUI does not parse: ffmpeg also tolerates broken VUIs).
    pub frame_rate: Option<(u32, u32)>,
    /// `sps_max_num_reorder_pics` of the highest sub-layer: 0 means output
    /// order is decode order (no B-frame reordering).
    pub max_num_reorder_pics: u8,
}

/// The four fields of `profile_tier_level` that RFC 7798 SDP carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileTierLevel {
    /// SDP `profile-space`.
    pub profile_space: u8,
    /// SDP `profile-id`.
    pub profile_id: u8,
    /// SDP `tier-flag` (0 Main, 1 High).
    pub tier_flag: u8,
    /// SDP `level-id`.
    pub level_id: u8,
}

impl SpsInfo {
    /// The SDP view of the general profile, tier and level (RFC 7798 7.1).
    pub fn profile_tier_level(&self) -> ProfileTierLevel {
        ProfileTierLevel {
            profile_space: self.general_profile_space,
            profile_id: self.general_profile_idc,
            tier_flag: u8::from(self.general_tier_flag),
            level_id: self.general_level_idc,
        }
    }

    /// True if `general_profile_compatibility_flag[profile]` is set.
    pub fn compatible_with_profile(&self, profile: u8) -> bool {
        profile < 32 && self.general_profile_compatibility_flags & (1 << (31 - profile)) != 0
    }

    /// Pictures per second from the VUI timing info.
    pub fn fps(&self) -> Option<f64> {
        self.frame_rate.map(|(scale, tick)| f64::from(scale) / f64::from(tick))
    }

    /// For logs and errors: "Main, tier Main, level 4.1 (level-id=123)".
    pub fn describe(&self) -> String {
        describe_ptl(self.profile_tier_level())
    }
}

/// Human name of an H.265 `profile-id` / `general_profile_idc`.
pub fn profile_name(profile_id: u8) -> String {
    match profile_id {
        1 => "Main".into(),
        2 => "Main 10".into(),
        3 => "Main Still Picture".into(),
        4 => "Format Range Extensions".into(),
        5 => "High Throughput".into(),
        9 => "Screen Content Coding Extensions".into(),
        other => format!("profile-id {other}"),
    }
}

/// "4.1" for level-id 123, "4" for 120; the raw number when it is not a
/// multiple of 3.
pub fn level_name(level_id: u8) -> String {
    match (level_id % 3, level_id / 3) {
        (0, tenths) if tenths % 10 == 0 => format!("{}", tenths / 10),
        (0, tenths) => format!("{}.{}", tenths / 10, tenths % 10),
        _ => format!("level-id {level_id}"),
    }
}

/// "Main, tier Main, level 4.1 (level-id=123)", with the profile space when
/// it is not 0.
pub fn describe_ptl(ptl: ProfileTierLevel) -> String {
    let space = if ptl.profile_space == 0 { String::new() } else { format!(" (profile-space {})", ptl.profile_space) };
    format!(
        "{}{space}, tier {}, level {} (level-id={})",
        profile_name(ptl.profile_id),
        if ptl.tier_flag == 0 { "Main" } else { "High" },
        level_name(ptl.level_id),
        ptl.level_id
    )
}

use super::bits::BitReader;
pub use super::bits::{nal_to_rbsp, SpsError};

/// Largest picture dimension any H.265 level allows (level 6.2:
/// sqrt(MaxLumaPs * 8)); bigger is garbage.
const MAX_DIMENSION: u32 = 16_888;

/// Parses an SPS NAL unit (2-byte header included) of the base layer, far
/// enough to reach the VUI timing info (ITU-T H.265 7.3.2.2.1, E.2.1).
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, SpsError> {
    // Everything after the sub-layer ordering info only leads to the VUI's
    // frame rate: a
    // stream whose tail we cannot walk is still usable, so an error there
    // leaves frame_rate at None instead of refusing the SPS.
    let (info, frame_rate) = parse_sps_parts(nal)?;
    Ok(SpsInfo { frame_rate: frame_rate.unwrap_or(None), ..info })
}

/// The SPS up to the bit depths, and separately how walking the rest to
/// the VUI timing info went.
type SpsParts = (SpsInfo, Result<Option<(u32, u32)>, SpsError>);

fn parse_sps_parts(nal: &[u8]) -> Result<SpsParts, SpsError> {
    if nal.len() < 2 || nal_unit_type(nal) != nal_type::SPS {
        return Err(SpsError::NotAnSps);
    }
    let layer = nuh_layer_id(nal);
    if layer != 0 {
        // Layers > 0 may replace sps_max_sub_layers_minus1 with
        // sps_ext_or_max_sub_layers_minus1 and drop profile_tier_level.
        return Err(SpsError::NotBaseLayer(layer));
    }
    let rbsp = nal_to_rbsp(nal.get(2..).unwrap_or_default());
    let mut r = BitReader::new(&rbsp);
    r.bits(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.bits(3)?;
    if max_sub_layers_minus1 > 6 {
        return Err(SpsError::OutOfRange("sps_max_sub_layers_minus1", max_sub_layers_minus1));
    }
    let temporal_id_nesting = r.flag()?;

    // profile_tier_level(1, sps_max_sub_layers_minus1), general part.
    let general_profile_space = r.bits(2)? as u8;
    let general_tier_flag = r.flag()?;
    let general_profile_idc = r.bits(5)? as u8;
    let general_profile_compatibility_flags = r.bits(32)?;
    let general_constraint_indicator_flags = (u64::from(r.bits(16)?) << 32) | u64::from(r.bits(32)?);
    let general_level_idc = r.bits(8)? as u8;
    // Sub-layer parts: skipped, but their presence flags decide the size.
    let mut profile_present = [false; 8];
    let mut level_present = [false; 8];
    for i in 0..max_sub_layers_minus1 as usize {
        profile_present[i] = r.flag()?;
        level_present[i] = r.flag()?;
    }
    if max_sub_layers_minus1 > 0 {
        r.skip(2 * (8 - max_sub_layers_minus1 as usize))?; // reserved_zero_2bits
    }
    for i in 0..max_sub_layers_minus1 as usize {
        if profile_present[i] {
            r.skip(88)?; // space, tier, idc, 32 compatibility flags, 48 constraint bits
        }
        if level_present[i] {
            r.skip(8)?; // sub_layer_level_idc
        }
    }

    r.ue_max("sps_seq_parameter_set_id", 15)?;
    let chroma_format_idc = r.ue_max("chroma_format_idc", 3)? as u8;
    let separate_colour_plane = chroma_format_idc == 3 && r.flag()?;
    let pic_width = r.ue_max("pic_width_in_luma_samples", MAX_DIMENSION)?;
    let pic_height = r.ue_max("pic_height_in_luma_samples", MAX_DIMENSION)?;
    if pic_width == 0 || pic_height == 0 {
        return Err(SpsError::OutOfRange("picture size", 0));
    }
    let (mut width, mut height) = (pic_width, pic_height);
    if r.flag()? {
        // conformance_window_flag: offsets in chroma sample units (table 6-1).
        let (sub_width, sub_height) = match (chroma_format_idc, separate_colour_plane) {
            (1, _) => (2, 2),
            (2, _) => (2, 1),
            _ => (1, 1),
        };
        let left = r.ue_max("conf_win_left_offset", MAX_DIMENSION)?;
        let right = r.ue_max("conf_win_right_offset", MAX_DIMENSION)?;
        let top = r.ue_max("conf_win_top_offset", MAX_DIMENSION)?;
        let bottom = r.ue_max("conf_win_bottom_offset", MAX_DIMENSION)?;
        let crop_w = sub_width * (left + right);
        let crop_h = sub_height * (top + bottom);
        if crop_w >= width || crop_h >= height {
            return Err(SpsError::OutOfRange("conformance window", crop_w.max(crop_h)));
        }
        width -= crop_w;
        height -= crop_h;
    }
    let bit_depth_luma = r.ue_max("bit_depth_luma_minus8", 8)? as u8 + 8;
    let bit_depth_chroma = r.ue_max("bit_depth_chroma_minus8", 8)? as u8 + 8;
    let log2_max_poc_lsb = r.ue_max("log2_max_pic_order_cnt_lsb_minus4", 12)? + 4;
    let ordering_info_present = r.flag()?;
    let first = if ordering_info_present { 0 } else { max_sub_layers_minus1 };
    let mut max_num_reorder_pics = 0;
    for _ in first..=max_sub_layers_minus1 {
        r.ue_max("sps_max_dec_pic_buffering_minus1", 15)?;
        max_num_reorder_pics = r.ue_max("sps_max_num_reorder_pics", 15)? as u8;
        r.ue()?; // sps_max_latency_increase_plus1
    }
    let info = SpsInfo {
        general_profile_space,
        general_tier_flag,
        general_profile_idc,
        general_profile_compatibility_flags,
        general_constraint_indicator_flags,
        general_level_idc,
        max_sub_layers: max_sub_layers_minus1 as u8 + 1,
        temporal_id_nesting,
        chroma_format_idc,
        bit_depth_luma,
        bit_depth_chroma,
        width,
        height,
        frame_rate: None,
        max_num_reorder_pics,
    };
    Ok((info, sps_tail_frame_rate(&mut r, log2_max_poc_lsb)))
}

/// Walks the SPS from `log2_min_luma_coding_block_size_minus3` to the VUI
/// timing info.
fn sps_tail_frame_rate(r: &mut BitReader<'_>, log2_max_poc_lsb: u32) -> Result<Option<(u32, u32)>, SpsError> {
    r.ue_max("log2_min_luma_coding_block_size_minus3", 3)?;
    r.ue_max("log2_diff_max_min_luma_coding_block_size", 3)?;
    r.ue_max("log2_min_luma_transform_block_size_minus2", 3)?;
    r.ue_max("log2_diff_max_min_luma_transform_block_size", 3)?;
    r.ue_max("max_transform_hierarchy_depth_inter", 4)?;
    r.ue_max("max_transform_hierarchy_depth_intra", 4)?;
    if r.flag()? && r.flag()? {
        // scaling_list_enabled_flag && sps_scaling_list_data_present_flag
        skip_scaling_list_data(r)?;
    }
    r.flag()?; // amp_enabled_flag
    r.flag()?; // sample_adaptive_offset_enabled_flag
    if r.flag()? {
        // pcm_enabled_flag
        r.skip(8)?; // pcm sample bit depths (luma, chroma)
        r.ue_max("log2_min_pcm_luma_coding_block_size_minus3", 2)?;
        r.ue_max("log2_diff_max_min_pcm_luma_coding_block_size", 2)?;
        r.flag()?; // pcm_loop_filter_disabled_flag
    }
    let num_short_term_ref_pic_sets = r.ue_max("num_short_term_ref_pic_sets", 64)? as usize;
    let mut sets: Vec<RefPicSet> = Vec::with_capacity(num_short_term_ref_pic_sets);
    for index in 0..num_short_term_ref_pic_sets {
        let set = st_ref_pic_set(r, index, &sets)?;
        sets.push(set);
    }
    if r.flag()? {
        // long_term_ref_pics_present_flag
        let count = r.ue_max("num_long_term_ref_pics_sps", 32)?;
        for _ in 0..count {
            r.skip(log2_max_poc_lsb as usize + 1)?; // lt_ref_pic_poc_lsb_sps, used_by_curr_pic_lt_sps_flag
        }
    }
    r.flag()?; // sps_temporal_mvp_enabled_flag
    r.flag()?; // strong_intra_smoothing_enabled_flag
    if !r.flag()? {
        return Ok(None); // vui_parameters_present_flag
    }
    vui_frame_rate(r)
}

/// scaling_list_data() (7.3.4): only walked over.
fn skip_scaling_list_data(r: &mut BitReader<'_>) -> Result<(), SpsError> {
    for size_id in 0..4u32 {
        let step = if size_id == 3 { 3 } else { 1 };
        for matrix_id in (0..6u32).step_by(step) {
            if !r.flag()? {
                // scaling_list_pred_mode_flag 0: a reference to another list.
                let max = if size_id == 3 { matrix_id / 3 } else { matrix_id };
                r.ue_max("scaling_list_pred_matrix_id_delta", max)?;
                continue;
            }
            let coefficients = 64.min(1 << (4 + (size_id << 1)));
            if size_id > 1 {
                let dc = r.se()?;
                if !(-7..=247).contains(&dc) {
                    return Err(SpsError::OutOfRange("scaling_list_dc_coef_minus8", dc as u32));
                }
            }
            for _ in 0..coefficients {
                let delta = r.se()?;
                if !(-128..=127).contains(&delta) {
                    return Err(SpsError::OutOfRange("scaling_list_delta_coef", delta as u32));
                }
            }
        }
    }
    Ok(())
}

/// A short-term reference picture set: its delta POCs, negative (S0) and
/// positive (S1). Needed because an inter-predicted set's syntax size
/// depends on the set it predicts from.
struct RefPicSet {
    s0: Vec<i32>,
    s1: Vec<i32>,
}

/// Entries a reference picture set list may have (MaxDpbSize - 1 is 15).
const MAX_REF_PICS: usize = 16;

/// st_ref_pic_set(stRpsIdx) as it appears in the SPS (7.3.7, 7.4.8).
fn st_ref_pic_set(r: &mut BitReader<'_>, index: usize, sets: &[RefPicSet]) -> Result<RefPicSet, SpsError> {
    let inter = index != 0 && r.flag()?;
    if !inter {
        let negative = r.ue_max("num_negative_pics", MAX_REF_PICS as u32)?;
        let positive = r.ue_max("num_positive_pics", MAX_REF_PICS as u32)?;
        let (mut s0, mut s1) = (Vec::new(), Vec::new());
        let mut poc = 0i32;
        for _ in 0..negative {
            poc -= r.ue_max("delta_poc_s0_minus1", 0x7fff)? as i32 + 1;
            r.flag()?; // used_by_curr_pic_s0_flag
            s0.push(poc);
        }
        poc = 0;
        for _ in 0..positive {
            poc += r.ue_max("delta_poc_s1_minus1", 0x7fff)? as i32 + 1;
            r.flag()?; // used_by_curr_pic_s1_flag
            s1.push(poc);
        }
        return Ok(RefPicSet { s0, s1 });
    }
    // In the SPS delta_idx_minus1 is absent: the reference is the set before.
    let reference = sets.get(index - 1).ok_or(SpsError::OutOfRange("RefRpsIdx", index as u32))?;
    let sign = r.flag()?;
    let magnitude = r.ue_max("abs_delta_rps_minus1", 0x7fff)? as i32 + 1;
    let delta_rps = if sign { -magnitude } else { magnitude };
    let ref_negative = reference.s0.len();
    let count = ref_negative + reference.s1.len();
    let mut use_delta = Vec::with_capacity(count + 1);
    for _ in 0..=count {
        let used_by_curr_pic = r.flag()?;
        // use_delta_flag is inferred 1 when absent.
        use_delta.push(used_by_curr_pic || r.flag()?);
    }
    let uses = |j: usize| use_delta.get(j).copied().unwrap_or(false);
    // Equations 7-61 and 7-62.
    let mut s0 = Vec::new();
    for (j, d) in reference.s1.iter().enumerate().rev() {
        if d + delta_rps < 0 && uses(ref_negative + j) {
            s0.push(d + delta_rps);
        }
    }
    if delta_rps < 0 && uses(count) {
        s0.push(delta_rps);
    }
    for (j, d) in reference.s0.iter().enumerate() {
        if d + delta_rps < 0 && uses(j) {
            s0.push(d + delta_rps);
        }
    }
    let mut s1 = Vec::new();
    for (j, d) in reference.s0.iter().enumerate().rev() {
        if d + delta_rps > 0 && uses(j) {
            s1.push(d + delta_rps);
        }
    }
    if delta_rps > 0 && uses(count) {
        s1.push(delta_rps);
    }
    for (j, d) in reference.s1.iter().enumerate() {
        if d + delta_rps > 0 && uses(ref_negative + j) {
            s1.push(d + delta_rps);
        }
    }
    if s0.len() > MAX_REF_PICS || s1.len() > MAX_REF_PICS {
        return Err(SpsError::OutOfRange("NumDeltaPocs", (s0.len() + s1.len()) as u32));
    }
    Ok(RefPicSet { s0, s1 })
}

/// vui_parameters() (E.2.1) up to the timing info.
fn vui_frame_rate(r: &mut BitReader<'_>) -> Result<Option<(u32, u32)>, SpsError> {
    if r.flag()? && r.bits(8)? == 255 {
        // aspect_ratio_info_present_flag, aspect_ratio_idc == EXTENDED_SAR
        r.skip(32)?; // sar_width, sar_height
    }
    if r.flag()? {
        r.flag()?; // overscan_appropriate_flag
    }
    if r.flag()? {
        // video_signal_type_present_flag
        r.skip(4)?; // video_format, video_full_range_flag
        if r.flag()? {
            r.skip(24)?; // colour_primaries, transfer_characteristics, matrix_coeffs
        }
    }
    if r.flag()? {
        // chroma_loc_info_present_flag
        r.ue_max("chroma_sample_loc_type_top_field", 5)?;
        r.ue_max("chroma_sample_loc_type_bottom_field", 5)?;
    }
    r.skip(3)?; // neutral_chroma_indication, field_seq, frame_field_info_present
    if r.flag()? {
        // default_display_window_flag
        for _ in 0..4 {
            r.ue()?;
        }
    }
    if !r.flag()? {
        return Ok(None); // vui_timing_info_present_flag
    }
    let num_units_in_tick = r.bits(32)?;
    let time_scale = r.bits(32)?;
    Ok((num_units_in_tick != 0 && time_scale != 0).then_some((time_scale, num_units_in_tick)))
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
    /// A NAL unit shorter than its 2-byte header, or with
    /// `nuh_temporal_id_plus1` 0 (forbidden).
    BadNalHeader {
        frame_number: u64,
        nal_type: u8,
    },
    ForbiddenBit {
        frame_number: u64,
        nal_type: u8,
    },
    BadSps {
        frame_number: u64,
        error: SpsError,
    },
    IrapWithoutParameterSets {
        frame_number: u64,
    },
}

impl ProcessError {
    /// Label for the error metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProcessError::NoNalUnits { .. } => "no_nal_units",
            ProcessError::TooManyNalUnits { .. } => "too_many_nal_units",
            ProcessError::BadNalHeader { .. } => "bad_nal_header",
            ProcessError::ForbiddenBit { .. } => "forbidden_bit",
            ProcessError::BadSps { .. } => "bad_sps",
            ProcessError::IrapWithoutParameterSets { .. } => "irap_without_parameter_sets",
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
                write!(f, "frame {frame_number}: {count} NAL units, more than {MAX_NAL_UNITS}")
            }
            ProcessError::BadNalHeader { frame_number, nal_type } => write!(
                f,
                "frame {frame_number}: NAL unit type {nal_type} has a short header or nuh_temporal_id_plus1 0"
            ),
            ProcessError::ForbiddenBit { frame_number, nal_type } => {
                write!(f, "frame {frame_number}: NAL unit type {nal_type} has forbidden_zero_bit set")
            }
            ProcessError::BadSps { frame_number, error } => write!(f, "frame {frame_number}: {error}"),
            ProcessError::IrapWithoutParameterSets { frame_number } => {
                write!(f, "frame {frame_number}: IRAP without VPS/SPS/PPS and none cached yet")
            }
        }
    }
}

impl std::error::Error for ProcessError {}

/// The stateful part: VPS/SPS/PPS cache and sequence numbering.
#[derive(Debug, Default)]
pub struct Processor {
    parameter_sets: Option<Arc<ParameterSets>>,
    /// Parameter sets seen before the rest of a new triple is known.
    pending_vps: Option<Bytes>,
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
        let mut nals = Vec::with_capacity(ranges.len());
        let (mut new_vps, mut new_sps, mut new_pps) = (None, None, None);
        let mut is_keyframe = false;
        for range in ranges {
            let nal = frame.data.get(range.clone()).unwrap_or_default();
            let kind = nal_unit_type(nal);
            if forbidden_bit(nal) {
                return Err(ProcessError::ForbiddenBit { frame_number, nal_type: kind });
            }
            if nal.len() < 2 || nuh_temporal_id_plus1(nal) == 0 {
                return Err(ProcessError::BadNalHeader { frame_number, nal_type: kind });
            }
            if nuh_layer_id(nal) == 0 {
                match kind {
                    nal_type::VPS => new_vps = Some(range.clone()),
                    nal_type::SPS => new_sps = Some(range.clone()),
                    nal_type::PPS => new_pps = Some(range.clone()),
                    _ => is_keyframe |= is_irap(kind),
                }
            }
            nals.push(NalUnit { range, nal_type: kind });
        }
        let has_triple = new_vps.is_some() && new_sps.is_some() && new_pps.is_some();
        let current = self.parameter_sets.as_deref();
        if let Some(range) = new_vps {
            let vps = frame.data.slice(range);
            if current.and_then(|ps| ps.vps.as_ref()) != Some(&vps) {
                self.pending_vps = Some(vps);
            }
        }
        if let Some(range) = new_sps {
            let sps = frame.data.slice(range);
            // Parse only bytes not seen before: the same SPS on every IRAP
            // costs a comparison, not a parse.
            if current.map(|ps| &ps.sps) != Some(&sps) && self.pending_sps.as_ref().map(|p| &p.0) != Some(&sps) {
                let info = parse_sps(&sps).map_err(|error| ProcessError::BadSps { frame_number, error })?;
                self.pending_sps = Some((sps, info));
            }
        }
        if let Some(range) = new_pps {
            let pps = frame.data.slice(range);
            if current.map(|ps| &ps.pps) != Some(&pps) {
                self.pending_pps = Some(pps);
            }
        }
        self.apply_pending_parameter_sets();
        let prepend = is_keyframe && !has_triple;
        if is_keyframe && self.parameter_sets.is_none() {
            return Err(ProcessError::IrapWithoutParameterSets { frame_number });
        }
        let parameter_sets = self.parameter_sets.clone();
        Ok(self.numbering.access_unit(super::Codec::H265, frame, nals, is_keyframe, parameter_sets, prepend))
    }

    /// Replaces the canonical triple once every part of a new one is known.
    fn apply_pending_parameter_sets(&mut self) {
        if self.pending_vps.is_none() && self.pending_sps.is_none() && self.pending_pps.is_none() {
            return;
        }
        let current = self.parameter_sets.as_deref();
        let vps = self.pending_vps.clone().or_else(|| current.and_then(|ps| ps.vps.clone()));
        let sps = self.pending_sps.clone().or_else(|| current.and_then(|ps| Some((ps.sps.clone(), *ps.h265()?))));
        let pps = self.pending_pps.clone().or_else(|| current.map(|ps| ps.pps.clone()));
        let (Some(vps), Some((sps, info)), Some(pps)) = (vps, sps, pps) else {
            return;
        };
        self.pending_vps = None;
        self.pending_sps = None;
        self.pending_pps = None;
        self.generation += 1;
        log::info!(
            "H.265 parameter sets generation {}: {} ({}x{})",
            self.generation,
            info.describe(),
            info.width,
            info.height
        );
        self.parameter_sets =
            Some(Arc::new(ParameterSets::new(Some(vps), sps, pps, VideoInfo::H265(info), self.generation)));
    }
}

/// Whether this NAL unit begins a new access unit, given whether the
/// current one already has a VCL NAL unit (ITU-T H.265 7.4.2.4.4): after
/// one, a base-layer AUD, VPS, SPS, PPS, prefix SEI or NAL unit of type
/// 41..=44 or 48..=55 starts a new one, and so does a slice segment with
/// `first_slice_segment_in_pic_flag` set.
pub fn starts_access_unit(nal: &[u8], seen_vcl: bool) -> bool {
    let kind = nal_unit_type(nal);
    nuh_layer_id(nal) == 0
        && seen_vcl
        && match kind {
            nal_type::AUD | nal_type::VPS | nal_type::SPS | nal_type::PPS | nal_type::PREFIX_SEI => true,
            41..=44 | 48..=55 => true,
            _ => is_vcl(kind) && first_slice_segment_in_pic(nal),
        }
}

/// Groups a raw Annex-B elementary stream (a `.h265` file) into access
/// units by [`starts_access_unit`]. Each range includes its NAL units'
/// start codes; bytes before the first start code are left out.
pub fn split_access_units(stream: &[u8]) -> Vec<Range<usize>> {
    super::Codec::H265.split_access_units(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn raw(data: &[u8], n: u64) -> RawFrame {
        RawFrame {
            codec: super::super::Codec::H265,
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

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter().flat_map(|n| [0, 0, 0, 1].iter().chain(n.iter()).copied()).collect()
    }

    // The VPS, SPS and PPS of assets/demo.h265 (x265 3.5, 640x360 Main,
    // level 3.1, scripts/make-demo-clip-h265.sh).
    const DEMO_VPS: &str = "40010c01ffff01600000030090000003000003005dba0240";
    const DEMO_SPS: &str = "42010101600000030090000003000003005da00502016965ba924caf016808000003000800000300f040";
    const DEMO_PPS: &str = "4401c172b44240";

    // NAL headers: type << 1, then layer 0 and TID 1.
    const AUD: &[u8] = &[0x46, 0x01, 0x10];
    const IDR: &[u8] = &[0x26, 0x01, 0xaf, 0x11];
    const CRA: &[u8] = &[0x2a, 0x01, 0xaf, 0x22];
    const BLA: &[u8] = &[0x20, 0x01, 0xaf, 0x33];
    const TRAIL: &[u8] = &[0x02, 0x01, 0xd0, 0x44];

    #[test]
    fn nal_header_fields() {
        let sps = hex(DEMO_SPS);
        assert_eq!(nal_unit_type(&sps), nal_type::SPS);
        assert_eq!((nuh_layer_id(&sps), nuh_temporal_id_plus1(&sps)), (0, 1));
        assert!(!forbidden_bit(&sps));
        assert_eq!(nal_unit_type(IDR), nal_type::IDR_W_RADL);
        assert_eq!(nal_unit_type(&[0x28, 0x01]), nal_type::IDR_N_LP);
        assert_eq!(nal_unit_type(CRA), nal_type::CRA_NUT);
        assert_eq!(nal_unit_type(AUD), nal_type::AUD);
        // layer 33: low bit of byte 0 and top 5 bits of byte 1.
        assert_eq!(nuh_layer_id(&[0x43, 0x0a]), 33);
        assert_eq!(nuh_temporal_id_plus1(&[0x43, 0x0a]), 2);
        assert!(forbidden_bit(&[0x80, 0x01]));
        assert_eq!(nal_unit_type(&[]), nal_type::UNSPECIFIED);
        assert_eq!((nuh_layer_id(&[0x43]), nuh_temporal_id_plus1(&[0x43])), (0, 0));
        assert!((16..=23).all(is_irap) && !is_irap(15) && !is_irap(24));
        assert!(is_vcl(0) && is_vcl(31) && !is_vcl(32));
        assert!(first_slice_segment_in_pic(IDR) && !first_slice_segment_in_pic(&[0x02, 0x01, 0x40]));
        assert!(!first_slice_segment_in_pic(&[0x02, 0x01]));
    }

    #[test]
    fn parses_the_demo_sps_like_ffprobe() {
        // ffprobe -v error -select_streams v:0 -show_entries
        //   stream=profile,level,width,height,r_frame_rate -of csv=p=0 assets/demo.h265
        // printed Main,640,360,93,30/1; tier, bit depth and chroma from
        // `ffmpeg -i assets/demo.h265 -c copy -bsf:v trace_headers -f null -`.
        let info = parse_sps(&hex(DEMO_SPS)).unwrap();
        assert_eq!((info.width, info.height), (640, 360));
        assert_eq!((info.general_profile_space, info.general_profile_idc, info.general_tier_flag), (0, 1, false));
        assert_eq!(info.general_level_idc, 93);
        assert_eq!((info.chroma_format_idc, info.bit_depth_luma, info.bit_depth_chroma), (1, 8, 8));
        assert_eq!(info.frame_rate, Some((30, 1)));
        assert_eq!((info.max_sub_layers, info.temporal_id_nesting), (1, true));
        // Main stream: compatibility flags 1 (Main) and 2 (Main 10).
        assert_eq!(info.general_profile_compatibility_flags, 0x6000_0000);
        assert!(info.compatible_with_profile(1) && info.compatible_with_profile(2) && !info.compatible_with_profile(3));
        // progressive_source and frame_only_constraint set, as x265 writes.
        assert_eq!(info.general_constraint_indicator_flags, 0x9000_0000_0000);
        let ptl = info.profile_tier_level();
        assert_eq!((ptl.profile_space, ptl.profile_id, ptl.tier_flag, ptl.level_id), (0, 1, 0, 93));
        assert_eq!(info.describe(), "Main, tier Main, level 3.1 (level-id=93)");
    }

    /// SPS hex, size, profile, High tier, level, luma bit depth, frame rate.
    type Case = (&'static str, (u32, u32), u8, bool, u8, u8, (u32, u32));

    #[test]
    fn parses_x265_streams_of_other_shapes() {
        // Generated with ffmpeg + libx265 (testsrc2); expected values are what
        // `gst-launch-1.0 -v filesrc location=X ! h265parse ! fakesink` put
        // in its caps and ffprobe -show_entries stream=... printed.
        let cases: [Case; 4] = [
            // 1920x1080 Main 10 level 4, 30000/1001.
            (
                "420101022000000300900000030000030078a003c08010e4d96566924caf01680800001f480003a98040",
                (1920, 1080),
                2,
                false,
                120,
                10,
                (30000, 1001),
            ),
            // 642x362: coded 648x368, conformance window in 4:2:0 units.
            (
                "42010101600000030090000003000003003fa005120171c9265959a4932bc05a020000030002000003003210",
                (642, 362),
                1,
                false,
                63,
                8,
                (25, 1),
            ),
            // 322x242 4:4:4 (RExt, profile 4): window offsets in luma units.
            (
                "4201010408000003009e0800000300003c90014901f39e7cb2b349265780b40400000fa40001770020",
                (322, 242),
                4,
                false,
                60,
                8,
                (24000, 1001),
            ),
            // 1280x720 High tier level 5.1, 50 fps.
            (
                "420101216000000300900000030000030099a00280802d165959a4932bc05a020000030002000003006410",
                (1280, 720),
                1,
                true,
                153,
                8,
                (50, 1),
            ),
        ];
        for (sps, size, profile, tier, level, depth, fps) in cases {
            let info = parse_sps(&hex(sps)).unwrap();
            assert_eq!((info.width, info.height), size, "{sps}");
            assert_eq!(
                (info.general_profile_idc, info.general_tier_flag, info.general_level_idc),
                (profile, tier, level)
            );
            assert_eq!(info.bit_depth_luma, depth);
            let (scale, tick) = info.frame_rate.unwrap();
            assert_eq!(u64::from(scale) * u64::from(fps.1), u64::from(fps.0) * u64::from(tick), "{sps}");
        }
        let rext = parse_sps(&hex(cases[2].0)).unwrap();
        assert_eq!(rext.chroma_format_idc, 3);
        assert_eq!(
            (level_name(153), level_name(120), level_name(31)),
            ("5.1".into(), "4".into(), "level-id 31".into())
        );
        assert_eq!(
            describe_ptl(parse_sps(&hex(cases[3].0)).unwrap().profile_tier_level()),
            "Main, tier High, level 5.1 (level-id=153)"
        );
    }

    /// SPSs of x265 streams made here with ffmpeg 5.1 + libx265 3.5 from
    /// `testsrc` (`-f hevc`, first SPS of the stream): scaling lists
    /// (`-x265-params scaling-list=default`, 1280x720), B-frames with a
    /// pyramid (`bframes=4:b-pyramid=1`, 640x360), High tier
    /// (`level-idc=51:high-tier=1`, 1920x1080) and 4:4:4
    /// (`-pix_fmt yuv444p -profile:v main444-8`, 1280x720).
    const WALK_VECTORS: [&str; 4] = [
        "42010101600000030090000003000003005da00280802d165959a49395e02d010000030001000003001e08",
        "42010101600000030090000003000003003fa00502016965959a4932bc05a020000003002000000303c1",
        "420101216000000300900000030000030099a003c08010e596566924caf0168080000003008000000f04",
        "4201010408000003009e0800000300005d9000501005a2cb2b349265780b4040000003004000000782",
    ];

    #[test]
    fn the_walk_to_the_vui_succeeds_on_every_real_sps() {
        // An error after the bit depths only costs the frame rate, so check
        // directly that the walk (RPS, scaling lists, VUI) gets through.
        let mut vectors: Vec<Vec<u8>> = WALK_VECTORS.iter().map(|v| hex(v)).collect();
        vectors.push(hex(DEMO_SPS));
        for (i, sps) in vectors.iter().enumerate() {
            let (_, tail) = parse_sps_parts(sps).unwrap();
            assert!(tail.is_ok(), "vector {i}: {tail:?}");
        }
        let sizes: Vec<(u32, u32)> =
            vectors[..4].iter().map(|v| parse_sps(v).map(|i| (i.width, i.height)).unwrap()).collect();
        // x265's default streams have B-frames (x265 writes 2 reorder
        // pictures with b-pyramid, 1 without); the demo clip (bframes=0) none.
        let reorder: Vec<u8> = vectors.iter().map(|v| parse_sps(v).unwrap().max_num_reorder_pics).collect();
        assert_eq!(reorder, [2, 2, 2, 2, 0]);
        // What ffprobe -show_entries stream=width,height printed for each.
        assert_eq!(sizes, [(1280, 720), (640, 360), (1920, 1080), (1280, 720)]);
    }

    #[test]
    fn truncated_or_wrong_sps_is_an_error_not_a_panic() {
        let sps = hex(DEMO_SPS);
        for len in 0..sps.len() {
            let _ = parse_sps(&sps[..len]);
        }
        assert_eq!(parse_sps(&sps[..10]), Err(SpsError::Truncated));
        assert_eq!(parse_sps(&hex(DEMO_PPS)), Err(SpsError::NotAnSps));
        assert_eq!(parse_sps(&[0x42]), Err(SpsError::NotAnSps));
        // Same SPS claiming layer 1.
        let mut layered = sps.clone();
        layered[1] |= 0x08;
        assert_eq!(parse_sps(&layered), Err(SpsError::NotBaseLayer(1)));
        // Cutting into the VUI keeps the SPS, loses the frame rate.
        let info = parse_sps(&sps[..sps.len() - 8]).unwrap();
        assert_eq!((info.width, info.frame_rate), (640, None));
    }

    fn demo_triple() -> [Vec<u8>; 3] {
        [hex(DEMO_VPS), hex(DEMO_SPS), hex(DEMO_PPS)]
    }

    #[test]
    fn irap_without_parameter_sets_gets_the_cached_ones_after_its_aud() {
        let [vps, sps, pps] = demo_triple();
        let mut p = Processor::new();
        let first = p.process(raw(&annexb(&[AUD, &vps, &sps, &pps, IDR]), 0)).unwrap();
        assert!(first.is_keyframe && !first.prepend_parameter_sets);
        assert_eq!(first.parameter_sets.as_ref().unwrap().info.size().0, 640);
        let second = p.process(raw(&annexb(&[AUD, CRA]), 1)).unwrap();
        assert!(second.is_keyframe && second.prepend_parameter_sets);
        let nals: Vec<Bytes> = second.nal_units().collect();
        let expected: Vec<&[u8]> = vec![AUD, &vps, &sps, &pps, CRA];
        assert_eq!(nals.iter().map(|b| &b[..]).collect::<Vec<_>>(), expected);
        let file: Vec<u8> = second.annexb_chunks().flatten().copied().collect();
        assert_eq!(file, annexb(&expected));
        assert_eq!(second.annexb_len(), file.len());
        // Without an AUD the triple goes first.
        let third = p.process(raw(&annexb(&[BLA]), 2)).unwrap();
        let file: Vec<u8> = third.annexb_chunks().flatten().copied().collect();
        assert_eq!(file, annexb(&[&vps, &sps, &pps, BLA]));
        // A non-IRAP never gets them.
        let fourth = p.process(raw(&annexb(&[AUD, TRAIL]), 3)).unwrap();
        assert!(!fourth.is_keyframe && !fourth.prepend_parameter_sets);
        assert_eq!(fourth.nal_units().count(), 2);
        assert_eq!(p.parameter_sets().unwrap().generation, 1);
    }

    #[test]
    fn every_irap_type_is_a_keyframe() {
        let [vps, sps, pps] = demo_triple();
        let mut p = Processor::new();
        p.process(raw(&annexb(&[&vps, &sps, &pps, IDR]), 0)).unwrap();
        for kind in 16..=21u8 {
            let nal = [kind << 1, 0x01, 0x80];
            let au = p.process(raw(&annexb(&[&nal]), u64::from(kind))).unwrap();
            assert!(au.is_keyframe && au.prepend_parameter_sets, "type {kind}");
        }
        for kind in [0u8, 1, 8, 9] {
            let nal = [kind << 1, 0x01, 0x80];
            assert!(!p.process(raw(&annexb(&[&nal]), 99)).unwrap().is_keyframe, "type {kind}");
        }
        // An IRAP of layer 1 does not make a keyframe.
        assert!(!p.process(raw(&annexb(&[&[0x26, 0x09, 0x80]]), 100)).unwrap().is_keyframe);
    }

    #[test]
    fn irap_before_any_parameter_sets_is_refused() {
        let mut p = Processor::new();
        let err = p.process(raw(&annexb(&[AUD, IDR]), 7)).unwrap_err();
        assert_eq!(err, ProcessError::IrapWithoutParameterSets { frame_number: 7 });
        assert_eq!(err.label(), "irap_without_parameter_sets");
        // SPS and PPS without a VPS are not a triple either.
        let [_, sps, pps] = demo_triple();
        let err = p.process(raw(&annexb(&[&sps, &pps, IDR]), 8)).unwrap_err();
        assert_eq!(err.label(), "irap_without_parameter_sets");
        // A non-IRAP before any parameter sets passes: the hub never starts
        // a consumer on it.
        assert!(p.process(raw(&annexb(&[TRAIL]), 9)).is_ok());
    }

    #[test]
    fn changed_parameter_sets_bump_the_generation_and_same_bytes_do_not() {
        let [vps, sps, pps] = demo_triple();
        let mut p = Processor::new();
        p.process(raw(&annexb(&[&vps, &sps, &pps, IDR]), 0)).unwrap();
        p.process(raw(&annexb(&[&vps, &sps, &pps, IDR]), 1)).unwrap();
        assert_eq!(p.parameter_sets().unwrap().generation, 1);
        let new_pps: &[u8] = &[0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40];
        p.process(raw(&annexb(&[&vps, &sps, new_pps, IDR]), 2)).unwrap();
        let ps = p.parameter_sets().unwrap();
        assert_eq!((ps.generation, &ps.pps[..]), (2, new_pps));
        assert_eq!(ps.annexb[..], annexb(&[&vps, &sps, new_pps])[..]);
        // A new SPS alone (with the cached VPS/PPS) completes a new triple.
        let sps_720 = hex("420101216000000300900000030000030099a00280802d165959a4932bc05a020000030002000003006410");
        let au = p.process(raw(&annexb(&[&sps_720, CRA]), 3)).unwrap();
        assert!(au.prepend_parameter_sets);
        let ps = au.parameter_sets.as_ref().unwrap();
        assert_eq!((ps.generation, ps.info.size().0), (3, 1280));
    }

    #[test]
    fn bad_frames_are_refused_with_labels() {
        let [vps, sps, pps] = demo_triple();
        let mut p = Processor::new();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "no_nal_units"),
            (annexb(&[&[0xa6, 0x01, 0x00]]), "forbidden_bit"),
            (annexb(&[&[0x26]]), "bad_nal_header"),
            (annexb(&[&[0x26, 0x00, 0x80]]), "bad_nal_header"),
            (annexb(&[&vps, &sps[..12], &pps, IDR]), "bad_sps"),
            ([0, 0, 1, 2, 1].repeat(MAX_NAL_UNITS + 1), "too_many_nal_units"),
        ];
        for (i, (frame, label)) in cases.into_iter().enumerate() {
            let err = p.process(raw(&frame, i as u64)).unwrap_err();
            assert_eq!(err.label(), label, "{err}");
            assert!(err.to_string().starts_with(&format!("frame {i}:")), "{err}");
        }
        // A refused frame takes no sequence number.
        assert_eq!(p.process(raw(&annexb(&[TRAIL]), 9)).unwrap().seq, 0);
    }

    #[test]
    fn gap_marks_the_next_access_unit() {
        let mut p = Processor::new();
        p.note_gap();
        let frame = annexb(&[TRAIL]);
        assert!(p.process(raw(&frame, 0)).unwrap().after_gap);
        let next = p.process(raw(&frame, 1)).unwrap();
        assert!(!next.after_gap);
        assert_eq!(next.seq, 1);
    }

    #[test]
    fn groups_a_stream_into_access_units() {
        let [vps, sps, pps] = demo_triple();
        let second_slice: &[u8] = &[0x26, 0x01, 0x2f, 0x11];
        let trail_second: &[u8] = &[0x02, 0x01, 0x40, 0x44];
        let suffix_sei: &[u8] = &[0x50, 0x01, 0x05];
        let stream = [
            annexb(&[AUD, &vps, &sps, &pps, &[0x4e, 0x01, 0x05], IDR, second_slice, suffix_sei]),
            annexb(&[AUD, TRAIL, trail_second]),
            // No AUD: the first slice starts the access unit.
            annexb(&[TRAIL, trail_second]),
            // Prefix SEI starts it.
            annexb(&[&[0x4e, 0x01, 0x05], TRAIL]),
        ];
        let joined: Vec<u8> = stream.concat();
        let units: Vec<&[u8]> = split_access_units(&joined).into_iter().map(|r| &joined[r]).collect();
        let expected: Vec<&[u8]> = stream.iter().map(Vec::as_slice).collect();
        assert_eq!(units, expected);
        // Three-byte start codes and leading garbage.
        let short: Vec<u8> = [&[9, 9][..], &[0, 0, 1], TRAIL, &[0, 0, 1], TRAIL].concat();
        let units = split_access_units(&short);
        assert_eq!(units, vec![2..9, 9..16]);
        assert!(split_access_units(&[]).is_empty());
    }
}
