//! The stream the benchmarks play: shared by every bench target.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// `BENCH_CLIP` if set; under `cargo test` (not benching) the small demo
/// clip; else a 1080p30 ~6 Mbit/s clip with an IDR every second, made once
/// with ffmpeg in target/bench/.
pub fn clip_path(benching: bool) -> Result<PathBuf, String> {
    let encoder = "-c:v libx264 -profile:v high -preset veryfast -tune zerolatency -g 30 -keyint_min 30 \
                   -sc_threshold 0 -b:v 6M -maxrate 6M -bufsize 2M -pix_fmt yuv420p -x264-params aud=1 -f h264";
    clip("BENCH_CLIP", "demo.h264", "clip_1080p30_6mbps.h264", encoder, benching)
}

/// The H.265 twin of [`clip_path`]: `BENCH_CLIP_H265`, the demo clip under
/// `cargo test`, else the same 1080p30 picture at ~6 Mbit/s in H.265 Main
/// (IRAP every second, no B-frames), made once with ffmpeg in target/bench/.
pub fn clip_path_h265(benching: bool) -> Result<PathBuf, String> {
    let encoder = "-c:v libx265 -profile:v main -preset veryfast -tune zerolatency -b:v 6M -maxrate 6M \
                   -bufsize 2M -pix_fmt yuv420p -f hevc -x265-params \
                   log-level=error:keyint=30:min-keyint=30:scenecut=0:open-gop=0:bframes=0:aud=1";
    clip("BENCH_CLIP_H265", "demo.h265", "clip_1080p30_6mbps.h265", encoder, benching)
}

/// The file `env` names, the bundled `demo` clip when not benching, else
/// `target/bench/NAME`, encoded once from ffmpeg's 10 s 1080p30 test
/// pattern with `encoder`'s arguments (split at white space).
fn clip(env: &str, demo: &str, name: &str, encoder: &str, benching: bool) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    if !benching {
        return Ok(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets").join(demo));
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let path = dir.join(name);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!("generating {} with ffmpeg (once)...", path.display());
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30:duration=10"])
        .args(encoder.split_whitespace())
        .arg(&path)
        .status()
        .map_err(|e| format!("ffmpeg not runnable ({e}); set {env} to an Annex-B file"))?;
    if !status.success() {
        return Err(format!("ffmpeg failed: {status}"));
    }
    Ok(path)
}

/// Both clips, H.264 then H.265 ([`clip_path`], [`clip_path_h265`]), for
/// the benches that measure each codec; panics saying what is missing.
pub fn both_codecs(benching: bool) -> [PathBuf; 2] {
    let h264 = clip_path(benching).unwrap_or_else(|e| panic!("bench clip: {e}"));
    let h265 = clip_path_h265(benching).unwrap_or_else(|e| panic!("H.265 bench clip: {e}"));
    [h264, h265]
}
