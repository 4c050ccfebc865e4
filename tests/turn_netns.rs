//! Viewers that cannot reach the board: coturn (Debian's `turnserver`) as
//! the relay, in network namespaces this test creates.
//!
//! ```text
//!  board ns (10.77.0.1) --- turn ns (10.77.0.2 | 10.99.0.1 | 10.78.0.2) --- viewer ns (10.78.0.1)
//! ```
//!
//! The turn namespace does not forward packets, so the board and the viewer
//! have no IP path to each other at all; both reach the TURN server at
//! 10.99.0.1 (a local address of the turn namespace, routed from each side).
//! HTTP (the page, `/ice-servers`, `POST /offer`) goes through a TCP
//! forwarder in the turn namespace (tests/tcp_forward.py); every media
//! packet must go through the relay. The server uses time-limited
//! credentials from coturn's shared secret and hands them to the viewer.
//! Checked: the load client and headless Chromium receive the stream (byte
//! for byte for the load client) over relay candidates; with a wrong secret
//! `/health` says 401 and the viewer fails with a clear error, not a hang.
//!
//! Needs root (network namespaces), `ip` and `turnserver`; skipped with a
//! note elsewhere, required in CI.

mod common;
mod control_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::in_ci;
use control_support::wait_until;

const BOARD: &str = "10.77.0.1";
const TURN_BOARD_SIDE: &str = "10.77.0.2";
const TURN: &str = "10.99.0.1";
const TURN_VIEWER_SIDE: &str = "10.78.0.2";
const VIEWER: &str = "10.78.0.1";
const SECRET: &str = "n0t-a-real-secret";

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Three namespaces wired as in the module docs, deleted (with everything
/// running in them) on drop.
struct Topology {
    board: String,
    turn: String,
    viewer: String,
}

impl Topology {
    /// `test` (a letter) keeps the names of tests running at once apart.
    fn create(test: char) -> Result<Topology, String> {
        let tag = format!("{test}{}", std::process::id());
        let topology = Topology { board: format!("ssb{tag}"), turn: format!("sst{tag}"), viewer: format!("ssv{tag}") };
        for ns in [&topology.board, &topology.turn, &topology.viewer] {
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        let (b, t, v) = (&topology.board, &topology.turn, &topology.viewer);
        run(&["ip", "-n", b, "link", "add", "eth0", "type", "veth", "peer", "name", "toboard", "netns", t])?;
        run(&["ip", "-n", v, "link", "add", "eth0", "type", "veth", "peer", "name", "toviewer", "netns", t])?;
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "-n", b, "addr", "add", "10.77.0.1/24", "dev", "eth0"],
            vec!["ip", "-n", t, "addr", "add", "10.77.0.2/24", "dev", "toboard"],
            vec!["ip", "-n", v, "addr", "add", "10.78.0.1/24", "dev", "eth0"],
            vec!["ip", "-n", t, "addr", "add", "10.78.0.2/24", "dev", "toviewer"],
            vec!["ip", "-n", t, "addr", "add", "10.99.0.1/32", "dev", "lo"],
            vec!["ip", "-n", b, "link", "set", "eth0", "up"],
            vec!["ip", "-n", v, "link", "set", "eth0", "up"],
            vec!["ip", "-n", t, "link", "set", "toboard", "up"],
            vec!["ip", "-n", t, "link", "set", "toviewer", "up"],
            vec!["ip", "-n", b, "route", "add", "10.99.0.1/32", "via", TURN_BOARD_SIDE],
            vec!["ip", "-n", v, "route", "add", "10.99.0.1/32", "via", TURN_VIEWER_SIDE],
        ];
        for step in steps {
            run(&step)?;
        }
        // No forwarding in the turn namespace: the sides never meet.
        run(&["ip", "netns", "exec", t, "sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
        Ok(topology)
    }

    fn spawn(&self, ns: &str, program: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} in {ns}: {e}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.viewer, &self.turn, &self.board] {
            if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
                for pid in pids.split_whitespace() {
                    let _ = run(&["kill", "-9", pid]);
                }
            }
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// A child killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = Path::new("/usr/bin/turnserver").exists() && run(&["ip", "-V"]).is_ok();
    if root && tools {
        return true;
    }
    assert!(!in_ci(), "CI runs as root with iproute2 and coturn (scripts/test.sh installs coturn)");
    eprintln!("SKIPPING the TURN test: needs root (network namespaces), ip and coturn's turnserver");
    false
}

/// coturn in the turn namespace: one address both sides reach, relays on it,
/// time-limited credentials from [`SECRET`].
fn start_turn(topology: &Topology, dir: &Path) -> Guard {
    let config = dir.join("turnserver.conf");
    std::fs::write(
        &config,
        format!(
            "listening-ip={TURN}\nlistening-port=3478\nrelay-ip={TURN}\nmin-port=49152\nmax-port=49352\n\
             use-auth-secret\nstatic-auth-secret={SECRET}\nrealm=streaming-test\nno-tls\nno-dtls\nno-cli\n\
             fingerprint\nlog-file=stdout\nsimple-log\nno-stdout-log\npidfile={}\n",
            dir.join("turnserver.pid").display()
        ),
    )
    .unwrap();
    let child = topology.spawn(&topology.turn, "turnserver", &["-c", config.to_str().unwrap()]);
    let guard = Guard(child);
    // Listening once a UDP socket is bound on 3478 in that namespace.
    let up = wait_until(Duration::from_secs(10), || {
        run(&["ip", "netns", "exec", &topology.turn, "ss", "-uln"]).ok().filter(|s| s.contains(":3478")).map(|_| ())
    });
    assert!(up.is_some(), "turnserver did not start");
    guard
}

/// The TCP forwarder for HTTP: TURN:PORT -> BOARD:PORT.
fn start_forwarder(topology: &Topology, port: u16) -> Guard {
    let script = common::crate_file("tests/tcp_forward.py");
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let mut child = topology.spawn(
        &topology.turn,
        python,
        &[script.to_str().unwrap(), TURN, &port.to_string(), BOARD, &port.to_string()],
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "listening", "tcp_forward.py said {line:?}");
    Guard(child)
}

fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

/// The server in the board namespace on `port`, using the TURN server with
/// the secret in `secret_file`.
fn start_board(topology: &Topology, port: u16, secret_file: &Path) -> common::Server {
    let http = format!("{BOARD}:{port}");
    let turn = format!("turn:{TURN}:3478");
    common::Server::start_in(
        Some(&topology.board),
        &[
            "-demo",
            "-http",
            &http,
            "-metrics",
            "",
            "-pprof",
            "",
            "-webrtc-ip",
            BOARD,
            "-turn",
            &turn,
            "-turn-secret-file",
            secret_file.to_str().unwrap(),
            "-turn-user",
            "viewer",
        ],
        &["http"],
    )
}

fn health_turn(topology: &Topology, port: u16) -> serde_json::Value {
    let out = run(&["ip", "netns", "exec", &topology.board, "curl", "-s", &format!("http://{BOARD}:{port}/health")])
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&out).map(|h| h["turn"][0].clone()).unwrap_or_default()
}

