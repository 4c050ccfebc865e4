//! Property tests for the parsers that see untrusted bytes: the Annex-B
//! splitter, the SPS parser, the H.264 processor and the access-unit
//! grouper never panic, and splitting undoes joining.

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use streaming_server::codec::h264::{parse_sps, split_access_units, split_annexb, Processor};
use streaming_server::codec::{Codec, RawFrame};

/// A NAL unit as the encoder emits it: a header byte with forbidden bit 0,
/// a body free of start-code emulation (no 00 00 0x with x <= 3), and not
/// ending in a zero byte.
fn nal_unit() -> impl Strategy<Value = Vec<u8>> {
    (0u8..0x80, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(header, body)| {
        let mut nal = vec![header | 0x01]; // never zero: a zero header would merge with the start code
        let mut zeros = 0;
        for b in body {
            let b = if zeros >= 2 && b <= 3 { b + 4 } else { b };
            zeros = if b == 0 { zeros + 1 } else { 0 };
            nal.push(b);
        }
        if nal.last() == Some(&0) {
            nal.push(0x80); // rbsp_stop_one_bit style ending
        }
        nal
    })
}

fn raw(data: Vec<u8>, n: u64) -> RawFrame {
    RawFrame {
        codec: Codec::H264,
        data: Bytes::from(data),
        frame_number: n,
        index: n as u32,
        capture_time: Duration::from_millis(n),
        read_time: Duration::from_millis(n),
        camera_id: 0,
        width: 0,
        height: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn split_undoes_join_with_any_start_code_mix(
        nals in proptest::collection::vec(nal_unit(), 1..12),
        long_codes in proptest::collection::vec(any::<bool>(), 12),
        trailing_zeros in 0usize..4,
    ) {
        let mut stream = Vec::new();
        for (i, nal) in nals.iter().enumerate() {
            stream.extend_from_slice(if long_codes[i] { &[0, 0, 0, 1][..] } else { &[0, 0, 1][..] });
            stream.extend_from_slice(nal);
            stream.extend(std::iter::repeat_n(0, if i + 1 < nals.len() { trailing_zeros } else { 0 }));
        }
        let split: Vec<&[u8]> = split_annexb(&stream).into_iter().map(|r| &stream[r]).collect();
        let expected: Vec<&[u8]> = nals.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(split, expected);
    }

    #[test]
    fn splitter_ranges_are_always_in_bounds_and_ordered(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut last_end = 0;
        for range in split_annexb(&data) {
            prop_assert!(range.start >= last_end && range.start < range.end && range.end <= data.len());
            last_end = range.end;
        }
    }

    #[test]
    fn sps_parser_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Some(first) = data.first_mut() {
            *first = 0x67; // make it claim to be an SPS, so the bit reader runs
        }
        let _ = parse_sps(&data);
    }

    #[test]
    fn processor_never_panics_and_keeps_its_invariants(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..128), 1..20),
        with_start_code in proptest::collection::vec(any::<bool>(), 20),
    ) {
        let mut processor = Processor::new();
        let mut last_seq = None;
        for (n, mut data) in frames.into_iter().enumerate() {
            if with_start_code[n] {
                data.splice(0..0, [0, 0, 0, 1]);
            }
            if let Ok(au) = processor.process(raw(data, n as u64)) {
                // Sequence numbers are consecutive over accepted frames.
                prop_assert_eq!(au.seq, last_seq.map_or(0, |s: u64| s + 1));
                last_seq = Some(au.seq);
                // Every NAL range lies inside the buffer.
                for nal in &au.nals {
                    prop_assert!(nal.range.end <= au.data.len());
                }
                // An IDR handed on always has parameter sets to decode with.
                if au.is_keyframe {
                    prop_assert!(au.parameter_sets.is_some());
                }
                prop_assert_eq!(au.annexb_len(), au.annexb_chunks().map(<[u8]>::len).sum::<usize>());
            }
        }
    }

    #[test]
    fn access_unit_grouping_covers_the_stream_exactly(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let units = split_access_units(&data);
        let mut pos = units.first().map_or(0, |u| u.start);
        for unit in &units {
            prop_assert_eq!(unit.start, pos);
            prop_assert!(unit.end > unit.start && unit.end <= data.len());
            pos = unit.end;
        }
    }
}

mod frame_validator {
    use std::sync::OnceLock;
    use std::time::Duration;

    use proptest::prelude::*;
    use streaming_server::abi::{Layout, TimeBits, MAX_FRAME_SIZE};
    use streaming_server::source::ring::{Segment, WriteFrame};

    /// One real segment shared by all cases (creating 93 MB per case is slow).
    fn segment() -> &'static Segment {
        static SEGMENT: OnceLock<Segment> = OnceLock::new();
        SEGMENT.get_or_init(|| {
            let name = format!("/ss_test_props_{}", std::process::id());
            let segment = Segment::create(&name, Layout::new(TimeBits::Native)).unwrap();
            Segment::unlink(&name); // the mapping stays; nothing is left behind
            segment
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Whatever the daemon's header claims, reading the slot yields a
        /// frame whose size is the claimed one, or an error: never a panic,
        /// never a read outside the slot.
        #[test]
        fn any_header_content_is_read_or_refused(
            format in prop_oneof![Just(3), any::<i32>()],
            data_size in prop_oneof![0u64..64, Just(MAX_FRAME_SIZE as u64), Just(MAX_FRAME_SIZE as u64 + 1), any::<u64>()],
            data in proptest::collection::vec(any::<u8>(), 0..64),
            secs in any::<u64>(),
            nanos in any::<u32>(),
        ) {
            let segment = segment();
            let frame = WriteFrame {
                frame_number: 1,
                capture_time: Duration::new(secs % (1 << 40), nanos % 1_000_000_000),
                camera_id: 0,
                width: 1,
                height: 1,
                format,
                data_size,
                data: &data,
                post: false,
            };
            let index = segment.write_frame(&frame, || {});
            match segment.read_frame(index, streaming_server::codec::Codec::H264) {
                Ok(read) => {
                    prop_assert_eq!(format, 3);
                    prop_assert_eq!(read.data.len() as u64, data_size);
                    prop_assert!(data_size > 0 && data_size <= MAX_FRAME_SIZE as u64);
                }
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
        }
    }
}
