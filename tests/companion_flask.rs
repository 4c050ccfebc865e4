//! The Flask companion (scripts/companion/app.py) run by real Python and
//! Flask ($STREAMING_TEST_PYTHON, set up by scripts/test.sh) against the
//! real streamer and fake camera: recording control passes through with
//! the streamer's own status codes and JSON, a streamer that is down gives
//! 502 and one that does not answer gives 504, quickly and as JSON.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fake_camera, unique_shm, Server};
use serde_json::Value;

/// The venv's Python with Flask, or None (skip) outside CI.
fn python() -> Option<PathBuf> {
    match std::env::var_os("STREAMING_TEST_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("STREAMING_TEST_PYTHON is not set (scripts/test.sh sets it to the Flask venv)")
        }
        None => {
            eprintln!(
                "SKIPPED companion tests: set STREAMING_TEST_PYTHON to a Python with Flask (scripts/test.sh does)"
            );
            None
        }
    }
}

/// A running companion app; killed on drop.
struct Companion {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Companion {
    fn start(python: &PathBuf, streamer_url: &str, timeout_secs: &str) -> Companion {
        Companion::start_with(python, streamer_url, timeout_secs, &[])
    }

    fn start_with(python: &PathBuf, streamer_url: &str, timeout_secs: &str, envs: &[(&str, &str)]) -> Companion {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/companion/app.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .env("STREAMER_URL", streamer_url)
            .env("STREAMER_PUBLIC_URL", "http://camera.test:8081")
            .env("STREAMER_TIMEOUT", timeout_secs)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the companion");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening: companion on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            panic!("companion did not start:\n{}", log.lock().unwrap().join("\n"));
        });
        Companion { child, addr: addr.parse().unwrap(), log }
    }
}

impl Drop for Companion {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange: (status, content type, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    http_body(addr, method, path, "")
}

fn http_body(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim()))
        .unwrap_or("")
        .to_string();
    (status, content_type, body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

fn streamer(dir: &std::path::Path) -> (common::Proc, Server) {
    streamer_with(dir, &[])
}

fn streamer_with(dir: &std::path::Path, extra: &[&str]) -> (common::Proc, Server) {
    let shm = unique_shm("companion");
    let camera = fake_camera(&shm, &[]);
    let recordings = dir.join("recordings");
    let mut args = vec![
        "-shm",
        &shm,
        "-http",
        "127.0.0.1:0",
        "-metrics",
        "",
        "-pprof",
        "",
        "-record-path",
        recordings.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args, &["http"]);
    (camera, server)
}

#[test]
fn recording_control_passes_the_streamer_answers_through() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_camera, server) = streamer(dir.path());
    let direct = server.addrs["http"];
    let companion = Companion::start(&python, &format!("http://{direct}"), "10");
    let via = companion.addr;

    // Idle status: the same object either way.
    let (code, content_type, body) = http(via, "GET", "/api/recording/status");
    assert_eq!(code, 200, "{body}");
    assert!(content_type.starts_with("application/json"), "{content_type}");
    assert_eq!(json(&body), json(&http(direct, "GET", "/status").2));
    assert_eq!(json(&body)["recording"], false);

    let (code, _, body) = http(via, "POST", "/api/recording/start");
    assert_eq!(code, 200, "{body}");
    let started = json(&body);
    assert_eq!(started["success"], true);
    assert_eq!(started["status"]["recording"], true);

    // 409 stays 409, with the streamer's own body.
    let (code, content_type, body) = http(via, "POST", "/api/recording/start");
    assert_eq!(code, 409, "{body}");
    assert!(content_type.starts_with("application/json"));
    let (direct_code, _, direct_body) = http(direct, "POST", "/start");
    assert_eq!((code, json(&body)), (direct_code, json(&direct_body)));

    std::thread::sleep(Duration::from_millis(1500));
    let (code, _, body) = http(via, "GET", "/api/recording/status");
    assert_eq!(code, 200);
    let status = json(&body);
    assert_eq!(status["recording"], true);
    assert!(status["frame_count"].as_u64().unwrap() > 0, "{status}");

    let (code, _, body) = http(via, "POST", "/api/recording/stop");
    assert_eq!(code, 200, "{body}");
    let stopped = json(&body);
    assert_eq!(stopped["success"], true);
    assert_eq!(stopped["status"]["recording"], false);
    let file = dir.path().join("recordings").join(stopped["status"]["filename"].as_str().unwrap());
    let size = std::fs::metadata(&file).expect("the recording exists").len();
    assert_eq!(size, stopped["status"]["bytes_written"].as_u64().unwrap());

    let (code, _, body) = http(via, "POST", "/api/recording/stop");
    assert_eq!(code, 409, "stop while idle: {body}");
    assert_eq!(json(&body), json(&http(direct, "POST", "/stop").2));

    // Methods are the streamer's: GET on a POST route is refused.
    assert_eq!(http(via, "GET", "/api/recording/start").0, 405);
    drop(companion);
}

