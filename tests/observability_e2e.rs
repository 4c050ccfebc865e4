//! Metrics, health and profiling over real HTTP against the real binary
//! reading a fake camera: the scrape parses and carries every promised
//! name, /health tells a dead camera from a live one, and the profile
//! decodes as a gzipped pprof protobuf.

mod common;
mod control_support;

use std::io::Read;
use std::time::Duration;

use common::{demo_clip, fake_camera, unique_shm, Server};
use control_support::*;
use pprof::protos::Message;

/// Every metric name `../shared/API.md` promises.
const API_METRICS: &[&str] = &[
    "streaming_frames_read_total",
    "streaming_frames_processed_total",
    "streaming_frames_dropped_total",
    "streaming_webrtc_frames_sent_total",
    "streaming_webrtc_frames_dropped_total",
    "streaming_read_errors_total",
    "streaming_process_errors_total",
    "streaming_webrtc_errors_total",
    "streaming_frame_latency_ms",
    "streaming_process_latency_ms",
    "streaming_webrtc_buffer_usage_percent",
    "streaming_recorder_buffer_usage_percent",
    "streaming_active_clients",
    "streaming_total_clients",
    "streaming_recording_active",
    "streaming_recording_bytes",
    "streaming_recording_frames",
];

fn server(shm: &str, dir: &std::path::Path, pprof: bool) -> Server {
    let pprof_addr = if pprof { "127.0.0.1:0" } else { "" };
    let mut listeners = vec!["http", "metrics"];
    if pprof {
        listeners.push("pprof");
    }
    Server::start(
        &[
            "-shm",
            shm,
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "-pprof",
            pprof_addr,
            "-record-path",
            dir.to_str().unwrap(),
        ],
        &listeners,
    )
}

#[test]
fn the_metrics_scrape_parses_and_carries_every_promised_name() {
    let shm = unique_shm("metrics");
    let _camera = fake_camera(&shm, &["-file", demo_clip().to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let server = server(&shm, dir.path(), false);
    let url = server.url("metrics", "/metrics");
    wait_until(Duration::from_secs(10), || {
        let samples = parse_metrics(&get(&url).text());
        (samples.get("streaming_frames_read_total").copied().unwrap_or(0.0) >= 30.0).then_some(())
    })
    .expect("no frames counted");

    let answer = get(&url);
    assert_eq!(answer.status, 200);
    assert!(answer.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = answer.text();
    let samples = parse_metrics(&text);
    for name in API_METRICS {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
    }
    for (name, kind) in [
        ("streaming_frames_read_total", "counter"),
        ("streaming_recording_active", "gauge"),
        ("streaming_frame_latency_ms", "histogram"),
        ("streaming_recording_errors_total", "counter"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}")), "{name} is not a {kind}");
    }
    // Real figures: frames flow, capture-to-available latency is observed
    // with a sane (monotonic-clock) value, process metrics are there.
    assert!(samples["streaming_frames_processed_total"] >= 30.0);
    let count = samples["streaming_frame_latency_ms_count"];
    let sum = samples["streaming_frame_latency_ms_sum"];
    assert!(count >= 30.0);
    assert!(sum / count < 1000.0, "mean capture-to-available latency {} ms", sum / count);
    assert_eq!(samples["streaming_frame_latency_ms_bucket{le=\"+Inf\"}"], count);
    assert!(samples["process_resident_memory_bytes"] > 1e6);
    assert!(samples["process_open_fds"] >= 3.0);
    assert!(samples["process_threads"] >= 4.0);
    assert!(samples.contains_key("process_cpu_seconds_total"));
    assert_eq!(samples["streaming_recording_errors_total{op=\"write\"}"], 0.0);

    // Only /metrics, only GET.
    get(&server.url("metrics", "/")).assert_json_error(404);
    get(&server.url("metrics", "/metrics/../status")).assert_json_error(404);
    post(&server.url("metrics", "/metrics"), b"").assert_json_error(405);
}

#[test]
fn empty_addresses_turn_the_metrics_and_pprof_listeners_off() {
    let shm = unique_shm("off");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &[
            "-shm",
            &shm,
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "",
            "-pprof=",
            "-record-path",
            dir.path().to_str().unwrap(),
        ],
        &["http"],
    );
    // The http line comes after the others would have.
    std::thread::sleep(Duration::from_millis(200));
    let log = server.proc.log();
    assert!(!log.contains("listening: metrics") && !log.contains("listening: pprof"), "{log}");
}

#[test]
fn health_tells_no_camera_from_stalled_from_ok() {
    let shm = unique_shm("health");
    let dir = tempfile::tempdir().unwrap();
    // No segment yet: no_camera.
    let server = server(&shm, dir.path(), false);
    let url = server.url("http", "/health");
    let answer = get(&url);
    assert_eq!(answer.status, 503, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["status"], "no_camera");
    assert_eq!(body["camera_attached"], false);
    assert_eq!(body["has_headers"], false);
    assert!(body["uptime_s"].is_u64());

    // 45 frames, then the camera hangs with its segment still there.
    let _camera = fake_camera(&shm, &["-file", demo_clip().to_str().unwrap(), "-frames", "45", "-linger-ms", "60000"]);
    let ok = wait_until(Duration::from_secs(10), || {
        let answer = get(&url);
        (answer.status == 200).then(|| answer.json())
    })
    .unwrap_or_else(|| panic!("never ok:\n{}", server.proc.log()));
    assert_eq!(ok["status"], "ok");
    assert_eq!(ok["has_headers"], true);
    assert_eq!((ok["width"].as_i64(), ok["height"].as_i64()), (Some(640), Some(360)));
    assert!(ok["last_frame_age_ms"].as_u64().unwrap() < 3000);
    let stalled = wait_until(Duration::from_secs(10), || {
        let answer = get(&url);
        (answer.status == 503).then(|| answer.json())
    })
    .expect("never stalled");
    assert_eq!(stalled["status"], "stalled", "{stalled}");
    assert!(stalled["last_frame_age_ms"].as_u64().unwrap() >= 3000, "{stalled}");
    assert_eq!(stalled["camera_attached"], true);
}

/// Keeps the server busy so the profile has samples to take.
fn load(url: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if try_get(&url).is_some() {
                n += 1;
            }
        }
        n
    })
}

