//! Property tests: round trips and "never panics on any bytes".

mod common;
mod h265_support;

use bytes::Bytes;
use h265_support::{hex, raw, rtc_depacketize};
use proptest::prelude::*;
use streaming_server::codec::annexb::split_annexb;
use streaming_server::codec::h265::{nal_type, nal_unit_type, parse_sps, split_access_units, Processor};
use streaming_server::rtp::h265::{packetize_nals, payload_starts_irap, Depacketizer, MAX_PAYLOAD};

/// Real SPSs to mutate: the demo clip's, and x265 streams made here with
/// ffmpeg + libx265 (Main 10 1080p; scaling lists; B-frame pyramid; High
/// tier; 4:4:4).
fn real_sps() -> Vec<Vec<u8>> {
    [
        "42010101600000030090000003000003005da00502016965ba924caf016808000003000800000300f040",
        "420101022000000300900000030000030078a003c08010e4d96566924caf01680800001f480003a98040",
        "42010101600000030090000003000003005da00280802d165959a49395e02d010000030001000003001e08",
        "42010101600000030090000003000003003fa00502016965959a4932bc05a020000003002000000303c1",
        "420101216000000300900000030000030099a003c08010e596566924caf0168080000003008000000f04",
        "4201010408000003009e0800000300005d9000501005a2cb2b349265780b4040000003004000000782",
    ]
    .iter()
    .map(|h| hex(h))
    .collect()
}

