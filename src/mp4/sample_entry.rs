//! Sample entries: `avc1`+`avcC` for H.264, `hvc1`+`hvcC` for H.265, and
//! the RFC 6381 `codecs` string that names them.
//!
//! In: a stream's parameter sets (NAL units without start codes, header
//! byte(s) included): the hub's canonical set
//! ([`TrackConfig::for_stream`], LL-HLS) or those a recording carries
//! ([`TrackConfig::from_parameter_sets`]). The SPS is parsed by
//! [`crate::codec::h264::parse_sps`] / [`crate::codec::h265::parse_sps`].
//! Out: a [`TrackConfig`] holding the `mp4-atom` sample entry, used by
//! [`super::fmp4::init_segment`] and [`super::progressive::Layout`]. The
//! avcC takes profile, constraint flags and level from the SPS (and chroma
//! format and bit depths for the High profiles, which ISO/IEC 14496-15
//! 5.3.3.1 requires there); the hvcC takes profile_tier_level, chroma
//! format, bit depths and sub-layer fields from the SPS.
//! Bad input: a missing, truncated or nonsensical parameter set is
//! [`Error::BadParameterSet`] or [`Error::MissingParameterSets`]; one over
//! 65535 bytes (the records' length field) is refused too. Nothing panics.
//!
//! A change of parameter sets means a new `TrackConfig`: a new init
//! segment (LL-HLS, with a discontinuity) or a new MP4 file.

use bytes::Bytes;
use mp4_atom::{Avc1, Avcc, AvccExt, Hvc1, HvcCArray, Hvcc, Visual};

use super::{Error, TIMESCALE};
use crate::codec::{h264, h265, Codec, ParameterSets, VideoInfo};

/// The parameter sets a track decodes with, as NAL units (no start code).
/// Several of one kind are allowed (e.g. two PPS ids); `vps` is empty for
/// H.264.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParameterSetList {
    pub vps: Vec<Bytes>,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

impl ParameterSetList {
    /// The hub's canonical set of a stream.
    pub fn from_stream(ps: &ParameterSets) -> ParameterSetList {
        ParameterSetList { vps: ps.vps.iter().cloned().collect(), sps: vec![ps.sps.clone()], pps: vec![ps.pps.clone()] }
    }

    /// Files `nal` under its kind if it is a parameter set not already
    /// held; returns whether it was one (held before or not).
    pub fn add(&mut self, codec: Codec, nal: &[u8]) -> bool {
        if !codec.is_parameter_set(nal) {
            return false;
        }
        let kind = codec.nal_type(nal);
        let list = match (codec, kind) {
            (Codec::H264, h264::nal_type::SPS) | (Codec::H265, h265::nal_type::SPS) => &mut self.sps,
            (Codec::H265, h265::nal_type::VPS) => &mut self.vps,
            _ => &mut self.pps,
        };
        if !list.iter().any(|held| held[..] == *nal) {
            list.push(Bytes::copy_from_slice(nal));
        }
        true
    }

    /// Whether `nal` is byte-identical to a held parameter set.
    pub fn contains(&self, nal: &[u8]) -> bool {
        self.vps.iter().chain(&self.sps).chain(&self.pps).any(|held| held[..] == *nal)
    }

    /// The first kind missing for `codec`, if any.
    pub fn missing(&self, codec: Codec) -> Option<&'static str> {
        if codec == Codec::H265 && self.vps.is_empty() {
            Some("VPS")
        } else if self.sps.is_empty() {
            Some("SPS")
        } else if self.pps.is_empty() {
            Some("PPS")
        } else {
            None
        }
    }

    /// Bytes held (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.vps.iter().chain(&self.sps).chain(&self.pps).map(Bytes::len).sum()
    }
}

/// What an SPS says, parsed by the codec's own parser.
pub fn parse_sps(codec: Codec, sps: &[u8]) -> Result<VideoInfo, Error> {
    let bad = |e: &dyn std::fmt::Display| Error::BadParameterSet(format!("{codec} SPS: {e}"));
    match codec {
        Codec::H264 => h264::parse_sps(sps).map(VideoInfo::H264).map_err(|e| bad(&e)),
        Codec::H265 => h265::parse_sps(sps).map(VideoInfo::H265).map_err(|e| bad(&e)),
    }
}

