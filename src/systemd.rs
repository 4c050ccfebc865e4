//! systemd integration: `Type=notify` readiness and a watchdog that vouches
//! for the media path, spoken as the plain `sd_notify` datagram protocol.
//!
//! In: `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace),
//! `$WATCHDOG_USEC` and `$WATCHDOG_PID`, which systemd sets for the unit;
//! for the watchdog, the media thread's progress counters and the camera
//! segment's `write_index`. Out: `READY=1`, `STATUS=...`, `WATCHDOG=1` and
//! `STOPPING=1` datagrams. Outside systemd (no `$NOTIFY_SOCKET`) everything
//! here is a no-op and no thread is started.
//!
//! Threads: `main` sends READY and STOPPING; the `watchdog` thread (only
//! when systemd asked for one) samples the media path every half watchdog
//! interval and pings while it is healthy. It reads atomics and maps the
//! camera segment briefly to load `write_index`; it never takes a lock the
//! media thread holds, so it cannot slow the media path down.
//!
//! What the watchdog means: "the media thread keeps up with the camera".
//! A ping is withheld only when the camera's `write_index` advanced during
//! the last interval while the media thread handled no frame at all (read
//! or rejected): then the pipeline is wedged and a restart is the fix.
//! A camera daemon that stopped, hangs or is being restarted is not our
//! fault and a restart of the streamer would not help, so in that case the
//! pings go on (the reader reattaches by itself when the camera returns;
//! `systemctl status` shows why no frames flow in its STATUS line).
//!
//! Bad input: an unparsable `$NOTIFY_SOCKET` or `$WATCHDOG_USEC` is logged
//! once and treated as absent. A failed send is logged (rate-limited) and
//! never stops the server; systemd then restarts it if it must.
//!
//! Why no crate: the protocol is one datagram per message to a socket
//! named in the environment; std's `UnixDatagram` and `SocketAddrExt`
//! (abstract names) cover it, so neither libsystemd nor a wrapper is needed.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ratelimit::RateLimiter;
use crate::shutdown::Shutdown;
use crate::source::ring::{ReaderConfig, Segment};
use crate::stream::Stream;
use crate::warn_limited;

/// Frames the camera must write within one interval, while the media
/// thread handles none, before the pipeline counts as wedged. More than one
/// so that a frame written just as the interval ends does not count.
pub const WEDGE_MIN_FRAMES: u32 = 3;

/// Sends `sd_notify` messages to systemd; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    description: String,
}

impl Notifier {
    /// The notifier systemd asked for through `$NOTIFY_SOCKET`, or a
    /// disabled one.
    pub fn from_env() -> Notifier {
        let value = std::env::var_os("NOTIFY_SOCKET");
        match Notifier::for_socket(value.as_ref().and_then(|v| v.to_str())) {
            Ok(notifier) => notifier,
            Err(error) => {
                log::warn!("systemd: ignoring NOTIFY_SOCKET: {error}");
                Notifier::default()
            }
        }
    }

    /// A notifier sending to `socket` (`/path` or `@abstract`); `None` or an
    /// empty value gives a disabled notifier.
    pub fn for_socket(socket: Option<&str>) -> io::Result<Notifier> {
        let Some(name) = socket.filter(|s| !s.is_empty()) else { return Ok(Notifier::default()) };
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)?
        } else {
            // vsock: addresses exist too; this server never runs in a VM
            // manager that uses them.
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unsupported socket address {name:?}")));
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier { target: Some(Arc::new(Target { socket, addr, description: name.to_string() })) })
    }

    /// True when running under systemd's notify protocol.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message (`KEY=VALUE` lines). Ok and nothing sent when
    /// disabled.
    pub fn notify(&self, message: &str) -> io::Result<()> {
        let Some(target) = &self.target else { return Ok(()) };
        let sent = target.socket.send_to_addr(message.as_bytes(), &target.addr)?;
        if sent != message.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram"));
        }
        Ok(())
    }

    /// `READY=1` with a status line: the server is serving.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STOPPING=1`: a graceful stop began (systemd then waits for exit
    /// instead of treating the silence as a hang).
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=stopping");
    }

    fn send_logged(&self, message: &str) {
        if let Err(error) = self.notify(message) {
            let to = self.target.as_ref().map(|t| t.description.as_str()).unwrap_or("?");
            log::warn!("systemd: notify to {to} failed: {error}");
        }
    }
}

/// STATUS= ends at a newline; keep a status on one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The watchdog interval systemd asked for: `$WATCHDOG_USEC` when set,
/// positive, and `$WATCHDOG_PID` (if set) names this process.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Result<Option<Duration>, String> {
    let Some(usec) = usec.filter(|s| !s.is_empty()) else { return Ok(None) };
    let micros: u64 = usec.trim().parse().map_err(|_| format!("WATCHDOG_USEC={usec:?} is not a number"))?;
    if let Some(pid) = pid.filter(|s| !s.is_empty()) {
        let pid: u32 = pid.trim().parse().map_err(|_| format!("WATCHDOG_PID={pid:?} is not a number"))?;
        if pid != my_pid {
            // Meant for another process of the unit (e.g. a wrapper script).
            return Ok(None);
        }
    }
    Ok((micros > 0).then(|| Duration::from_micros(micros)))
}

