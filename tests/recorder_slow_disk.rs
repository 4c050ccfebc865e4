//! A disk that stalls, like an SD card doing garbage collection: the real
//! binary records from a fast fake camera while its first `fdatasync`
//! hangs for seconds (an `LD_PRELOAD` shim delays that one call; every
//! other part is real). The recorder must lose frames up to the next IDR
//! (counted), the file must still decode, and the reader, `/health` and
//! `/status` must not notice.

mod common;
mod control_support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{demo_clip, fake_camera, unique_shm, Proc, Server};
use control_support::*;

const STALL_MS: u64 = 8000;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>
static int stalled;
int fdatasync(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *ms = getenv("SLOW_DISK_STALL_MS");
    if (ms && !__atomic_exchange_n(&stalled, 1, __ATOMIC_SEQ_CST)) usleep((useconds_t)atoi(ms) * 1000);
    return real(fd);
}
"#;

/// Builds the shim with the system C compiler; None (after a loud message,
/// or a failure in CI) when there is none.
fn build_shim(dir: &Path) -> Option<std::path::PathBuf> {
    let source = dir.join("slow_disk.c");
    let library = dir.join("libslow_disk.so");
    std::fs::write(&source, SHIM).unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status();
    if !built.is_ok_and(|s| s.success()) {
        assert!(!in_ci(), "no C compiler in CI to build the slow-disk shim");
        eprintln!("SKIPPING the slow-disk test: cannot build the LD_PRELOAD shim with cc");
        return None;
    }
    Some(library)
}

#[test]
fn a_stalled_disk_costs_the_recorder_frames_up_to_the_next_idr_and_nobody_else_waits() {
    if !have_tool("ffprobe") || !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(shim) = build_shim(dir.path()) else { return };
    let clip = std::fs::read(demo_clip()).unwrap();
    let shm = unique_shm("slowdisk");
    // 120 fps: the 600-frame recorder queue overflows within the stall.
    let _camera = fake_camera(&shm, &["-file", demo_clip().to_str().unwrap(), "-fps", "120"]);
    let records = dir.path().join("rec");
    let stall = STALL_MS.to_string();
    let proc = Proc::spawn(
        &[
            "-shm",
            &shm,
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "-pprof",
            "",
            "-record-path",
            records.to_str().unwrap(),
        ],
        &[("LD_PRELOAD", shim.to_str().unwrap()), ("SLOW_DISK_STALL_MS", &stall)],
    );
    let mut addrs = HashMap::new();
    for name in ["http", "metrics"] {
        let needle = format!("listening: {name} on ");
        let line = proc
            .wait_for_line(&needle, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("no {needle:?}:\n{}", proc.log()));
        let addr = line[line.find(&needle).unwrap() + needle.len()..].split_whitespace().next().unwrap();
        addrs.insert(name.to_string(), addr.parse().unwrap());
    }
    let server = Server { proc, addrs };
    let health = server.url("http", "/health");
    wait_until(Duration::from_secs(10), || (get(&health).status == 200).then_some(())).expect("never healthy");

    assert_eq!(post(&server.url("http", "/start"), b"").status, 200);
    // The first fdatasync comes about a second in and hangs; meanwhile the
    // camera, /health and /status go on as if nothing happened.
    std::thread::sleep(Duration::from_millis(1500));
    let read_before = get(&health).json()["frames_read"].as_u64().unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        for url in [&health, &server.url("http", "/status")] {
            let sent = Instant::now();
            let answer = get(url);
            slowest = slowest.max(sent.elapsed());
            assert_eq!(answer.status, 200, "{}", answer.text());
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let read_during = get(&health).json()["frames_read"].as_u64().unwrap() - read_before;
    eprintln!("during the stall: {read_during} frames read in ~3 s, slowest /health or /status {slowest:?}");
    assert!(read_during > 200, "the reader slowed down with the disk: {read_during} frames");
    assert!(slowest < Duration::from_secs(1), "/health or /status waited for the disk: {slowest:?}");

    // Let the stall end and the writer catch up.
    std::thread::sleep(Duration::from_millis(STALL_MS));
    let stopped = post(&server.url("http", "/stop"), b"");
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    let status = stopped.json()["status"].clone();
    let dropped = status["frames_dropped"].as_u64().unwrap();
    assert!(dropped > 0, "the queue never overflowed: {status}");
    let metrics = parse_metrics(&get(&server.url("metrics", "/metrics")).text());
    assert_eq!(metrics["streaming_consumer_frames_dropped_total{consumer=\"recorder\"}"], dropped as f64);

    // The file: whole access units, every jump lands on an IDR, it decodes.
    let path = records.join(status["filename"].as_str().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, status["bytes_written"].as_u64().unwrap());
    let (frames, gaps) = assert_idr_after_every_gap(&bytes, &clip);
    assert_eq!(frames, status["frame_count"].as_u64().unwrap());
    assert!(gaps >= 1, "frames were dropped but the file shows no jump");
    assert!(ffmpeg_errors(&path).is_empty());
    let (probed, first_key) = ffprobe_frames(&path);
    assert_eq!((probed, first_key), (frames, true));
    eprintln!("{frames} frames written, {dropped} dropped over {gaps} jump(s) to an IDR");
}
