//! The control plane under hostile clients, against the real binary in
//! `-demo` mode: while each attack goes on, a prober GETs `/health` every
//! 200 ms and every probe must answer 200 within a second. Cases: slow
//! bodies, an oversized body hiding a second request, hundreds of idle
//! connections (more than the cap), and the JSON body of every error the
//! server sends itself.

mod common;
mod control_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use control_support::*;

fn demo_server(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["-demo", "-http", "127.0.0.1:0", "-metrics", "", "-pprof", ""];
    args.extend_from_slice(&["-record-path", dir.path().to_str().unwrap()]);
    args.extend_from_slice(extra);
    let server = Server::start(&args, &["http"]);
    let url = server.url("http", "/health");
    wait_until(Duration::from_secs(15), || (get(&url).status == 200).then_some(()))
        .unwrap_or_else(|| panic!("never healthy:\n{}", server.proc.log()));
    (server, dir)
}

/// GETs `/health` every 200 ms on a fresh connection until stopped;
/// returns each probe's latency, or None for a probe that failed or took
/// over 1 s.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Option<Duration>>>,
}

impl Prober {
    fn start(addr: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut probes = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let (status, _) =
                    raw(addr, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Duration::from_secs(1));
                let took = started.elapsed();
                probes.push((status == 200 && took < Duration::from_secs(1)).then_some(took));
                std::thread::sleep(Duration::from_millis(200).saturating_sub(took));
            }
            probes
        });
        Prober { stop, thread }
    }

    /// Stops and asserts: every probe answered, p99 under 1 s.
    fn finish(self, case: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let probes = self.thread.join().unwrap();
        let failed = probes.iter().filter(|p| p.is_none()).count();
        let mut times: Vec<Duration> = probes.iter().flatten().copied().collect();
        times.sort();
        let p99 = times.get(((times.len().max(1) - 1) as f64 * 0.99) as usize).copied().unwrap_or_default();
        eprintln!("{case}: {} probes, {failed} failed, p99 {p99:?}", probes.len());
        assert!(probes.len() >= 5, "{case}: too few probes ({})", probes.len());
        assert_eq!(failed, 0, "{case}: /health probes failed or took over 1 s");
        assert!(p99 < Duration::from_secs(1), "{case}: p99 {p99:?}");
    }
}

/// Every byte a connection answers until the server closes it (or `wait`).
fn read_all(stream: &mut TcpStream, wait: Duration) -> String {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// One whole response from a keep-alive connection (head, then as many
/// body bytes as its Content-Length says).
fn read_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = stream.read(&mut buf).expect("read a response");
        assert!(n > 0, "closed mid-response: {text}");
        data.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn slow_bodies_do_not_stall_the_control_plane() {
    let (server, _dir) = demo_server(&["-http-timeout-ms", "3000"]);
    let addr = server.addrs["http"];
    let prober = Prober::start(addr);
    // 12 clients announce a body over the limit and send a byte a second:
    // refused at once (413, closed), never drained for long.
    let over: Vec<std::thread::JoinHandle<(String, Duration)>> = (0..12)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let started = Instant::now();
                stream.write_all(b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n").unwrap();
                let mut answer = Vec::new();
                stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                for _ in 0..8 {
                    if stream.write_all(b"x").is_err() {
                        break;
                    }
                    let mut buf = [0u8; 4096];
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                        Err(_) => {}
                    }
                    std::thread::sleep(Duration::from_millis(800));
                }
                (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
            })
        })
        .collect();
    // 12 more announce a body under the limit and trickle it: the body
    // deadline (3 s here) ends them with 408.
    let under: Vec<std::thread::JoinHandle<String>> = (0..12)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.write_all(b"POST /offer HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n").unwrap();
                for _ in 0..6 {
                    if stream.write_all(b"x").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                read_all(&mut stream, Duration::from_secs(3))
            })
        })
        .collect();
    for thread in over {
        let (answer, _) = thread.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(answer.contains("Connection: close") && answer.contains("\"error\""), "{answer}");
    }
    for thread in under {
        let answer = thread.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains("application/json") && answer.contains("too slow"), "{answer}");
    }
    prober.finish("slow bodies");
}

