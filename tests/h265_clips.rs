//! The real clips through the whole chain: splitting, the processor, and
//! RTP packetization checked byte for byte by our depacketizer, the rtc
//! crate's, and GStreamer's rtph265depay.

mod common;
mod h265_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use bytes::Bytes;
use h265_support::{clip_1080p, demo_clip, raw, rtc_depacketize};
use streaming_server::codec::annexb::split_annexb;
use streaming_server::codec::h265::{nal_type, nal_unit_type, split_access_units, Processor};
use streaming_server::codec::AccessUnit;
use streaming_server::rtp::h265::{packetize_nals, payload_starts_irap, Depacketizer, MAX_PAYLOAD};

/// Every access unit of a clip through one processor.
fn process_clip(clip: &Bytes) -> Vec<AccessUnit> {
    let mut processor = Processor::new();
    split_access_units(clip)
        .into_iter()
        .enumerate()
        .map(|(i, range)| processor.process(raw(clip.slice(range), i as u64)).unwrap())
        .collect()
}

/// What the packetizer sends of an access unit: its NAL units minus AUD and
/// filler data.
fn sent_nals(au: &AccessUnit) -> Vec<Bytes> {
    au.nal_units().filter(|n| !matches!(nal_unit_type(n), nal_type::AUD | nal_type::FD)).collect()
}

#[test]
fn demo_clip_splits_like_ffprobe_and_every_access_unit_passes() {
    let clip = demo_clip();
    // `ffprobe -v error -count_frames -select_streams v:0
    //   -show_entries stream=nb_read_frames -of csv=p=0 assets/demo.h265`
    // printed 180.
    let units = split_access_units(&clip);
    assert_eq!(units.len(), 180);
    assert_eq!(units.first().map(|r| r.start), Some(0));
    assert_eq!(units.last().map(|r| r.end), Some(clip.len()));
    assert!(units.windows(2).all(|w| w[0].end == w[1].start), "contiguous");
    let aus = process_clip(&clip);
    let keyframes: Vec<usize> = aus.iter().enumerate().filter(|(_, au)| au.is_keyframe).map(|(i, _)| i).collect();
    assert_eq!(keyframes, vec![0, 30, 60, 90, 120, 150]);
    // The clip has VPS/SPS/PPS only in the first access unit: every later
    // IRAP gets the cached triple, nothing else does.
    for (i, au) in aus.iter().enumerate() {
        assert_eq!(au.prepend_parameter_sets, au.is_keyframe && i > 0, "access unit {i}");
        assert_eq!(au.nals[0].nal_type, nal_type::AUD, "AUD first in {i}");
        assert_eq!(au.seq, i as u64);
    }
    let ps = aus[0].parameter_sets.as_ref().unwrap();
    assert_eq!((ps.generation, ps.info.size()), (1, (640, 360)));
    assert!(aus.iter().all(|au| au.parameter_sets.as_ref().is_some_and(|p| p.generation == 1)));
    // Two slices per picture (x265 slices=2).
    assert_eq!(aus[1].nals.iter().filter(|n| n.nal_type < 32).count(), 2);
    // Written back to a file, the stream has the triple before every IRAP
    // and ffmpeg-visible frames stay the same.
    let rewritten: Vec<u8> = aus.iter().flat_map(|au| au.annexb_chunks().flatten().copied()).collect();
    let expected_len: usize = clip.len() + 5 * ps.annexb.len();
    assert_eq!(rewritten.len(), expected_len);
    assert_eq!(split_access_units(&rewritten).len(), 180);
    let sps_count =
        split_annexb(&rewritten).into_iter().filter(|r| nal_unit_type(&rewritten[r.clone()]) == nal_type::SPS).count();
    assert_eq!(sps_count, 6);
}

/// Packetizes, then checks our depacketizer and rtc's give back exactly the
/// NAL units sent, and that every payload fits.
fn roundtrip_access_unit(au: &AccessUnit, seq: &mut u16, ours: &mut Depacketizer) -> Vec<Bytes> {
    let payloads = packetize_nals(au.nal_units(), MAX_PAYLOAD);
    assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
    let mut got = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let last = i + 1 == payloads.len();
        let out = ours.push(*seq, p, last).unwrap();
        assert_eq!(out.end_of_access_unit, last);
        got.extend(out.nal_units);
        *seq = seq.wrapping_add(1);
    }
    assert_eq!(got, sent_nals(au), "ours, access unit {}", au.seq);
    assert_eq!(rtc_depacketize(&payloads), sent_nals(au), "rtc, access unit {}", au.seq);
    assert_eq!(payload_starts_irap(&payloads[0]) || payloads.iter().any(|p| payload_starts_irap(p)), au.is_keyframe);
    payloads
}

#[test]
fn demo_clip_roundtrips_through_rtp() {
    let aus = process_clip(&demo_clip());
    let mut ours = Depacketizer::new();
    let mut seq = 65_000u16; // crosses the 16-bit wrap
    let mut aggregated = 0;
    for au in &aus {
        let payloads = roundtrip_access_unit(au, &mut seq, &mut ours);
        aggregated += payloads.iter().filter(|p| nal_unit_type(p) == nal_type::AP).count();
    }
    // The IRAPs' VPS+SPS+PPS(+SEI) go as one aggregation packet each.
    assert!(aggregated >= 6, "{aggregated}");
    assert_eq!(ours.dropped_nal_units(), 0);
}