#[test]
fn profiles_decode_as_gzipped_pprof_and_flamegraphs_are_svg() {
    let shm = unique_shm("pprof");
    let _camera = fake_camera(&shm, &["-file", demo_clip().to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let server = server(&shm, dir.path(), true);
    let url = |path: &str| server.url("pprof", path);

    let index = get(&url("/debug/pprof/"));
    assert_eq!(index.status, 200);
    assert!(index.text().contains("profile?seconds="));
    get(&url("/debug/pprof/heap")).assert_json_error(404);
    get(&url("/metrics")).assert_json_error(404);
    post(&url("/debug/pprof/profile"), b"").assert_json_error(405);
    for bad in ["0", "-1", "abc", "100000", "1.5", ""] {
        get(&url(&format!("/debug/pprof/profile?seconds={bad}"))).assert_json_error(400);
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..2).map(|_| load(server.url("metrics", "/metrics"), stop.clone())).collect();
    let profile_url = url("/debug/pprof/profile?seconds=3");
    let profiler = std::thread::spawn(move || get(&profile_url));
    // One profile at a time.
    std::thread::sleep(Duration::from_millis(1000));
    let busy = get(&url("/debug/pprof/flamegraph?seconds=1"));
    busy.assert_json_error(409);
    assert!(busy.header("retry-after").is_some());
    let answer = profiler.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes: u64 = loaders.into_iter().map(|l| l.join().unwrap()).sum();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(&answer.body[..2], &[0x1f, 0x8b], "not gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&answer.body[..]).read_to_end(&mut raw).expect("gunzip");
    let profile = pprof::protos::Profile::decode(&raw[..]).expect("a pprof protobuf");
    let strings = &profile.string_table;
    assert_eq!(strings.first().map(String::as_str), Some(""), "string_table[0] must be empty");
    let sample_types: Vec<&str> = profile.sample_type.iter().map(|t| strings[t.ty as usize].as_str()).collect();
    assert!(sample_types.contains(&"cpu") || sample_types.contains(&"samples"), "{sample_types:?}");
    assert_eq!(profile.period, 10_000_000, "100 Hz in ns");
    assert!(profile.duration_nanos >= 2_900_000_000, "{}", profile.duration_nanos);
    eprintln!("profile: {} samples over 3 s while {scrapes} scrapes were served", profile.sample.len());
    assert!(!profile.sample.is_empty(), "no samples: is the profiling timer armed?");
    assert!(!profile.function.is_empty() && !profile.location.is_empty());
    let names: Vec<&str> = profile.function.iter().map(|f| strings[f.name as usize].as_str()).collect();
    assert!(names.iter().any(|n| n.contains("streaming_server") || n.contains("prometheus")), "{names:?}");

    // Flamegraph: SVG.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = load(server.url("metrics", "/metrics"), stop.clone());
    let svg = get(&url("/debug/pprof/flamegraph?seconds=2"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    loader.join().unwrap();
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    let text = svg.text();
    assert!(text.contains("<svg") && text.trim_end().ends_with("</svg>"), "{}", &text[..text.len().min(300)]);

    // No cost when idle: once a profile is over, SIGPROF has no handler
    // (pprof leaves it ignored), so nothing runs per timer tick; a second
    // profile starts cleanly.
    let sigprof_caught = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.proc.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("SigCgt:")).unwrap();
        let mask = u64::from_str_radix(line["SigCgt:".len()..].trim(), 16).unwrap();
        mask & (1 << (libc::SIGPROF - 1)) != 0
    };
    assert!(!sigprof_caught(), "a SIGPROF handler is installed while nobody profiles");
    let again = get(&url("/debug/pprof/profile?seconds=1"));
    assert_eq!(again.status, 200);
    assert!(!sigprof_caught());
}
