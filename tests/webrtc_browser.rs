//! Headless Chromium (Debian's `chromium`, driven by playwright-core from
//! tests/browser/viewer.mjs) opens the viewer page at `/` of the real
//! server, three viewers at once: each must decode at the camera's rate
//! without freezes, a screenshot of the video must be neither black nor
//! still, and a closed tab must be gone from the server within 500 ms.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::in_ci;

/// One Chromium at a time: two at once on a small CI machine measure the
/// machine, not the server.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn chromium() -> PathBuf {
    PathBuf::from(std::env::var("STREAMING_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
}

/// Chromium, node and playwright-core present? In CI their absence fails.
fn tools_present(browser_dir: &std::path::Path) -> bool {
    let missing: Vec<&str> = [
        (chromium().exists(), "chromium"),
        (Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()), "node"),
        (browser_dir.join("node_modules/playwright-core").exists(), "playwright-core (npm install in tests/browser)"),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(!in_ci(), "missing in CI: {missing:?} (scripts/test.sh installs them)");
    eprintln!("SKIPPING the browser test: missing {missing:?}");
    false
}

#[test]
fn chromium_plays_the_viewer_page_in_three_tabs() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !tools_present(&browser_dir) {
        return;
    }
    let shm = common::unique_shm("browser");
    let _camera = common::fake_camera(&shm, &["-fps", "30"]);
    let server = common::Server::start(
        &["-shm", &shm, "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-webrtc-ip", "127.0.0.1"],
        &["http"],
    );
    let screenshot = std::env::temp_dir().join(format!("viewer_{}.png", std::process::id()));
    let output = Command::new("node")
        .current_dir(&browser_dir)
        .env("STREAMING_TEST_CHROMIUM", chromium())
        .args(["viewer.mjs", &server.url("http", "/cam/"), "3", screenshot.to_str().unwrap()])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "viewer.mjs failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.proc.log());
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("browser: {line}");
    let result: serde_json::Value = serde_json::from_str(line).expect("one JSON line from viewer.mjs");

    let viewers = result["viewers"].as_array().unwrap();
    assert_eq!(viewers.len(), 3);
    for (i, viewer) in viewers.iter().enumerate() {
        let fps = viewer["fps"].as_f64().unwrap();
        // The camera runs at 30 fps; getStats counts decoded frames.
        assert!((25.0..=35.0).contains(&fps), "viewer {i}: {fps} fps decoded: {viewer}");
        assert_eq!(viewer["freezesDuringWindow"], 0, "viewer {i} froze: {viewer}");
        assert_eq!((viewer["width"].as_u64(), viewer["height"].as_u64()), (Some(640), Some(360)), "viewer {i}");
        assert_eq!(viewer["connects"], 1, "viewer {i} had to reconnect: {viewer}");
        // The page reports what the link costs (read by the dashboard and
        // by anyone debugging a viewer); it started from a keyframe.
        assert!(viewer["keyFramesDecoded"].as_u64().is_some_and(|n| n >= 1), "viewer {i}: {viewer}");
        for field in ["packetsLost", "nackCount", "pliCount"] {
            assert!(viewer[field].as_i64().is_some(), "viewer {i} has no {field}: {viewer}");
        }
    }
    let shot = &result["screenshot"];
    let mean = shot["meanLuma"].as_f64().unwrap();
    assert!(mean > 20.0, "the video looks black (mean luma {mean})");
    let changed = shot["changedFraction"].as_f64().unwrap();
    assert!(changed > 0.005, "the picture does not move ({changed} of pixels changed in 0.5 s)");
    let _ = std::fs::remove_file(&screenshot);
    // A closed tab is gone from the server within 500 ms (DTLS close_notify).
    for close in result["closes"].as_array().unwrap() {
        assert_eq!(close["after"].as_u64().unwrap() + 1, close["before"].as_u64().unwrap(), "{close}");
        assert!(close["ms"].as_u64().unwrap() < 500, "a closed tab held its slot: {close}");
    }
    let log = server.proc.log();
    assert!(log.contains("DTLS close_notify"), "{log}");
    assert!(!log.contains(" failed:"), "a closed tab was logged as a failure:\n{log}");
}

#[test]
fn the_viewer_page_reconnects_when_the_stream_stops_and_comes_back() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !tools_present(&browser_dir) {
        return;
    }
    let shm = common::unique_shm("browser_reconnect");
    let camera = common::fake_camera(&shm, &["-fps", "30"]);
    let server = common::Server::start(
        &["-shm", &shm, "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-webrtc-ip", "127.0.0.1"],
        &["http"],
    );
    let mut node = Command::new("node")
        .current_dir(&browser_dir)
        .env("STREAMING_TEST_CHROMIUM", chromium())
        // As a real browser does: host candidates as mDNS names, so the
        // server must learn this viewer's address from its checks.
        .env("STREAMING_TEST_MDNS", "1")
        .args(["viewer.mjs", &server.url("http", "/cam/"), "1", "/dev/null", "reconnect"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(ready, "READY", "the page never played:\n{}", server.proc.log());
    // The stream stops for longer than the page's stall limit (4 s)...
    drop(camera);
    std::thread::sleep(Duration::from_secs(6));
    // ...and comes back.
    let _camera = common::fake_camera(&shm, &["-fps", "30"]);
    let result = lines.next().and_then(Result::ok).unwrap_or_default();
    let status = node.wait().unwrap();
    assert!(status.success(), "viewer.mjs failed: {result}\nserver log:\n{}", server.proc.log());
    eprintln!("reconnect: {result}");
    let result: serde_json::Value = serde_json::from_str(&result).expect("JSON from viewer.mjs");
    assert_eq!(result["reconnected"], true);
    assert!(result["connects"].as_u64().unwrap() >= 2);
}