/// What the watchdog samples each interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Frames the media thread handled: read plus rejected as malformed.
    pub frames_handled: u64,
    /// The camera segment as seen from outside the media thread, if it
    /// exists and has the expected size.
    pub camera: Option<CameraMark>,
}

/// Identity and progress of the camera's segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CameraMark {
    pub inode: u64,
    pub write_index: u32,
}

/// The watchdog's judgement of one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The media thread handled `frames` frames.
    Flowing { frames: u64 },
    /// No segment (camera daemon stopped or starting): nothing to read.
    CameraAbsent,
    /// The segment is there but the camera wrote (almost) nothing, or it was
    /// just replaced by a restarted daemon.
    CameraIdle,
    /// The camera wrote `camera_frames` frames and the media thread handled
    /// none of them.
    Wedged { camera_frames: u32 },
}

impl Verdict {
    /// Whether this interval earns a `WATCHDOG=1`.
    pub fn healthy(self) -> bool {
        !matches!(self, Verdict::Wedged { .. })
    }

    fn status(self, interval: Duration) -> String {
        let secs = interval.as_secs_f64();
        match self {
            Verdict::Flowing { frames } => format!("streaming: {:.1} fps from the camera", frames as f64 / secs),
            Verdict::CameraAbsent => "waiting for the camera daemon's segment".to_string(),
            Verdict::CameraIdle => "camera attached, no new frames".to_string(),
            Verdict::Wedged { camera_frames } => {
                format!("media path stalled: camera wrote {camera_frames} frames in {secs:.1} s, none read")
            }
        }
    }
}

/// Compares consecutive samples (sans-IO: the caller supplies them).
#[derive(Debug, Default)]
pub struct Judge {
    last: Option<Sample>,
}

impl Judge {
    /// Judges the interval since the previous sample. The first sample has
    /// nothing to compare with and counts as healthy.
    pub fn check(&mut self, now: Sample) -> Verdict {
        let Some(last) = self.last.replace(now) else {
            return if now.camera.is_some() { Verdict::CameraIdle } else { Verdict::CameraAbsent };
        };
        let frames = now.frames_handled.wrapping_sub(last.frames_handled);
        if frames > 0 {
            return Verdict::Flowing { frames };
        }
        match (last.camera, now.camera) {
            (_, None) => Verdict::CameraAbsent,
            (Some(before), Some(after)) if before.inode == after.inode => {
                let camera_frames = after.write_index.wrapping_sub(before.write_index);
                if camera_frames >= WEDGE_MIN_FRAMES {
                    Verdict::Wedged { camera_frames }
                } else {
                    Verdict::CameraIdle
                }
            }
            // Appeared or replaced during the interval: the reader may still
            // be attaching, which is not a wedge.
            _ => Verdict::CameraIdle,
        }
    }
}

/// Samples one ring path's media thread and the camera segment it reads.
pub fn sample(stream: &Stream, config: &ReaderConfig) -> Sample {
    let frames_handled =
        stream.source.frames_read.load(Ordering::Relaxed).wrapping_add(stream.metrics.read_errors.get());
    // Mapping without touching the pages costs a few page-table entries;
    // any error (missing, wrong size for the layout) means no camera to
    // compare with, and the reader reports those errors itself.
    let camera = Segment::open(&config.name, config.layout)
        .ok()
        .map(|segment| CameraMark { inode: segment.inode(), write_index: segment.write_index() });
    Sample { frames_handled, camera }
}

/// Starts the watchdog thread if systemd asked for one (`$WATCHDOG_USEC`);
/// it pings every half interval while every ring path's media thread keeps
/// up (an idle on-demand path is not sampled), and stops on shutdown.
/// `None` when no watchdog is wanted.
pub fn spawn_watchdog(
    notifier: &Notifier,
    rings: Vec<(Stream, ReaderConfig)>,
    shutdown: Shutdown,
) -> io::Result<Option<JoinHandle<()>>> {
    if !notifier.is_enabled() {
        return Ok(None);
    }
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    let interval = match watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id()) {
        Ok(Some(interval)) => interval,
        Ok(None) => return Ok(None),
        Err(error) => {
            log::warn!("systemd: no watchdog: {error}");
            return Ok(None);
        }
    };
    let period = interval / 2;
    log::info!("systemd: watchdog every {period:?} (WatchdogSec {interval:?}), fed by the media path");
    let notifier = notifier.clone();
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            run_watchdog(&notifier, period, &shutdown, || {
                rings
                    .iter()
                    .map(|(stream, config)| {
                        let running = stream.source.running.load(Ordering::Relaxed);
                        running.then(|| sample(stream, config))
                    })
                    .collect()
            })
        })
        .map(Some)
}

