//! Mutation fuzzing of the RTSP server's request path, against the real
//! binary: a client's whole exchange (OPTIONS, DESCRIBE, SETUP over TCP,
//! PLAY, GET_PARAMETER, TEARDOWN) with lines dropped, duplicated, swapped,
//! truncated, values made empty, huge, numeric or garbage, methods
//! replaced, random bytes and interleaved `$` frames spliced in. Each case
//! is one connection that half-closes after sending. The server must answer
//! with well-formed RTSP/1.0 responses (never a 5xx other than 501, 503 and
//! 505 for what it does not do), close the connection when the client is
//! done, never hang, never panic, and be left with no connection or client.
//!
//! `RTSP_FUZZ_CASES` (default 300, seeded, so CI runs the same cases every
//! time; `RTSP_FUZZ_SEED` changes the seed).

mod common;
mod control_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use control_support::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// One edit to the exchange.
#[derive(Clone, Debug)]
enum Mutation {
    Drop(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Truncate(usize, usize),
    /// Replace the value (after `: ` or the method's first space).
    Value(usize, Value),
    /// Replace a request line's method.
    Method(usize, String),
    /// Random bytes spliced in at a byte position.
    Bytes(usize, Vec<u8>),
    /// A `$` frame (channel, claimed length, bytes) spliced in.
    Interleaved(usize, u8, u16, Vec<u8>),
}

#[derive(Clone, Debug)]
enum Value {
    Empty,
    Huge(usize),
    Garbage(Vec<u8>),
    Number(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = prop_oneof![
        Just(Value::Empty),
        (1usize..20_000).prop_map(Value::Huge),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(Value::Garbage),
        any::<u64>().prop_map(Value::Number),
    ];
    let method = prop_oneof![
        Just("PAUSE".to_string()),
        Just("RECORD".to_string()),
        Just("ANNOUNCE".to_string()),
        Just("PLAY".to_string()),
        Just("SETUP".to_string()),
        "[A-Z_]{1,12}",
        "[ -~]{0,8}",
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::Drop),
        any::<usize>().prop_map(Mutation::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Truncate(a, b)),
        (any::<usize>(), value).prop_map(|(a, v)| Mutation::Value(a, v)),
        (any::<usize>(), method).prop_map(|(a, m)| Mutation::Method(a, m)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64)).prop_map(|(a, b)| Mutation::Bytes(a, b)),
        (any::<usize>(), any::<u8>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(a, c, l, b)| Mutation::Interleaved(a, c, l, b)),
    ]
}

/// The session id the exchange names (replaced by a real one in half the
/// cases).
const PLACEHOLDER_SESSION: &str = "0123456789abcdef";

/// A well-behaved client's exchange with the server.
fn exchange(addr: SocketAddr) -> String {
    let url = format!("rtsp://{addr}/cam");
    [
        format!("OPTIONS {url} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: fuzz\r\n\r\n"),
        format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n"),
        format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"),
        // The server's session id is not known in advance: PLAY names a
        // made-up one, or none once mutated.
        format!("PLAY {url}/ RTSP/1.0\r\nCSeq: 4\r\nSession: {PLACEHOLDER_SESSION}\r\nRange: npt=0.000-\r\n\r\n"),
        format!("GET_PARAMETER {url}/ RTSP/1.0\r\nCSeq: 5\r\nSession: {PLACEHOLDER_SESSION}\r\n\r\n"),
        format!(
            "SET_PARAMETER {url}/ RTSP/1.0\r\nCSeq: 6\r\nContent-Type: text/parameters\r\nContent-Length: 0\r\n\r\n"
        ),
        format!("TEARDOWN {url}/ RTSP/1.0\r\nCSeq: 7\r\nSession: {PLACEHOLDER_SESSION}\r\n\r\n"),
    ]
    .concat()
}

fn apply(exchange: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = exchange.split("\r\n").map(|l| l.as_bytes().to_vec()).collect();
    let mut splices: Vec<(usize, Vec<u8>)> = Vec::new();
    for mutation in mutations {
        let len = lines.len();
        let pick = |i: usize| i % len;
        match mutation {
            Mutation::Drop(i) => {
                lines.remove(pick(*i));
            }
            Mutation::Duplicate(i) => {
                let line = lines[pick(*i)].clone();
                lines.insert(pick(*i), line);
            }
            Mutation::Swap(a, b) => lines.swap(pick(*a), pick(*b)),
            Mutation::Truncate(i, at) => {
                let line = &mut lines[pick(*i)];
                let keep = at % (line.len() + 1);
                line.truncate(keep);
            }
            Mutation::Value(i, value) => {
                let line = &mut lines[pick(*i)];
                let cut = line.windows(2).position(|w| w == b": ").map(|p| p + 2).unwrap_or(line.len());
                line.truncate(cut);
                match value {
                    Value::Empty => {}
                    Value::Huge(n) => line.extend(std::iter::repeat_n(b'9', *n)),
                    Value::Garbage(bytes) => line.extend_from_slice(bytes),
                    Value::Number(n) => line.extend_from_slice(n.to_string().as_bytes()),
                }
            }
            Mutation::Method(i, method) => {
                let line = &mut lines[pick(*i)];
                let rest = line.iter().position(|&b| b == b' ').map(|p| line[p..].to_vec()).unwrap_or_default();
                *line = [method.as_bytes(), &rest].concat();
            }
            Mutation::Bytes(at, bytes) => splices.push((*at, bytes.clone())),
            Mutation::Interleaved(at, channel, claimed, bytes) => {
                let mut frame = vec![b'$', *channel];
                frame.extend_from_slice(&claimed.to_be_bytes());
                frame.extend_from_slice(bytes);
                splices.push((*at, frame));
            }
        }
        if lines.is_empty() {
            break;
        }
    }
    let mut out = lines.join(&b"\r\n"[..]);
    for (at, bytes) in splices {
        let at = at % (out.len() + 1);
        out.splice(at..at, bytes);
    }
    out
}

