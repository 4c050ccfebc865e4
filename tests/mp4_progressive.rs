//! Progressive (faststart) MP4s (`streaming_server::mp4::progressive`) of
//! real raw clips, checked with ffprobe and ffmpeg: frame count, duration, moov before mdat, decoded frames equal
//! to the raw clip's, seeking, `read_at` against the whole virtual file,
//! the growing-file and parameter-set-change rules, and the index's size
//! on a 60 s 1080p file.

mod mp4_support;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

use mp4_support::*;
use streaming_server::codec::Codec;
use streaming_server::mp4::progressive::{scan, Layout, ScanOptions, Timing};
use streaming_server::mp4::reader::boxes;
use streaming_server::mp4::Error;

/// Seeks with `ffmpeg -ss` and returns the first output frame's hash.
fn frame_after_seek(path: &Path, seconds: &str) -> String {
    let hashes = frame_hashes(path, &["-ss", seconds]);
    hashes.first().cloned().unwrap_or_default()
}

fn check_progressive(raw: &Path, codec: Codec, codec_name: &str, frames: usize, duration: &str) {
    let (layout, bytes) = progressive_of(raw, codec);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    std::fs::write(&out, &bytes).unwrap();

    // Faststart: ftyp, moov, then mdat.
    let kinds: Vec<[u8; 4]> = boxes(&bytes).iter().map(|b| b.kind).collect();
    assert_eq!(kinds, [*b"ftyp", *b"moov", *b"mdat"]);
    assert_eq!(bytes.len() as u64, layout.total_len());

    let info = probe(&out);
    eprintln!("{}: progressive MP4 {} bytes, ffprobe {info:?}", raw.display(), bytes.len());
    assert_eq!(info["codec_name"], codec_name);
    assert_eq!((info["width"].as_str(), info["height"].as_str()), ("640", "360"));
    assert_eq!(info["nb_read_frames"], frames.to_string());
    assert_eq!(info["nb_frames"], frames.to_string());
    assert_eq!(info["duration"], duration);
    assert_eq!(info["format_duration"], duration);
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "ffmpeg decode errors: {errors}");

    let raw_hashes = frame_hashes(raw, &[]);
    assert_eq!(raw_hashes.len(), frames);
    assert_eq!(frame_hashes(&out, &[]), raw_hashes, "decoded frames differ from the raw clip's");

    // Seeking lands on the right frame: on a keyframe (3 s = frame 90) and
    // between keyframes (2.5 s = frame 75, decoded from the one at 60).
    assert_eq!(frame_after_seek(&out, "3"), raw_hashes[90]);
    assert_eq!(frame_after_seek(&out, "2.5"), raw_hashes[75]);

    // Any range of the virtual file equals the same slice of the whole.
    let source = std::fs::File::open(raw).unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let total = bytes.len() as u64;
    let mut buf = vec![0u8; 300_000];
    for round in 0..500 {
        let offset = if round % 10 == 0 { total - next() % 64 } else { next() % (total + 100) };
        let len = (next() % if round % 3 == 0 { 300_000 } else { 5_000 }) as usize;
        let n = layout.read_at(&source, offset, &mut buf[..len]).unwrap();
        let start = offset.min(total) as usize;
        let end = (offset.saturating_add(len as u64)).min(total) as usize;
        assert_eq!(&buf[..n], &bytes[start..end], "range {offset}+{len}");
    }
    // The Read + Seek view serves a Range the way an HTTP handler would.
    let mut reader = layout.reader(&source);
    reader.seek(SeekFrom::Start(total / 3)).unwrap();
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &bytes[(total / 3) as usize..]);
}

#[test]
fn progressive_mp4_of_the_h264_demo_clip() {
    check_progressive(&demo(Codec::H264), Codec::H264, "h264", 180, "6.000000");
}

#[test]
fn progressive_mp4_of_the_h265_demo_clip() {
    check_progressive(&demo(Codec::H265), Codec::H265, "hevc", 180, "6.000000");
}

