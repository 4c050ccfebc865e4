//! Test harness: the Python RTSP server, the source under test, clip
//! parsing, and log capture.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use streaming_server::source::rtsp::{RtspConfig, SourceEvent, VideoCodec};
use tokio::sync::{mpsc, oneshot};
use url::Url;

pub const DEMO_CLIP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.h264");

/// The project's demo clip: the copy in the main tree, or `RTSP_TEST_CLIP`.
pub fn demo_clip() -> PathBuf {
    std::env::var_os("RTSP_TEST_CLIP").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEMO_CLIP))
}

/// A Python with GStreamer's introspection bindings (python3-gi): the
/// system one, not a pyenv/venv shim.
fn python() -> String {
    std::env::var("RTSP_TEST_PYTHON").unwrap_or_else(|_| {
        if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3".into()
        } else {
            "python3".into()
        }
    })
}

/// `tests/rtsp_server.py`, running until dropped (SIGTERM) or killed.
pub struct Server {
    /// None once reaped (killed): never signal a PID that may be reused.
    child: Option<Child>,
    pub url: Url,
    pub port: u16,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rtsp_server.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/rtsp_server.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read server banner");
        let url = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("server said {line:?}"));
        let url = Url::parse(url).expect("server URL");
        let port = url.port().expect("port");
        Server { child: Some(child), url, port }
    }

    /// The URL with credentials in its userinfo.
    pub fn url_with(&self, user: &str, password: &str) -> Url {
        let mut url = self.url.clone();
        url.set_username(user).unwrap();
        url.set_password(Some(password)).unwrap();
        url
    }

    /// SIGKILL, like a crash: no TEARDOWN answered, sockets reset.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SIGTERM: the script exits 0 at once; SIGKILL if it does not.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// An event and when the test received it.
pub type Timed = (Instant, SourceEvent);

/// `streaming_server::source::rtsp::run` in a task, its events in a channel.
pub struct Source {
    pub events: mpsc::UnboundedReceiver<Timed>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub started: Instant,
}

impl Source {
    pub fn start(config: RtspConfig) -> Source {
        let (tx, events) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let started = Instant::now();
        let task = tokio::spawn(streaming_server::source::rtsp::run(
            config,
            move |event| {
                let _ = tx.send((Instant::now(), event));
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        Source { events, stop: Some(stop_tx), task, started }
    }

    /// The next event, or None after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Timed> {
        tokio::time::timeout(timeout, self.events.recv()).await.ok().flatten()
    }

    /// Events until `done` says so (the matching event included); panics
    /// with what came if `timeout` passes first.
    pub async fn until(&mut self, timeout: Duration, mut done: impl FnMut(&[Timed]) -> bool) -> Vec<Timed> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    got.push(event);
                    if done(&got) {
                        return got;
                    }
                }
                _ => panic!("timed out after {timeout:?}; got {}", summary(&got)),
            }
        }
    }

    /// Stops the source; returns how long `run` took to return.
    pub async fn stop(mut self) -> Duration {
        let t = Instant::now();
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("run returns after stop")
            .expect("run did not panic");
        t.elapsed()
    }
}

pub fn frames(events: &[Timed]) -> usize {
    events.iter().filter(|(_, e)| matches!(e, SourceEvent::Frame { .. })).count()
}

/// One line per event kind, for failure messages.
pub fn summary(events: &[Timed]) -> String {
    let mut out = Vec::new();
    let mut frames = 0;
    for (_, e) in events {
        match e {
            SourceEvent::Frame { .. } => frames += 1,
            other => {
                if frames > 0 {
                    out.push(format!("{frames} frames"));
                    frames = 0;
                }
                out.push(match other {
                    SourceEvent::Error { error, retry_in } => format!("Error({error}, retry {retry_in:?})"),
                    other => format!("{other:?}"),
                });
            }
        }
    }
    if frames > 0 {
        out.push(format!("{frames} frames"));
    }
    out.join("; ")
}

/// Config for `url` with test-friendly defaults.
pub fn config(url: Url) -> RtspConfig {
    RtspConfig::new(url)
}

// ---- Annex-B ----

/// NAL unit payload ranges (no start codes, trailing zero bytes trimmed).
pub fn nal_ranges(data: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            starts.push(i);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).copied().unwrap_or(data.len());
        while end > s + 3 && data[end - 1] == 0 {
            end -= 1;
        }
        if end > s + 3 {
            out.push(s + 3..end);
        }
    }
    out
}

/// NAL unit payloads (no start codes, trailing zero bytes trimmed).
pub fn nals(data: &[u8]) -> Vec<&[u8]> {
    nal_ranges(data).into_iter().map(|r| &data[r]).collect()
}

/// Every start code is the 4-byte `00 00 00 01`, the first at offset 0.
pub fn has_only_four_byte_start_codes(data: &[u8]) -> bool {
    if !data.starts_with(&[0, 0, 0, 1]) {
        return false;
    }
    (0..data.len().saturating_sub(2)).filter(|&i| data[i..i + 3] == [0, 0, 1]).all(|i| i >= 1 && data[i - 1] == 0)
}

pub fn nal_type(codec: VideoCodec, nal: &[u8]) -> u8 {
    match codec {
        VideoCodec::H264 => nal[0] & 0x1f,
        VideoCodec::H265 => (nal[0] >> 1) & 0x3f,
    }
}

