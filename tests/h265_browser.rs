//! Headless Chromium (Debian's `chromium` driven by playwright-core, from
//! tests/browser/h265.mjs) against the real server with H.265 demo cameras:
//! Chromium on Linux cannot decode H.265 in WebRTC, so the page of an H.265
//! path explains that in words, and the page of an H.265 path with an H.264
//! `fallback` plays the fallback.

mod common;
mod control_support;

use std::process::Command;

#[test]
fn chromium_without_h265_reads_a_clear_message_or_plays_the_fallback() {
    let Some((browser_dir, chromium)) = control_support::browser_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streams.yml");
    std::fs::write(
        &config,
        "paths:\n  front:\n    source: demo\n    codec: h265\n    fallback: frontsub\n  frontsub:\n    source: demo\n  \
         back:\n    source: demo\n    codec: h265\n",
    )
    .unwrap();
    let server = common::Server::start(
        &[
            "-config",
            config.to_str().unwrap(),
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "",
            "-pprof",
            "",
            "-webrtc-ip",
            "127.0.0.1",
        ],
        &["http"],
    );
    let output = Command::new("node")
        .current_dir(&browser_dir)
        .env("STREAMING_TEST_CHROMIUM", &chromium)
        .args(["h265.mjs", &server.url("http", "/"), "back", "front"])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "h265.mjs failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.proc.log());
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("h265 browser: {line}");
    let result: serde_json::Value = serde_json::from_str(line).expect("one JSON line from h265.mjs");
    let (solo, fallback) = (&result["solo"], &result["fallback"]);
    if result["receivesH265"] == true {
        // This Chromium has an H.265 decoder for WebRTC: both play H.265.
        assert_eq!(solo["state"], "connected", "{result}");
        assert!(fallback["fallback"].is_null(), "{result}");
        return;
    }
    // The path without a fallback: words, not a black picture.
    assert_eq!(solo["state"], "unsupported", "{result}");
    assert_eq!(solo["cameraCodec"], "H.265", "{result}");
    let info = solo["info"].as_str().unwrap();
    assert!(info.contains("sends H.265 video") && info.contains("cannot play"), "{info}");
    assert!(info.contains("Safari") && info.contains("H.264 fallback"), "{info}");
    assert_eq!(solo["framesDecoded"], 0, "{result}");
    // The path with a fallback plays the H.264 sibling and says so.
    assert_eq!(fallback["fallback"], "frontsub", "{result}");
    assert!(fallback["framesDecoded"].as_u64().unwrap() > 30, "{result}");
    assert_eq!(fallback["videoWidth"], 640, "{result}");
    assert!(fallback["info"].as_str().unwrap().contains("(fallback: frontsub)"), "{result}");
}
