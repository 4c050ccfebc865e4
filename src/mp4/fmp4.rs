//! Fragmented MP4 for (LL-)HLS: an init segment per track configuration and
//! `moof`+`mdat` fragments of live access units.
//!
//! In: a [`TrackConfig`] (for a live stream, [`TrackConfig::for_stream`]);
//! [`Sample`]s (length-prefixed access units, e.g. from
//! [`Sample::from_access_unit`], with durations in the track timescale,
//! 90 kHz). Out: `Bytes` ready to serve: the init segment (`EXT-X-MAP`)
//! and fragments.
//! Bad input: no samples, a sample of 4 GiB or more, or a fragment whose
//! trun data offset would not fit 32 bits is an [`Error`]. Nothing panics.
//!
//! Parts and segments: make one fragment per LL-HLS part (so a part is
//! servable the moment its last sample is known) and serve a segment as
//! its parts' bytes concatenated: one segment = several `moof`+`mdat`
//! pairs with increasing sequence numbers and contiguous `tfdt`s. Real
//! streams are built that way (Mux's LL-HLS and Apple's
//! `bipbop_adv_example_hevc` have several `moof`s per segment: they are
//! the test streams of hls.js issue #5697), and hls.js plays them: its
//! fMP4 demuxer walks every `moof` of a segment. Known gaps: #5697 (open
//! since v1.4.2), several `moof`s with the non-default `progressive: true`
//! mode; PR #7247 fixed a 2025 dev-branch regression on exactly such "full
//! segments of a Mux Low-Latency HLS asset". Safari plays LL-HLS parts
//! natively and a part is by definition a fragment of its segment.
//! Re-fragmenting each segment into a single `moof` is therefore not
//! needed, would double the muxing work and memory, and would give
//! segments bytes that differ from their parts (so no shared caching).
//! Start each segment on a keyframe; a part that starts with one gets
//! `INDEPENDENT=YES` (see [`Sample::is_sync`]).
//!
//! Timing: a live sample's duration is only known when the next access
//! unit arrives (capture time difference, in 90 kHz ticks), so a part is
//! closed one frame late; `base_decode_time` is the sum of all earlier
//! durations ([`Fragmenter`] keeps it, and the sequence number).
//! Decode order is presentation order (no composition offsets): streams
//! with B-frames are not supported (the cameras send none; WebRTC could
//! not use them either).

use bytes::Bytes;
use mp4_atom::{Mfhd, Moof, Stbl, Tfdt, Tfhd, Traf, Trun, TrunEntry, TrunSamples};

use super::boxes::{self as moov, TRACK_ID};
use super::sample::{append_length_prefixed, length_prefixed_size};
use super::sample_entry::TrackConfig;
use super::Error;
use crate::codec::annexb::NalUnits;
use crate::codec::{AccessUnit, Codec};

/// One access unit of a fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Length-prefixed NAL units (4-byte lengths), see [`super::sample`].
    pub data: Bytes,
    /// In the track timescale.
    pub duration: u32,
    /// A keyframe (IDR / IRAP): decodable on its own.
    pub is_sync: bool,
}

impl Sample {
    /// Converts one Annex-B access unit (one copy) and sees from its NAL
    /// types whether it is a keyframe.
    pub fn from_annexb(codec: Codec, annexb: &[u8], duration: u32) -> Sample {
        let mut data = Vec::new();
        append_length_prefixed(codec, annexb, &mut data);
        let is_sync = NalUnits::new(annexb).any(|nal| codec.is_keyframe_nal(&annexb[nal]));
        Sample { data: data.into(), duration, is_sync }
    }

    /// Converts one of the hub's access units (with the cached parameter
    /// sets in front where it is a keyframe that came without them) into
    /// one buffer sized up front: the one copy a live frame gets here.
    pub fn from_access_unit(au: &AccessUnit, duration: u32) -> Sample {
        Sample::from_annexb_chunks(au.codec, au.annexb_chunks(), duration, au.is_keyframe)
    }

    /// Converts an access unit given as several Annex-B pieces, each
    /// starting with a start code (e.g. [`AccessUnit::annexb_chunks`]),
    /// into one buffer sized up front; `is_sync` from the caller.
    pub fn from_annexb_chunks<'a>(
        codec: Codec,
        chunks: impl Iterator<Item = &'a [u8]> + Clone,
        duration: u32,
        is_sync: bool,
    ) -> Sample {
        let size = chunks.clone().map(|c| length_prefixed_size(codec, c)).sum();
        let mut data = Vec::with_capacity(size);
        for chunk in chunks {
            append_length_prefixed(codec, chunk, &mut data);
        }
        Sample { data: data.into(), duration, is_sync }
    }
}

