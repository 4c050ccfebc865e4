//! Real receivers for the publish tests: an aiortc WHIP endpoint
//! (tests/whip_endpoint.py in the venv scripts/test.sh makes) and Debian's
//! Janus with its streaming plugin (in a network namespace the test made),
//! each started by the test on ephemeral ports and stopped when dropped;
//! and the clip check of what they got.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use streaming_server::codec::Codec;
use streaming_server::load_client::{clip_nal_units, ClipCheck};

use crate::common::{in_ci, Netns};

/// A child whose output lines (stdout and stderr) are collected; stopped
/// on drop (SIGTERM, then SIGKILL).
pub struct Child2 {
    /// None once reaped: a reaped child's pid is never signalled.
    child: Mutex<Option<Child>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Child2 {
    fn spawn(mut command: Command, tag: &'static str) -> Child2 {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("start {tag}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("TEST_ECHO_LOGS").is_some() {
                        eprintln!("[{tag}] {line}");
                    }
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Child2 { child: Mutex::new(Some(child)), lines }
    }

    /// The first output line containing `needle`, waiting up to `timeout`
    /// (None at once if the process exited without it).
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            if Instant::now() > deadline || self.exited() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True once the process has exited (it is reaped then).
    pub fn exited(&self) -> bool {
        let mut child = self.child.lock().unwrap();
        match child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => false,
            Some(_) => {
                *child = None;
                true
            }
            None => true,
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGKILL, like a crash.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        if let Some(child) = self.child.lock().unwrap().as_ref() {
            // SIGTERM first: Janus and aiortc close their sockets cleanly.
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !self.exited() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// A free UDP port on 127.0.0.1 (free when asked; another process may take
/// it before ours binds, as with any ephemeral-port helper).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The venv's Python with aiortc ($STREAMING_TEST_PYTHON, made by
/// scripts/test.sh from tests/requirements.txt), or None (skip) outside CI.
pub fn python_with_aiortc() -> Option<PathBuf> {
    let python = std::env::var_os("STREAMING_TEST_PYTHON").map(PathBuf::from);
    let ok = python.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import aiortc, aiohttp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if ok {
        return python;
    }
    assert!(!in_ci(), "STREAMING_TEST_PYTHON has no aiortc in CI (scripts/test.sh installs tests/requirements.txt)");
    eprintln!("SKIPPED: set STREAMING_TEST_PYTHON to a Python with aiortc and aiohttp (scripts/test.sh does)");
    None
}

/// tests/whip_endpoint.py: a WHIP endpoint on aiortc.
pub struct WhipEndpoint {
    pub process: Child2,
    pub port: u16,
    pub record_dir: PathBuf,
}

impl WhipEndpoint {
    /// Starts the endpoint on `port` (0: any), requiring `token` if given,
    /// recording into `record_dir`.
    pub fn start(python: &Path, port: u16, token: Option<&str>, record_dir: &Path) -> WhipEndpoint {
        WhipEndpoint::start_with(python, port, token, record_dir, &[])
    }

    /// As [`WhipEndpoint::start`], with more arguments (`--drop-every N`).
    pub fn start_with(
        python: &Path,
        port: u16,
        token: Option<&str>,
        record_dir: &Path,
        extra: &[&str],
    ) -> WhipEndpoint {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/whip_endpoint.py");
        let mut command = Command::new(python);
        command.arg(script).args(["--host", "127.0.0.1", "--port", &port.to_string(), "--record-dir"]).arg(record_dir);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        command.args(extra);
        let process = Child2::spawn(command, "whip");
        let line = process
            .wait_for_line("listening on ", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the WHIP endpoint did not start:\n{}", process.log()));
        let port = line.rsplit(':').next().and_then(|p| p.trim().parse().ok()).expect("a port");
        WhipEndpoint { process, port, record_dir: record_dir.to_path_buf() }
    }

    /// `whip+http://127.0.0.1:PORT/whip`.
    pub fn url(&self) -> String {
        format!("whip+http://127.0.0.1:{}/whip", self.port)
    }

    /// `/stats`: its sessions.
    pub fn sessions(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/stats", self.port);
        let response = ureq::get(&url).timeout(Duration::from_secs(5)).call().unwrap_or_else(|e| panic!("{url}: {e}"));
        let stats: Value = serde_json::from_reader(response.into_reader()).expect("JSON stats");
        stats["sessions"].as_array().cloned().unwrap_or_default()
    }

    /// Makes aiortc send a PLI for `session`'s track.
    pub fn request_keyframe(&self, session: &str) {
        let url = format!("http://127.0.0.1:{}/whip/session/{session}/pli", self.port);
        ureq::post(&url).timeout(Duration::from_secs(5)).call().unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    /// The RTP packets a session received: (sequence number, payload,
    /// marker), as recorded by the endpoint.
    pub fn packets(&self, session: &str) -> Vec<(u16, Bytes, bool)> {
        read_records(&self.record_dir.join(format!("{session}.rtp")))
    }
}

/// Parses the endpoint's recording: u16 sequence, u8 marker, u32 length,
/// payload; a record cut short at the end (still being written) is left out.
pub fn read_records(path: &Path) -> Vec<(u16, Bytes, bool)> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 7 {
        let seq = u16::from_be_bytes([rest[0], rest[1]]);
        let marker = rest[2] != 0;
        let len = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        let Some(payload) = rest.get(7..7 + len) else { break };
        out.push((seq, Bytes::copy_from_slice(payload), marker));
        rest = &rest[7 + len..];
    }
    out
}

/// Feeds packets to the load client's clip check (arrivals 1 ms apart) and
/// returns it: every NAL unit must be the clip's, in order.
pub fn check_against_clip(codec: Codec, clip: &Path, packets: &[(u16, Bytes, bool)]) -> ClipCheck {
    let nals = Arc::new(clip_nal_units(codec, &std::fs::read(clip).unwrap()));
    let mut check = ClipCheck::new(codec, nals);
    let t0 = Instant::now();
    for (i, (seq, payload, marker)) in packets.iter().enumerate() {
        check.on_packet(*seq, payload, *marker, t0 + Duration::from_millis(i as u64));
    }
    check
}

/// Debian's Janus with the streaming plugin and the HTTP transport only,
/// from a configuration this writes into `dir`, running in a network
/// namespace the test created: its API and RTP feeds on that namespace's
/// 127.0.0.1, its ICE on the one address the test gave the namespace.
pub struct Janus {
    pub process: Child2,
    /// `http://127.0.0.1:PORT/janus`, reached from inside the namespace
    /// ([`Netns::enter`]).
    pub api: String,
    /// The only address Janus puts in its ICE candidates (libnice never
    /// offers loopback): the namespace's, which viewers in the namespace
    /// bind. Never one of the host's.
    pub media_ip: IpAddr,
}

/// True if `janus` runs (in CI its absence fails the test).
pub fn have_janus() -> bool {
    let ok = Command::new("janus").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !ok {
        assert!(!in_ci(), "janus is missing in CI (scripts/test.sh installs it)");
        eprintln!("SKIPPED: janus is not installed (apt-get install janus)");
    }
    ok
}

impl Janus {
    /// Starts Janus in `netns` with `mountpoints` (the streaming plugin's
    /// configuration body), its HTTP API on a free port of the namespace's
    /// 127.0.0.1, and ICE on `media_ip` only (an address the test gave the
    /// namespace, [`Netns::add_interface`]).
    pub fn start(netns: &Netns, media_ip: IpAddr, dir: &Path, mountpoints: &str) -> Janus {
        let lib = ["/usr/lib/x86_64-linux-gnu/janus", "/usr/lib/aarch64-linux-gnu/janus", "/usr/lib/janus"]
            .into_iter()
            .find(|p| Path::new(p).join("plugins").exists())
            .expect("Janus's plugin folder");
        let mut last_log = String::new();
        // The port is free when chosen; another process may take it first.
        for _ in 0..3 {
            let port = netns.enter(free_tcp_port);
            let only = |kind: &str, keep: &str| -> String {
                let folder = Path::new(lib).join(kind);
                let mut skip: Vec<String> = std::fs::read_dir(&folder)
                    .map(|entries| {
                        entries
                            .filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .filter(|name| name.ends_with(".so") && name != keep)
                            .collect()
                    })
                    .unwrap_or_default();
                skip.sort();
                skip.join(",")
            };
            let config = format!(
                "general: {{\n  configs_folder = \"{dir}\"\n  plugins_folder = \"{lib}/plugins\"\n  \
                 transports_folder = \"{lib}/transports\"\n  events_folder = \"{lib}/events\"\n  \
                 loggers_folder = \"{lib}/loggers\"\n  debug_level = 4\n  interface = \"{media_ip}\"\n}}\n\
                 media: {{\n  rtp_port_range = \"20000-60000\"\n}}\n\
                 nat: {{\n  ice_enforce_list = \"{media_ip}\"\n}}\n\
                 plugins: {{\n  disable = \"{}\"\n}}\ntransports: {{\n  disable = \"{}\"\n}}\n\
                 events: {{\n  broadcast = false\n  disable = \"{}\"\n}}\nloggers: {{\n  disable = \"{}\"\n}}\n",
                only("plugins", "libjanus_streaming.so"),
                only("transports", "libjanus_http.so"),
                only("events", ""),
                only("loggers", ""),
                dir = dir.display(),
            );
            std::fs::write(dir.join("janus.jcfg"), config).unwrap();
            std::fs::write(
                dir.join("janus.transport.http.jcfg"),
                format!(
                    "general: {{\n  json = \"compact\"\n  base_path = \"/janus\"\n  http = true\n  \
                     port = {port}\n  ip = \"127.0.0.1\"\n  https = false\n}}\nadmin: {{\n  admin_http = false\n}}\n"
                ),
            )
            .unwrap();
            std::fs::write(dir.join("janus.plugin.streaming.jcfg"), format!("general: {{\n}}\n{mountpoints}")).unwrap();
            // `ip netns exec` execs Janus: the child's pid is Janus's.
            let mut command = Command::new("ip");
            command
                .args(["netns", "exec", &netns.name, "janus"])
                .arg("-F")
                .arg(dir)
                .arg("-C")
                .arg(dir.join("janus.jcfg"));
            let process = Child2::spawn(command, "janus");
            if process.wait_for_line("HTTP webserver started", Duration::from_secs(15)).is_some()
                && process.wait_for_line("JANUS Streaming plugin initialized", Duration::from_secs(5)).is_some()
            {
                let line = process.wait_for_line(" as local IP", Duration::from_secs(1)).unwrap_or_default();
                let announced = line.split_whitespace().find_map(|word| word.parse::<IpAddr>().ok());
                assert_eq!(announced, Some(media_ip), "Janus must use the namespace's address ({line:?})");
                return Janus { process, api: format!("http://127.0.0.1:{port}/janus"), media_ip };
            }
            last_log = process.log();
        }
        panic!("Janus did not start:\n{last_log}");
    }
}
