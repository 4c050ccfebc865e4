//! The sd_notify protocol as systemd sees it, against the real binary and
//! the fake camera: a Unix datagram socket stands in for systemd's
//! NOTIFY_SOCKET. READY=1 arrives once the server serves; WATCHDOG=1 keeps
//! coming while frames flow and while the camera is merely gone; it stops
//! when the media thread is frozen (ptrace-stopped, the others running) and
//! resumes when it thaws; STOPPING=1 comes with SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fake_camera, unique_shm, Proc};

/// WATCHDOG_USEC for the test: pings every 400 ms.
const WATCHDOG: Duration = Duration::from_millis(800);

/// Every datagram the fake systemd received, with its arrival time.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(Instant, String)>>>);

impl Received {
    fn listen(socket: UnixDatagram) -> Received {
        let received = Received::default();
        let sink = received.clone();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends when the test process ends; reads time out every 100 ms.
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => sink.0.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into())),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => panic!("notify socket: {e}"),
                }
            }
        });
        received
    }

    fn since(&self, start: Instant) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|(t, _)| *t >= start).map(|(_, m)| m.clone()).collect()
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> Option<Instant> {
        self.wait_for_after(needle, Instant::now() - Duration::from_secs(3600), timeout)
    }

    /// Arrival of the first message after `after` containing `needle`.
    fn wait_for_after(&self, needle: &str, after: Instant, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((t, _)) = self.0.lock().unwrap().iter().find(|(t, m)| *t >= after && m.contains(needle)) {
                return Some(*t);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

fn pings(messages: &[String]) -> usize {
    messages.iter().filter(|m| m.lines().any(|l| l == "WATCHDOG=1")).count()
}

/// The thread id of the server's thread named `name`.
fn thread_id(pid: u32, name: &str) -> i32 {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = entry.unwrap().path();
        if std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim() == name {
            return path.file_name().unwrap().to_str().unwrap().parse().unwrap();
        }
    }
    panic!("no thread named {name} in process {pid}");
}

/// Stops one thread of another process with ptrace (the rest keeps
/// running), as a deadlock or a hung syscall would; thaws it on drop.
struct Frozen(i32);

impl Frozen {
    fn thread(tid: i32) -> Frozen {
        // SAFETY: plain ptrace/waitpid calls on a thread of our own child.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0, "PTRACE_INTERRUPT");
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid, "waitpid on the frozen thread");
        }
        Frozen(tid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: the thread is in a ptrace stop (waited above).
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

#[test]
fn ready_watchdog_from_the_media_path_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let received = Received::listen(UnixDatagram::bind(&socket_path).unwrap());
    let shm = unique_shm("sdnotify");
    let mut camera = fake_camera(&shm, &[]);
    let recordings = dir.path().join("recordings");
    let watchdog_usec = WATCHDOG.as_micros().to_string();
    let mut server = Proc::spawn(
        &[
            "-shm",
            &shm,
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "-pprof",
            "",
            "-record-path",
            recordings.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", &watchdog_usec)],
    );

    // READY once serving: the listeners are up before systemd hears it.
    let ready = received.wait_for("READY=1", Duration::from_secs(20));
    assert!(ready.is_some(), "no READY=1; server log:\n{}", server.log());
    assert!(server.log().contains("listening: http on "), "READY=1 before the HTTP listener:\n{}", server.log());
    assert!(server.log().contains("listening: metrics on "), "READY=1 before the metrics listener");

    // Frames flowing: a ping every half interval, with a status line.
    let flowing = Instant::now();
    std::thread::sleep(WATCHDOG * 3);
    let messages = received.since(flowing);
    assert!(pings(&messages) >= 4, "too few pings while frames flow: {messages:?}\n{}", server.log());
    assert!(messages.iter().any(|m| m.contains("STATUS=streaming")), "no streaming status: {messages:?}");

    // Freeze the media thread only: the camera keeps writing, the watchdog
    // thread runs, and must stop vouching.
    let media_tid = thread_id(server.child.id(), "media-cam");
    let frozen = Frozen::thread(media_tid);
    let froze_at = Instant::now();
    // The first check after the freeze may still count the frames read
    // just before it; the next one must see the stall, and from then on no
    // ping may come (measured from the stall report, so a slow scheduler
    // cannot make this flaky).
    let stalled = received.wait_for_after("STATUS=media path stalled", froze_at, WATCHDOG * 4);
    let Some(stalled) = stalled else {
        panic!("no stall reported while the media thread was frozen: {:?}", received.since(froze_at));
    };
    std::thread::sleep((stalled + WATCHDOG * 2).saturating_duration_since(Instant::now()));
    let wedged = received.since(stalled);
    assert_eq!(pings(&wedged), 0, "pinged while the media thread was frozen: {wedged:?}");
    assert!(wedged.len() >= 2, "the watchdog thread kept reporting while wedged: {wedged:?}");

    // Thawed: the reader catches up and the pings resume.
    drop(frozen);
    let thawed = Instant::now();
    std::thread::sleep(WATCHDOG * 2);
    let resumed = received.since(thawed);
    assert!(pings(&resumed) >= 2, "pings did not resume after the media thread thawed: {resumed:?}");

    // A stopped camera is not a wedged pipeline: pings go on.
    camera.signal(libc::SIGTERM);
    assert!(camera.wait_exit(Duration::from_secs(5)).is_some(), "fake camera did not stop");
    std::thread::sleep(WATCHDOG / 2);
    let gone = Instant::now();
    std::thread::sleep(WATCHDOG * 3);
    let without_camera = received.since(gone);
    assert!(pings(&without_camera) >= 4, "no pings while the camera is gone: {without_camera:?}");
    assert!(without_camera.iter().any(|m| m.contains("waiting for the camera")), "{without_camera:?}");

    // SIGTERM: STOPPING=1, then a clean exit.
    server.signal(libc::SIGTERM);
    assert!(received.wait_for("STOPPING=1", Duration::from_secs(5)).is_some(), "no STOPPING=1");
    let status = server.wait_exit(Duration::from_secs(10)).expect("server exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}:\n{}", server.log());
}

#[test]
fn no_notify_socket_means_no_watchdog_thread() {
    let shm = unique_shm("sdnone");
    let _camera = fake_camera(&shm, &[]);
    let server = Proc::spawn(
        &["-shm", &shm, "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-log-level", "debug"],
        &[("WATCHDOG_USEC", "800000")],
    );
    assert!(server.wait_for_line("listening: http on ", Duration::from_secs(20)).is_some(), "{}", server.log());
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path().join("comm")).unwrap_or_default().trim().to_string())
        .collect();
    assert!(tasks.iter().any(|t| t == "media-cam"), "threads: {tasks:?}");
    assert!(!tasks.iter().any(|t| t == "watchdog"), "a watchdog thread without systemd: {tasks:?}");
}