/// One video track: codec, size, the sample entry, and its codecs string.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackConfig {
    pub codec: Codec,
    /// What the (first) SPS says.
    pub info: VideoInfo,
    /// The displayed picture size.
    pub width: u16,
    pub height: u16,
    /// Media timescale (ticks per second) of durations and decode times.
    pub timescale: u32,
    pub parameter_sets: ParameterSetList,
    pub(crate) entry: mp4_atom::Codec,
    codecs: String,
}

fn visual(width: u16, height: u16, compressor: &str) -> Visual {
    Visual { data_reference_index: 1, width, height, compressor: compressor.into(), ..Default::default() }
}

fn dimension(value: u32) -> Result<u16, Error> {
    u16::try_from(value).ok().filter(|&v| v > 0).ok_or(Error::BadParameterSet(format!("picture size {value}")))
}

fn check_lengths(ps: &ParameterSetList) -> Result<(), Error> {
    // avcC/hvcC store each parameter set's length in 16 bits and the count
    // of SPS in 5 bits (avcC), of PPS / array entries in 8 / 16 bits.
    let all = ps.vps.iter().chain(&ps.sps).chain(&ps.pps);
    if all.clone().any(|nal| nal.is_empty() || nal.len() > usize::from(u16::MAX)) {
        return Err(Error::BadParameterSet("parameter set empty or over 65535 bytes".into()));
    }
    if ps.sps.len() > 31 || ps.pps.len() > 255 || ps.vps.len() > 255 {
        return Err(Error::BadParameterSet("too many parameter sets for the decoder configuration record".into()));
    }
    Ok(())
}

impl TrackConfig {
    /// The track of a live stream, from the hub's canonical parameter sets
    /// (already parsed: nothing is parsed again).
    pub fn for_stream(ps: &ParameterSets) -> Result<TrackConfig, Error> {
        TrackConfig::new(ps.info, ParameterSetList::from_stream(ps))
    }

    /// A track from a set of parameter sets; the first SPS is parsed for
    /// profile, level and size.
    pub fn from_parameter_sets(codec: Codec, ps: ParameterSetList) -> Result<TrackConfig, Error> {
        if let Some(kind) = ps.missing(codec) {
            return Err(Error::MissingParameterSets(kind));
        }
        let info = parse_sps(codec, &ps.sps[0])?;
        TrackConfig::new(info, ps)
    }

