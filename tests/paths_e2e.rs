//! Several cameras in one server, against the real binary with `-config`:
//! a shared-memory ring (the fake camera process), an RTSP camera (GStreamer's
//! RTSP server through tests/rtsp_server.py, with a password), and the demo
//! camera. Each path streams over WebRTC and records byte for byte; `/paths`,
//! `/health` and the metrics report each one; RTSP faults (a restart, a wrong
//! password, no video track, an unreachable camera) show in `/paths` without
//! disturbing the other paths; an on-demand path holds no connection while
//! nobody watches.

mod common;
mod control_support;
mod rtsp_support;
mod webrtc_common;

use std::path::Path;
use std::time::{Duration, Instant};

use control_support::*;
use serde_json::Value;
use webrtc_common::{clip_nals, find_in_loop, Client, CHROME_H264};

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("streams.yml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path, records: &Path) -> common::Server {
    common::Server::start(
        &[
            "-config",
            config.to_str().unwrap(),
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "-pprof",
            "",
            "-webrtc-ip",
            "127.0.0.1",
            "-record-path",
            records.to_str().unwrap(),
        ],
        &["http", "metrics"],
    )
}

/// Waits until `/paths` says `name` is in `state`; returns that entry.
fn wait_state(server: &common::Server, name: &str, state: &str, timeout: Duration) -> Value {
    wait_until(timeout, || {
        let path = control_support::path_named(server, name);
        (path["state"] == state).then_some(path)
    })
    .unwrap_or_else(|| {
        panic!("{name} never {state}: {}\n{}", control_support::path_named(server, name), server.proc.log())
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// A viewer of `/NAME/offer` that checks what it receives against the clip.
async fn watch(server: &common::Server, name: &str, frames: usize) {
    let client = Client::new(CHROME_H264).await;
    let url = server.url("http", &format!("/{name}/offer"));
    let body = serde_json::json!({"type": "offer", "sdp": client.offer}).to_string();
    let answer = blocking(move || post(&url, body.as_bytes())).await;
    assert_eq!(answer.status, 200, "{name}: {}", answer.text());
    client.accept(answer.json()["sdp"].as_str().unwrap().to_string()).await;
    let got = client.frames(frames, Duration::from_secs(15)).await;
    assert_eq!(got.len(), frames, "{name}: frames stopped");
    let clip = clip_nals(&std::fs::read(common::demo_clip()).unwrap());
    let received: Vec<_> = got.iter().flat_map(|f| f.nals.iter().cloned()).collect();
    assert!(find_in_loop(&clip, &received).is_some(), "{name}: NAL units differ from the camera's");
    client.close().await;
}

fn metric(server: &common::Server, key: &str) -> f64 {
    let text = get(&server.url("metrics", "/metrics")).text();
    *parse_metrics(&text).get(key).unwrap_or_else(|| panic!("no {key} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_an_rtsp_camera_and_the_demo_stream_record_and_report_side_by_side() {
    if !have_tool("ffprobe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shm = common::unique_shm("paths_day");
    let _camera = common::fake_camera(&shm, &["-fps", "30"]);
    let clip_path = common::demo_clip();
    let rtsp = rtsp_support::Server::start(&[
        "--clip",
        clip_path.to_str().unwrap(),
        "--user",
        "admin",
        "--pass",
        "s3cret",
        "--path",
        "stream1",
    ]);
    let rtsp_url = format!("rtsp://admin:s3cret@127.0.0.1:{}/stream1", rtsp.port);
    let config = write_config(
        dir.path(),
        &format!(
            "# three cameras\npaths:\n  day:\n    source: shm:{shm}\n  garage:\n    source: {rtsp_url}\n    rtspTransport: tcp\n  night:\n    source: demo\n"
        ),
    );
    let records = dir.path().join("rec");
    let server = start(&config, &records);
    for name in ["day", "garage", "night"] {
        wait_state(&server, name, "ready", Duration::from_secs(15));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let listed = get(&server.url("http", "/paths")).text();
    assert!(!listed.contains("s3cret") && !listed.contains("rtsp://"), "credentials or URLs in /paths: {listed}");
    for (name, kind) in [("day", "shm"), ("garage", "rtsp"), ("night", "demo")] {
        let path = control_support::path_named(&server, name);
        assert_eq!(path["source"], kind, "{path}");
        assert_eq!((path["width"].as_u64(), path["height"].as_u64()), (Some(640), Some(360)), "{path}");
        assert_eq!(path["codec"]["name"], "H.264", "{path}");
        let fps = path["fps"].as_f64().unwrap();
        assert!((25.0..=35.0).contains(&fps), "{name}: {fps} fps: {path}");
    }
    // The legacy routes and names mean the first path (no `cam` here).
    assert_eq!(get(&server.url("http", "/paths")).json()["legacy"], "day");
    let health = get(&server.url("http", "/health")).json();
    assert_eq!((health["status"].as_str(), health["path"].as_str()), (Some("ok"), Some("day")), "{health}");
    assert_eq!(health["paths"]["garage"]["status"], "ok", "{health}");
    get(&server.url("http", "/nope/status")).assert_json_error(404);
    get(&server.url("http", "/nope/")).assert_json_error(404);
    assert_eq!(get(&server.url("http", "/garage/")).status, 200);

    // WebRTC from each path, byte for byte.
    for name in ["day", "garage", "night"] {
        watch(&server, name, 45).await;
    }

    // A recording of the RTSP path: access unit by access unit the clip.
    let started = post(&server.url("http", "/garage/start"), b"");
    assert_eq!(started.status, 200, "{}", started.text());
    assert_eq!(get(&server.url("http", "/status")).json()["recording"], false, "/status is the day path's");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = post(&server.url("http", "/garage/stop"), b"");
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    let status = stopped.json()["status"].clone();
    let file = records.join("garage").join(status["filename"].as_str().unwrap());
    let bytes = std::fs::read(&file).unwrap();
    let clip = std::fs::read(common::demo_clip()).unwrap();
    assert_eq!(assert_nal_run_of_clip(&bytes, &clip), status["frame_count"].as_u64().unwrap());
    assert!(ffmpeg_errors(&file).is_empty(), "the RTSP recording decodes cleanly");
    let (frames, first_key) = ffprobe_frames(&file);
    assert!(frames >= 80 && first_key, "{frames} frames");

    // Metrics: per path, and the legacy names for the first path.
    let day = metric(&server, "streaming_path_frames_read_total{path=\"day\"}");
    assert!(metric(&server, "streaming_path_frames_read_total{path=\"garage\"}") > 100.0);
    assert!(metric(&server, "streaming_path_recordings_total{path=\"garage\"}") >= 1.0);
    let legacy = metric(&server, "streaming_frames_read_total");
    assert!((legacy - day).abs() < 5.0, "legacy {legacy} vs day {day}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_faults_show_in_paths_and_never_disturb_the_other_paths() {
    let dir = tempfile::tempdir().unwrap();
    let clip = common::demo_clip();
    let clip = clip.to_str().unwrap();
    let good = rtsp_support::Server::start(&["--clip", clip, "--path", "live"]);
    let port = good.port;
    let locked = rtsp_support::Server::start(&["--clip", clip, "--user", "admin", "--pass", "right"]);
    let audio = rtsp_support::Server::start(&["--no-video"]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = write_config(
        dir.path(),
        &format!(
            "paths:\n  cam:\n    source: demo\n  live:\n    source: rtsp://127.0.0.1:{port}/live\n  \
             locked:\n    source: rtsp://127.0.0.1:{}/cam\n    user: admin\n    pass: wrong\n  \
             mute:\n    source: rtsp://127.0.0.1:{}/cam\n  gone:\n    source: rtsp://127.0.0.1:{closed}/cam\n",
            locked.port, audio.port
        ),
    );
    let server = start(&config, &dir.path().join("rec"));
    wait_state(&server, "live", "ready", Duration::from_secs(15));
    let locked_state = wait_state(&server, "locked", "error", Duration::from_secs(10));
    assert_eq!(locked_state["error"], "401 unauthorized", "{locked_state}");
    let mute = wait_state(&server, "mute", "error", Duration::from_secs(10));
    assert!(mute["error"].as_str().unwrap().starts_with("no video track (SDP offers audio PCMU/8000"), "{mute}");
    let gone = wait_state(&server, "gone", "error", Duration::from_secs(10));
    assert!(gone["error"].as_str().unwrap().contains("connection refused"), "{gone}");

    // The camera restarts: the path recovers by itself, a viewer resumes at
    // the next IDR; the other paths never notice.
    let cam_before = control_support::path_named(&server, "cam")["frames_read"].as_u64().unwrap();
    let viewer = Client::new(CHROME_H264).await;
    let url = server.url("http", "/live/offer");
    let body = serde_json::json!({"type": "offer", "sdp": viewer.offer}).to_string();
    let answer = blocking(move || post(&url, body.as_bytes())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    viewer.accept(answer.json()["sdp"].as_str().unwrap().to_string()).await;
    assert_eq!(viewer.frames(30, Duration::from_secs(10)).await.len(), 30);
    good.kill();
    let down = Instant::now();
    wait_until(Duration::from_secs(10), || {
        (control_support::path_named(&server, "live")["state"] != "ready").then_some(())
    })
    .expect("the restart never showed");
    let _restarted = rtsp_support::Server::start(&["--clip", clip, "--path", "live", "--port", &port.to_string()]);
    wait_state(&server, "live", "ready", Duration::from_secs(15));
    eprintln!("RTSP camera back to ready {:?} after it died", down.elapsed());
    // Drain what was queued before the restart, then the next frames start at an IDR.
    let _ = viewer.frames(1000, Duration::from_millis(300)).await;
    let resumed = viewer.frames(40, Duration::from_secs(10)).await;
    assert_eq!(resumed.len(), 40, "the viewer resumed");
    assert!(resumed.iter().any(|f| f.nals.iter().any(|n| n[0] & 0x1f == 5)), "the viewer got an IDR after the restart");
    viewer.close().await;
    let cam_after = control_support::path_named(&server, "cam")["frames_read"].as_u64().unwrap();
    assert!(cam_after > cam_before + 100, "the demo path kept streaming: {cam_before} -> {cam_after}");
    assert_eq!(control_support::path_named(&server, "cam")["state"], "ready");

    // A wrong password is retried slowly: one warning, no flood.
    let log = server.proc.log();
    let warnings = log.lines().filter(|l| l.contains("401 unauthorized") && l.contains("WARN")).count();
    assert_eq!(warnings, 1, "{log}");
    assert!(!log.contains("wrong") && !log.contains("right"), "a password in the log:\n{log}");
}

/// Established TCP connections to `port` on 127.0.0.1 (both directions).
fn connections_to(port: u16) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let hex = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.len() > 3 && fields[3] == "01" && fields[2].ends_with(&hex)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_path_connects_only_while_someone_watches() {
    let dir = tempfile::tempdir().unwrap();
    let clip = common::demo_clip();
    let rtsp = rtsp_support::Server::start(&["--clip", clip.to_str().unwrap()]);
    let config = write_config(
        dir.path(),
        &format!(
            "paths:\n  cam:\n    source: demo\n  lazy:\n    source: rtsp://127.0.0.1:{}/cam\n    sourceOnDemand: yes\n    sourceOnDemandCloseAfter: 1s\n",
            rtsp.port
        ),
    );
    let server = start(&config, &dir.path().join("rec"));
    wait_state(&server, "cam", "ready", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(control_support::path_named(&server, "lazy")["state"], "on_demand_idle");
    assert_eq!(connections_to(rtsp.port), 0, "no connection to the camera while nobody watches");
    assert_eq!(control_support::path_named(&server, "lazy")["frames_read"], 0);

    // A viewer arrives: the offer waits for the source, then plays.
    let asked = Instant::now();
    watch(&server, "lazy", 30).await;
    eprintln!("on-demand: offer to 30 frames in {:?}", asked.elapsed());
    // Closed again a second after the last viewer left.
    let idle = wait_state(&server, "lazy", "on_demand_idle", Duration::from_secs(10));
    assert_eq!(idle["viewers"], 0);
    assert!(wait_until(Duration::from_secs(5), || (connections_to(rtsp.port) == 0).then_some(())).is_some());
    // A recording holds it open too.
    assert_eq!(post(&server.url("http", "/lazy/start"), b"").status, 200);
    wait_state(&server, "lazy", "ready", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(control_support::path_named(&server, "lazy")["state"], "ready", "still open while recording");
    let stopped = post(&server.url("http", "/lazy/stop"), b"");
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    assert!(stopped.json()["status"]["frame_count"].as_u64().unwrap() > 30, "{}", stopped.text());
    wait_state(&server, "lazy", "on_demand_idle", Duration::from_secs(10));
}

#[test]
fn a_config_error_names_the_file_line_and_path_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "paths:\n  cam:\n    source: demo\n  bad:\n    source: ftp://x/y\n");
    let mut proc = common::Proc::spawn(&["-config", config.to_str().unwrap(), "-http", "127.0.0.1:0"], &[]);
    let status = proc.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let log = proc.log();
    assert!(log.contains(&format!("{}:4: path \"bad\": source", config.display())), "{log}");
    assert!(!log.contains("listening"), "nothing was started:\n{log}");
}