/// The watchdog loop: sample every ring (`None` for one not running now),
/// judge each, ping only when none is wedged, every `period`.
pub fn run_watchdog(
    notifier: &Notifier,
    period: Duration,
    shutdown: &Shutdown,
    mut probe: impl FnMut() -> Vec<Option<Sample>>,
) {
    let mut judges: Vec<Judge> = Vec::new();
    let mut send_log = RateLimiter::new(Duration::from_secs(60));
    let mut was_wedged = false;
    let mut started = Instant::now();
    loop {
        let samples = probe();
        judges.resize_with(samples.len(), Judge::default);
        let verdicts: Vec<Verdict> = samples
            .into_iter()
            .zip(judges.iter_mut())
            .filter_map(|(sample, judge)| match sample {
                Some(sample) => Some(judge.check(sample)),
                None => {
                    // Not running: start afresh when it runs again.
                    *judge = Judge::default();
                    None
                }
            })
            .collect();
        // The worst verdict speaks: a wedge anywhere, else the first path.
        let verdict = verdicts
            .iter()
            .copied()
            .find(|v| !v.healthy())
            .or_else(|| verdicts.first().copied())
            .unwrap_or(Verdict::CameraIdle);
        let status = verdict.status(started.elapsed().max(Duration::from_millis(1)));
        started = Instant::now();
        let message = if verdict.healthy() {
            if was_wedged {
                log::warn!("systemd watchdog: media path moving again ({status})");
            }
            format!("WATCHDOG=1\nSTATUS={status}")
        } else {
            if !was_wedged {
                log::error!("systemd watchdog: {status}; withholding WATCHDOG=1 so systemd restarts us");
            }
            format!("STATUS={status}")
        };
        was_wedged = !verdict.healthy();
        if let Err(error) = notifier.notify(&message) {
            warn_limited!(send_log, "systemd: watchdog notify failed: {error}");
        }
        if shutdown.wait_timeout(period) {
            break;
        }
    }
    log::debug!("watchdog thread stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(frames_handled: u64, camera: Option<(u64, u32)>) -> Sample {
        Sample { frames_handled, camera: camera.map(|(inode, write_index)| CameraMark { inode, write_index }) }
    }

    #[test]
    fn frames_flowing_is_healthy() {
        let mut judge = Judge::default();
        assert_eq!(judge.check(sample(0, Some((7, 0)))), Verdict::CameraIdle);
        assert_eq!(judge.check(sample(30, Some((7, 30)))), Verdict::Flowing { frames: 30 });
    }

    #[test]
    fn camera_writing_while_nothing_is_read_is_a_wedge() {
        let mut judge = Judge::default();
        judge.check(sample(100, Some((7, 100))));
        let verdict = judge.check(sample(100, Some((7, 130))));
        assert_eq!(verdict, Verdict::Wedged { camera_frames: 30 });
        assert!(!verdict.healthy());
        // write_index wraps at 2^32.
        let mut judge = Judge::default();
        judge.check(sample(5, Some((7, u32::MAX - 1))));
        assert_eq!(judge.check(sample(5, Some((7, 8)))), Verdict::Wedged { camera_frames: 10 });
    }

    #[test]
    fn a_stopped_or_restarting_camera_is_not_a_wedge() {
        let mut judge = Judge::default();
        judge.check(sample(100, Some((7, 100))));
        assert_eq!(judge.check(sample(100, None)), Verdict::CameraAbsent);
        assert_eq!(judge.check(sample(100, Some((8, 60)))), Verdict::CameraIdle, "new segment: reader attaching");
        assert_eq!(judge.check(sample(100, Some((8, 61)))), Verdict::CameraIdle, "one frame is not enough");
        assert!(judge.check(sample(100, Some((8, 61)))).healthy());
    }

    #[test]
    fn watchdog_env_parsing() {
        assert_eq!(watchdog_interval(None, None, 1), Ok(None));
        assert_eq!(watchdog_interval(Some("30000000"), None, 1), Ok(Some(Duration::from_secs(30))));
        assert_eq!(watchdog_interval(Some("30000000"), Some("42"), 42), Ok(Some(Duration::from_secs(30))));
        assert_eq!(watchdog_interval(Some("30000000"), Some("41"), 42), Ok(None), "for another process");
        assert_eq!(watchdog_interval(Some("0"), None, 1), Ok(None));
        assert!(watchdog_interval(Some("soon"), None, 1).is_err());
        assert!(watchdog_interval(Some("5"), Some("x"), 1).is_err());
    }

    #[test]
    fn notifier_sends_datagrams_to_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::for_socket(path.to_str()).unwrap();
        notifier.ready("serving\nhttp");
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving http");

        let name = format!("streaming-server-test-{}", std::process::id());
        let receiver = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        Notifier::for_socket(Some(&format!("@{name}"))).unwrap().stopping();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn notifier_is_off_without_a_socket_and_rejects_odd_addresses() {
        let off = Notifier::for_socket(None).unwrap();
        assert!(!off.is_enabled());
        assert!(off.notify("READY=1").is_ok());
        assert!(!Notifier::for_socket(Some("")).unwrap().is_enabled());
        assert!(Notifier::for_socket(Some("vsock:2:1234")).is_err());
    }
}
