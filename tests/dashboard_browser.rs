//! Headless Chromium (Debian's `chromium`, driven by playwright-core from
//! tests/browser/dashboard.mjs) opens the dashboard at `/` of the real
//! server with three paths: a shared-memory ring, an RTSP camera and the
//! demo camera. Every card plays, shows its state, resolution and frame
//! rate, fits a phone-width screen, and records at the click of its button.

mod common;
mod control_support;
mod rtsp_support;

use std::process::Command;

#[test]
fn chromium_plays_every_camera_of_the_dashboard_at_desktop_and_phone_width() {
    let Some((browser_dir, chromium)) = control_support::browser_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let shm = common::unique_shm("dash_day");
    let _camera = common::fake_camera(&shm, &["-fps", "30"]);
    let clip = common::demo_clip();
    let rtsp = rtsp_support::Server::start(&["--clip", clip.to_str().unwrap()]);
    let config = dir.path().join("streams.yml");
    std::fs::write(
        &config,
        format!(
            "paths:\n  day:\n    source: shm:{shm}\n  garage:\n    source: rtsp://127.0.0.1:{}/cam\n  night:\n    source: demo\n",
            rtsp.port
        ),
    )
    .unwrap();
    let records = dir.path().join("rec");
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
            "-record-path",
            records.to_str().unwrap(),
        ],
        &["http"],
    );
    let output = Command::new("node")
        .current_dir(&browser_dir)
        .env("STREAMING_TEST_CHROMIUM", &chromium)
        .args(["dashboard.mjs", &server.url("http", "/"), "3"])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dashboard.mjs failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.proc.log());
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("dashboard: {line}");
    let result: serde_json::Value = serde_json::from_str(line).expect("one JSON line from dashboard.mjs");

    let cards = result["desktop"]["cards"].as_array().unwrap();
    let names: Vec<&str> = cards.iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(names, ["day", "garage", "night"], "cards in configuration order");
    for card in cards {
        assert_eq!(card["state"], "ready", "{card}");
        let figures = card["figures"].as_str().unwrap();
        assert!(figures.starts_with("H.264  640×360") && figures.contains(" fps") && figures.contains(" ms"), "{card}");
    }
    assert!(result["desktop"]["columns"].as_u64().unwrap() >= 2, "a grid on a desktop screen: {result}");
    let phone = &result["phone"];
    assert_eq!(phone["columns"], 1, "one column on a phone: {phone}");
    let (scroll, inner) = (phone["scrollWidth"].as_u64(), phone["innerWidth"].as_u64());
    assert!(scroll.is_some() && scroll <= inner, "no sideways scrolling: {phone}");
    assert!(phone["cellWidths"].as_array().unwrap().iter().all(|w| w.as_f64().unwrap() <= 390.0), "{phone}");
    assert!(phone["framesAdvanced"].as_array().unwrap().iter().all(|n| n.as_i64().unwrap() > 20), "{phone}");

    let record = &result["record"];
    assert_eq!(record["path"], "night");
    assert_eq!(record["during"]["recording"], true, "{record}");
    assert_eq!(record["after"]["recording"], false, "{record}");
    let file = records.join("night").join(record["after"]["filename"].as_str().unwrap());
    assert!(std::fs::metadata(&file).unwrap().len() > 0, "the recording of night is on disk");
}