#[test]
fn large_1080p_iraps_roundtrip_through_rtp() {
    let Some(clip) = clip_1080p() else { return };
    let aus = process_clip(&clip);
    assert_eq!(aus.len(), 60);
    let irap_sizes: Vec<usize> = aus.iter().filter(|au| au.is_keyframe).map(|au| au.data.len()).collect();
    assert_eq!(irap_sizes.len(), 2);
    assert!(irap_sizes.iter().all(|&s| s > 300_000), "IRAPs of several hundred KB: {irap_sizes:?}");
    let mut ours = Depacketizer::new();
    let mut seq = 0u16;
    for au in aus.iter().filter(|au| au.is_keyframe) {
        let payloads = roundtrip_access_unit(au, &mut seq, &mut ours);
        assert!(payloads.len() > 250, "{}", payloads.len());
        // The fragments of one NAL unit are slices of one buffer, back to back.
        let slice_fus: Vec<&Bytes> =
            payloads.iter().filter(|p| nal_unit_type(p) == nal_type::FU && p[2] & 0x3f < 32).collect();
        assert!(slice_fus.len() > 250);
        assert!(slice_fus.windows(2).all(|w| w[0].as_ptr().wrapping_add(w[0].len()) == w[1].as_ptr()));
    }
}

/// Quick `Instant` loop, not a benchmark harness: run with
/// `cargo test --release --test clips -- --ignored --nocapture`.
#[test]
#[ignore]
fn packetize_cost_per_1080p_frame() {
    let Some(clip) = clip_1080p() else { return };
    let aus = process_clip(&clip);
    for (label, pick) in [("IRAP", true), ("P", false)] {
        let frames: Vec<&AccessUnit> = aus.iter().filter(|au| au.is_keyframe == pick).collect();
        let bytes: usize = frames.iter().map(|au| au.data.len()).sum::<usize>() / frames.len();
        let rounds = if pick { 200 } else { 20 };
        let start = Instant::now();
        let mut packets = 0;
        for _ in 0..rounds {
            for au in &frames {
                packets += packetize_nals(au.nal_units(), MAX_PAYLOAD).len();
            }
        }
        let per_frame = start.elapsed() / (rounds * frames.len()) as u32;
        println!(
            "{label}: {} frames of ~{} KB, {} packets/frame, packetize {:?}/frame",
            frames.len(),
            bytes / 1024,
            packets / (rounds * frames.len()),
            per_frame
        );
        let mut d = Depacketizer::new();
        let payloads: Vec<Vec<Bytes>> = frames.iter().map(|au| packetize_nals(au.nal_units(), MAX_PAYLOAD)).collect();
        let start = Instant::now();
        let mut seq = 0u16;
        for _ in 0..rounds {
            for frame in &payloads {
                for (i, p) in frame.iter().enumerate() {
                    d.push(seq, p, i + 1 == frame.len()).unwrap();
                    seq = seq.wrapping_add(1);
                }
            }
        }
        println!("{label}: depacketize {:?}/frame", start.elapsed() / (rounds * frames.len()) as u32);
    }
}

/// RTP packets with RFC 4571 framing (16-bit length before each), for
/// GStreamer's rtpstreamdepay.
fn rtp_stream(aus: &[AccessUnit]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seq = 1000u16;
    for (n, au) in aus.iter().enumerate() {
        let payloads = packetize_nals(au.nal_units(), MAX_PAYLOAD);
        for (i, p) in payloads.iter().enumerate() {
            let marker = if i + 1 == payloads.len() { 0x80 } else { 0 };
            let timestamp = (n as u32) * 3000;
            let len = 12 + p.len();
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(&[0x80, marker | 96]);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&timestamp.to_be_bytes());
            out.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            out.extend_from_slice(p);
            seq = seq.wrapping_add(1);
        }
    }
    out
}

/// GStreamer's rtph265depay, an independent depacketizer, gets back the
/// same NAL units (it re-inserts the parameter sets it saw, so compare the
/// slices and SEI only; where it adds an AUD, ignore that too).
#[test]
fn gstreamer_rtph265depay_agrees() {
    if Command::new("gst-launch-1.0").arg("--version").output().is_err() {
        assert!(!common::in_ci(), "gst-launch-1.0 is missing in CI (scripts/test.sh installs it)");
        eprintln!("skipping: no gst-launch-1.0");
        return;
    }
    let aus = process_clip(&demo_clip());
    let input = rtp_stream(&aus);
    let out = std::env::temp_dir().join(format!("h265-gst-{}.h265", std::process::id()));
    let mut child = Command::new("gst-launch-1.0")
        .args([
            "-q",
            "fdsrc",
            "fd=0",
            "!",
            "application/x-rtp-stream,media=video,clock-rate=90000,encoding-name=H265,payload=96",
            "!",
            "rtpstreamdepay",
            "!",
            "rtph265depay",
            "!",
            "video/x-h265,stream-format=byte-stream,alignment=au",
            "!",
            "filesink",
        ])
        .arg(format!("location={}", out.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&input).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let gst = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let keep =
        |n: &[u8]| nal_unit_type(n) < 32 || matches!(nal_unit_type(n), nal_type::PREFIX_SEI | nal_type::SUFFIX_SEI);
    let theirs: Vec<&[u8]> = split_annexb(&gst).into_iter().map(|r| &gst[r]).filter(|n| keep(n)).collect();
    let sent: Vec<Bytes> = aus.iter().flat_map(sent_nals).filter(|n| keep(n)).collect();
    assert_eq!(theirs.len(), sent.len());
    assert!(theirs.iter().zip(&sent).all(|(a, b)| *a == &b[..]));
}