#[test]
fn a_request_hidden_in_an_oversized_body_is_never_answered() {
    let (server, _dir) = demo_server(&[]);
    let addr = server.addrs["http"];
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    for announced in [2 << 20, 1 << 20] {
        let mut body = vec![b'x'; 1 << 20];
        body.extend_from_slice(smuggled);
        body.resize(announced.max(body.len()), b'x');
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        // The server may close before taking it all: that is the point.
        let _ = stream.write_all(&body);
        let text = read_all(&mut stream, Duration::from_secs(5));
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "exactly one response on the connection:\n{text}");
        assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
        assert!(text.contains("Connection: close"), "{text}");
        assert!(!text.contains("smuggled") && !text.contains("\"status\""), "{text}");
    }
    // Without the body limit in the way (a refused route), the same.
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request =
        format!("POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", smuggled.len()).into_bytes();
    request.extend_from_slice(smuggled);
    stream.write_all(&request).unwrap();
    let text = read_all(&mut stream, Duration::from_secs(5));
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.starts_with("HTTP/1.1 404 ") && text.contains("Connection: close"), "{text}");
}

#[test]
fn idle_connections_never_lock_out_new_ones() {
    let (server, _dir) = demo_server(&[]);
    let addr = server.addrs["http"];
    let prober = Prober::start(addr);
    // More than the control plane's cap (256), opened and left silent.
    let idle: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    assert_eq!(idle.len(), 300);
    std::thread::sleep(Duration::from_millis(500));
    // Keep-alive clients doing real work meanwhile are served too.
    let kept = Arc::new(Mutex::new(0));
    let counter = kept.clone();
    let worker = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for _ in 0..10 {
            stream.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert!(read_response(&mut stream).starts_with("HTTP/1.1 200 "));
            *counter.lock().unwrap() += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    worker.join().unwrap();
    assert_eq!(*kept.lock().unwrap(), 10);
    // The longest-idle ones were closed to make room: reading them ends.
    let mut idle = idle;
    let mut closed = 0;
    for stream in idle.iter_mut().take(60) {
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 16];
        if matches!(stream.read(&mut buf), Ok(0)) {
            closed += 1;
        }
    }
    assert!(closed > 0, "no idle connection was evicted");
    drop(idle);
    prober.finish("idle connections");
}

#[test]
fn every_error_the_server_sends_has_a_json_body() {
    let (server, dir) = demo_server(&["-http-timeout-ms", "1000"]);
    let addr = server.addrs["http"];
    let huge_header = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let many_headers =
        format!("GET /health HTTP/1.1\r\n{}\r\n", (0..100).map(|i| format!("X-{i}: 1\r\n")).collect::<String>());
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed request line", b"G\x01T / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("header without a colon", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(), 400),
        ("malformed Content-Length", b"POST /start HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(), 400),
        ("signed Content-Length", b"POST /start HTTP/1.1\r\nContent-Length: +0\r\n\r\n".to_vec(), 400),
        (
            "conflicting Content-Length",
            b"POST /start HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            400,
        ),
        ("unsupported Transfer-Encoding", b"POST /start HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 501),
        ("header line too large", huge_header.into_bytes(), 431),
        ("too many headers", many_headers.into_bytes(), 431),
        ("headers too slow", b"GET /health HTTP/1.1\r\nHost: x\r\n".to_vec(), 408),
        ("body over the limit", b"POST /offer HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n".to_vec(), 413),
        ("unknown path", b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), 404),
        ("wrong method", b"PUT /health HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), 405),
    ];
    for (case, request, status) in cases {
        let (got, text) = raw(addr, &request, Duration::from_secs(5));
        assert_eq!(got, status, "{case}: {text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{case}: {text}"));
        assert!(head.contains("Content-Type: application/json"), "{case}: {text}");
        let json: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{case}: body is not JSON ({e}): {text}"));
        assert_eq!(json["success"], false, "{case}: {text}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{case}: {text}");
    }
    // The malformed Content-Length started nothing.
    assert_eq!(get(&server.url("http", "/status")).json()["recording"], false);
    assert_eq!(std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0), 0, "no recording file");
}
