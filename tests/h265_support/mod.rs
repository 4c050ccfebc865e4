//! Shared helpers for the integration tests: clips and RawFrame building.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rtc::rtp::codec::h265::{H265Packet, H265Payload};
use rtc::rtp::packetizer::Depacketizer as _;
use streaming_server::codec::RawFrame;

pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// assets/demo.h265, made by scripts/make-demo-clip-h265.sh.
pub fn demo_clip() -> Bytes {
    Bytes::from(std::fs::read(crate_dir().join("assets/demo.h265")).expect("assets/demo.h265"))
}

static CLIP_LOCK: Mutex<()> = Mutex::new(());

/// The 1080p clip with large IRAPs (0.5-0.8 MB), generated on first use
/// into the test target directory (scripts/make-1080p-clip-h265.sh). None,
/// with a note, where ffmpeg is not installed.
pub fn clip_1080p() -> Option<Bytes> {
    let path = large_irap_clip_1080p()?;
    Some(Bytes::from(std::fs::read(&path).expect("1080p clip")))
}

/// The path of [`clip_1080p`] (~29 Mbit/s).
pub fn large_irap_clip_1080p() -> Option<PathBuf> {
    generated_1080p("big-1080p.h265", "16")
}

/// A camera-like 1080p30 clip (~10 Mbit/s, IRAPs of 110-270 KB), generated
/// like [`clip_1080p`]; its path.
pub fn camera_clip_1080p() -> Option<PathBuf> {
    generated_1080p("camera-1080p.h265", "24")
}

fn generated_1080p(name: &str, crf: &str) -> Option<PathBuf> {
    let _guard = CLIP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    if !path.exists() {
        if let Err(e) = Command::new("ffmpeg").arg("-version").output() {
            assert!(!crate::common::in_ci(), "ffmpeg is missing in CI (scripts/test.sh installs it)");
            eprintln!("skipping: no ffmpeg ({e}); scripts/make-1080p-clip-h265.sh needs ffmpeg with libx265");
            return None;
        }
        let status = Command::new(crate_dir().join("scripts/make-1080p-clip-h265.sh")).arg(&path).arg(crf).status();
        assert!(status.as_ref().is_ok_and(|s| s.success()), "make-1080p-clip-h265.sh failed: {status:?}");
    }
    Some(path)
}

pub fn raw(data: Bytes, n: u64) -> RawFrame {
    RawFrame {
        codec: streaming_server::codec::Codec::H265,
        data,
        frame_number: n,
        index: n as u32,
        capture_time: Duration::from_millis(n * 33),
        read_time: Duration::from_millis(n * 33 + 1),
        camera_id: 0,
        width: 0,
        height: 0,
    }
}

pub fn hex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The NAL units of RTP payloads as the rtc crate's RFC 7798
/// depacketizer reads them (it parses each payload into its structure;
/// this glue only concatenates the NAL bytes it parsed): an independent
/// check of ours.
pub fn rtc_depacketize(payloads: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut fragment: Option<BytesMut> = None;
    for payload in payloads {
        let mut packet = H265Packet::default();
        packet.depacketize(payload).unwrap();
        match packet.payload() {
            H265Payload::H265SingleNALUnitPacket(single) => {
                let mut v = BytesMut::from(&single.payload_header().0.to_be_bytes()[..]);
                v.extend_from_slice(&single.payload());
                out.push(v.freeze());
            }
            H265Payload::H265AggregationPacket(ap) => {
                out.push(ap.first_unit().unwrap().nal_unit());
                out.extend(ap.other_units().iter().map(|u| u.nal_unit()));
            }
            H265Payload::H265FragmentationUnitPacket(fu) => {
                if fu.fu_header().s() {
                    let header = (fu.payload_header().0 & 0x81ff) | (u16::from(fu.fu_header().fu_type()) << 9);
                    fragment = Some(BytesMut::from(&header.to_be_bytes()[..]));
                }
                fragment.as_mut().unwrap().extend_from_slice(&fu.payload());
                if fu.fu_header().e() {
                    out.push(fragment.take().unwrap().freeze());
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}
