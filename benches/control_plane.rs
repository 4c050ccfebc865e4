//! Control-plane benchmark: how fast the real binary answers `/health` and
//! `/status` from several keep-alive clients while a recording runs, what
//! that costs in CPU, how long `/stop` (flush + fsync + directory fsync)
//! and a SIGTERM exit take.
//!
//! `cargo bench --bench control_plane` (env: `BENCH_SECONDS`, default 10,
//! or 1 when run by `cargo test`;
//! `BENCH_CLIENTS`, default 4). The camera is the fake camera playing the
//! demo clip at 30 fps; the recording goes to a temporary directory on the
//! disk that holds `target/` (a temporary directory inside it).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // too, without it: a 1 s smoke run there, so the suite stays quick.
    let benching = std::env::args().any(|a| a == "--bench");
    let seconds = env_number("BENCH_SECONDS", if benching { 10 } else { 1 });
    let clients = env_number("BENCH_CLIENTS", 4) as usize;
    let shm = common::unique_shm("bench_ctl");
    let _camera = common::fake_camera(&shm, &[]);
    let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).expect("temp dir");
    let record_path = dir.path().to_str().expect("UTF-8 temp path").to_string();
    let mut server = common::Server::start(
        &["-shm", &shm, "-http", "127.0.0.1:0", "-metrics", "127.0.0.1:0", "-pprof", "", "-record-path", &record_path],
        &["http", "metrics"],
    );
    let http = server.url("http", "");
    let metrics_url = server.url("metrics", "/metrics");
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let started = Instant::now();
    while agent.get(&format!("{http}/health")).call().is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "server never healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let recording = agent.post(&format!("{http}/start")).call().expect("/start");
    assert_eq!(recording.status(), 200);

    let before = agent.get(&metrics_url).call().unwrap().into_string().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (http, stop, agent) = (http.clone(), stop.clone(), agent.clone());
            std::thread::spawn(move || {
                let path = if i % 2 == 0 { "/health" } else { "/status" };
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = agent.get(&format!("{http}{path}")).call().expect("request");
                    let _ = answer.into_string();
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let elapsed = load_started.elapsed().as_secs_f64();
    let after = agent.get(&metrics_url).call().unwrap().into_string().unwrap();
    latencies.sort();

    let stop_sent = Instant::now();
    let stopped = agent.post(&format!("{http}/stop")).call().expect("/stop");
    let stop_took = stop_sent.elapsed();
    let status: serde_json::Value = serde_json::from_str(&stopped.into_string().unwrap()).unwrap();

    let signalled = Instant::now();
    server.proc.signal(libc::SIGTERM);
    let exit = server.proc.wait_exit(Duration::from_secs(10));
    let exit_took = signalled.elapsed();

    let cpu = metric(&after, "process_cpu_seconds_total") - metric(&before, "process_cpu_seconds_total");
    println!("control plane under load: {clients} keep-alive clients, {seconds} s, recording at 30 fps");
    println!(
        "  requests: {} ({:.0}/s)  latency p50 {:?}  p95 {:?}  p99 {:?}  max {:?}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "  server CPU: {:.2} s over {:.1} s ({:.0}% of one core), RSS {:.1} MiB, threads {}",
        cpu,
        elapsed,
        cpu / elapsed * 100.0,
        metric(&after, "process_resident_memory_bytes") / 1048576.0,
        metric(&after, "process_threads")
    );
    println!(
        "  recording: {} frames, {} bytes, {} dropped by the recorder",
        status["status"]["frame_count"], status["status"]["bytes_written"], status["status"]["frames_dropped"]
    );
    println!("  /stop (write queued, fsync, directory fsync, answer): {stop_took:?}");
    println!("  SIGTERM to exit: {exit_took:?} ({exit:?})");
}