/// trun sample_flags (ISO/IEC 14496-12 8.8.3.1): a sync sample does not
/// depend on others (sample_depends_on = 2); any other sample depends on
/// others (1) and is a non-sync sample.
pub fn sample_flags(is_sync: bool) -> u32 {
    if is_sync {
        2 << 24
    } else {
        (1 << 24) | (1 << 16)
    }
}

/// `ftyp` + `moov` (mvhd, trak with the sample entry and empty sample
/// tables, mvex/trex) for one video track: the HLS `EXT-X-MAP`, or what an
/// MSE `SourceBuffer` gets first. Brands: major `iso6` (tfdt v1 and
/// default-base-is-moof are ISO BMFF 6th-edition-era features), compatible
/// `iso6`, `cmfc` (CMAF track layout: one track, tfdt in every fragment,
/// base offsets from the moof) and `mp41`.
pub fn init_segment(track: &TrackConfig) -> Result<Bytes, Error> {
    let mut out = Vec::with_capacity(1024);
    moov::encode(&moov::ftyp(b"iso6", &[b"iso6", b"cmfc", b"mp41"]), &mut out)?;
    moov::encode(&moov::moov(track, 0, Stbl::default(), true), &mut out)?;
    Ok(out.into())
}

/// One `moof`+`mdat` fragment: mfhd (sequence_number: 1, 2, ... over the
/// stream), traf with tfhd (default-base-is-moof), tfdt (version 1,
/// `base_decode_time` in the track timescale) and a trun with each
/// sample's size, duration and flags, then the samples. The payload is
/// copied once, into the returned buffer.
pub fn media_fragment(sequence_number: u32, base_decode_time: u64, samples: &[Sample]) -> Result<Bytes, Error> {
    if samples.is_empty() {
        return Err(Error::Unsupported("a fragment needs at least one sample"));
    }
    let mut entries = Vec::with_capacity(samples.len());
    let mut payload: u64 = 0;
    for sample in samples {
        let size = u32::try_from(sample.data.len()).map_err(|_| Error::Unsupported("sample of 4 GiB or more"))?;
        payload += u64::from(size);
        entries.push(TrunEntry {
            duration: Some(sample.duration),
            size: Some(size),
            flags: Some(sample_flags(sample.is_sync)),
            cts: None,
        });
    }
    let mut moof = Moof {
        mfhd: Mfhd { sequence_number },
        traf: vec![Traf {
            tfhd: Tfhd { track_id: TRACK_ID, default_base_is_moof: true, ..Default::default() },
            tfdt: Some(Tfdt { base_media_decode_time: base_decode_time }),
            trun: vec![Trun { data_offset: Some(0), samples: TrunSamples::Explicit(entries) }],
            ..Default::default()
        }],
    };
    // The data offset counts from the moof's first byte to the first
    // sample byte; its value does not change the moof's size, so encode
    // once to measure and once for real.
    let mut probe = Vec::new();
    moov::encode(&moof, &mut probe)?;
    let header = moov::mdat_header_len(payload);
    let offset = i32::try_from(probe.len() as u64 + header).map_err(|_| Error::Unsupported("moof too large"))?;
    moof.traf[0].trun[0].data_offset = Some(offset);
    let mut out = Vec::with_capacity(probe.len() + header as usize + payload as usize);
    moov::encode(&moof, &mut out)?;
    moov::mdat_header(payload, &mut out);
    for sample in samples {
        out.extend_from_slice(&sample.data);
    }
    Ok(out.into())
}

/// Numbering for a stream of fragments: sequence numbers from 1 and the
/// running decode time. Start a new `Fragmenter` (and a new init segment)
/// when the parameter sets change.
#[derive(Clone, Debug)]
pub struct Fragmenter {
    next_sequence: u32,
    next_decode_time: u64,
}

impl Default for Fragmenter {
    fn default() -> Self {
        Fragmenter::new(0)
    }
}

impl Fragmenter {
    /// Fragments whose first sample decodes at `decode_time` (ticks).
    pub fn new(decode_time: u64) -> Fragmenter {
        Fragmenter { next_sequence: 1, next_decode_time: decode_time }
    }

    /// The decode time the next fragment starts at.
    pub fn decode_time(&self) -> u64 {
        self.next_decode_time
    }

