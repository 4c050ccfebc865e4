//! Init segment + fragments (`streaming_server::mp4::fmp4`) made from the
//! demo clips, checked with ffprobe and ffmpeg: frame count, codec and
//! sample entry, size, a clean decode, and decoded frames identical
//! (framemd5) to the raw clip's.

mod mp4_support;

use std::path::Path;

use mp4_support::*;
use streaming_server::codec::Codec;
use streaming_server::mp4::reader::boxes;

fn check_fmp4(raw: &Path, codec: Codec, codec_name: &str, tag: &str, frames: usize) {
    // 10-frame parts (333 ms), 3 parts = one 1 s segment: segments are
    // their parts concatenated, so the file is init + every fragment.
    let (init, fragments) = fmp4_of(raw, codec, 10);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.mp4");
    let mut file = init.to_vec();
    for fragment in &fragments {
        file.extend_from_slice(fragment);
    }
    std::fs::write(&out, &file).unwrap();

    let kinds: Vec<[u8; 4]> = boxes(&file).iter().map(|b| b.kind).collect();
    assert_eq!(&kinds[..2], [*b"ftyp", *b"moov"]);
    assert_eq!(kinds.len(), 2 + 2 * fragments.len());
    assert!(kinds[2..].chunks(2).all(|pair| pair == [*b"moof", *b"mdat"]));

    let info = probe(&out);
    eprintln!("{}: fMP4 of {} fragments, ffprobe {info:?}", raw.display(), fragments.len());
    assert_eq!(info["codec_name"], codec_name);
    assert_eq!(info["codec_tag_string"], tag);
    assert_eq!((info["width"].as_str(), info["height"].as_str()), ("640", "360"));
    assert_eq!(info["nb_read_frames"], frames.to_string());
    let errors = decode_errors(&out);
    assert!(errors.is_empty(), "ffmpeg decode errors: {errors}");

    let raw_hashes = frame_hashes(raw, &[]);
    assert_eq!(raw_hashes.len(), frames);
    assert_eq!(frame_hashes(&out, &[]), raw_hashes, "decoded frames differ from the raw clip's");
}

#[test]
fn fmp4_of_the_h264_demo_clip_decodes_like_the_raw_clip() {
    check_fmp4(&demo(Codec::H264), Codec::H264, "h264", "avc1", 180);
}

#[test]
fn fmp4_of_the_h265_demo_clip_decodes_like_the_raw_clip() {
    check_fmp4(&demo(Codec::H265), Codec::H265, "hevc", "hvc1", 180);
}