    /// A track whose first SPS says `info` (several SPS/PPS allowed: all go
    /// into the record).
    pub fn new(info: VideoInfo, ps: ParameterSetList) -> Result<TrackConfig, Error> {
        let codec = info.codec();
        if let Some(kind) = ps.missing(codec) {
            return Err(Error::MissingParameterSets(kind));
        }
        check_lengths(&ps)?;
        let (width, height) = info.size();
        let (width, height) = (dimension(width)?, dimension(height)?);
        let to_vecs = |list: &[Bytes]| list.iter().map(|b| b.to_vec()).collect::<Vec<_>>();
        let (entry, codecs) = match &info {
            VideoInfo::H264(sps) => {
                // ISO/IEC 14496-15 5.3.3.1: these profiles carry chroma
                // format and bit depths in the avcC.
                let ext = matches!(sps.profile_idc, 100 | 110 | 122 | 144).then(|| AvccExt {
                    chroma_format: sps.chroma_format_idc,
                    bit_depth_luma: sps.bit_depth_luma,
                    bit_depth_chroma: sps.bit_depth_chroma,
                    sequence_parameter_sets_ext: vec![],
                });
                let avcc = Avcc {
                    configuration_version: 1,
                    avc_profile_indication: sps.profile_idc,
                    profile_compatibility: sps.constraint_flags,
                    avc_level_indication: sps.level_idc,
                    length_size: 4,
                    sequence_parameter_sets: to_vecs(&ps.sps),
                    picture_parameter_sets: to_vecs(&ps.pps),
                    ext,
                };
                // RFC 6381 3.3: avc1.PPCCLL, profile_idc, constraint flags
                // and level_idc in hex.
                let codecs = format!("avc1.{}", sps.profile_level_id().to_ascii_uppercase());
                let entry = Avc1 { visual: visual(width, height, "AVC Coding"), avcc, ..Default::default() };
                (mp4_atom::Codec::Avc1(entry), codecs)
            }
            VideoInfo::H265(sps) => {
                let array = |nal_unit_type, list: &[Bytes]| HvcCArray {
                    // hvc1: every parameter set is in the sample entry
                    // (in-band copies are identical ones, see `sample`).
                    completeness: true,
                    nal_unit_type,
                    nalus: to_vecs(list),
                };
                let flags = sps.general_constraint_indicator_flags.to_be_bytes();
                let hvcc = Hvcc {
                    configuration_version: 1,
                    general_profile_space: sps.general_profile_space,
                    general_tier_flag: sps.general_tier_flag,
                    general_profile_idc: sps.general_profile_idc,
                    general_profile_compatibility_flags: sps.general_profile_compatibility_flags.to_be_bytes(),
                    // The 48 bits sit in the low 6 bytes of the u64.
                    general_constraint_indicator_flags: [flags[2], flags[3], flags[4], flags[5], flags[6], flags[7]],
                    general_level_idc: sps.general_level_idc,
                    // Unknown (0) is always allowed for these four.
                    min_spatial_segmentation_idc: 0,
                    parallelism_type: 0,
                    avg_frame_rate: 0,
                    constant_frame_rate: 0,
                    chroma_format_idc: sps.chroma_format_idc,
                    bit_depth_luma_minus8: sps.bit_depth_luma.saturating_sub(8),
                    bit_depth_chroma_minus8: sps.bit_depth_chroma.saturating_sub(8),
                    num_temporal_layers: sps.max_sub_layers,
                    temporal_id_nested: sps.temporal_id_nesting,
                    length_size_minus_one: 3,
                    arrays: vec![
                        array(h265::nal_type::VPS, &ps.vps),
                        array(h265::nal_type::SPS, &ps.sps),
                        array(h265::nal_type::PPS, &ps.pps),
                    ],
                };
                let entry = Hvc1 { visual: visual(width, height, "HEVC Coding"), hvcc, ..Default::default() };
                (mp4_atom::Codec::Hvc1(entry), hevc_codecs_string(sps))
            }
        };
        Ok(TrackConfig { codec, info, width, height, timescale: TIMESCALE, parameter_sets: ps, entry, codecs })
    }

    /// The RFC 6381 `codecs` value of the track, e.g. `avc1.42C01F` or
    /// `hvc1.1.6.L93.B0` (for HLS `CODECS=` and MSE `isTypeSupported`).
    pub fn codecs(&self) -> &str {
        &self.codecs
    }
}