/// The load client in the viewer namespace, through the forwarder.
fn load_client(topology: &Topology, port: u16, seconds: &str) -> (bool, String, String) {
    let clip = common::demo_clip();
    let url = format!("http://{TURN}:{port}");
    let out = Command::new("ip")
        .args(["netns", "exec", &topology.viewer])
        .arg(common::bin())
        .args(["load-client", "-url", &url, "-local-ip", VIEWER, "-seconds", seconds])
        .args(["-verify", clip.to_str().unwrap()])
        .output()
        .expect("run the load client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn viewers_with_no_path_to_the_board_watch_through_coturn() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology::create('a').expect("network namespaces");
    // The premise: no route from the viewer to the board.
    assert!(
        run(&["ip", "-n", &topology.viewer, "route", "get", BOARD]).is_err(),
        "the viewer must not reach the board"
    );
    let _turn = start_turn(&topology, dir.path());
    let port = 8081;
    let board = start_board(&topology, port, &secret_file(dir.path(), "secret", SECRET));
    let _forwarder = start_forwarder(&topology, port);
    let ok = wait_until(Duration::from_secs(15), || (health_turn(&topology, port)["state"] == "ok").then_some(()));
    assert!(ok.is_some(), "TURN never ok: {}\n{}", health_turn(&topology, port), board.proc.log());

    // The load client: byte for byte over relay candidates.
    let (success, stdout, stderr) = load_client(&topology, port, "6");
    assert!(success, "load client failed:\n{stdout}\n{stderr}\nserver log:\n{}", board.proc.log());
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let viewer = &report["per_viewer"][0];
    assert_eq!(report["clip_nal_units_mismatched"], 0, "{report:#}");
    assert!(report["clip_keyframes_matched"].as_u64().unwrap() >= 2, "{report:#}");
    assert!(viewer["ice_servers"].as_u64().unwrap() >= 1, "the viewer got the TURN server: {report:#}");
    assert!(viewer["remote_relay_candidates"].as_u64().unwrap() >= 1, "the answer has a relay candidate: {report:#}");
    assert!(viewer["local_relay_candidates"].as_u64().unwrap() >= 1, "the viewer relays too: {report:#}");
    eprintln!(
        "through coturn: {} frames, {} keyframes byte for byte, first keyframe {} ms",
        viewer["frames"], report["clip_keyframes_matched"], viewer["first_keyframe_ms"]
    );

    // Headless Chromium in the viewer namespace: the page fetches the ICE
    // servers from the board and plays over a relay candidate.
    let browser_dir = common::crate_file("tests/browser");
    if Path::new("/usr/bin/chromium").exists() && browser_dir.join("node_modules/playwright-core").exists() {
        let page = format!("http://{TURN}:{port}/cam/");
        let out = Command::new("ip")
            .args(["netns", "exec", &topology.viewer, "node", "turn.mjs", &page])
            .current_dir(&browser_dir)
            .output()
            .expect("run node");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "turn.mjs:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
        eprintln!("Chromium through coturn: {seen}");
        // With no IP path between the two, the pair in use relays on one
        // side at least (Chromium may pair its own address, as the TURN
        // server sees it, with the board's relay).
        assert!(seen["candidateType"] == "relay" || seen["remoteCandidateType"] == "relay", "{seen}");
        assert!(seen["framesDecoded"].as_u64().unwrap() > 30, "{seen}");
        assert!(seen["iceServers"].as_u64().unwrap() >= 1, "{seen}");
    } else {
        assert!(!in_ci(), "Chromium and playwright-core are installed in CI");
        eprintln!("SKIPPING the Chromium half: no Chromium or playwright-core");
    }
}

#[test]
fn a_wrong_secret_is_a_clear_error_in_health_and_at_the_viewer() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology::create('b').expect("network namespaces");
    let _turn = start_turn(&topology, dir.path());
    let port = 8082;
    let board = start_board(&topology, port, &secret_file(dir.path(), "wrong", "not-the-secret"));
    let _forwarder = start_forwarder(&topology, port);
    let refused = wait_until(Duration::from_secs(15), || {
        let turn = health_turn(&topology, port);
        (turn["state"] == "error").then_some(turn)
    })
    .unwrap_or_else(|| panic!("no TURN error in /health: {}\n{}", health_turn(&topology, port), board.proc.log()));
    assert!(refused["error"].as_str().unwrap().contains("401"), "{refused}");
    assert!(board.proc.log().contains("401"), "the log says it too");

    // The viewer (given the same wrong credentials) fails with a reason, well
    // before the 60 s it would watch.
    let started = Instant::now();
    let (success, stdout, stderr) = load_client(&topology, port, "60");
    assert!(!success, "{stdout}");
    eprintln!("the viewer gave up after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(45), "a failure, not a hang: {:?}", started.elapsed());
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    let error = report["per_viewer"][0]["error"].as_str().unwrap_or(&stderr).to_string();
    assert!(error.contains("connection failed") && error.contains("TURN"), "{error}\n{stderr}");
}
