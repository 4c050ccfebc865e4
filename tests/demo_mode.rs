//! The README's first command: `streaming-server -demo` runs on its built-in
//! fake camera, with no other process, and serves frames; SIGTERM ends it
//! within a second and removes the demo segment. Start-up faults a new user
//! meets: a port in use (the error names the flag, no segment is left), and
//! a media thread that dies (`/health` says so at once, the process exits
//! non-zero for systemd to restart it).

mod common;
mod control_support;

use std::time::{Duration, Instant};

use common::Server;
use control_support::{get, wait_until};

#[test]
fn demo_mode_streams_the_built_in_clip_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        &["-demo", "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-record-path", dir.path().to_str().unwrap()],
        &["http"],
    );
    let url = server.url("http", "/health");
    let health = wait_until(Duration::from_secs(15), || {
        let answer = get(&url);
        let json = answer.json();
        (answer.status == 200 && json["has_headers"] == true && json["fps"].as_f64().unwrap_or(0.0) > 20.0)
            .then_some(json)
    })
    .unwrap_or_else(|| panic!("demo never healthy:\n{}", server.proc.log()));
    assert_eq!((health["width"].as_i64(), health["height"].as_i64()), (Some(640), Some(360)), "{health}");
    assert_eq!(get(&server.url("http", "/")).status, 200, "the viewer page is served");

    let segment = format!("/dev/shm/streaming_server_demo_{}", server.proc.child.id());
    assert!(std::path::Path::new(&segment).exists(), "the demo camera writes a real segment at {segment}");
    let asked = Instant::now();
    server.proc.signal(libc::SIGTERM);
    let status = server.proc.wait_exit(Duration::from_secs(5)).expect("exits after SIGTERM");
    let took = asked.elapsed();
    assert!(status.success(), "clean exit: {status:?}\n{}", server.proc.log());
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    assert!(!std::path::Path::new(&segment).exists(), "the demo segment is removed on exit");
    let log = server.proc.log();
    assert!(!log.contains("waiting ("), "no alarming 'waiting for the camera' line at a normal start:\n{log}");
}

#[test]
fn a_port_in_use_names_the_flag_and_leaves_no_segment_behind() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for (flag, value) in [("-http", format!("127.0.0.1:{port}")), ("-metrics", format!("127.0.0.1:{port}"))] {
        let mut args = vec![
            "-demo",
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "",
            "-pprof",
            "",
            "-record-path",
            dir.path().to_str().unwrap(),
        ];
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1] = &value;
        let mut proc = common::Proc::spawn(&args, &[]);
        let status = proc.wait_exit(Duration::from_secs(10)).expect("exits at once");
        let log = proc.log();
        assert!(!status.success(), "{log}");
        assert!(log.contains(&format!("{flag} {value} is in use")), "{log}");
        assert!(log.contains(&format!("pass {flag} :PORT")), "{log}");
        let segment = format!("/dev/shm/streaming_server_demo_{}", proc.child.id());
        assert!(!std::path::Path::new(&segment).exists(), "a failed start left {segment}");
    }
}

#[test]
fn a_dead_media_thread_fails_health_at_once_and_the_process_exits_non_zero() {
    if !cfg!(debug_assertions) {
        return; // the fault hook exists in debug builds only
    }
    let dir = tempfile::tempdir().unwrap();
    let args =
        ["-demo", "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-record-path", dir.path().to_str().unwrap()];
    let proc = common::Proc::spawn(&args, &[("STREAMING_SERVER_FAULT", "media_panic_after_frames:45")]);
    let needle = "listening: http on ";
    let line = proc.wait_for_line(needle, Duration::from_secs(15)).unwrap_or_else(|| panic!("{}", proc.log()));
    let addr = line[line.find(needle).unwrap() + needle.len()..].split_whitespace().next().unwrap().to_string();
    let mut server = Server { proc, addrs: std::collections::HashMap::from([("http".into(), addr.parse().unwrap())]) };
    let url = server.url("http", "/health");
    // Healthy first, then the injected panic after 45 frames (~1.5 s).
    wait_until(Duration::from_secs(10), || (get(&url).status == 200).then_some(())).expect("never healthy");
    let dead = wait_until(Duration::from_secs(10), || {
        let answer = control_support::try_get(&url)?;
        (answer.status == 503).then(|| answer.json())
    })
    .expect("/health never reported the dead media thread");
    assert_eq!(dead["status"], "media_thread_died", "{dead}");
    assert!(dead["error"].as_str().unwrap().contains("injected fault"), "{dead}");
    let status = server.proc.wait_exit(Duration::from_secs(5)).expect("the process exits by itself");
    assert!(!status.success(), "exit status must tell systemd to restart: {status:?}");
    assert!(server.proc.log().contains("media thread died"), "{}", server.proc.log());
}

#[test]
fn a_demo_ring_left_by_a_killed_server_is_removed_and_a_running_ones_is_kept() {
    // A pid that no longer runs: a child that has been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("/dev/shm/streaming_server_demo_{dead}_left_behind");
    // This test process runs: its segment belongs to a live server.
    let live = format!("/dev/shm/streaming_server_demo_{}_still_running", std::process::id());
    for path in [&stale, &live] {
        std::fs::write(path, b"not a ring").unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &["-demo", "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-record-path", dir.path().to_str().unwrap()],
        &["http"],
    );
    let url = server.url("http", "/health");
    wait_until(Duration::from_secs(15), || (get(&url).json()["has_headers"] == true).then_some(()))
        .unwrap_or_else(|| panic!("demo never healthy:\n{}", server.proc.log()));
    let stale_left = std::path::Path::new(&stale).exists();
    let live_left = std::path::Path::new(&live).exists();
    let _ = std::fs::remove_file(&stale);
    let _ = std::fs::remove_file(&live);
    assert!(!stale_left, "{stale} (its process is gone) must be removed:\n{}", server.proc.log());
    // Which server removed it is not checked: the other tests here run
    // demo servers at the same time, and any of them may be first.
    assert!(live_left, "{live} (its process runs) must be kept");
}
