//! Property tests of `streaming_server::mp4`: nothing panics on arbitrary
//! bytes, and the streaming scan, the in-memory access-unit split and
//! `read_at` agree on generated streams cut into arbitrary chunks.

use std::io::{Cursor, Read};

use bytes::Bytes;
use proptest::prelude::*;
use streaming_server::codec::annexb::{split_annexb, StartCodes};
use streaming_server::codec::Codec;
use streaming_server::mp4::fmp4::{media_fragment, Sample};
use streaming_server::mp4::progressive::{scan, Layout, ScanOptions, Timing};
use streaming_server::mp4::reader::boxes;
use streaming_server::mp4::sample::{annexb_to_length_prefixed, length_prefixed_size};
use streaming_server::mp4::{ParameterSetList, TrackConfig};

const SPS: &[u8] = &[
    0x67, 0x42, 0xc0, 0x1f, 0xda, 0x02, 0x80, 0xbf, 0xe5, 0xc0, 0x44, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03,
    0x00, 0xf2, 0x3c, 0x60, 0xca, 0x80,
];
const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

/// NAL units an H.264 camera stream is made of (header + a fixed slice
/// header start), plus a changed PPS and junk.
fn nal_unit() -> impl Strategy<Value = Vec<u8>> {
    let common: Vec<&'static [u8]> = vec![
        &[0x09, 0xf0], // AUD
        SPS,
        PPS,
        &[0x65, 0x88], // IDR, first slice (first_mb 0, I)
        &[0x65, 0x4c], // IDR, later slice (first_mb 1, I)
        &[0x41, 0x9a], // P, first slice
        &[0x41, 0x9a], // (twice as likely)
        &[0x41, 0x4c], // P, later slice
        &[0x06, 0x05], // SEI
        &[0x0c, 0xff], // filler
        &[0x00],       // junk
    ];
    let head = prop_oneof![
        30 => proptest::sample::select(common),
        1 => Just(&[0x68u8, 0xce, 0x3c, 0x81][..]), // a different PPS
    ];
    (head, proptest::collection::vec(any::<u8>(), 0..24)).prop_map(|(head, tail)| {
        let mut nal = head.to_vec();
        if head != SPS && head[0] != 0x68 {
            nal.extend(tail);
        }
        nal
    })
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = (nal_unit(), any::<bool>(), 0usize..3);
    (proptest::collection::vec(any::<u8>(), 0..4), proptest::collection::vec(piece, 0..40)).prop_map(
        |(garbage, pieces)| {
            let mut data = garbage;
            let mut first = true;
            for (nal, four, zeros) in pieces {
                if first {
                    // Open like a recording: parameter sets and an IDR.
                    for n in [SPS, PPS, &[0x65, 0x88, 0x11][..]] {
                        data.extend_from_slice(&[0, 0, 0, 1]);
                        data.extend_from_slice(n);
                    }
                    first = false;
                }
                data.extend(std::iter::repeat_n(0, zeros));
                data.extend_from_slice(if four { &[0, 0, 0, 1] } else { &[0, 0, 1] });
                data.extend(nal);
            }
            data
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn nothing_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600), chunk in 1usize..64) {
        for codec in [Codec::H264, Codec::H265] {
            for growing in [false, true] {
                let options = ScanOptions { growing, chunk_size: chunk, ..ScanOptions::new(codec) };
                if let Ok(index) = scan(Cursor::new(&data), &options) {
                    if let Ok(layout) = Layout::new(index, Timing::default()) {
                        let mut out = Vec::new();
                        let _ = layout.reader(&data).read_to_end(&mut out);
                    }
                }
            }
            let sample = annexb_to_length_prefixed(codec, &data);
            prop_assert_eq!(sample.len(), length_prefixed_size(codec, &data));
            let _ = codec.split_access_units(&data);
            let ps = ParameterSetList { vps: vec![Bytes::from(data.clone())], sps: vec![Bytes::from(data.clone())], pps: vec![Bytes::from(data.clone())] };
            let _ = TrackConfig::from_parameter_sets(codec, ps);
        }
        let _ = boxes(&data);
        let sample = Sample { data: Bytes::from(data.clone()), duration: chunk as u32, is_sync: chunk % 2 == 0 };
        let fragment = media_fragment(chunk as u32, data.len() as u64, &[sample]).unwrap();
        prop_assert_eq!(boxes(&fragment).len(), 2);
    }

    #[test]
    fn start_codes_found_in_pieces_split_like_the_whole_buffer(data in stream(), piece in 1usize..40) {
        // NAL units delimited from start codes found piece by piece equal
        // the in-memory split (the one the live path uses).
        let mut codes = StartCodes::new(0);
        let mut found = Vec::new();
        for chunk in data.chunks(piece) {
            while let Some(code) = codes.next_in(chunk) {
                found.push(code);
            }
        }
        let mut nals = Vec::new();
        for (i, code) in found.iter().enumerate() {
            let end = found.get(i + 1).map_or(data.len() as u64 - codes.trailing_zeros(), |next| next.previous_end());
            if end > code.payload {
                nals.push(code.payload as usize..end as usize);
            }
        }
        prop_assert_eq!(nals, split_annexb(&data));
    }

    #[test]
    fn streaming_scan_agrees_with_the_in_memory_split(data in stream(), chunk in 1usize..40, growing: bool) {
        let options = ScanOptions { growing, chunk_size: chunk, ..ScanOptions::new(Codec::H264) };
        let result = scan(Cursor::new(&data), &options);
        let aus = Codec::H264.split_access_units(&data);
        let Ok(index) = result else { return Ok(()) };
        prop_assert!(index.len() <= aus.len());
        for (i, au) in aus.iter().enumerate().take(index.len()) {
            let e = index.entry(i).unwrap();
            prop_assert_eq!(e.source_offset..e.source_offset + e.source_len, au.start as u64..au.end as u64);
            prop_assert_eq!(e.sample_size as usize, length_prefixed_size(Codec::H264, &data[au.clone()]));
        }
        if index.continues_at.is_none() && !growing {
            // All but a last access unit without a picture are indexed.
            prop_assert!(index.len() + 1 >= aus.len());
        }
    }

    #[test]
    fn read_at_ranges_match_the_whole_file(data in stream(), ranges in proptest::collection::vec((any::<u64>(), 0usize..400), 1..30)) {
        let Ok(index) = scan(Cursor::new(&data), &ScanOptions::new(Codec::H264)) else { return Ok(()) };
        let aus: Vec<_> = (0..index.len()).map(|i| index.entry(i).unwrap()).collect();
        let layout = Layout::new(index, Timing::default()).unwrap();
        // The whole file built independently: header + each access unit converted.
        let mut whole = layout.header().to_vec();
        for e in &aus {
            let au = &data[e.source_offset as usize..(e.source_offset + e.source_len) as usize];
            whole.extend(annexb_to_length_prefixed(Codec::H264, au));
        }
        prop_assert_eq!(whole.len() as u64, layout.total_len());
        let total = whole.len() as u64;
        for (offset, len) in ranges {
            let offset = offset % (total + 10);
            let mut buf = vec![0u8; len];
            let n = layout.read_at(&data, offset, &mut buf).unwrap();
            let start = offset.min(total) as usize;
            let end = (offset + len as u64).min(total) as usize;
            prop_assert_eq!(&buf[..n], &whole[start..end]);
        }
    }
}

#[test]
fn generated_streams_mostly_scan() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut ok, mut frames, mut changed) = (0, 0, 0);
    for _ in 0..200 {
        let data = stream().new_tree(&mut runner).unwrap().current();
        if let Ok(index) = scan(Cursor::new(&data), &ScanOptions { chunk_size: 7, ..ScanOptions::new(Codec::H264) }) {
            ok += 1;
            frames += index.len();
            changed += usize::from(index.continues_at.is_some());
        }
    }
    eprintln!("generated streams: {ok}/200 scanned, {frames} access units, {changed} with a parameter-set change");
    // The generator exercises the success paths, not only the errors.
    assert!(ok > 100 && frames > 5 * ok && changed > 10, "{ok} {frames} {changed}");
}
