//! The README's first command: `streaming-server -demo` runs on its built-in
//! fake camera, with no other process, and serves frames; SIGTERM ends it
//! within a second and removes the demo segment.

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
}