    /// The next fragment (one LL-HLS part).
    pub fn fragment(&mut self, samples: &[Sample]) -> Result<Bytes, Error> {
        let out = media_fragment(self.next_sequence, self.next_decode_time, samples)?;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        self.next_decode_time += samples.iter().map(|s| u64::from(s.duration)).sum::<u64>();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mp4::reader::boxes;
    use crate::mp4::sample_entry::tests::{PPS, SPS_640X360 as SPS};
    use crate::mp4::sample_entry::ParameterSetList;

    #[test]
    fn init_segment_is_ftyp_then_moov() {
        let sets = ParameterSetList { vps: vec![], sps: vec![SPS.into()], pps: vec![PPS.into()] };
        let track = TrackConfig::from_parameter_sets(Codec::H264, sets).unwrap();
        let init = init_segment(&track).unwrap();
        let kinds: Vec<_> = boxes(&init).iter().map(|b| b.kind).collect();
        assert_eq!(kinds, [*b"ftyp", *b"moov"]);
        assert_eq!(&init[8..12], b"iso6");
    }

    #[test]
    fn fragment_offsets_point_at_the_samples() {
        let samples = [
            Sample { data: Bytes::from_static(&[0, 0, 0, 2, 0x65, 0x88]), duration: 3000, is_sync: true },
            Sample { data: Bytes::from_static(&[0, 0, 0, 1, 0x41]), duration: 3000, is_sync: false },
        ];
        let frag = media_fragment(7, 90_000, &samples).unwrap();
        let list = boxes(&frag);
        assert_eq!(list.iter().map(|b| b.kind).collect::<Vec<_>>(), [*b"moof", *b"mdat"]);
        // The last 11 bytes are the two samples, after the 8-byte mdat header.
        assert_eq!(list[1].size, 8 + 11);
        assert_eq!(&frag[frag.len() - 11..frag.len() - 5], &samples[0].data[..]);
        // The trun's data_offset equals moof size + 8.
        let moof = &frag[..list[0].size as usize];
        let trun = moof.windows(4).position(|w| w == b"trun").unwrap();
        let data_offset = u32::from_be_bytes(moof[trun + 12..trun + 16].try_into().unwrap());
        assert_eq!(data_offset as u64, list[0].size + 8);
        assert!(media_fragment(1, 0, &[]).is_err());
    }

    #[test]
    fn samples_from_annexb_pieces() {
        let idr = [0, 0, 0, 1, 0x65, 0x88, 0x80];
        let ps = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xce];
        let whole: Vec<u8> = ps.iter().chain(&idr).copied().collect();
        let one = Sample::from_annexb(Codec::H264, &whole, 3000);
        let pieces = Sample::from_annexb_chunks(Codec::H264, [&ps[..], &idr[..]].into_iter(), 3000, true);
        assert_eq!(one, pieces);
        assert!(one.is_sync);
        assert!(!Sample::from_annexb(Codec::H264, &[0, 0, 1, 0x41, 0x9a], 3000).is_sync);
    }

    #[test]
    fn a_hub_keyframe_without_parameter_sets_gets_the_cached_ones_in_its_sample() {
        use crate::codec::{Processor, RawFrame};
        let frame = |data: Vec<u8>, n: u64| RawFrame {
            codec: Codec::H264,
            data: data.into(),
            frame_number: n,
            index: n as u32,
            capture_time: std::time::Duration::from_millis(33 * n),
            read_time: std::time::Duration::from_millis(33 * n),
            camera_id: 0,
            width: 0,
            height: 0,
        };
        let annexb =
            |nals: &[&[u8]]| -> Vec<u8> { nals.iter().flat_map(|n| [&[0, 0, 0, 1][..], n].concat()).collect() };
        let idr: &[u8] = &[0x65, 0x88, 0x80];
        let mut processor = Processor::new(Codec::H264);
        processor.process(frame(annexb(&[SPS, PPS, idr]), 0)).unwrap();
        let au = processor.process(frame(annexb(&[&[0x09, 0xf0], idr]), 1)).unwrap();
        assert!(au.prepend_parameter_sets);
        let sample = Sample::from_access_unit(&au, 3000);
        let expected: Vec<u8> =
            [SPS, PPS, idr].iter().flat_map(|nal| [&(nal.len() as u32).to_be_bytes()[..], nal].concat()).collect();
        assert_eq!(sample, Sample { data: expected.into(), duration: 3000, is_sync: true });
    }

    #[test]
    fn fragmenter_numbers_and_times() {
        let s = Sample { data: Bytes::from_static(&[0, 0, 0, 1, 0x41]), duration: 3000, is_sync: false };
        let mut f = Fragmenter::new(0);
        f.fragment(&[s.clone(), s.clone()]).unwrap();
        assert_eq!(f.decode_time(), 6000);
        let second = f.fragment(&[s]).unwrap();
        let mfhd = second.windows(4).position(|w| w == b"mfhd").unwrap();
        assert_eq!(u32::from_be_bytes(second[mfhd + 8..mfhd + 12].try_into().unwrap()), 2);
    }
}
