//! A disk that stalls, like an SD card doing garbage collection: the real
//! binary records from a fake camera while an `LD_PRELOAD` shim makes the
//! disk hang (every other part is real): its first `fdatasync` for
//! seconds, or every write and sync to a regular file for as long as a
//! gate file exists. The recorder must lose frames up to the next IDR
//! (counted), the file must still decode, the reader, `/health` and
//! `/status` must not notice, a `/stop` waiting for the disk shows
//! "stopping" (a `/start` meanwhile is 409), SIGTERM exits within 2 s
//! whatever the disk does, and memory stays bounded.

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
#include <sys/stat.h>
#include <unistd.h>
static int stalled;
/* SLOW_DISK_GATE=FILE: writes and syncs to regular files block while FILE exists. */
static void gate(int fd) {
    const char *path = getenv("SLOW_DISK_GATE");
    struct stat st;
    if (!path || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    while (access(path, F_OK) == 0) usleep(10000);
}
int fdatasync(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *ms = getenv("SLOW_DISK_STALL_MS");
    if (ms && !__atomic_exchange_n(&stalled, 1, __ATOMIC_SEQ_CST)) usleep((useconds_t)atoi(ms) * 1000);
    gate(fd);
    return real(fd);
}
int fsync(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    gate(fd);
    return real(fd);
}
ssize_t write(int fd, const void *buf, size_t n) {
    ssize_t (*real)(int, const void *, size_t) = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    gate(fd);
    return real(fd, buf, n);
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

/// The server under the gate shim, recording to `dir/rec`.
fn gated_server(shim: &Path, dir: &Path, shm: &str, gate: &Path) -> Server {
    let records = dir.join("rec");
    let proc = Proc::spawn(
        &["-shm", shm, "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-record-path", records.to_str().unwrap()],
        &[("LD_PRELOAD", shim.to_str().unwrap()), ("SLOW_DISK_GATE", gate.to_str().unwrap())],
    );
    let needle = "listening: http on ";
    let line = proc.wait_for_line(needle, Duration::from_secs(15)).unwrap_or_else(|| panic!("{}", proc.log()));
    let addr = line[line.find(needle).unwrap() + needle.len()..].split_whitespace().next().unwrap();
    let server = Server { proc, addrs: HashMap::from([("http".to_string(), addr.parse().unwrap())]) };
    let health = server.url("http", "/health");
    wait_until(Duration::from_secs(10), || (get(&health).status == 200).then_some(())).expect("never healthy");
    server
}

#[test]
fn a_stop_waiting_for_a_stalled_disk_shows_stopping_and_a_start_meanwhile_is_409() {
    if !have_tool("ffprobe") || !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(shim) = build_shim(dir.path()) else { return };
    let shm = unique_shm("stopping");
    let _camera = fake_camera(&shm, &["-file", demo_clip().to_str().unwrap()]);
    let gate = dir.path().join("stall");
    let server = gated_server(&shim, dir.path(), &shm, &gate);
    let first = post(&server.url("http", "/start"), b"");
    assert_eq!(first.status, 200, "{}", first.text());
    let first_name = first.json()["status"]["filename"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));

    std::fs::write(&gate, b"").unwrap();
    let stop_url = server.url("http", "/stop");
    let stopping = std::thread::spawn(move || {
        let asked = Instant::now();
        let answer = post(&stop_url, b"");
        (answer.status, answer.text(), asked.elapsed())
    });
    let status_url = server.url("http", "/status");
    let shown = wait_until(Duration::from_secs(5), || {
        let status = get(&status_url).json();
        (status["stopping"] == true).then_some(status)
    })
    .expect("the status never said stopping");
    assert_eq!(shown["recording"], true, "{shown}");
    let refused = post(&server.url("http", "/start"), b"");
    refused.assert_json_error(409);
    assert!(refused.json()["error"].as_str().unwrap().contains("still being written"), "{}", refused.text());
    assert_eq!(post(&server.url("http", "/stop"), b"").status, 409, "a second stop while stopping");
    let health = get(&server.url("http", "/health"));
    assert_eq!(health.status, 200, "{}", health.text());
    std::thread::sleep(Duration::from_millis(500));

    std::fs::remove_file(&gate).unwrap();
    let (code, text, took) = stopping.join().unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(took > Duration::from_millis(500), "the stop did wait for the disk: {took:?}");
    let after = get(&status_url).json();
    assert_eq!((after["recording"].as_bool(), after.get("stopping")), (Some(false), None), "{after}");

    // The next recording owns its own status.
    let second = post(&server.url("http", "/start"), b"");
    assert_eq!(second.status, 200, "{}", second.text());
    std::thread::sleep(Duration::from_millis(1200));
    let status = get(&status_url).json();
    assert_eq!(status["recording"], true, "{status}");
    assert_ne!(status["filename"].as_str().unwrap(), first_name);
    assert!(status["frame_count"].as_u64().unwrap() > 0, "{status}");
    let stopped = post(&server.url("http", "/stop"), b"");
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    for name in [first_name.as_str(), stopped.json()["status"]["filename"].as_str().unwrap()] {
        let path = dir.path().join("rec").join(name);
        assert!(ffmpeg_errors(&path).is_empty(), "{name} does not decode cleanly");
    }
}

#[test]
fn sigterm_with_a_stalled_disk_exits_within_two_seconds_and_the_file_keeps_what_was_written() {
    if !have_tool("ffprobe") || !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(shim) = build_shim(dir.path()) else { return };
    let shm = unique_shm("stallexit");
    let _camera = fake_camera(&shm, &["-file", demo_clip().to_str().unwrap()]);
    let gate = dir.path().join("stall");
    let mut server = gated_server(&shim, dir.path(), &shm, &gate);
    let started = post(&server.url("http", "/start"), b"");
    assert_eq!(started.status, 200, "{}", started.text());
    let name = started.json()["status"]["filename"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&gate, b"").unwrap();
    std::thread::sleep(Duration::from_millis(1200));

    let asked = Instant::now();
    server.proc.signal(libc::SIGTERM);
    let exit = server.proc.wait_exit(Duration::from_secs(5));
    let took = asked.elapsed();
    std::fs::remove_file(&gate).unwrap();
    let log = server.proc.log();
    assert!(exit.is_some(), "no exit within 5 s of SIGTERM:\n{log}");
    assert!(took < Duration::from_secs(2), "exit took {took:?}:\n{log}");
    assert!(log.contains("not closed within"), "the log says the file was left as written:\n{log}");
    let path = dir.path().join("rec").join(&name);
    let (frames, first_key) = ffprobe_frames(&path);
    assert!(frames > 20 && first_key, "{frames} frames");
    assert!(ffmpeg_errors(&path).is_empty(), "what was written decodes");
    eprintln!("SIGTERM with a stalled disk: exit in {took:?}, {frames} frames kept");
}

#[test]
fn a_stalled_disk_under_a_1080p_stream_keeps_memory_bounded() {
    if !have_tool("ffprobe") || !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(shim) = build_shim(dir.path()) else { return };
    // 1080p30 at ~6 Mbit/s with an IDR every second, like the benchmarks.
    let clip = dir.path().join("1080p.h264");
    let made = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30:duration=4"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-sc_threshold", "0"])
        .args(["-b:v", "6M", "-maxrate", "6M", "-bufsize", "2M", "-pix_fmt", "yuv420p", "-x264-params", "aud=1"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(made.success());
    let shm = unique_shm("stallrss");
    let _camera = fake_camera(&shm, &["-file", clip.to_str().unwrap()]);
    let gate = dir.path().join("stall");
    let server = gated_server(&shim, dir.path(), &shm, &gate);
    let pid = server.proc.child.id();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    };
    std::thread::sleep(Duration::from_secs(2));
    let before = rss().unwrap();
    assert_eq!(post(&server.url("http", "/start"), b"").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&gate, b"").unwrap();
    // 15 s of stall: ~11 MB of video arrives, more than the 8 MB budget.
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        peak = peak.max(rss().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    let dropped = get(&server.url("http", "/status")).json()["frames_dropped"].as_u64().unwrap();
    std::fs::remove_file(&gate).unwrap();
    let stopped = post(&server.url("http", "/stop"), b"");
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    eprintln!("1080p with a stalled disk for 15 s: RSS {before} KiB before, peak {peak} KiB, {dropped} frames dropped");
    assert!(dropped > 0, "the budget was never reached");
    // The recorder's 8 MiB budget, a GOP in the cache, slack for the heap.
    assert!(peak < before + 16 * 1024, "RSS grew by {} KiB", peak - before);
}
