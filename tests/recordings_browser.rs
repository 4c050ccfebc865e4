//! Headless Chromium (Debian's `chromium`, driven by playwright-core from
//! tests/browser/recordings.mjs) plays recordings in the recordings page,
//! reached from the dashboard's link: a real recording of the fake camera
//! and a 60 s 1080p file without a capture-time sidecar (an older
//! recording). The MP4 the server makes on the fly plays (currentTime
//! advances), seeks (the seek lands and playback goes on), and arrives by
//! Range requests answered 206, from the middle of the large file. The
//! same page also plays an fMP4 (`mp4::fmp4`: init segment and segments of
//! parts, LL-HLS's form) through a MediaSource.

mod common;
mod control_support;
mod mp4_support;

use std::process::Command;
use std::time::Duration;

use control_support::*;

#[test]
fn chromium_plays_and_seeks_recordings_in_the_recordings_page() {
    let Some((browser_dir, chromium)) = browser_tools() else { return };
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("rec");
    // An older recording without a capture-time sidecar: 60 s of 1080p
    // (117 MB), timed by its frame rate; seeking to 50 s must fetch from
    // the middle of its MP4.
    std::fs::create_dir_all(&records).unwrap();
    let old = "recording_20250101_120000.h264";
    std::fs::copy(mp4_support::big_h264(), records.join(old)).unwrap();

    let shm = common::unique_shm("rec_page");
    let _camera = common::fake_camera(&shm, &["-fps", "30", "-file", common::demo_clip().to_str().unwrap()]);
    let server = common::Server::start(
        &["-shm", &shm, "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-webrtc-ip", "127.0.0.1"]
            .into_iter()
            .chain(["-record-path", records.to_str().unwrap()])
            .collect::<Vec<_>>(),
        &["http"],
    );
    wait_until(Duration::from_secs(15), || {
        (get(&server.url("http", "/health")).json()["has_headers"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("never healthy:\n{}", server.proc.log()));
    let started = post(&server.url("http", "/start"), b"");
    assert_eq!(started.status, 200, "{}", started.text());
    std::thread::sleep(Duration::from_secs(8));
    let stopped = post(&server.url("http", "/stop"), b"");
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    let id = format!("cam/{}", stopped.json()["status"]["filename"].as_str().unwrap());
    let old_id = format!("cam/{old}");

    // LL-HLS's form too: init segment + 1 s segments of three 10-frame
    // parts (mp4::fmp4) of the demo clip, appended to a MediaSource.
    let fmp4 = dir.path().join("fmp4");
    std::fs::create_dir_all(&fmp4).unwrap();
    let (init, parts) = mp4_support::fmp4_of(&common::demo_clip(), streaming_server::codec::Codec::H264, 10);
    std::fs::write(fmp4.join("init.mp4"), &init).unwrap();
    for (i, segment) in parts.chunks(3).enumerate() {
        std::fs::write(fmp4.join(format!("seg{i}.m4s")), segment.concat()).unwrap();
    }
    let data = std::fs::read(common::demo_clip()).unwrap();
    let index = streaming_server::mp4::scan(
        std::io::Cursor::new(&data),
        &streaming_server::mp4::ScanOptions::new(streaming_server::codec::Codec::H264),
    )
    .unwrap();
    let track = streaming_server::mp4::TrackConfig::from_parameter_sets(
        streaming_server::codec::Codec::H264,
        index.parameter_sets,
    )
    .unwrap();
    std::fs::write(fmp4.join("codecs.txt"), track.codecs()).unwrap();

    let output = Command::new("node")
        .current_dir(&browser_dir)
        .env("STREAMING_TEST_CHROMIUM", &chromium)
        .env("STREAMING_TEST_FMP4_DIR", &fmp4)
        .args(["recordings.mjs", &server.url("http", "/"), &id, "5", &old_id, "50"])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "recordings.mjs failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.proc.log());
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("recordings page: {line}");
    let seen: serde_json::Value = serde_json::from_str(line).expect("one JSON line from recordings.mjs");

    assert!(seen["pageUrl"].as_str().unwrap().ends_with("/recordings/"), "the dashboard links the page: {seen}");
    assert_eq!(seen["listed"], serde_json::json!([id, old_id]), "newest first");
    assert_eq!(seen["consoleErrors"].as_array().unwrap().len(), 0, "{seen}");
    let list = get(&server.url("http", "/recordings")).json();
    let old_size = list["recordings"][1]["size"].as_u64().unwrap();
    assert_eq!(list["recordings"][1]["timing"], "estimated", "{list}");
    for (play, file, seek_to, duration, size) in
        [(&seen["plays"][0], &id, 5.0, 7.0, [640, 360]), (&seen["plays"][1], &old_id, 50.0, 59.9, [1920, 1080])]
    {
        assert_eq!(play["file"], file.as_str());
        assert!(play["rowText"].as_str().unwrap().contains("H.264"), "{play}");
        assert!(play["advanced"].as_f64().unwrap() > 0.3, "currentTime did not advance: {play}");
        let seek = &play["seek"];
        assert_eq!(seek["fired"], true, "no seeked event: {play}");
        assert!((seek["at"].as_f64().unwrap() - seek_to).abs() < 0.1, "the seek landed elsewhere: {play}");
        assert!(seek["later"].as_f64().unwrap() > seek_to + 0.2, "no playback after the seek: {play}");
        assert!(seek["duration"].as_f64().unwrap() > duration, "{play}");
        assert_eq!(seek["size"], serde_json::json!(size));
        assert!(seek["error"].is_null() && play["pageError"].is_null(), "{play}");
        let requests = play["mediaRequests"].as_array().unwrap();
        assert!(!requests.is_empty(), "{play}");
        for request in requests {
            assert!(request["range"].as_str().is_some_and(|r| r.starts_with("bytes=")), "{play}");
            assert_eq!(request["status"], 206, "{play}");
        }
    }
    // The fMP4: one contiguous buffered range of the clip's 6 s, plays, seeks.
    let mse = &seen["mse"];
    assert_eq!(mse["typeSupported"], true, "{mse}");
    assert_eq!(mse["bufferedRanges"], 1, "one contiguous buffered range: {mse}");
    assert!((mse["buffered"][1].as_f64().unwrap() - 6.0).abs() < 0.05, "{mse}");
    assert!(mse["advanced"].as_f64().unwrap() > 0.3, "{mse}");
    assert_eq!(mse["seeked"], true, "{mse}");
    assert!((mse["afterSeek"].as_f64().unwrap() - 4.0).abs() < 0.1, "{mse}");
    assert!(mse["framesDecoded"].as_f64().unwrap() > 30.0, "{mse}");
    assert!(mse["error"].is_null(), "{mse}");
    // The 117 MB file was not fetched whole before the seek: one request
    // started past its middle.
    let starts: Vec<u64> = seen["plays"][1]["mediaRequests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["range"].as_str()?.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
        .collect();
    assert!(starts.iter().any(|&s| s > old_size / 2), "no range request from the middle: {starts:?}");
}
