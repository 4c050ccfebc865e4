//! Reader benchmark: how long after the writer's `sem_post` a frame is
//! available to consumers, and what the media thread costs, at 1080p30.
//!
//! `cargo bench --bench reader` (env: `BENCH_SECONDS`, default 60 (1 under
//! `cargo test`, on the demo clip);
//! `BENCH_CLIP`, an Annex-B file; by default a 1080p30 ~6 Mbit/s clip with an
//! IDR every second is generated once with ffmpeg into target/bench/).
//!
//! A writer thread plays the clip into a real segment with the daemon's
//! protocol and notes the CLOCK_MONOTONIC time right after each `sem_post`;
//! the media thread (reader + H.264 processor + hub) runs as in the server;
//! one consumer thread notes when each frame reaches it. The media thread's
//! own CPU time comes from `getrusage(RUSAGE_THREAD)`.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/clip.rs"]
mod clip;

use streaming_server::abi::{Layout, TimeBits};
use streaming_server::clock::monotonic_now;
use streaming_server::fake_camera::Clip;
use streaming_server::hub::{StartAt, SubscribeOptions};
use streaming_server::metrics::Metrics;
use streaming_server::shutdown;
use streaming_server::source;
use streaming_server::source::ring::{ReaderConfig, Segment};
use streaming_server::stream::Stream;

fn thread_cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), String> {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this too,
    // without it: a 1 s smoke run on the demo clip there.
    let benching = std::env::args().any(|a| a == "--bench");
    let seconds: u64 =
        std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(if benching { 60 } else { 1 });
    let clip_path = clip::clip_path(benching)?;
    let clip = Clip::parse(
        &std::fs::read(&clip_path).map_err(|e| e.to_string())?,
        streaming_server::fake_camera::codec_of_file(&clip_path),
    )?;
    let bytes: usize = clip.units.iter().map(Vec::len).sum();
    let mbps = bytes as f64 * 8.0 / (clip.units.len() as f64 / 30.0) / 1e6;
    println!(
        "clip: {} ({}x{}, {} frames, {:.1} Mbit/s at 30 fps)",
        clip_path.display(),
        clip.width,
        clip.height,
        clip.units.len(),
        mbps
    );

    let layout = Layout::new(TimeBits::Native);
    let shm = format!("/ss_bench_reader_{}", std::process::id());
    let segment = Segment::create(&shm, layout).map_err(|e| e.to_string())?;

    let (trigger, stop) = shutdown::channel();
    let media = Stream::new("cam", &Arc::new(Metrics::new()));
    let config = ReaderConfig { name: shm.clone(), layout, format3: streaming_server::codec::Codec::H264 };
    let (cpu_tx, cpu_rx) = mpsc::channel();
    let media_thread = {
        let media = media.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let cpu_before = thread_cpu_time();
            let started = Instant::now();
            source::run_ring(&config, &media, &stop);
            let _ = cpu_tx.send((thread_cpu_time() - cpu_before, started.elapsed()));
        })
    };
    let sub = media.hub.subscribe(SubscribeOptions {
        name: "bench".into(),
        budget: streaming_server::hub::QueueBudget { bytes: 64 << 20, frames: 120 },
        start: StartAt::NextIdr,
        dropped_metric: None,
    });
    let consumer = std::thread::spawn(move || {
        let mut arrivals = HashMap::new();
        while let Ok(au) = sub.frames.recv() {
            arrivals.insert(au.frame_number, monotonic_now());
        }
        arrivals
    });

    // Writer: 30 fps, noting the time each post returned.
    std::thread::sleep(Duration::from_millis(300)); // let the reader attach
    let frames = seconds * 30;
    let mut posted = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / 30.0);
    let mut due = Instant::now();
    for n in 0..frames {
        segment.write_frame(&clip.frame(n, n), || {});
        posted.insert(n, monotonic_now());
        due += interval;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(200));
    trigger.trigger();
    media_thread.join().map_err(|_| "media thread panicked")?;
    drop(media);
    let arrivals = consumer.join().map_err(|_| "consumer panicked")?;
    let (cpu, wall) = cpu_rx.recv().map_err(|e| e.to_string())?;
    drop(segment);
    Segment::unlink(&shm);

    let mut latencies: Vec<f64> = posted
        .iter()
        .filter_map(|(n, post)| arrivals.get(n).map(|at| (at.as_secs_f64() - post.as_secs_f64()) * 1e3))
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!("frames written {frames}, reached the consumer {}", latencies.len());
    if latencies.len() as u64 != frames {
        return Err(format!("{} of {frames} frames never reached the consumer", frames - latencies.len() as u64));
    }
    println!(
        "sem_post -> available to a consumer: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target p99 < 2 ms)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "media thread CPU: {:.3} s over {:.1} s = {:.2}% of one core (target < 1%; the Go server: ~9%)",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    Ok(())
}