/// Sends one case on a new connection, half-closes, and returns what the
/// server sent until it closed. Panics if it never closes. With
/// `set_up_first`, a real SETUP goes first and the case's made-up session
/// id is replaced by the server's, so PLAY, keep-alives and TEARDOWN reach a
/// live session (and media flows between the answers).
fn run_case(addr: SocketAddr, bytes: &[u8], set_up_first: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut out = Vec::new();
    let mut bytes = bytes.to_vec();
    if set_up_first {
        let setup = format!(
            "SETUP rtsp://{addr}/cam/trackID=0 RTSP/1.0\r\nCSeq: 99\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
        );
        stream.write_all(setup.as_bytes()).unwrap();
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).expect("the SETUP answer");
            assert!(n > 0, "closed before answering SETUP");
            out.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let id = text.lines().find_map(|l| l.strip_prefix("Session: ")).expect("a session").split(';').next().unwrap();
        bytes = String::from_utf8_lossy(&bytes).replace(PLACEHOLDER_SESSION, id).into_bytes();
    }
    // The server may close first (framing lost): a failed write is fine.
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut chunk = [0u8; 65536];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "the server did not close the connection after the client was done");
    }
}

/// The status codes of every response in `answer` (interleaved media
/// skipped); panics on anything that is not a well-formed response.
fn statuses(answer: &[u8]) -> Vec<u16> {
    let mut codes = Vec::new();
    let mut rest = answer;
    while !rest.is_empty() {
        if rest[0] == b'$' {
            assert!(rest.len() >= 4, "a cut interleaved header");
            let len = 4 + usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            assert!(rest.len() >= len, "a cut interleaved frame");
            rest = &rest[len..];
            continue;
        }
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
        let head = std::str::from_utf8(&rest[..end]).expect("a UTF-8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("RTSP/1.0 "), "{status_line:?}");
        let code: u16 = status_line[9..12].parse().expect("a status code");
        let length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.trim().parse().expect("a content length"));
        codes.push(code);
        rest = &rest[end + 4 + length..];
    }
    codes
}

#[test]
fn mutated_exchanges_get_well_formed_answers_and_leave_nothing_behind() {
    let cases: u32 = std::env::var("RTSP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let seed: u64 = std::env::var("RTSP_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_4757);
    let records = tempfile::tempdir().unwrap();
    let server = common::Server::start(
        &[
            "-demo",
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "-pprof",
            "",
            "-rtsp",
            "127.0.0.1:0",
            "-record-path",
            records.path().to_str().unwrap(),
        ],
        &["http", "metrics", "rtsp"],
    );
    let addr = server.addrs["rtsp"];
    wait_until(Duration::from_secs(20), || {
        (get(&server.url("http", "/paths")).json()["paths"][0]["state"] == "ready").then_some(())
    })
    .expect("the demo path is ready");

    // The unmutated exchange: OPTIONS, DESCRIBE, SETUP answered 200; PLAY
    // and the others name a session that does not exist (454).
    let plain = statuses(&run_case(addr, exchange(addr).as_bytes(), false));
    assert_eq!(plain, [200, 200, 200, 454, 454, 200, 454]);
    // With a real session first: SETUP 200, then the exchange's SETUP is a
    // second one in no session (200), PLAY 200 with media, the rest 200.
    let live = statuses(&run_case(addr, exchange(addr).as_bytes(), true));
    assert_eq!(live, [200, 200, 200, 200, 200, 200, 200, 200]);

    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config { cases, failure_persistence: None, ..Config::default() },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let base = exchange(addr);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let strategy = (any::<bool>(), proptest::collection::vec(mutation(), 1..6));
    let result = runner.run(&strategy, |(set_up_first, mutations)| {
        let bytes = apply(&base, &mutations);
        let outcome = std::panic::catch_unwind(|| statuses(&run_case(addr, &bytes, set_up_first)));
        prop_assert!(outcome.is_ok(), "case failed (see above): {mutations:?}\n{}", String::from_utf8_lossy(&bytes));
        for code in outcome.unwrap() {
            prop_assert!(
                (200..500).contains(&code) || [501, 503, 505].contains(&code),
                "status {code} for {mutations:?}"
            );
            *seen.lock().unwrap().entry(code).or_default() += 1;
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}\nserver log:\n{}", server.proc.log());
    }
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses seen: {seen:?}");
    assert!(seen.keys().any(|c| (400..500).contains(c)), "the mutations reached the error paths: {seen:?}");

    // Nothing left behind, and still serving.
    let settled = wait_until(Duration::from_secs(10), || {
        let m = parse_metrics(&get(&server.url("metrics", "/metrics")).text());
        (m["streaming_rtsp_connections"] == 0.0 && m["streaming_path_rtsp_clients{path=\"cam\"}"] == 0.0).then_some(())
    });
    assert!(settled.is_some(), "connections or clients left open:\n{}", server.proc.log());
    assert_eq!(statuses(&run_case(addr, exchange(addr).as_bytes(), false)), plain);
    assert!(!server.proc.log().contains("panicked"), "{}", server.proc.log());
}
