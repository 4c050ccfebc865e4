//! Recordings as MP4: what `GET /recordings/FILE?format=mp4` costs the
//! server, on a 1080p30 ~6 Mbit/s recording (a raw recording is this very
//! Annex-B stream), in H.264 and in H.265:
//! - indexing (`mp4::progressive::scan`: once per file version, then the
//!   layout is cached), reading the capture-time sidecar and building the
//!   `moov` (`Layout::new`): the first request's work;
//! - producing the MP4 bytes (`Layout`'s reader, 64 KiB reads as the route
//!   streams them), whole and as random 64 KiB ranges (seeks).
//!
//! Per frame and in MB/s; the clip file is in the page cache after the
//! first pass, so this is CPU, not disk.
//!
//! `cargo bench --bench recordings_mp4` (env: `BENCH_CLIP`,
//! `BENCH_CLIP_H265`; by default 1080p30 clips made once with ffmpeg in
//! target/bench/; under `cargo test` a quick run on the demo clips).

#[path = "support/clip.rs"]
mod clip;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streaming_server::mp4::progressive::{scan, Layout, ScanOptions, Timing};
use streaming_server::mp4::TIMESCALE;
use streaming_server::recording_times::{durations, read_captures, Header, TimesWriter};

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // too, without it: a quick smoke run on the demo clips there.
    let benching = std::env::args().any(|a| a == "--bench");
    for path in clip::both_codecs(benching) {
        bench_clip(&path, benching);
    }
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64() / 1e6
}

fn bench_clip(path: &Path, benching: bool) {
    let codec = streaming_server::fake_camera::codec_of_file(path);
    let size = std::fs::metadata(path).expect("the clip").len();
    let rounds = if benching { (400_000_000 / size).max(3) as u32 } else { 1 };

    // Indexing: one streaming pass over the file.
    let mut index = None;
    let started = Instant::now();
    for _ in 0..rounds {
        let file = File::open(path).expect("open the clip");
        index = Some(scan(&file, &ScanOptions::new(codec)).expect("scan the clip"));
    }
    let scan_took = started.elapsed() / rounds;
    let index = index.expect("at least one round");
    let frames = index.len();
    println!(
        "\n{codec} recording {} ({:.1} MB, {frames} frames): index {:.2} us per frame, {:.0} MB/s, {:.1} bytes per frame",
        path.display(),
        size as f64 / 1e6,
        scan_took.as_secs_f64() * 1e6 / frames as f64,
        mb_per_s(size, scan_took),
        index.heap_bytes() as f64 / frames as f64
    );

    // The sidecar as the recorder writes it (30 fps capture times), read
    // back and turned into sample durations, then the moov.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut times = TimesWriter::create(dir.path(), "bench.h264", &Header::now(1, "bench.h264")).expect("sidecar");
    for (i, &offset) in index.source_offsets().iter().enumerate() {
        times.record(offset, Duration::from_micros(1_000_000 + i as u64 * 33_333));
    }
    times.sync();
    let sidecar = dir.path().join(".bench.h264.times");
    let started = Instant::now();
    let mut layout = None;
    for _ in 0..rounds {
        let mut file = File::open(&sidecar).expect("open the sidecar");
        let (_, captures) = read_captures(&mut file, index.source_offsets()).expect("read").expect("a sidecar");
        let timing = Timing::Durations(durations(&captures, 33_333, TIMESCALE));
        layout = Some(Layout::new(index.clone(), timing).expect("a layout"));
    }
    let layout_took = started.elapsed() / rounds;
    let layout = Arc::new(layout.expect("at least one round"));
    println!(
        "sidecar + moov: {:.2} us per frame ({:.1} ms for the file); layout {:.1} bytes per frame, MP4 {:.1} MB",
        layout_took.as_secs_f64() * 1e6 / frames as f64,
        layout_took.as_secs_f64() * 1e3,
        layout.heap_bytes() as f64 / frames as f64,
        layout.total_len() as f64 / 1e6
    );

    // Producing the bytes: the whole MP4 in 64 KiB reads, as the route does.
    let source = File::open(path).expect("open the clip");
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let mut produced = 0u64;
    for _ in 0..rounds {
        let mut reader = layout.clone().shared_reader(&source);
        loop {
            let n = reader.read(&mut buf).expect("read the MP4");
            if n == 0 {
                break;
            }
            produced += n as u64;
            std::hint::black_box(&buf[..n]);
        }
    }
    let took = started.elapsed();
    println!(
        "MP4 bytes, sequential: {:.2} us per frame, {:.0} MB/s",
        took.as_secs_f64() * 1e6 / (frames as f64 * f64::from(rounds)),
        mb_per_s(produced, took)
    );

    // Seeks: 64 KiB at random offsets (an xorshift, the same every run).
    let reads: u32 = if benching { 20_000 } else { 50 };
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut reader = layout.clone().shared_reader(&source);
    let started = Instant::now();
    for _ in 0..reads {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        reader.seek(SeekFrom::Start(seed % layout.total_len())).expect("seek");
        let n = reader.read(&mut buf).expect("read the MP4");
        std::hint::black_box(&buf[..n]);
    }
    let took = started.elapsed();
    println!(
        "MP4 bytes, random 64 KiB ranges: {:.1} us per range, {:.0} MB/s",
        took.as_secs_f64() * 1e6 / f64::from(reads),
        mb_per_s(64 * 1024 * u64::from(reads), took)
    );
}