#[test]
fn streamer_down_is_a_quick_502() {
    let Some(python) = python() else { return };
    // A port nobody listens on: bind, note it, close it.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let companion = Companion::start(&python, &format!("http://{closed}"), "5");
    for (method, route) in [("POST", "start"), ("POST", "stop"), ("GET", "status")] {
        let started = Instant::now();
        let (code, content_type, body) = http(companion.addr, method, &format!("/api/recording/{route}"));
        assert_eq!(code, 502, "{route}: {body}");
        assert!(content_type.starts_with("application/json"));
        let answer = json(&body);
        assert_eq!(answer["success"], false);
        assert!(answer["error"].as_str().unwrap().contains("unreachable"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(3), "{route} took {:?}", started.elapsed());
    }
}

#[test]
fn a_streamer_that_does_not_answer_is_a_504_within_the_timeout() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_camera, server) = streamer(dir.path());
    let companion = Companion::start(&python, &format!("http://{}", server.addrs["http"]), "1");
    assert_eq!(http(companion.addr, "GET", "/api/recording/status").0, 200);

    // Freeze the whole streamer: the kernel still accepts connections, but
    // nothing answers them.
    server.proc.signal(libc::SIGSTOP);
    let started = Instant::now();
    let (code, content_type, body) = http(companion.addr, "POST", "/api/recording/start");
    let took = started.elapsed();
    server.proc.signal(libc::SIGCONT);
    assert_eq!(code, 504, "{body}\n{}", companion.log.lock().unwrap().join("\n"));
    assert!(content_type.starts_with("application/json"));
    assert_eq!(json(&body)["success"], false);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "took {took:?}");

    // Thawed, the same companion works again. (The start sent while frozen
    // may have been taken by the streamer once it thawed: either answer is
    // a faithful pass-through.)
    let (code, _, body) = http(companion.addr, "GET", "/api/recording/status");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn the_page_embeds_the_live_view_with_record_controls() {
    let Some(python) = python() else { return };
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let companion = Companion::start(&python, &format!("http://{closed}"), "5");
    let (code, content_type, body) = http(companion.addr, "GET", "/");
    assert_eq!(code, 200);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    for needle in ["id=\"video\"", "id=\"record\"", "id=\"stop\"", "\"http://camera.test:8081\"", "/offer"] {
        assert!(body.contains(needle), "page lacks {needle}");
    }
}

#[test]
fn a_streamer_token_is_added_by_the_companion_and_never_needed_by_the_page() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let (_camera, server) = streamer_with(dir.path(), &["-auth-token-file", token_file.to_str().unwrap()]);
    let direct = server.addrs["http"];
    let url = format!("http://{direct}");

    // Without the token the streamer's refusal passes through unchanged.
    let plain = Companion::start(&python, &url, "10");
    let (code, _, body) = http(plain.addr, "POST", "/api/recording/start");
    let (direct_code, _, direct_body) = http(direct, "POST", "/start");
    assert!(code == 401 || code == 403, "{code} {body}");
    assert_eq!((code, json(&body)), (direct_code, json(&direct_body)));

    let with_token =
        Companion::start_with(&python, &url, "10", &[("STREAMER_TOKEN_FILE", token_file.to_str().unwrap())]);
    let (code, _, body) = http(with_token.addr, "POST", "/api/recording/start");
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = http(with_token.addr, "POST", "/api/recording/stop");
    assert_eq!(code, 200, "{body}");

    // The page then signals through the companion, and the token is not in it.
    let page = http(with_token.addr, "GET", "/").2;
    assert!(page.contains("true ? \"/api/offer\""), "page does not signal via the companion");
    assert!(!page.contains("s3cret"), "the token leaked into the page");
    // /api/offer forwards the body: a malformed offer gets the streamer's 400.
    let (code, _, body) = http_body(with_token.addr, "POST", "/api/offer", "{not json");
    assert_eq!(code, 400, "{body}");
    assert_eq!(json(&body)["success"], false);
}
