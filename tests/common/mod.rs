//! Helpers for integration tests: real processes over real shared memory
//! and real sockets on 127.0.0.1, cleaned up when dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_streaming-server"))
}

/// The bundled demo clip.
pub fn demo_clip() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/demo.h264")
}

/// A segment name no other test or process uses.
pub fn unique_shm(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("/ss_test_{}_{}_{}", tag, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A child process whose stderr lines are collected; killed on drop.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        Proc::spawn_in(None, args, envs)
    }

    /// [`Proc::spawn`] inside a network namespace (`ip netns exec NS`,
    /// which execs the binary: the PID is still the server's).
    pub fn spawn_in(netns: Option<&str>, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut command = match netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(bin());
                command
            }
            None => Command::new(bin()),
        };
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        command.env_remove("RUST_LOG");
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn streaming-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_ECHO_LOGS").is_some() {
                    eprintln!("[child] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    /// Waits until a stderr line contains `needle`; returns that line.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(line.clone());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Sends a signal (e.g. libc::SIGTERM).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for exit up to `timeout`; the exit status if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first, so a fake camera unlinks its segment and a server
        // removes its demo segment (SIGKILL would leave 93 MB segments in
        // /dev/shm); SIGCONT in case a test stopped it. Then make sure.
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            self.signal(libc::SIGCONT);
            let _ = self.wait_exit(Duration::from_millis(1500));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `streaming-server fake-camera -shm NAME` plus `extra` flags and
/// waits until the segment exists.
pub fn fake_camera(shm: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["fake-camera", "-shm", shm];
    args.extend_from_slice(extra);
    let camera = Proc::spawn(&args, &[]);
    assert!(
        camera.wait_for_line("fake camera: writing", Duration::from_secs(10)).is_some(),
        "fake camera did not start:\n{}",
        camera.log()
    );
    camera
}

/// A running server and the addresses it printed (`listening: NAME on ADDR`).
pub struct Server {
    pub proc: Proc,
    pub addrs: HashMap<String, SocketAddr>,
}

impl Server {
    /// Starts the server with `args` (add `-http 127.0.0.1:0` etc.) and
    /// waits for each listener named in `listeners` to print its address.
    pub fn start(args: &[&str], listeners: &[&str]) -> Server {
        Server::start_in(None, args, listeners)
    }

    /// [`Server::start`] inside a network namespace.
    pub fn start_in(netns: Option<&str>, args: &[&str], listeners: &[&str]) -> Server {
        let proc = Proc::spawn_in(netns, args, &[]);
        let mut addrs = HashMap::new();
        for name in listeners {
            let needle = format!("listening: {name} on ");
            let line = proc
                .wait_for_line(&needle, Duration::from_secs(15))
                .unwrap_or_else(|| panic!("no '{needle}' line from the server:\n{}", proc.log()));
            let addr = line[line.find(&needle).unwrap() + needle.len()..].split_whitespace().next().unwrap();
            addrs.insert(name.to_string(), addr.parse().expect("a socket address"));
        }
        Server { proc, addrs }
    }

    /// `http://ADDR` of a listener.
    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.addrs[listener], path)
    }
}
