//! The control plane over real HTTP against the real binary and a fake
//! camera: every route's status codes, hostile input, stalled clients,
//! CORS, auth, WebRTC signaling with a real peer, and shutdown with a
//! viewer connected.

mod common;
mod control_support;
mod webrtc_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{demo_clip, fake_camera, unique_shm, Proc, Server};
use control_support::*;
use serde_json::json;

fn start_server(shm: &str, dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["-shm", shm, "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-webrtc-ip", "127.0.0.1"];
    args.extend_from_slice(&["-record-path", dir.to_str().unwrap()]);
    args.extend_from_slice(extra);
    Server::start(&args, &["http"])
}

fn camera(tag: &str) -> (String, Proc) {
    let shm = unique_shm(tag);
    let proc = fake_camera(&shm, &["-file", demo_clip().to_str().unwrap()]);
    (shm, proc)
}

fn wait_healthy(server: &Server) {
    let url = server.url("http", "/health");
    wait_until(Duration::from_secs(10), || (get(&url).status == 200).then_some(()))
        .unwrap_or_else(|| panic!("never healthy:\n{}", server.proc.log()));
}

#[test]
fn every_route_answers_bad_input_with_the_right_status_and_a_json_error() {
    let (shm, _camera) = camera("bad");
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&shm, dir.path(), &[]);
    wait_healthy(&server);
    let url = |path: &str| server.url("http", path);
    let addr = server.addrs["http"];

    // A recording runs through all of it and must come out whole.
    assert_eq!(post(&url("/start"), b"").status, 200);

    // Wrong methods: 405 with Allow, JSON error.
    for (method, path, allow) in [
        ("GET", "/offer", "POST"),
        ("PUT", "/offer", "POST"),
        ("GET", "/start", "POST"),
        ("DELETE", "/stop", "POST"),
        ("POST", "/status", "GET"),
        ("POST", "/health", "GET"),
        ("POST", "/", "GET"),
        ("GET", "/whep", "POST"),
        ("POST", "/whep/abc", "DELETE"),
    ] {
        let answer = call(method, &url(path), &[], if method == "GET" { None } else { Some(b"") });
        answer.assert_json_error(405);
        assert!(answer.header("allow").unwrap().contains(allow), "{method} {path}: {:?}", answer.headers);
    }

    // Unknown and odd paths, sent as they are (an HTTP client library would
    // normalise some): 404, nothing read from disk.
    get(&url("/nope")).assert_json_error(404);
    let long = format!("/{}", "a".repeat(4000));
    for path in [
        "/status/",
        "//status",
        "/%2e%2e/status",
        "/%73tatus",
        "/whep/",
        "/whep/a.b",
        long.as_str(),
        "/../status",
        "/../../../etc/passwd",
        "/./status",
        "status",
        "*",
    ] {
        let (status, text) = raw(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        assert_eq!(status, 404, "{path}: {text}");
        assert!(text.contains("application/json") && !text.contains("[package]"), "{text}");
    }
    // Under /recordings/ a name that is not a recording's is a bad request
    // (tests/recordings_e2e.rs has the rest of the traversal attempts).
    let (status, text) = raw(
        addr,
        b"GET /recordings/../Cargo.toml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("application/json") && !text.contains("[package]"), "{text}");
    // A request line over the limit is refused without buffering it all.
    let huge = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000));
    assert_eq!(raw(addr, huge.as_bytes(), Duration::from_secs(5)).0, 431);

    // /offer: malformed JSON, wrong shapes, empty, wrong type, bad SDP.
    let offer = url("/offer");
    for body in [&b"{"[..], b"not json", b"", b"[]", b"{\"type\":\"offer\"}", b"{\"sdp\":\"v=0\"}", b"\xff\xfe"] {
        post(&offer, body).assert_json_error(400);
    }
    post(&offer, json!({"type": "answer", "sdp": "v=0"}).to_string().as_bytes()).assert_json_error(400);
    post(&offer, json!({"type": "offer", "sdp": ""}).to_string().as_bytes()).assert_json_error(400);
    post(&offer, json!({"type": "offer", "sdp": "garbage\r\nnot sdp"}).to_string().as_bytes()).assert_json_error(400);

    // Bodies over the limit: 413, whether sent or only announced.
    post(&offer, &vec![b'x'; 200_000]).assert_json_error(413);
    post(&url("/start"), &vec![b'x'; 100_000]).assert_json_error(413);
    for length in ["30000000000", "18446744073709551615"] {
        let request = format!(
            "POST /offer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n{{\"type\""
        );
        let (status, text) = raw(addr, request.as_bytes(), Duration::from_secs(5));
        assert_eq!(status, 413, "{text}");
    }
    // Chunked, over the limit.
    let mut chunked =
        b"POST /offer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 8000, "y".repeat(8000)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(addr, &chunked, Duration::from_secs(5)).0, 413);
    // Chunk sizes that overflow or lie.
    for size in ["FFFFFFFFFFFFFFFFFFFFFFFF", "zz", "7fffffffffffffff"] {
        let request = format!(
            "POST /offer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{size}\r\n{}",
            "a".repeat(70_000)
        );
        let (status, text) = raw(addr, request.as_bytes(), Duration::from_secs(5));
        assert!([400, 408, 413].contains(&status), "chunk size {size}: {text}");
    }

    // WHEP: wrong content type, empty, unknown session.
    call("POST", &url("/whep"), &[("Content-Type", "application/json")], Some(b"{}")).assert_json_error(415);
    call("POST", &url("/whep"), &[("Content-Type", "application/sdp")], Some(b"")).assert_json_error(400);
    call("POST", &url("/whep"), &[("Content-Type", "application/sdp")], Some(b"garbage")).assert_json_error(400);
    call("DELETE", &url("/whep/no-such-session"), &[], None).assert_json_error(404);

    // Garbage on the wire.
    for junk in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"HELLO / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let (status, _) = raw(addr, junk, Duration::from_secs(5));
        assert!(status == 0 || (400..600).contains(&status), "{junk:?} -> {status}");
    }

    // Still fine: the process, the camera, the recording.
    let health = get(&url("/health"));
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["recording"], true);
    let index = get(&url("/"));
    assert_eq!(index.status, 200);
    assert!(index.header("content-type").unwrap().starts_with("text/html"));
    let stopped = post(&url("/stop"), b"");
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    let status = stopped.json()["status"].clone();
    assert!(status["frame_count"].as_u64().unwrap() > 0);
    assert_eq!(status["frames_dropped"], 0);
    let path = dir.path().join(status["filename"].as_str().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, status["bytes_written"].as_u64().unwrap());
    let clip = std::fs::read(demo_clip()).unwrap();
    assert_eq!(assert_run_of_clip(&bytes, &clip), status["frame_count"].as_u64().unwrap());
    assert!(!server.proc.log().contains("panicked"), "{}", server.proc.log());
}

