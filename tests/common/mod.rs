//! Helpers for integration tests: real processes over real shared memory
//! and real sockets on 127.0.0.1 (or in a network namespace the test
//! creates, [`Netns`]), cleaned up when dropped.
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
    crate_file("assets/demo.h264")
}

/// A file of this repository, by its path from the top.
pub fn crate_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
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
    /// Set when the stderr reader has read everything (the pipe closed).
    drained: Arc<std::sync::atomic::AtomicBool>,
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
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, done) = (lines.clone(), drained.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TEST_ECHO_LOGS").is_some() {
                    eprintln!("[child] {line}");
                }
                sink.lock().unwrap().push(line);
            }
            done.store(true, Ordering::SeqCst);
        });
        Proc { child, lines, drained }
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

    /// Waits for exit up to `timeout`; the exit status if it exited. Its
    /// last lines are in `log()` then (the reader is given up to a second
    /// to drain the pipe: under load it can lag behind the exit).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let drain_until = Instant::now() + Duration::from_secs(1);
                while !self.drained.load(Ordering::SeqCst) && Instant::now() < drain_until {
                    std::thread::sleep(Duration::from_millis(5));
                }
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

/// True when running in CI, where a test may not skip for a missing tool.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// True if this test may create network namespaces (root, iproute2's
/// `ip`). Otherwise says loudly that `test` is skipped, or fails in CI,
/// which runs as root with iproute2.
pub fn can_create_netns(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && ip(&["-V"]).is_ok() {
        return true;
    }
    assert!(!in_ci(), "{test}: CI runs as root with iproute2 (network namespaces)");
    eprintln!("SKIPPING {test}: it needs root and iproute2's ip to create a network namespace");
    false
}

/// A network namespace this test created (`ip netns add`), with `lo` up and
/// nothing else until [`Netns::add_interface`]. Dropping it SIGKILLs every
/// process still in it (one a panic left behind) and deletes it, so a
/// failing test leaves neither behind. The host's interfaces are never
/// touched.
pub struct Netns {
    /// `ip netns` name; `/run/netns/NAME`.
    pub name: String,
}

impl Netns {
    /// A new namespace named `prefix`, this process's id and a counter, so
    /// tests running at once (in this binary or another) never share one.
    pub fn create(prefix: &str) -> Result<Netns, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name])?;
        // From here on, drop deletes it.
        let netns = Netns { name };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Adds `interface` with address `cidr` (e.g. `10.87.0.1/24`), up: one
    /// end of a veth pair whose other end (`{interface}p`, no address) is
    /// in the namespace too. A veth pair, not a `dummy` interface: not every
    /// kernel has the dummy module (containers often cannot load it), and
    /// the TURN test already needs veth.
    pub fn add_interface(&self, interface: &str, cidr: &str) -> Result<(), String> {
        let peer = format!("{interface}p");
        let n = self.name.as_str();
        ip(&["-n", n, "link", "add", interface, "type", "veth", "peer", "name", &peer])?;
        ip(&["-n", n, "addr", "add", cidr, "dev", interface])?;
        ip(&["-n", n, "link", "set", &peer, "up"])?;
        ip(&["-n", n, "link", "set", interface, "up"])?;
        Ok(())
    }

    /// Runs `f` on a thread of its own that entered the namespace: the
    /// sockets `f` opens, the threads it starts (a tokio runtime built
    /// there) and the processes it spawns are all in the namespace. A
    /// panic in `f` is raised again here.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("netns {}", self.name))
                .spawn_scoped(scope, || {
                    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                    f()
                })
                .expect("spawn a thread");
            thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only processes a test started can be in its namespace; this test
        // process itself is not (only the thread `enter` made was, and it
        // has ended).
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                if pid != std::process::id() as i32 {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}
