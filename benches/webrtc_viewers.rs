//! WebRTC viewer benchmark: server CPU and RSS with 1, 10 and 20 viewers,
//! and each viewer's time to first frame, against the real (release) binary.
//!
//! `cargo bench --bench webrtc_viewers` (env: `BENCH_SECONDS` per step,
//! default 10; `BENCH_VIEWERS`, default "1,10,20"; `BENCH_CLIP`, an Annex-B
//! file; by default the 1080p30 ~6 Mbit/s clip the reader benchmark
//! generates in target/bench/, else the 640x360 demo clip).
//!
//! A fake camera process plays the clip into a real segment at 30 fps; the
//! server process serves it; the viewers are real `webrtc` peers in this
//! process (so their CPU is not the server's), negotiating over HTTP
//! `/offer` on loopback and receiving every frame. Server CPU is read from
//! /proc/PID/stat over each step; "time to first frame" runs from the
//! offer's POST to the first complete access unit received.
//!
//! `BENCH_FLAMEGRAPH=1` also fetches a 10 s CPU flamegraph of the server
//! with the most viewers from its pprof endpoint into
//! target/bench/webrtc_viewers_flamegraph.svg.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/webrtc_common/mod.rs"]
mod webrtc_common;

#[path = "support/clip.rs"]
mod clip;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use webrtc_common::{Client, CHROME_H264};

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

struct Viewer {
    client: Client,
    frames: Arc<AtomicU64>,
}

async fn connect(offer_url: &str) -> (Viewer, Duration) {
    let client = Client::new(CHROME_H264).await;
    let body = serde_json::json!({"type": "offer", "sdp": client.offer}).to_string();
    let url = offer_url.to_string();
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || {
        ureq::post(&url)
            .send_bytes(body.as_bytes())
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap()
    .expect("offer answered");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    client.accept(answer["sdp"].as_str().unwrap().to_string()).await;
    let first = client.frames.recv_async().await.expect("a first frame");
    let ttff = started.elapsed();
    let frames = Arc::new(AtomicU64::new(1));
    let counter = frames.clone();
    let rx = client.frames.clone();
    assert!(!first.nals.is_empty());
    tokio::spawn(async move {
        while rx.recv_async().await.is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (Viewer { client, frames }, ttff)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this too,
    // without it: a 1 s smoke run with one viewer on the demo clip there.
    let benching = std::env::args().any(|a| a == "--bench");
    let seconds: u64 =
        std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(if benching { 10 } else { 1 });
    let steps: Vec<usize> = std::env::var("BENCH_VIEWERS")
        .unwrap_or_else(|_| if benching { "1,10,20" } else { "1" }.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let clip = clip::clip_path(benching).unwrap_or_else(|e| panic!("bench clip: {e}"));
    let flamegraph = std::env::var_os("BENCH_FLAMEGRAPH").is_some();
    let shm = common::unique_shm("bench_webrtc");
    let _camera = common::fake_camera(&shm, &["-fps", "30", "-file", clip.to_str().unwrap()]);
    let server = common::Server::start(
        &[
            "-shm",
            &shm,
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "",
            "-pprof",
            if flamegraph { "127.0.0.1:0" } else { "" },
            "-webrtc-ip",
            "127.0.0.1",
            "-max-clients",
            "64",
        ],
        if flamegraph { &["http", "pprof"] } else { &["http"] },
    );
    let pid = server.proc.child.id();
    let offer_url = server.url("http", "/offer");
    // Wait for the stream's SPS/PPS (an offer before them is a 503).
    std::thread::sleep(Duration::from_secs(2));
    let ticks_per_second = 100.0; // Linux USER_HZ
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        println!("clip: {}", clip.display());
        // Baseline: no viewers.
        let measure = |n: usize| async move {
            let t0 = Instant::now();
            let c0 = cpu_ticks(pid);
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let cpu = (cpu_ticks(pid) - c0) as f64 / ticks_per_second / t0.elapsed().as_secs_f64() * 100.0;
            (n, cpu, rss_mib(pid))
        };
        let (_, idle_cpu, idle_rss) = measure(0).await;
        println!("viewers  0: server CPU {idle_cpu:5.1}% of one core, RSS {idle_rss:.1} MiB");
        let mut viewers: Vec<Viewer> = Vec::new();
        let mut ttffs = Vec::new();
        for &n in &steps {
            while viewers.len() < n {
                let (viewer, ttff) = connect(&offer_url).await;
                ttffs.push(ttff);
                viewers.push(viewer);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before: Vec<u64> = viewers.iter().map(|v| v.frames.load(Ordering::Relaxed)).collect();
            let t0 = Instant::now();
            let (_, cpu, rss) = measure(n).await;
            let fps: Vec<f64> = viewers
                .iter()
                .zip(&before)
                .map(|(v, b)| (v.frames.load(Ordering::Relaxed) - b) as f64 / t0.elapsed().as_secs_f64())
                .collect();
            let min_fps = fps.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "viewers {n:2}: server CPU {cpu:5.1}% of one core ({:.2}% per viewer above idle), RSS {rss:.1} MiB, slowest viewer {min_fps:.1} fps",
                (cpu - idle_cpu) / n as f64
            );
        }
        if flamegraph {
            let url = server.url("pprof", "/debug/pprof/flamegraph?seconds=10");
            let svg = tokio::task::spawn_blocking(move || ureq::get(&url).call().ok()?.into_string().ok())
                .await
                .unwrap()
                .unwrap_or_default();
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/webrtc_viewers_flamegraph.svg");
            let _ = std::fs::write(&path, svg);
            println!("flamegraph with {} viewers: {}", viewers.len(), path.display());
        }
        let mut sorted: Vec<f64> = ttffs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        sorted.sort_by(f64::total_cmp);
        println!(
            "time to first frame (POST /offer -> first access unit received, {} viewers): min {:.0} ms, median {:.0} ms, max {:.0} ms",
            sorted.len(),
            sorted[0],
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1]
        );
        for viewer in &viewers {
            viewer.client.close().await;
        }
    });
}