#[test]
fn stalled_and_trickling_clients_are_cut_off_and_cannot_tie_up_the_server() {
    let (shm, _camera) = camera("stall");
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&shm, dir.path(), &["-http-timeout-ms", "1000"]);
    wait_healthy(&server);
    let addr = server.addrs["http"];

    // Headers that never finish, and a body that never comes.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut no_body = TcpStream::connect(addr).unwrap();
    no_body.write_all(b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{").unwrap();
    // Many idle connections at once (more than the cap).
    let idle: Vec<TcpStream> = (0..80).filter_map(|_| TcpStream::connect(addr).ok()).collect();

    // Headers trickling in a byte at a time, each byte well inside the read
    // timeout: the header deadline still cuts it off.
    let trickle = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        for byte in b"GET /status HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if stream.write_all(&[*byte]).is_err() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("a trickle of {:?} was never cut off", started.elapsed());
    });

    // The server answers everyone else within the timeout, while all that sits there.
    let healthy = wait_until(Duration::from_secs(5), || {
        try_get(&server.url("http", "/health")).filter(|a| a.status == 200).map(|_| ())
    });
    assert!(healthy.is_some(), "the control plane was tied up");

    // The stalled ones are closed (408 or a plain close), not held forever.
    for mut stream in [stalled, no_body] {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let result = stream.read_to_end(&mut out);
        assert!(result.is_ok(), "not closed within 5 s: {result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = String::from_utf8_lossy(&out);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408") || text.contains("408"), "{text}");
    }
    let cut_after = trickle.join().unwrap();
    assert!(cut_after < Duration::from_secs(4), "trickle cut only after {cut_after:?}");
    drop(idle);
    assert_eq!(get(&server.url("http", "/status")).status, 200);
}