pub fn is_aud(codec: VideoCodec, nal: &[u8]) -> bool {
    nal_type(codec, nal) == if codec == VideoCodec::H264 { 9 } else { 35 }
}

pub fn is_parameter_set(codec: VideoCodec, nal: &[u8]) -> bool {
    match codec {
        VideoCodec::H264 => matches!(nal_type(codec, nal), 7 | 8),
        VideoCodec::H265 => matches!(nal_type(codec, nal), 32..=34),
    }
}

pub fn is_keyframe(codec: VideoCodec, au: &[&[u8]]) -> bool {
    au.iter().any(|nal| match codec {
        VideoCodec::H264 => nal_type(codec, nal) == 5,
        VideoCodec::H265 => (16..=21).contains(&nal_type(codec, nal)),
    })
}

/// A clip's access units as NAL lists. Both test clips have an AUD first
/// in every access unit (demo.h264 by construction, the H.265 clip from
/// x265's `aud=1`), so splitting at AUDs is exact; asserted here.
pub struct Clip {
    pub codec: VideoCodec,
    data: Vec<u8>,
    nals: Vec<std::ops::Range<usize>>,
    /// Access units as ranges of `nals` indices.
    aus: Vec<std::ops::Range<usize>>,
}

impl Clip {
    pub fn load(path: &Path, codec: VideoCodec) -> Clip {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let nals = nal_ranges(&data);
        assert!(nals.first().is_some_and(|r| is_aud(codec, &data[r.clone()])), "clip must start with an AUD");
        let aud_at: Vec<usize> = (0..nals.len()).filter(|&k| is_aud(codec, &data[nals[k].clone()])).collect();
        let aus =
            aud_at.iter().enumerate().map(|(i, &k)| k..aud_at.get(i + 1).copied().unwrap_or(nals.len())).collect();
        Clip { codec, data, nals, aus }
    }

    pub fn au(&self, i: usize) -> Vec<&[u8]> {
        self.nals[self.aus[i % self.aus.len()].clone()].iter().map(|r| &self.data[r.clone()]).collect()
    }

    pub fn len(&self) -> usize {
        self.aus.len()
    }

    /// The parameter sets of the clip's first access unit, in order.
    pub fn parameter_sets(&self) -> Vec<&[u8]> {
        self.au(0).into_iter().filter(|n| is_parameter_set(self.codec, n)).collect()
    }
}

/// Checks received frames against the clip; returns the clip index each
/// run started at. `runs` are runs of (data, is_random_access) between
/// gaps.
///
/// The rule: every frame has only 4-byte start codes and equals its clip
/// access unit NAL unit for NAL unit, byte for byte (AUD and SEI included:
/// rtph264pay and rtph265pay 1.22 send them as they are; retina strips the
/// in-band parameter sets and the source restores them right after the AUD
/// of every keyframe, where the test clips have them); a run of
/// consecutive frames maps to consecutive clip access units (looping) and
/// starts at a keyframe carrying the clip's parameter sets.
pub fn check_byte_exact(clip: &Clip, runs: &[Vec<(bytes::Bytes, bool)>]) -> Vec<usize> {
    let codec = clip.codec;
    let mut starts = Vec::new();
    for run in runs {
        let (first, first_rap) = &run[0];
        assert!(*first_rap, "a run starts at a random-access frame");
        let first_nals = nals(first);
        assert!(is_aud(codec, first_nals[0]), "AUD first");
        let n_ps = clip.parameter_sets().len();
        assert_eq!(first_nals[1..1 + n_ps].to_vec(), clip.parameter_sets(), "parameter sets right after the AUD");
        let start = (0..clip.len())
            .find(|&i| clip.au(i) == first_nals)
            .expect("the first frame of a run is a clip access unit");
        starts.push(start);
        for (j, (data, rap)) in run.iter().enumerate() {
            assert!(has_only_four_byte_start_codes(data), "frame {j}: start codes");
            let got = nals(data);
            let want = clip.au(start + j);
            assert_eq!(got, want, "frame {j} of run (clip access unit {})", (start + j) % clip.len());
            assert_eq!(*rap, is_keyframe(codec, &want), "frame {j}: is_random_access");
        }
    }
    starts
}

/// Splits events into runs of frames separated by Gap events.
pub fn runs(events: &[Timed]) -> Vec<Vec<(bytes::Bytes, bool)>> {
    let mut runs: Vec<Vec<(bytes::Bytes, bool)>> = vec![Vec::new()];
    for (_, e) in events {
        match e {
            SourceEvent::Frame { data, is_random_access, .. } => {
                runs.last_mut().unwrap().push((data.clone(), *is_random_access))
            }
            SourceEvent::Gap { .. } if !runs.last().unwrap().is_empty() => runs.push(Vec::new()),
            _ => {}
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

// ---- logs ----

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static LOGGER_INIT: Once = Once::new();

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        if std::env::var_os("RTSP_TEST_LOG").is_some() && record.level() <= log::Level::Debug {
            eprintln!("{line}");
        }
        LOGS.lock().unwrap().push(line);
    }

    fn flush(&self) {}
}

/// Captures every log record (trace included) of this test binary.
pub fn capture_logs() {
    LOGGER_INIT.call_once(|| {
        log::set_logger(&Capture).expect("no other logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Captured lines containing `needle`.
pub fn logs_containing(needle: &str) -> Vec<String> {
    LOGS.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
}

pub fn all_logs() -> Vec<String> {
    LOGS.lock().unwrap().clone()
}
