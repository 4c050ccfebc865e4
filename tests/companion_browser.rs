//! The Flask companion's page in headless Chromium (tests/browser/
//! companion.mjs), with real Flask, the real streamer and the fake camera:
//! the live view plays over WebRTC negotiated straight with the streamer
//! from the companion's origin (CORS), and the Record/Stop buttons drive a
//! real recording through the companion's proxy routes.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::in_ci;

#[test]
fn the_companion_page_plays_live_and_records() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium =
        PathBuf::from(std::env::var("STREAMING_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let python = std::env::var_os("STREAMING_TEST_PYTHON").map(PathBuf::from);
    let missing: Vec<&str> = [
        (chromium.exists(), "chromium"),
        (Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()), "node"),
        (browser_dir.join("node_modules/playwright-core").exists(), "playwright-core"),
        (python.is_some(), "STREAMING_TEST_PYTHON (Flask venv)"),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        assert!(!in_ci(), "missing in CI: {missing:?} (scripts/test.sh installs them)");
        eprintln!("SKIPPED the companion browser test: missing {missing:?}");
        return;
    }

    // The companion's socket first, so the streamer can name its origin
    // for CORS; the companion then serves on this very socket (no race for
    // the port).
    let companion_socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", companion_socket.local_addr().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let recordings = dir.path().join("recordings");
    let shm = common::unique_shm("companion_browser");
    let _camera = common::fake_camera(&shm, &[]);
    let server = common::Server::start(
        &[
            "-shm",
            &shm,
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "",
            "-pprof",
            "",
            "-webrtc-ip",
            "127.0.0.1",
            "-cors-origin",
            &origin,
            "-record-path",
            recordings.to_str().unwrap(),
        ],
        &["http"],
    );
    let streamer = server.url("http", "");

    let fd = companion_socket.as_raw_fd();
    let mut command = Command::new(python.unwrap());
    command
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/companion/app.py"))
        .args(["--host", "127.0.0.1", "--port", "0", "--fd", "3"])
        .env("STREAMER_URL", &streamer)
        .env("STREAMER_PUBLIC_URL", &streamer)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: dup2 and fcntl are async-signal-safe; the child gets the
    // listening socket as fd 3 without close-on-exec (dup2 onto itself
    // would keep the flag, hence the fcntl).
    unsafe {
        command.pre_exec(move || {
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) == 0 } else { libc::dup2(fd, 3) == 3 };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut companion = command.spawn().expect("start the companion");
    let stderr = BufReader::new(companion.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = rx.recv_timeout(Duration::from_secs(20)).expect("companion output");
    assert!(started.starts_with("listening: companion on "), "{started}");

    let output = Command::new("node")
        .current_dir(&browser_dir)
        .env("STREAMING_TEST_CHROMIUM", &chromium)
        .args(["companion.mjs", &format!("{origin}/")])
        .output()
        .expect("run node");
    let _ = companion.kill();
    let _ = companion.wait();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log: Vec<String> = rx.try_iter().collect();
    assert!(
        output.status.success(),
        "companion.mjs failed:\n{stdout}\n{}\ncompanion log:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        log.join("\n"),
        server.proc.log()
    );
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("browser: {line}");
    let seen: serde_json::Value = serde_json::from_str(line).expect("one JSON line from companion.mjs");

    assert_eq!(seen["live"], "connected", "{seen}");
    assert!(seen["framesIn2s"].as_u64().unwrap() >= 30, "the live view does not play: {seen}");
    assert_eq!(seen["idleBefore"], "idle");
    let recording = seen["recordingText"].as_str().unwrap();
    assert!(recording.starts_with("recording recording_") && recording.contains(".h264"), "{recording}");
    assert_eq!(seen["stopEnabledWhileRecording"], true);
    assert_eq!(seen["idleAfter"], "idle", "{seen}");
    assert_eq!(seen["errorText"], "", "{seen}");
    assert_eq!(seen["consoleErrors"].as_array().unwrap().len(), 0, "{seen}");

    // The recording, without its hidden capture-time sidecar.
    let files: Vec<_> = std::fs::read_dir(&recordings)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 10_000, "recording too small: {files:?}");
}
