//! Access units in their MP4 sample form: each kept NAL unit prefixed by
//! its 4-byte big-endian length (`lengthSizeMinusOne` = 3 in the
//! avcC/hvcC) instead of a start code.
//!
//! In: Annex-B bytes of one access unit (or several Annex-B pieces of one,
//! as [`crate::codec::AccessUnit::annexb_chunks`] gives them), split by
//! [`crate::codec::annexb::NalUnits`]. Out: sample bytes, or their size.
//! Bad input: bytes before the first start code are ignored, empty NAL
//! units skipped; bytes without a start code make an empty sample. Nothing
//! panics.
//!
//! Which NAL units go into a sample ([`keep_in_sample`]):
//! - dropped: access unit delimiters (H.264 type 9, H.265 type 35) and
//!   filler data (12 / 38). ISO/IEC 14496-15 has no use for AUDs in MP4
//!   (sample boundaries replace them) and filler is padding for a CBR
//!   channel that decoders discard.
//! - kept: everything else, in-band SPS/PPS/VPS and SEI included. The
//!   parameter sets are also in the sample entry (avcC/hvcC), and within
//!   one init segment / one MP4 file they are byte-identical to it (a
//!   change starts a new init segment or file). This is what `ffmpeg -c
//!   copy` does when it muxes Annex-B into MP4 (its movenc converts every
//!   NAL unit, for `avc1` and `hvc1` alike), and such files play in
//!   Chrome, Firefox, Safari and ffmpeg; it also keeps every keyframe
//!   sample decodable on its own.

use crate::codec::annexb::NalUnits;
use crate::codec::{h264, h265, Codec};

/// Whether a NAL unit is copied into MP4 samples (see the module doc for
/// why AUD and filler data are not).
pub fn keep_in_sample(codec: Codec, nal: &[u8]) -> bool {
    let kind = codec.nal_type(nal);
    match codec {
        Codec::H264 => !matches!(kind, h264::nal_type::AUD | h264::nal_type::FILLER),
        Codec::H265 => !matches!(kind, h265::nal_type::AUD | h265::nal_type::FD),
    }
}

/// Bytes [`append_length_prefixed`] produces for `annexb`, computed
/// without allocating: 4 + length for each kept NAL unit.
pub fn length_prefixed_size(codec: Codec, annexb: &[u8]) -> usize {
    NalUnits::new(annexb).filter(|nal| keep_in_sample(codec, &annexb[nal.clone()])).map(|nal| 4 + nal.len()).sum()
}

/// Appends the MP4 sample form of Annex-B bytes to `out`. Several Annex-B
/// pieces of one access unit can be appended one after the other. A NAL
/// unit of 4 GiB or more cannot be described and is skipped (callers bound
/// access units far below that).
pub fn append_length_prefixed(codec: Codec, annexb: &[u8], out: &mut Vec<u8>) {
    out.reserve(length_prefixed_size(codec, annexb));
    for nal in NalUnits::new(annexb) {
        let bytes = &annexb[nal];
        let Ok(len) = u32::try_from(bytes.len()) else { continue };
        if keep_in_sample(codec, bytes) {
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

/// The MP4 sample form of one Annex-B access unit.
pub fn annexb_to_length_prefixed(codec: Codec, annexb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    append_length_prefixed(codec, annexb, &mut out);
    out
}

/// Copies the part of an access unit's sample form that starts `skip`
/// bytes in into `out`, without building the whole sample; returns
/// (bytes copied, the sample's full size). Serves byte ranges.
pub(crate) fn copy_sample_range(codec: Codec, annexb: &[u8], skip: u64, out: &mut [u8]) -> (usize, u64) {
    let mut pos: u64 = 0; // sample offset of the next byte produced
    let mut copied = 0;
    for nal in NalUnits::new(annexb) {
        let bytes = &annexb[nal];
        if !keep_in_sample(codec, bytes) {
            continue;
        }
        let len = (bytes.len() as u32).to_be_bytes();
        for piece in [&len[..], bytes] {
            let piece_end = pos + piece.len() as u64;
            let from = skip + copied as u64;
            if copied < out.len() && from < piece_end && from >= pos {
                let within = (from - pos) as usize;
                let n = (piece.len() - within).min(out.len() - copied);
                out[copied..copied + n].copy_from_slice(&piece[within..within + n]);
                copied += n;
            }
            pos = piece_end;
        }
    }
    (copied, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter().flat_map(|n| [0, 0, 0, 1].iter().chain(n.iter()).copied()).collect()
    }

    #[test]
    fn drops_aud_and_filler_keeps_parameter_sets() {
        let au = annexb(&[&[0x09, 0xf0], &[0x67, 1, 2], &[0x68, 3], &[0x0c, 0xff, 0xff], &[0x65, 0x88, 0x80]]);
        let sample = annexb_to_length_prefixed(Codec::H264, &au);
        assert_eq!(sample, [0, 0, 0, 3, 0x67, 1, 2, 0, 0, 0, 2, 0x68, 3, 0, 0, 0, 3, 0x65, 0x88, 0x80]);
        assert_eq!(length_prefixed_size(Codec::H264, &au), sample.len());
        // H.265: AUD is type 35 (0x46 0x01), an IDR slice type 19 (0x26 0x01).
        let au = annexb(&[&[0x46, 0x01, 0x50], &[0x40, 0x01, 0xaa], &[0x26, 0x01, 0xaf]]);
        assert_eq!(annexb_to_length_prefixed(Codec::H265, &au), [0, 0, 0, 3, 0x40, 1, 0xaa, 0, 0, 0, 3, 0x26, 1, 0xaf]);
    }

    #[test]
    fn sample_ranges_equal_slices_of_the_whole_sample() {
        let au = annexb(&[&[0x09, 0xf0], &[0x67, 1, 2, 3, 4], &[0x65, 5, 6, 7, 8, 9]]);
        let whole = annexb_to_length_prefixed(Codec::H264, &au);
        for skip in 0..=whole.len() {
            for len in 0..=whole.len() - skip {
                let mut out = vec![0xee; len];
                let (n, total) = copy_sample_range(Codec::H264, &au, skip as u64, &mut out);
                assert_eq!(total, whole.len() as u64);
                assert_eq!(n, len);
                assert_eq!(out, &whole[skip..skip + len]);
            }
        }
    }
}