#[test]
fn growing_file_indexes_whole_access_units_only() {
    let raw = std::fs::read(demo(Codec::H264)).unwrap();
    // Cut in the middle of an access unit, as a reader may see a file
    // being written.
    let cut = &raw[..raw.len() * 2 / 3 + 123];
    let options = ScanOptions { growing: true, ..ScanOptions::new(Codec::H264) };
    let index = scan(std::io::Cursor::new(cut), &options).unwrap();
    let aus = Codec::H264.split_access_units(&raw);
    // Every indexed access unit is one of the whole file's, unchanged.
    for (i, au) in aus.iter().enumerate().take(index.len()) {
        let e = index.entry(i).unwrap();
        assert_eq!(e.source_offset..e.source_offset + e.source_len, au.start as u64..au.end as u64);
    }
    assert!(index.source_range().end <= cut.len() as u64);
    let frames = index.len();
    let layout = Layout::new(index, Timing::default()).unwrap();
    let mut bytes = Vec::new();
    layout.reader(cut).read_to_end(&mut bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("partial.mp4");
    std::fs::write(&mp4, &bytes).unwrap();
    assert!(decode_errors(&mp4).is_empty());
    let hashes = frame_hashes(&mp4, &[]);
    assert_eq!(hashes.len(), frames);
    assert_eq!(hashes, frame_hashes(&demo(Codec::H264), &[])[..frames]);
}

#[test]
fn parameter_set_change_starts_a_second_mp4() {
    // demo.h264 followed by a 320x180 clip: new SPS/PPS mid-file.
    let small = generated_clip(
        "mp4-320x180-1s.h264",
        "320x180",
        1,
        &["-c:v", "libx264", "-preset", "ultrafast", "-x264-params", "keyint=30:bframes=0"],
    );
    let mut joined = std::fs::read(demo(Codec::H264)).unwrap();
    let boundary = joined.len() as u64;
    joined.extend(std::fs::read(&small).unwrap());
    let first = scan(std::io::Cursor::new(&joined), &ScanOptions::new(Codec::H264)).unwrap();
    assert_eq!(first.len(), 180);
    assert_eq!(first.continues_at, Some(boundary));
    let options = ScanOptions { start_offset: boundary, ..ScanOptions::new(Codec::H264) };
    let second = scan(std::io::Cursor::new(&joined), &options).unwrap();
    assert_eq!(second.len(), 30);
    assert_eq!(second.continues_at, None);
    let dir = tempfile::tempdir().unwrap();
    for (name, index, frames, size) in [("a.mp4", first, 180, "640"), ("b.mp4", second, 30, "320")] {
        let layout = Layout::new(index, Timing::default()).unwrap();
        let mut bytes = Vec::new();
        layout.reader(&joined).read_to_end(&mut bytes).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let info = probe(&path);
        assert_eq!(info["nb_read_frames"], frames.to_string());
        assert_eq!(info["width"], size);
        assert!(decode_errors(&path).is_empty());
    }
}

#[test]
fn b_frames_are_refused_with_a_clear_error() {
    let h264 = generated_clip(
        "mp4-320x180-bframes.h264",
        "320x180",
        1,
        &["-c:v", "libx264", "-preset", "ultrafast", "-x264-params", "keyint=30:bframes=2:b-adapt=0"],
    );
    let h265 = generated_clip(
        "mp4-320x180-bframes.h265",
        "320x180",
        1,
        &["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "keyint=30:bframes=3:log-level=error"],
    );
    for (path, codec) in [(h264, Codec::H264), (h265, Codec::H265)] {
        let result = scan(std::fs::File::open(&path).unwrap(), &ScanOptions::new(codec));
        match result {
            Err(Error::Unsupported(why)) => assert!(why.contains("B-frames"), "{why}"),
            other => panic!("{}: expected a B-frame error, got {other:?}", path.display()),
        }
    }
}

#[test]
fn raw_stream_cut_before_a_keyframe_is_refused() {
    let raw = std::fs::read(demo(Codec::H264)).unwrap();
    let aus = Codec::H264.split_access_units(&raw);
    let result = scan(std::io::Cursor::new(&raw[aus[5].start..]), &ScanOptions::new(Codec::H264));
    assert!(matches!(result, Err(Error::StartsWithNonKeyframe)), "{result:?}");
}

#[test]
fn scanning_a_60s_1080p_file_keeps_the_index_small() {
    let big = big_h264();
    let size = std::fs::metadata(&big).unwrap().len();
    let started = Instant::now();
    let index = scan(std::fs::File::open(&big).unwrap(), &ScanOptions::new(Codec::H264)).unwrap();
    let elapsed = started.elapsed();
    let frames = index.len();
    let index_bytes = index.heap_bytes();
    let layout = Layout::new(index, Timing::default()).unwrap();
    eprintln!(
        "60 s 1080p: {size} bytes, {frames} frames scanned in {elapsed:?} ({:.0} MB/s); index {index_bytes} bytes \
         ({:.1} per frame); layout with moov {} bytes ({:.1} per frame), MP4 {} bytes",
        size as f64 / elapsed.as_secs_f64() / 1e6,
        index_bytes as f64 / frames as f64,
        layout.heap_bytes(),
        layout.heap_bytes() as f64 / frames as f64,
        layout.total_len(),
    );
    assert_eq!(frames, 1800);
    assert!(index_bytes < 20 * frames + 4096, "index {index_bytes} bytes");
    assert!(layout.heap_bytes() < 40 * frames + 8192);
}
