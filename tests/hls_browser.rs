//! Headless Chromium (Debian's `chromium`, driven by playwright-core from
//! tests/browser/hls.mjs) with WebRTC's UDP turned off, as on a network
//! that lets only HTTP through, opens the viewer page of the real server:
//! WebRTC gets its answer but cannot connect, so the page must switch to
//! LL-HLS by itself, say so on screen, and play (hls.js served by the
//! server), frames advancing. It prints the delay from capture to
//! presentation it measured (hls.js's playingDate is the playlist's
//! program date time, the capture time).

mod common;
mod control_support;

use std::process::Command;

#[test]
fn chromium_without_udp_falls_back_to_hls_and_plays() {
    let Some((browser_dir, chromium)) = control_support::browser_tools() else { return };
    let shm = common::unique_shm("hls_browser");
    let _camera = common::fake_camera(&shm, &["-fps", "30"]);
    let records = tempfile::tempdir().unwrap();
    let server = common::Server::start(
        &["-shm", &shm, "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-webrtc-ip", "127.0.0.1"]
            .into_iter()
            .chain(["-record-path", records.path().to_str().unwrap()])
            .collect::<Vec<_>>(),
        &["http"],
    );
    let output = Command::new("node")
        .current_dir(&browser_dir)
        .env("STREAMING_TEST_CHROMIUM", &chromium)
        .args(["hls.mjs", &server.url("http", "/cam/"), "8"])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "hls.mjs failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.proc.log());
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("browser: {line}");
    let result: serde_json::Value = serde_json::from_str(line).expect("one JSON line from hls.mjs");
    assert_eq!(result["mode"], "hls", "{result}");
    assert_eq!(result["engine"], "hls.js", "{result}");
    assert_eq!(result["connects"], 1, "one WebRTC answer, then HLS: {result}");
    let info = result["info"].as_str().unwrap();
    assert!(info.contains("HLS") && info.contains("WebRTC did not connect"), "the page says so: {info}");
    let (before, after) = (result["framesBefore"].as_u64().unwrap(), result["framesAfter"].as_u64().unwrap());
    let seconds = result["seconds"].as_f64().unwrap();
    // 30 fps for ~8 s; generous for a busy machine, but frames must advance.
    assert!(after > before + (seconds * 15.0) as u64, "frames {before} -> {after} in {seconds} s: {result}");
    assert_eq!((result["width"].as_u64(), result["height"].as_u64()), (Some(640), Some(360)), "{result}");
    assert!(result["latencySamples"].as_u64().unwrap() > 0, "hls.js gave a playing date: {result}");
    eprintln!(
        "capture -> presentation in Chromium over LL-HLS: p50 {} ms, max {} ms",
        result["latencyP50Ms"], result["latencyMaxMs"]
    );
    let log = server.proc.log();
    assert!(log.contains("HLS muxer started"), "{log}");
}
