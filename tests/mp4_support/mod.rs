//! Helpers for the MP4 tests: clips (the demo clips and clips generated
//! with ffmpeg), ffmpeg/ffprobe runs, and MP4s made from raw clips with
//! `streaming_server::mp4`.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use streaming_server::codec::Codec;
use streaming_server::mp4::fmp4::{init_segment, Fragmenter, Sample};
use streaming_server::mp4::progressive::{scan, Layout, ScanOptions, Timing};
use streaming_server::mp4::TrackConfig;

/// The bundled 6 s, 640x360, 30 fps clip of `codec` (a keyframe every 30
/// frames, no B-frames).
pub fn demo(codec: Codec) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets").join(format!("demo.{}", codec.extension()))
}

static GENERATE: Mutex<()> = Mutex::new(());

/// A clip made by ffmpeg from `testsrc2` at 30 fps, cached by name in the
/// test target directory. `codec_args` are the encoder options.
pub fn generated_clip(name: &str, size: &str, seconds: u32, codec_args: &[&str]) -> PathBuf {
    let _one_at_a_time = GENERATE.lock().unwrap_or_else(|e| e.into_inner());
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    if path.exists() {
        return path;
    }
    let tmp = path.with_file_name(format!("tmp-{name}"));
    let source = format!("testsrc2=size={size}:rate=30");
    let t = seconds.to_string();
    let mut args = vec!["-v", "error", "-y", "-f", "lavfi", "-i", &source, "-t", &t, "-pix_fmt", "yuv420p"];
    args.extend_from_slice(codec_args);
    args.extend_from_slice(&["-f", if name.ends_with(".h265") { "hevc" } else { "h264" }]);
    args.push(tmp.to_str().unwrap());
    run("ffmpeg", &args);
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// A 60 s 1080p30 H.264 clip, a keyframe every 2 s (117 MB).
pub fn big_h264() -> PathBuf {
    generated_clip(
        "mp4-1920x1080-60s.h264",
        "1920x1080",
        60,
        &["-c:v", "libx264", "-preset", "ultrafast", "-x264-params", "keyint=60:min-keyint=60:bframes=0"],
    )
}

/// Runs a tool at low priority; panics with its stderr on failure. Returns stdout.
pub fn run(tool: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = run_status(tool, args);
    assert!(ok, "{tool} {args:?} failed: {stderr}");
    stdout
}

/// (success, stdout, stderr) of a tool that may fail.
pub fn run_status(tool: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("nice").arg("-n10").arg(tool).args(args).output().expect("tool runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The per-frame hashes of the decoded video, in output order.
pub fn frame_hashes(path: &Path, extra_input_args: &[&str]) -> Vec<String> {
    let p = path.to_str().unwrap();
    let mut args = vec!["-v", "error"];
    args.extend_from_slice(extra_input_args);
    args.extend_from_slice(&["-i", p, "-map", "0:v:0", "-f", "framemd5", "-"]);
    run("ffmpeg", &args)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.rsplit(',').next().unwrap().trim().to_string())
        .collect()
}

/// `key=value` pairs of `ffprobe -count_frames` for the first video
/// stream, plus the format's duration as `format_duration`.
pub fn probe(path: &Path) -> HashMap<String, String> {
    let entries = "stream=codec_name,codec_tag_string,width,height,nb_read_frames,duration,nb_frames:format=duration";
    let out = run(
        "ffprobe",
        &["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", entries]
            .into_iter()
            .chain(["-of", "default=noprint_wrappers=1", path.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    let mut map = HashMap::new();
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let key = if k == "duration" && map.contains_key("duration") { "format_duration" } else { k };
            map.insert(key.to_string(), v.to_string());
        }
    }
    map
}

/// `ffmpeg -v error -i X -f null -`: prints nothing for a clean file.
pub fn decode_errors(path: &Path) -> String {
    let (_, _, stderr) = run_status("ffmpeg", &["-v", "error", "-i", path.to_str().unwrap(), "-f", "null", "-"]);
    stderr
}

/// An fMP4 (init + one fragment per `part_frames` access units, 30 fps)
/// of a raw clip: the init segment and the fragments.
pub fn fmp4_of(path: &Path, codec: Codec, part_frames: usize) -> (bytes::Bytes, Vec<bytes::Bytes>) {
    let data = std::fs::read(path).unwrap();
    let index = scan(std::io::Cursor::new(&data), &ScanOptions::new(codec)).unwrap();
    let track = TrackConfig::from_parameter_sets(codec, index.parameter_sets.clone()).unwrap();
    let init = init_segment(&track).unwrap();
    let samples: Vec<Sample> =
        codec.split_access_units(&data).into_iter().map(|au| Sample::from_annexb(codec, &data[au], 3000)).collect();
    let mut fragmenter = Fragmenter::new(0);
    let fragments = samples.chunks(part_frames).map(|part| fragmenter.fragment(part).unwrap()).collect();
    (init, fragments)
}

/// The progressive MP4 of a raw clip at 30 fps, and its bytes.
pub fn progressive_of(path: &Path, codec: Codec) -> (Layout, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap();
    let index = scan(&file, &ScanOptions::new(codec)).unwrap();
    let layout = Layout::new(index, Timing::default()).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut layout.reader(&file), &mut bytes).unwrap();
    (layout, bytes)
}