#[test]
fn concurrent_starts_make_exactly_one_recording() {
    let (shm, _camera) = camera("race");
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&shm, dir.path(), &[]);
    wait_healthy(&server);
    let start = server.url("http", "/start");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let answers: Vec<u16> = (0..8)
        .map(|_| {
            let (start, barrier) = (start.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let answer = post(&start, b"");
                if answer.status != 200 {
                    answer.assert_json_error(409);
                }
                answer.status
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(answers.iter().filter(|&&s| s == 200).count(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|&&s| s == 409).count(), 7, "{answers:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(post(&server.url("http", "/stop"), b"").status, 200);
    post(&server.url("http", "/stop"), b"").assert_json_error(409);
    assert_eq!(recording_files(dir.path()).len(), 1);
}

#[test]
fn cors_preflight_and_headers_follow_the_configured_origins() {
    let (shm, _camera) = camera("cors");
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&shm, dir.path(), &["-cors-origin", "http://board:8080,http://other:1"]);
    let url = server.url("http", "/offer");
    let preflight = |origin: &str| {
        call(
            "OPTIONS",
            &url,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            None,
        )
    };
    let ok = preflight("http://board:8080");
    assert_eq!(ok.status, 204);
    assert_eq!(ok.header("access-control-allow-origin"), Some("http://board:8080"));
    assert!(ok.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(ok.header("access-control-allow-headers").unwrap().to_ascii_lowercase().contains("content-type"));
    preflight("http://evil:8080").assert_json_error(403);

    let status = call("GET", &server.url("http", "/status"), &[("Origin", "http://other:1")], None);
    assert_eq!(status.status, 200);
    assert_eq!(status.header("access-control-allow-origin"), Some("http://other:1"));
    let error = call("GET", &server.url("http", "/start"), &[("Origin", "http://other:1")], None);
    error.assert_json_error(405);
    assert_eq!(error.header("access-control-allow-origin"), Some("http://other:1"));
    let foreign = call("GET", &server.url("http", "/status"), &[("Origin", "http://evil:8080")], None);
    assert_eq!(foreign.header("access-control-allow-origin"), None);

    // `*` allows any origin; the default allows the Flask UI's.
    let any = start_server(&shm, dir.path(), &["-cors-origin", "*"]);
    let answer = call("GET", &any.url("http", "/health"), &[("Origin", "http://anything:9")], None);
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
    let default = start_server(&shm, dir.path(), &[]);
    let answer = call("GET", &default.url("http", "/status"), &[("Origin", "http://localhost:8080")], None);
    assert_eq!(answer.header("access-control-allow-origin"), Some("http://localhost:8080"));
}

#[test]
fn a_bearer_token_guards_the_control_routes_when_configured() {
    let (shm, _camera) = camera("auth");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let records = dir.path().join("rec");
    let server = start_server(
        &shm,
        &records,
        &["-auth-token-file", token_file.to_str().unwrap(), "-cors-origin", "http://board:8080"],
    );
    let start = server.url("http", "/start");
    let denied = post(&start, b"");
    denied.assert_json_error(401);
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    call("POST", &start, &[("Authorization", "Bearer wrong")], Some(b"")).assert_json_error(401);
    call("POST", &server.url("http", "/offer"), &[], Some(b"{}")).assert_json_error(401);
    // Read-only routes and preflights stay open.
    assert_eq!(get(&server.url("http", "/status")).status, 200);
    let preflight =
        call("OPTIONS", &start, &[("Origin", "http://board:8080"), ("Access-Control-Request-Method", "POST")], None);
    assert_eq!(preflight.status, 204);
    let auth = [("Authorization", "Bearer s3cret-token")];
    assert_eq!(call("POST", &start, &auth, Some(b"")).status, 200);
    assert_eq!(call("POST", &server.url("http", "/stop"), &auth, Some(b"")).status, 200);
}

#[test]
fn offers_negotiate_over_http_while_other_requests_go_on_and_sigterm_with_a_viewer_exits_fast() {
    if !have_tool("ffmpeg") {
        return;
    }
    let (shm, _camera) = camera("offer");
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(&shm, dir.path(), &[]);
    wait_healthy(&server);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // /offer with the browser's JSON, answered with the server's candidates.
    let client = runtime.block_on(webrtc_common::Client::new(webrtc_common::CHROME_H264));
    let status_url = server.url("http", "/status");
    let poller = std::thread::spawn(move || {
        // /status keeps answering while offers negotiate.
        (0..20).map(|_| get(&status_url).status).filter(|&s| s == 200).count()
    });
    let answer =
        post(&server.url("http", "/offer"), json!({"type": "offer", "sdp": client.offer}).to_string().as_bytes());
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert_eq!(body["type"], "answer");
    let sdp = body["sdp"].as_str().unwrap().to_string();
    assert!(sdp.contains("a=candidate"), "no candidates in the answer:\n{sdp}");
    runtime.block_on(client.accept(sdp));
    let frames = runtime.block_on(client.frames(10, Duration::from_secs(10)));
    assert_eq!(frames.len(), 10, "the viewer got no video");
    assert_eq!(poller.join().unwrap(), 20);
    let health = get(&server.url("http", "/health")).json();
    assert_eq!(health["webrtc_clients"], 1, "{health}");

    // WHEP: 201 + Location, DELETE ends it, a second DELETE is 404.
    let whep_client = runtime.block_on(webrtc_common::Client::new(webrtc_common::CHROME_H264));
    let created = call(
        "POST",
        &server.url("http", "/whep"),
        &[("Content-Type", "application/sdp")],
        Some(whep_client.offer.as_bytes()),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("content-type"), Some("application/sdp"));
    assert!(created.text().starts_with("v=0"));
    let location = created.header("location").unwrap().to_string();
    assert!(location.starts_with("/whep/"), "{location}");
    assert_eq!(call("DELETE", &server.url("http", &location), &[], None).status, 200);
    call("DELETE", &server.url("http", &location), &[], None).assert_json_error(404);

    // SIGTERM while recording with the first viewer still connected.
    assert_eq!(post(&server.url("http", "/start"), b"").status, 200);
    std::thread::sleep(Duration::from_millis(1200));
    let signalled = Instant::now();
    server.proc.signal(libc::SIGTERM);
    let exit = server.proc.wait_exit(Duration::from_secs(5)).expect("no exit within 5 s of SIGTERM");
    let took = signalled.elapsed();
    eprintln!("exit after SIGTERM with a viewer connected and a recording running: {took:?}");
    assert!(exit.success(), "{exit:?}\n{}", server.proc.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let path = only_file(dir.path());
    let clip = std::fs::read(demo_clip()).unwrap();
    assert!(assert_run_of_clip(&std::fs::read(&path).unwrap(), &clip) > 20);
    assert!(ffmpeg_errors(&path).is_empty());
    runtime.block_on(client.close());
    runtime.block_on(whep_client.close());
}
