//! The operator scripts, run for real: deploy.sh's dry run (what it would
//! do over ssh, and that it refuses a PC binary), flamegraph.sh against the
//! server's pprof listener, and demo.sh bringing up camera, streamer and
//! Flask companion and tearing them down on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fake_camera, unique_shm, Server};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[test]
fn deploy_dry_run_prints_the_ssh_steps_and_runs_none() {
    // Anything actually run would fail: ssh and scp are /bin/false here.
    let out = Command::new("bash")
        .arg(script("deploy.sh"))
        .args(["--dry-run", "--binary"])
        .arg(common::bin())
        .arg("pi@camera.test")
        .env("SSH", "/bin/false")
        .env("SCP", "/bin/false")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let bin = common::bin().display().to_string();
    for line in [
        format!("/bin/false {bin} pi@camera.test:/tmp/streaming-server.new"),
        "/bin/false systemd/streaming-server.service pi@camera.test:/tmp/streaming-server.service.new".to_string(),
        "/bin/false pi@camera.test 'sudo sh -s' <<'EOF'".to_string(),
        "install -m 0755 /tmp/streaming-server.new /usr/local/bin/streaming-server".to_string(),
        "install -m 0644 /tmp/streaming-server.service.new /etc/systemd/system/streaming-server.service".to_string(),
        "systemctl daemon-reload".to_string(),
        "systemctl restart streaming-server.service".to_string(),
        "EOF".to_string(),
    ] {
        assert!(stdout.lines().any(|l| l == line), "missing {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("useradd --system"), "{stdout}");
    // The host binary is x86-64: a dry run warns, a real run refuses.
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an ARM binary"));
    let real = Command::new("bash")
        .arg(script("deploy.sh"))
        .arg("--binary")
        .arg(common::bin())
        .arg("pi@camera.test")
        .env("SSH", "/bin/false")
        .env("SCP", "/bin/false")
        .output()
        .unwrap();
    assert!(!real.status.success());
    assert!(String::from_utf8_lossy(&real.stderr).contains("refusing to deploy"), "{real:?}");
}

#[test]
fn deploy_without_a_built_binary_says_how_to_build_it() {
    let out = Command::new("bash")
        .arg(script("deploy.sh"))
        .args(["--dry-run", "--binary", "/nonexistent/streaming-server", "pi@camera.test"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cross-build.sh"), "{out:?}");
}

#[test]
fn flamegraph_script_saves_an_svg_from_the_pprof_listener() {
    let shm = unique_shm("flame");
    let _camera = fake_camera(&shm, &[]);
    let server =
        Server::start(&["-shm", &shm, "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "127.0.0.1:0"], &["pprof"]);
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("cpu.svg");
    let out = Command::new("bash")
        .arg(script("flamegraph.sh"))
        .arg(server.addrs["pprof"].to_string())
        .arg("1")
        .arg("-o")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), svg.display().to_string());
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("<svg") && text.trim_end().ends_with("</svg>"),
        "not an SVG: {}",
        &text[..200.min(text.len())]
    );
    assert!(!dir.path().join("cpu.svg.part").exists());

    // Nothing listening: a clear failure, not a hang or an empty file.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(script("flamegraph.sh"))
        .arg(closed.to_string())
        .args(["1", "-o"])
        .arg(dir.path().join("none.svg"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!dir.path().join("none.svg").exists());
}

#[test]
fn demo_script_runs_camera_streamer_and_companion_and_stops_them() {
    let python = match std::env::var_os("STREAMING_TEST_PYTHON") {
        Some(p) => p,
        None if std::env::var("CI").as_deref() == Ok("true") => panic!("STREAMING_TEST_PYTHON is not set"),
        None => return eprintln!("SKIPPED demo test: STREAMING_TEST_PYTHON is not set"),
    };
    let mut demo = Command::new("bash")
        .arg(script("demo.sh"))
        .args(["--no-build", "--companion", "--companion-port", "0"])
        .args(["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--pprof", ""])
        .env("STREAMING_SERVER_BIN", common::bin())
        .env("STREAMING_TEST_PYTHON", python)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut urls = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while urls.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some((name, url)) = line.split_once(": ") {
                let addr = url.trim().trim_start_matches("http://").split('/').next().unwrap().to_string();
                urls.insert(name.trim().to_string(), addr.parse::<SocketAddr>().unwrap());
            }
        }
    }
    let result = std::panic::catch_unwind(|| {
        let viewer = urls["viewer"];
        // Frames flow from the fake camera process through the streamer.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut health = (0, String::new());
        while Instant::now() < deadline {
            health = http_get(viewer, "/health");
            if health.0 == 200 && health.1.contains("\"has_headers\":true") {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(health.0, 200, "{}", health.1);
        assert!(http_get(viewer, "/").1.contains("id=\"grid\""), "the dashboard");
        assert!(http_get(viewer, "/cam/").1.contains("<video"), "the camera's viewer page");
        let (code, body) = http_get(urls["companion"], "/api/recording/status");
        assert_eq!((code, body.contains("\"recording\":false")), (200, true), "{body}");
        let (code, body) = http_get(urls["metrics"], "/metrics");
        assert_eq!(code, 200);
        assert!(body.contains("streaming_frames_read_total"));
    });
    // SIGTERM to the script stops everything it started.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(demo.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while demo.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let exited = demo.try_wait().unwrap();
    if exited.is_none() {
        let _ = demo.kill();
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(exited.is_some(), "demo.sh did not stop on SIGTERM");
    for name in ["viewer", "companion"] {
        assert!(TcpStream::connect_timeout(&urls[name], Duration::from_secs(1)).is_err(), "{name} still listening");
    }
}