/// Inserts emulation-prevention bytes so no start code appears inside, and
/// ends on a non-zero byte (trailing zeros belong to the byte stream).
fn escape(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    let mut zeros = 0;
    for &b in payload {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out.push(0x80);
    out
}

/// A NAL unit: a valid header (F 0, TID >= 1) of `kind` and `layer`, then
/// `body` bytes.
fn nal_with(kind: u8, layer: u8, tid: u8, body: &[u8]) -> Bytes {
    let mut v = vec![(kind << 1) | (layer >> 5), ((layer & 0x1f) << 3) | tid.clamp(1, 7)];
    v.extend_from_slice(body);
    Bytes::from(v)
}

/// NAL units the packetizer sends (not AUD, FD, 48..=63), mostly tiny,
/// some far over the payload budget.
fn sendable_nal() -> impl Strategy<Value = Bytes> {
    let kind = prop_oneof![0u8..=34, 36u8..=37, 39u8..=47];
    let size = prop_oneof![6 => 0usize..40, 2 => 40usize..1500, 1 => 1500usize..20_000];
    (kind, 0u8..64, 1u8..8, size, any::<u8>()).prop_map(|(kind, layer, tid, size, seed)| {
        let body: Vec<u8> = (0..size).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8)).collect();
        nal_with(kind, layer, tid, &body)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn split_join_roundtrip(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20),
        four_byte in prop::collection::vec(any::<bool>(), 20),
        garbage in prop::collection::vec(1u8..=255, 0..4),
    ) {
        let nals: Vec<Vec<u8>> = payloads.iter().map(|p| escape(p)).collect();
        let mut stream = garbage.clone();
        for (i, nal) in nals.iter().enumerate() {
            stream.extend_from_slice(if four_byte[i] { &[0, 0, 0, 1] } else { &[0, 0, 1] });
            stream.extend_from_slice(nal);
        }
        let back: Vec<Vec<u8>> = split_annexb(&stream).into_iter().map(|r| stream[r].to_vec()).collect();
        prop_assert_eq!(back, nals);
    }

    #[test]
    fn parse_sps_never_panics_on_any_bytes(data in prop::collection::vec(any::<u8>(), 0..300), sps_header in any::<bool>()) {
        let mut data = data;
        if sps_header && data.len() >= 2 {
            data[0] = 0x42;
            data[1] = 0x01;
        }
        let _ = parse_sps(&data);
    }

    #[test]
    fn parse_sps_never_panics_on_mutated_real_sps(
        pick in 0usize..6,
        flips in prop::collection::vec((any::<usize>(), 0u8..8), 1..6),
        cut in any::<usize>(),
    ) {
        let mut sps = real_sps().swap_remove(pick);
        for (at, bit) in flips {
            let at = 2 + at % (sps.len() - 2);
            sps[at] ^= 1 << bit;
        }
        if cut % 3 == 0 {
            sps.truncate(2 + cut % (sps.len() - 1));
        }
        if let Ok(info) = parse_sps(&sps) {
            prop_assert!(info.width > 0 && info.height > 0 && info.width <= 16_888 && info.height <= 16_888);
            prop_assert!(info.bit_depth_luma >= 8 && info.bit_depth_luma <= 16);
        }
    }

    #[test]
    fn processor_and_splitter_never_panic_on_any_bytes(frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 1..8)) {
        let mut p = Processor::new();
        for (i, frame) in frames.iter().enumerate() {
            if let Ok(au) = p.process(raw(Bytes::copy_from_slice(frame), i as u64)) {
                let written: usize = au.annexb_chunks().map(<[u8]>::len).sum();
                prop_assert_eq!(written, au.annexb_len());
                prop_assert!(au.nal_units().count() >= au.nals.len());
            }
            let units = split_access_units(frame);
            prop_assert!(units.windows(2).all(|w| w[0].end == w[1].start));
            prop_assert!(units.iter().all(|r| r.start < r.end && r.end <= frame.len()));
        }
    }

    #[test]
    fn processor_never_panics_on_structured_access_units(
        frames in prop::collection::vec(prop::collection::vec((0u8..64, 0u8..3, any::<Vec<u8>>()), 1..8), 1..10),
        pick in 0usize..6,
    ) {
        // Frames of random NAL units with real-looking headers, sometimes
        // a real SPS: exercises the parameter-set state machine.
        let sps = real_sps().swap_remove(pick);
        let mut p = Processor::new();
        for (i, nals) in frames.iter().enumerate() {
            let mut stream = Vec::new();
            for (kind, layer, body) in nals {
                stream.extend_from_slice(&[0, 0, 0, 1]);
                if *kind == nal_type::SPS && body.len() % 2 == 0 {
                    stream.extend_from_slice(&sps);
                } else {
                    stream.extend_from_slice(&nal_with(*kind, *layer, 1, &escape(body)));
                }
            }
            if let Ok(au) = p.process(raw(Bytes::from(stream), i as u64)) {
                prop_assert!(!au.prepend_parameter_sets || au.parameter_sets.is_some());
                prop_assert!(au.seq as usize <= i);
            }
        }
    }

    #[test]
    fn depacketizer_never_panics(packets in prop::collection::vec((any::<u16>(), prop::collection::vec(any::<u8>(), 0..64), any::<bool>()), 0..40)) {
        let mut d = Depacketizer::new();
        for (seq, payload, marker) in packets {
            let payload = Bytes::from(payload);
            let _ = payload_starts_irap(&payload);
            if let Ok(out) = d.push(seq, &payload, marker) {
                prop_assert!(out.nal_units.iter().all(|n| n.len() >= 2));
            }
        }
    }

    #[test]
    fn depacketizer_never_panics_on_fu_and_ap_shaped_payloads(
        packets in prop::collection::vec((prop_oneof![Just(48u8), Just(49u8), 0u8..64], any::<u8>(), prop::collection::vec(any::<u8>(), 0..40), any::<bool>()), 0..60),
        start in any::<u16>(),
    ) {
        let mut d = Depacketizer::new();
        for (i, (kind, second, rest, marker)) in packets.into_iter().enumerate() {
            let mut payload = vec![kind << 1, second];
            payload.extend(rest);
            let _ = d.push(start.wrapping_add(i as u16), &Bytes::from(payload), marker);
        }
    }

    #[test]
    fn packetize_depacketize_is_byte_exact(
        nals in prop::collection::vec(sendable_nal(), 1..30),
        budget in prop_oneof![Just(MAX_PAYLOAD), 0usize..2000],
        first_seq in any::<u16>(),
    ) {
        let payloads = packetize_nals(nals.clone(), budget);
        let limit = budget.max(16);
        prop_assert!(payloads.iter().all(|p| p.len() <= limit));
        // S and E never both set; every FU carries data.
        for p in payloads.iter().filter(|p| nal_unit_type(p) == nal_type::FU) {
            prop_assert!(p.len() > 3 && p[2] & 0xc0 != 0xc0);
        }
        let mut d = Depacketizer::new();
        let mut got = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let out = d.push(first_seq.wrapping_add(i as u16), p, i + 1 == payloads.len()).unwrap();
            got.extend(out.nal_units);
        }
        prop_assert_eq!(d.dropped_nal_units(), 0);
        prop_assert_eq!(&got, &nals);
        // rtc refuses a single NAL unit packet that is only a header.
        if nals.iter().all(|n| n.len() > 2) {
            prop_assert_eq!(rtc_depacketize(&payloads), nals);
        }
    }
}
