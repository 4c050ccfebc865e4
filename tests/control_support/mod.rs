//! HTTP helpers shared by the control-plane, recorder and observability
//! tests: a plain client (ureq) and a raw-socket one for what a well-behaved
//! client would never send.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// Asserts an error answer: the status, JSON content type, an "error" string.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        assert!(self.json()["error"].is_string(), "{}", self.text());
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build()
}

/// One request with ureq; any status is an answer, not an error.
pub fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
    try_call(method, url, headers, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// GET that reports a refused or reset connection instead of panicking.
pub fn try_get(url: &str) -> Option<Answer> {
    try_call("GET", url, &[], None).ok()
}

/// Like [`call`], with transport errors returned.
pub fn try_call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<Answer, String> {
    let mut request = agent().request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        Some(body) => request.send_bytes(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => return Err(e.to_string()),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = response.header(&name).unwrap_or("").to_string();
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    let mut body = Vec::new();
    response.into_reader().take(64 << 20).read_to_end(&mut body).map_err(|e| e.to_string())?;
    Ok(Answer { status, headers, body })
}

pub fn get(url: &str) -> Answer {
    call("GET", url, &[], None)
}

pub fn post(url: &str, body: &[u8]) -> Answer {
    call("POST", url, &[], Some(body))
}

/// Sends `raw` bytes as they are and reads the answer until the server
/// closes or `timeout` passes. Returns the status (0 if none) and all text.
pub fn raw(addr: SocketAddr, raw: &[u8], timeout: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(raw).expect("send");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub use crate::common::in_ci;

/// Whether `tool` runs; in CI its absence fails the test, elsewhere the
/// caller skips with a loud message.
pub fn have_tool(tool: &str) -> bool {
    // ffmpeg and ffprobe take -version, GStreamer's tools --version.
    let runs = |flag: &str| {
        std::process::Command::new(tool)
            .arg(flag)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = runs("-version") || runs("--version");
    if !ok {
        assert!(!in_ci(), "{tool} is missing in CI (scripts/test.sh installs it)");
        eprintln!("SKIPPING: {tool} is not installed");
    }
    ok
}

/// The browser tests' tools: tests/browser (with playwright-core
/// installed) and Chromium (`STREAMING_TEST_CHROMIUM`, default
/// /usr/bin/chromium). None, with a note, where they are missing (in CI
/// that fails the test).
pub fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium =
        PathBuf::from(std::env::var("STREAMING_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if !chromium.exists() || !browser_dir.join("node_modules/playwright-core").exists() {
        assert!(!in_ci(), "Chromium and playwright-core are installed in CI (scripts/test.sh)");
        eprintln!("SKIPPING: no Chromium or playwright-core");
        return None;
    }
    Some((browser_dir, chromium))
}

/// `ffmpeg -v error` decoding the whole file: no output means no errors.
/// ffmpeg's demuxer for a raw elementary stream, by its extension.
fn raw_format(path: &Path) -> &'static str {
    if path.extension().is_some_and(|e| e == "h265") {
        "hevc"
    } else {
        "h264"
    }
}

pub fn ffmpeg_errors(path: &Path) -> String {
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-f", raw_format(path), "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Frames ffprobe counts, and whether the first one is a keyframe.
pub fn ffprobe_frames(path: &Path) -> (u64, bool) {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-f", raw_format(path), "-select_streams", "v:0"])
        .args(["-show_entries", "frame=key_frame,pict_type"])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let first_key = lines.first().is_some_and(|l| l.split(',').next() == Some("1"));
    (lines.len() as u64, first_key)
}

/// Checks that `recording` is a run of consecutive access units of the
/// looped `clip`, starting at one of its IDRs and ending on an access-unit
/// boundary. Returns the number of access units.
pub fn assert_run_of_clip(recording: &[u8], clip: &[u8]) -> u64 {
    let units: Vec<&[u8]> =
        streaming_server::codec::h264::split_access_units(clip).into_iter().map(|r| &clip[r]).collect();
    assert!(!units.is_empty());
    let is_idr = |au: &[u8]| {
        streaming_server::codec::h264::split_annexb(au).into_iter().any(|r| {
            streaming_server::codec::h264::nal_unit_type(&au[r]) == streaming_server::codec::h264::nal_type::IDR
        })
    };
    let start = (0..units.len())
        .find(|&i| is_idr(units[i]) && recording.starts_with(units[i]))
        .unwrap_or_else(|| panic!("the recording does not start with an IDR access unit of the clip"));
    let (mut offset, mut count, mut i) = (0usize, 0u64, start);
    while offset < recording.len() {
        let au = units[i % units.len()];
        let end = offset + au.len();
        assert!(end <= recording.len(), "the recording ends inside access unit {count} (clip AU {})", i % units.len());
        assert!(
            recording[offset..end] == *au,
            "access unit {count} of the recording differs from clip AU {} (skipped or repeated frame?)",
            i % units.len()
        );
        offset = end;
        count += 1;
        i += 1;
    }
    count
}

/// The files in `dir` but the recorder's hidden capture-time sidecars
/// (`.NAME.times`, beside each recording).
pub fn recording_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

/// The only recording in `dir`.
pub fn only_file(dir: &Path) -> PathBuf {
    let files = recording_files(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Parses the Prometheus text format: `name{labels}` -> value. Panics on a
/// line that is neither a comment nor a sample.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let name_end = key.find('{').unwrap_or(key.len());
        let name = &key[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < key.len() {
            assert!(key.ends_with('}'), "bad labels in {line:?}");
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.insert(key.to_string(), value);
    }
    samples
}

/// Like [`assert_run_of_clip`] for a stream with gaps (camera restarts):
/// every access unit is the clip's next one, or, after a gap, one of the
/// clip's IDR access units, never a P-frame without its reference.
/// Returns (access units, gaps).
pub fn assert_idr_after_every_gap(recording: &[u8], clip: &[u8]) -> (u64, u64) {
    use streaming_server::codec::h264::{nal_type, nal_unit_type, split_access_units, split_annexb};
    let units: Vec<&[u8]> = split_access_units(clip).into_iter().map(|r| &clip[r]).collect();
    let idrs: Vec<usize> = (0..units.len())
        .filter(|&i| split_annexb(units[i]).into_iter().any(|r| nal_unit_type(&units[i][r]) == nal_type::IDR))
        .collect();
    let (mut offset, mut count, mut gaps) = (0usize, 0u64, 0u64);
    let mut previous: Option<usize> = None;
    while offset < recording.len() {
        let rest = &recording[offset..];
        let next = previous.map(|p| (p + 1) % units.len()).filter(|&n| rest.starts_with(units[n]));
        let index = match next {
            Some(n) => n,
            None => {
                let idr = idrs.iter().copied().find(|&i| rest.starts_with(units[i])).unwrap_or_else(|| {
                    panic!("access unit {count} (byte {offset}) is neither the next clip frame nor an IDR")
                });
                if previous.is_some() {
                    gaps += 1;
                }
                idr
            }
        };
        offset += units[index].len();
        count += 1;
        previous = Some(index);
    }
    (count, gaps)
}

/// Like [`assert_run_of_clip`] for a stream that crossed RTP: RTP carries
/// NAL units without their start codes, so a receiver writes every start
/// code with 4 bytes. Each access unit of `recording` must have exactly the
/// NAL units, byte for byte and in order, of the next access unit of the
/// looped `clip`, starting at one of its IDRs. Returns the number of
/// access units.
pub fn assert_nal_run_of_clip(recording: &[u8], clip: &[u8]) -> u64 {
    nal_run_of_clip(streaming_server::codec::Codec::H264, recording, clip, true, &|_| true)
}

/// [`assert_nal_run_of_clip`] for a clip of `codec` that may carry its
/// parameter sets only once: the recorder puts them in front of the first
/// keyframe (and the source may repeat them at every keyframe), so
/// parameter sets are compared apart: each in the recording must be one of
/// the clip's, the first access unit must have them, and every other NAL
/// unit must be the clip's, in order.
pub fn assert_nal_run_of_clip_in(codec: streaming_server::codec::Codec, recording: &[u8], clip: &[u8]) -> u64 {
    nal_run_of_clip(codec, recording, clip, false, &|_| true)
}

/// [`assert_nal_run_of_clip_in`] for a stream that went through MP4
/// (HLS, `?format=mp4`): MP4 samples leave out access unit delimiters and
/// filler data (`mp4::sample::keep_in_sample`), so those are left out of
/// the clip too before comparing.
pub fn assert_nal_run_of_clip_through_mp4(codec: streaming_server::codec::Codec, stream: &[u8], clip: &[u8]) -> u64 {
    nal_run_of_clip(codec, stream, clip, false, &|nal| streaming_server::mp4::sample::keep_in_sample(codec, nal))
}

fn nal_run_of_clip(
    codec: streaming_server::codec::Codec,
    recording: &[u8],
    clip: &[u8],
    exact: bool,
    keep: &dyn Fn(&[u8]) -> bool,
) -> u64 {
    use streaming_server::codec::annexb::split_annexb;
    let nals = |au: &[u8]| -> Vec<Vec<u8>> {
        split_annexb(au).into_iter().map(|r| au[r].to_vec()).filter(|nal| keep(nal)).collect()
    };
    let units: Vec<Vec<Vec<u8>>> = codec.split_access_units(clip).into_iter().map(|r| nals(&clip[r])).collect();
    let got: Vec<Vec<Vec<u8>>> = codec.split_access_units(recording).into_iter().map(|r| nals(&recording[r])).collect();
    assert!(!units.is_empty() && !got.is_empty());
    let parameter_sets: Vec<&Vec<u8>> = units.iter().flatten().filter(|n| codec.is_parameter_set(n)).collect();
    let without = |au: &[Vec<u8>]| -> Vec<Vec<u8>> {
        au.iter().filter(|n| exact || !codec.is_parameter_set(n)).cloned().collect()
    };
    for (count, au) in got.iter().enumerate() {
        for nal in au.iter().filter(|n| codec.is_parameter_set(n)) {
            assert!(parameter_sets.contains(&nal), "access unit {count} has a parameter set the clip does not");
        }
    }
    if !parameter_sets.is_empty() {
        assert!(got[0].iter().any(|n| codec.is_parameter_set(n)), "the recording starts without parameter sets");
    }
    let is_idr = |au: &[Vec<u8>]| au.iter().any(|n| codec.is_keyframe_nal(n));
    let start = (0..units.len())
        .find(|&i| is_idr(&units[i]) && without(&units[i]) == without(&got[0]))
        .unwrap_or_else(|| panic!("the recording does not start with an IDR access unit of the clip"));
    for (count, au) in got.iter().enumerate() {
        let want = &units[(start + count) % units.len()];
        assert!(
            without(au) == without(want),
            "access unit {count} of the recording differs from clip AU {} (skipped or repeated frame?)",
            (start + count) % units.len()
        );
    }
    got.len() as u64
}

/// The entry of path `name` in the server's `/paths`.
pub fn path_named(server: &crate::common::Server, name: &str) -> Value {
    let list = get(&server.url("http", "/paths")).json();
    list["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no path {name}: {list}"))
}