/// ISO/IEC 14496-15 Annex E: `hvc1.[A-C]<profile_idc>.<compatibility
/// flags, bit-reversed, hex>.<L|H><level_idc>[.<constraint byte>...]`,
/// trailing zero constraint bytes left out.
fn hevc_codecs_string(sps: &h265::SpsInfo) -> String {
    let space = ["", "A", "B", "C"][usize::from(sps.general_profile_space & 3)];
    let mut s = format!(
        "hvc1.{space}{}.{:X}.{}{}",
        sps.general_profile_idc,
        sps.general_profile_compatibility_flags.reverse_bits(),
        if sps.general_tier_flag { 'H' } else { 'L' },
        sps.general_level_idc
    );
    let flags = &sps.general_constraint_indicator_flags.to_be_bytes()[2..];
    let used = flags.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    for byte in &flags[..used] {
        s.push_str(&format!(".{byte:X}"));
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // assets/demo.h264 (x264, 640x360 constrained baseline, level 3.1).
    pub(crate) const SPS_640X360: &[u8] = &[
        0x67, 0x42, 0xc0, 0x1f, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00,
        0x03, 0x00, 0xf2, 0x3c, 0x60, 0xca, 0x80,
    ];
    pub(crate) const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];
    // x265 Main, 640x360, level 2.1 (parameter sets of a libx265 clip).
    const HEVC_VPS: &[u8] = &[
        0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00,
        0x03, 0x00, 0x3f, 0xba, 0x02, 0x40,
    ];
    const HEVC_SPS: &[u8] = &[
        0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x3f,
        0xa0, 0x05, 0x02, 0x01, 0x71, 0xf2, 0xe5, 0xba, 0x4a, 0x4c, 0x2f, 0x01, 0x68, 0x08, 0x00, 0x00, 0x03, 0x00,
        0x08, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x40,
    ];
    const HEVC_PPS: &[u8] = &[0x44, 0x01, 0xc0, 0x73, 0xc1, 0x89];

    fn list(sets: &[&[u8]]) -> ParameterSetList {
        let mut list = ParameterSetList::default();
        let codec = if sets.len() == 3 { Codec::H265 } else { Codec::H264 };
        for nal in sets {
            assert!(list.add(codec, nal));
        }
        list
    }

    #[test]
    fn h264_track_and_codecs_string() {
        let track = TrackConfig::from_parameter_sets(Codec::H264, list(&[SPS_640X360, PPS])).unwrap();
        assert_eq!(track.codecs(), "avc1.42C01F");
        assert_eq!((track.width, track.height), (640, 360));
        let mp4_atom::Codec::Avc1(entry) = &track.entry else { panic!("not avc1") };
        assert_eq!(entry.avcc.sequence_parameter_sets, [SPS_640X360]);
        assert!(entry.avcc.ext.is_none(), "Constrained Baseline has no avcC extension");
    }

    #[test]
    fn h265_track_and_codecs_string() {
        let track = TrackConfig::from_parameter_sets(Codec::H265, list(&[HEVC_VPS, HEVC_SPS, HEVC_PPS])).unwrap();
        assert_eq!(track.codecs(), "hvc1.1.6.L63.90");
        assert_eq!((track.width, track.height), (640, 360));
        let mp4_atom::Codec::Hvc1(entry) = &track.entry else { panic!("not hvc1") };
        assert_eq!(entry.hvcc.general_constraint_indicator_flags, [0x90, 0, 0, 0, 0, 0]);
        assert_eq!(entry.hvcc.general_profile_compatibility_flags, [0x60, 0, 0, 0]);
        assert_eq!(entry.hvcc.arrays.iter().map(|a| a.nalus.len()).collect::<Vec<_>>(), [1, 1, 1]);
    }

    #[test]
    fn a_live_stream_track_uses_the_parsed_sets_as_they_are() {
        let info = VideoInfo::H264(h264::parse_sps(SPS_640X360).unwrap());
        let ps = ParameterSets::new(None, Bytes::from_static(SPS_640X360), Bytes::from_static(PPS), info, 1);
        let track = TrackConfig::for_stream(&ps).unwrap();
        assert_eq!(track.parameter_sets, list(&[SPS_640X360, PPS]));
        assert_eq!(track.codecs(), "avc1.42C01F");
    }

    #[test]
    fn refuses_bad_parameter_sets_without_panicking() {
        assert!(TrackConfig::from_parameter_sets(Codec::H264, list(&[&[0x67], PPS])).is_err());
        assert!(TrackConfig::from_parameter_sets(Codec::H264, list(&[&SPS_640X360[..6], PPS])).is_err());
        assert!(TrackConfig::from_parameter_sets(Codec::H265, list(&[HEVC_VPS, &HEVC_SPS[..10], HEVC_PPS])).is_err());
        assert!(matches!(
            TrackConfig::from_parameter_sets(Codec::H265, ParameterSetList::default()),
            Err(Error::MissingParameterSets("VPS"))
        ));
        let mut sets = list(&[SPS_640X360, PPS]);
        sets.pps.push(Bytes::new());
        assert!(TrackConfig::from_parameter_sets(Codec::H264, sets).is_err());
    }
}
