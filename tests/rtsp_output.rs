//! The RTSP server against real clients and the real binary on 127.0.0.1:
//! ffmpeg/ffprobe over TCP-interleaved and UDP, GStreamer's `rtspsrc`,
//! H.264 and H.265, ten clients at once, a TCP client that stops reading
//! (dropped without stalling an ffmpeg client or a WebRTC viewer on the
//! same path), auth on and off, session timeouts and keep-alives, RTCP
//! sender reports, and malformed requests. Every received stream is
//! compared NAL unit by NAL unit with the clip the camera plays.

mod common;
mod control_support;
mod h265_support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control_support::*;
use serde_json::Value;
use streaming_server::codec::Codec;

fn start(args: &[&str]) -> common::Server {
    let records = tempfile::tempdir().unwrap().keep();
    let mut all = vec!["-http", "127.0.0.1:0", "-metrics", "127.0.0.1:0", "-pprof", "", "-rtsp", "127.0.0.1:0"];
    all.extend(["-webrtc-ip", "127.0.0.1", "-record-path", records.to_str().unwrap()]);
    all.extend_from_slice(args);
    common::Server::start(&all, &["http", "metrics", "rtsp"])
}

fn rtsp_url(server: &common::Server, path: &str) -> String {
    format!("rtsp://{}/{path}", server.addrs["rtsp"])
}

fn wait_ready(server: &common::Server, name: &str) {
    wait_until(Duration::from_secs(20), || {
        (control_support::path_named(server, name)["state"] == "ready").then_some(())
    })
    .unwrap_or_else(|| panic!("{name} never ready:\n{}", server.proc.log()));
}

fn metrics(server: &common::Server) -> HashMap<String, f64> {
    parse_metrics(&get(&server.url("metrics", "/metrics")).text())
}

/// `clip` without the NAL units RTP does not carry (access unit
/// delimiters, filler), start codes made 4 bytes: what a receiver writes.
fn as_sent(codec: Codec, stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stream.len());
    for range in streaming_server::codec::annexb::split_annexb(stream) {
        let nal = &stream[range];
        if streaming_server::rtp::is_sent(codec, nal) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
    }
    out
}

/// `received` is a run of the looped `clip` from a keyframe, NAL unit by
/// NAL unit; returns its access units.
fn assert_is_the_clip(codec: Codec, received: &[u8], clip: &Path) -> u64 {
    assert!(!received.is_empty(), "nothing received");
    let clip = std::fs::read(clip).unwrap();
    assert_nal_run_of_clip_in(codec, &as_sent(codec, received), &as_sent(codec, &clip))
}

/// `ffmpeg -rtsp_transport T -i URL -c copy -f h264|hevc FILE` for `seconds`.
fn ffmpeg_pull(url: &str, transport: &str, codec: Codec, seconds: &str, out: &Path) -> Child {
    let format = if codec == Codec::H265 { "hevc" } else { "h264" };
    Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-rtsp_transport", transport, "-i", url, "-t", seconds])
        .args(["-c", "copy", "-f", format, "-y"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ffmpeg")
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn ffprobe_stream(url: &str, transport: &str) -> Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-rtsp_transport", transport, "-show_streams", "-of", "json", url])
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe {url}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["streams"][0].clone()
}

#[test]
fn ffmpeg_over_tcp_and_udp_receives_the_h264_clip_byte_for_byte() {
    if !have_tool("ffmpeg") {
        return;
    }
    let server = start(&["-demo"]);
    wait_ready(&server, "cam");
    let url = rtsp_url(&server, "cam");
    let probe = ffprobe_stream(&url, "tcp");
    assert_eq!((probe["codec_name"].as_str(), probe["width"].as_u64()), (Some("h264"), Some(640)), "{probe}");
    let dir = tempfile::tempdir().unwrap();
    for transport in ["tcp", "udp"] {
        let file = dir.path().join(format!("{transport}.h264"));
        finish(ffmpeg_pull(&url, transport, Codec::H264, "4", &file), &format!("ffmpeg over {transport}"));
        let units = assert_is_the_clip(Codec::H264, &std::fs::read(&file).unwrap(), &common::demo_clip());
        assert!(units >= 90, "{transport}: {units} access units in 4 s");
    }
    let m = metrics(&server);
    assert!(m["streaming_path_rtsp_sessions_total{path=\"cam\"}"] >= 2.0, "{m:?}");
    assert!(m["streaming_path_rtsp_frames_sent_total{path=\"cam\"}"] >= 180.0, "{m:?}");
    assert!(m["streaming_rtsp_frames_sent_total"] >= 180.0, "the legacy twin");
    // 8 s of a ~0.5 Mbit/s clip to two clients, headers included.
    assert!(m["streaming_path_rtsp_bytes_sent_total{path=\"cam\"}"] >= 400_000.0, "{m:?}");
    // Both clients said TEARDOWN: nobody is left playing.
    wait_until(Duration::from_secs(5), || {
        (control_support::path_named(&server, "cam")["rtsp_clients"] == 0).then_some(())
    })
    .expect("rtsp_clients back to 0");
}

#[test]
fn h265_over_tcp_and_udp_is_the_clip_with_vps_sps_pps_in_the_sdp() {
    if !have_tool("ffmpeg") {
        return;
    }
    let server = start(&["-demo", "-demo-codec", "h265"]);
    wait_ready(&server, "cam");
    let url = rtsp_url(&server, "cam");
    let mut client = RawRtsp::connect(&server);
    let (status, headers, body) = client.request("DESCRIBE", &url, &[("Accept", "application/sdp")]);
    assert_eq!(status, 200, "{headers:?}");
    let sdp = String::from_utf8(body).unwrap();
    assert!(sdp.contains("a=rtpmap:96 H265/90000") && sdp.contains("sprop-vps="), "{sdp}");
    assert!(sdp.contains("sprop-sps=") && sdp.contains("sprop-pps=") && sdp.contains("a=control:trackID=0"), "{sdp}");
    assert_eq!(headers.get("content-base").map(String::as_str), Some(format!("{url}/").as_str()));
    let probe = ffprobe_stream(&url, "udp");
    assert_eq!(probe["codec_name"], "hevc", "{probe}");
    let dir = tempfile::tempdir().unwrap();
    for transport in ["tcp", "udp"] {
        let file = dir.path().join(format!("{transport}.h265"));
        finish(ffmpeg_pull(&url, transport, Codec::H265, "4", &file), &format!("ffmpeg over {transport}"));
        let units =
            assert_is_the_clip(Codec::H265, &std::fs::read(&file).unwrap(), &common::crate_file("assets/demo.h265"));
        assert!(units >= 90, "{transport}: {units} access units");
    }
    if have_tool("gst-launch-1.0") {
        let file = dir.path().join("gst.h265");
        let log = gstreamer_pull(&url, "tcp", Codec::H265, &[], 5, &file);
        let received = std::fs::read(&file).unwrap_or_default();
        assert!(!received.is_empty(), "GStreamer wrote nothing:\n{log}");
        let units = assert_is_the_clip(Codec::H265, &received, &common::crate_file("assets/demo.h265"));
        assert!(units >= 60, "GStreamer: {units} access units\n{log}");
    }
}

/// `gst-launch-1.0 -e rtspsrc ... ! depay ! filesink` for `seconds`, then
/// SIGINT (an EOS that flushes the file).
fn gstreamer_pull(url: &str, protocols: &str, codec: Codec, extra: &[&str], seconds: u64, out: &Path) -> String {
    let (depay, caps) = match codec {
        Codec::H264 => ("rtph264depay", "video/x-h264,stream-format=byte-stream,alignment=au"),
        Codec::H265 => ("rtph265depay", "video/x-h265,stream-format=byte-stream,alignment=au"),
    };
    let mut child = Command::new("gst-launch-1.0")
        .args(["-e", "rtspsrc", &format!("location={url}"), &format!("protocols={protocols}"), "latency=200"])
        .args(extra)
        .args(["!", depay, "!", caps, "!", "filesink", &format!("location={}", out.display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gst-launch-1.0");
    std::thread::sleep(Duration::from_secs(seconds));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn gstreamer_rtspsrc_over_tcp_and_udp_receives_the_clip() {
    if !have_tool("gst-launch-1.0") {
        return;
    }
    let server = start(&["-demo"]);
    wait_ready(&server, "cam");
    let dir = tempfile::tempdir().unwrap();
    for protocols in ["tcp", "udp"] {
        let file = dir.path().join(format!("gst-{protocols}.h264"));
        let log = gstreamer_pull(&rtsp_url(&server, "cam"), protocols, Codec::H264, &[], 5, &file);
        let received = std::fs::read(&file).unwrap_or_default();
        assert!(!received.is_empty(), "GStreamer over {protocols} wrote nothing:\n{log}\n{}", server.proc.log());
        let units = assert_is_the_clip(Codec::H264, &received, &common::demo_clip());
        assert!(units >= 60, "{protocols}: {units} access units\n{log}");
    }
}

#[test]
fn ten_clients_at_once_each_get_the_whole_clip_and_show_in_paths() {
    if !have_tool("ffmpeg") {
        return;
    }
    let server = start(&["-demo"]);
    wait_ready(&server, "cam");
    let dir = tempfile::tempdir().unwrap();
    let url = rtsp_url(&server, "cam");
    let clients: Vec<(PathBuf, Child)> = (0..10)
        .map(|i| {
            let transport = if i % 2 == 0 { "tcp" } else { "udp" };
            let file = dir.path().join(format!("{i}-{transport}.h264"));
            let child = ffmpeg_pull(&url, transport, Codec::H264, "6", &file);
            (file, child)
        })
        .collect();
    let all_playing = wait_until(Duration::from_secs(15), || {
        let path = control_support::path_named(&server, "cam");
        (path["rtsp_clients"] == 10).then_some(path)
    });
    assert!(all_playing.is_some(), "never 10 RTSP clients in /paths: {}", control_support::path_named(&server, "cam"));
    let m = metrics(&server);
    assert_eq!(m["streaming_path_rtsp_clients{path=\"cam\"}"], 10.0);
    for (file, child) in clients {
        finish(child, "ffmpeg");
        let units = assert_is_the_clip(Codec::H264, &std::fs::read(&file).unwrap(), &common::demo_clip());
        assert!(units >= 120, "{}: {units} access units in 6 s", file.display());
    }
    let m = metrics(&server);
    assert_eq!(m["streaming_path_rtsp_frames_dropped_total{path=\"cam\"}"], 0.0, "nobody fell behind");
}

/// A hand-driven RTSP client for what real clients never send.
struct RawRtsp {
    stream: TcpStream,
    cseq: u32,
    buf: Vec<u8>,
}

impl RawRtsp {
    fn connect(server: &common::Server) -> RawRtsp {
        let stream = TcpStream::connect(server.addrs["rtsp"]).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        RawRtsp { stream, cseq: 0, buf: Vec::new() }
    }

    /// Sends a request with the next CSeq; returns status, headers (lower
    /// case names, repeated ones joined with "\n") and body. Interleaved
    /// data before the response is skipped.
    fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (u16, HashMap<String, String>, Vec<u8>) {
        self.cseq += 1;
        let mut text = format!("{method} {url} RTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        self.stream.write_all(text.as_bytes()).unwrap();
        let answer = self.response().expect("a response");
        assert_eq!(answer.1.get("cseq").map(String::as_str), Some(self.cseq.to_string().as_str()), "{answer:?}");
        answer
    }

    /// The next response, skipping interleaved frames; None at EOF.
    fn response(&mut self) -> Option<(u16, HashMap<String, String>, Vec<u8>)> {
        loop {
            if self.buf.first() == Some(&b'$') && self.buf.len() >= 4 {
                let len = 4 + usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                if self.buf.len() >= len {
                    self.buf.drain(..len);
                    continue;
                }
            } else if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.lines();
                let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
                let mut headers: HashMap<String, String> = HashMap::new();
                for line in lines {
                    let (name, value) = line.split_once(':').unwrap();
                    let entry = headers.entry(name.trim().to_ascii_lowercase()).or_default();
                    if !entry.is_empty() {
                        entry.push('\n');
                    }
                    entry.push_str(value.trim());
                }
                let length: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
                if self.buf.len() >= end + 4 + length {
                    let body = self.buf[end + 4..end + 4 + length].to_vec();
                    self.buf.drain(..end + 4 + length);
                    return Some((status, headers, body));
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads interleaved frames for `duration`: (channel, bytes) of each.
    fn frames(&mut self, duration: Duration) -> Vec<(u8, Vec<u8>)> {
        let deadline = Instant::now() + duration;
        let mut out = Vec::new();
        self.stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        while Instant::now() < deadline {
            while self.buf.len() >= 4 && self.buf[0] == b'$' {
                let len = 4 + usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
                if self.buf.len() < len {
                    break;
                }
                out.push((self.buf[1], self.buf[4..len].to_vec()));
                self.buf.drain(..len);
            }
            let mut chunk = [0u8; 65536];
            if let Ok(n) = self.stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
        self.stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        out
    }
}

fn session_of(headers: &HashMap<String, String>) -> String {
    headers["session"].split(';').next().unwrap().to_string()
}

#[test]
fn a_tcp_client_that_stops_reading_is_dropped_without_stalling_ffmpeg_or_a_webrtc_viewer() {
    if !have_tool("ffmpeg") {
        return;
    }
    // A camera-like 1080p stream (~10 Mbit/s): a client that stops reading
    // fills its socket buffers within a second or two.
    let Some(clip) = h265_support::camera_clip_1080p() else { return };
    let shm = common::unique_shm("rtsp_stuck");
    let _camera = common::fake_camera(&shm, &["-file", clip.to_str().unwrap()]);
    let server = start(&["-shm", &shm]);
    wait_ready(&server, "cam");
    let url = rtsp_url(&server, "cam");

    // The stuck client: a tiny receive window, SETUP over TCP, PLAY, then
    // it never reads again.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addrs["rtsp"].into()).unwrap();
    let mut stuck = RawRtsp { stream: socket.into(), cseq: 0, buf: Vec::new() };
    stuck.stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let (status, _, _) = stuck.request("DESCRIBE", &url, &[]);
    assert_eq!(status, 200);
    let (status, headers, _) =
        stuck.request("SETUP", &format!("{url}/trackID=0"), &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")]);
    assert_eq!(status, 200, "{headers:?}");
    let session = session_of(&headers);
    let (status, _, _) = stuck.request("PLAY", &format!("{url}/"), &[("Session", &session)]);
    assert_eq!(status, 200);

    // Meanwhile an ffmpeg client and a WebRTC viewer (the load client,
    // checking every NAL unit against the clip) watch the same path.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("beside.h265");
    let ffmpeg = ffmpeg_pull(&url, "tcp", Codec::H265, "12", &file);
    let load = Command::new(common::bin())
        .args(["load-client", "-url", &server.url("http", ""), "-codec", "h265", "-seconds", "12"])
        .args(["-verify", clip.to_str().unwrap()])
        .output()
        .expect("run the load client");
    let report: Value = serde_json::from_slice(&load.stdout)
        .unwrap_or_else(|e| panic!("no load report ({e}): {}", String::from_utf8_lossy(&load.stderr)));
    assert!(load.status.success(), "load client: {report:#}\n{}", String::from_utf8_lossy(&load.stderr));
    assert_eq!(report["clip_nal_units_mismatched"], 0, "{report:#}");
    assert!(
        report["per_viewer"][0]["frames"].as_u64().unwrap_or(0) >= 300,
        "the viewer kept getting frames: {report:#}"
    );
    finish(ffmpeg, "ffmpeg beside the stuck client");
    let units = assert_is_the_clip(Codec::H265, &std::fs::read(&file).unwrap(), &clip);
    assert!(units >= 300, "ffmpeg got {units} access units in 12 s");

    let dropped = server.proc.wait_for_line("accepted nothing for 5s: dropped", Duration::from_secs(10));
    assert!(dropped.is_some(), "the stuck client was not dropped:\n{}", server.proc.log());
    let m = metrics(&server);
    assert!(m["streaming_path_rtsp_clients_stuck_total{path=\"cam\"}"] >= 1.0, "{m:?}");
    assert!(m["streaming_path_rtsp_frames_dropped_total{path=\"cam\"}"] >= 1.0, "it lost frames first: {m:?}");
    assert_eq!(m["streaming_path_frames_dropped_total{path=\"cam\"}"], 0.0, "the media thread never waited");
    wait_until(Duration::from_secs(5), || {
        (control_support::path_named(&server, "cam")["rtsp_clients"] == 0).then_some(())
    })
    .expect("the dropped client no longer counts");
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

#[test]
fn the_api_token_is_the_password_for_basic_and_digest() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let server = start(&["-demo", "-auth-token-file", token_file.to_str().unwrap()]);
    wait_ready(&server, "cam");
    let url = rtsp_url(&server, "cam");

    let mut raw = RawRtsp::connect(&server);
    let (status, _, _) = raw.request("OPTIONS", &url, &[]);
    assert_eq!(status, 200, "OPTIONS needs no credentials");
    let (status, headers, _) = raw.request("DESCRIBE", &url, &[]);
    assert_eq!(status, 401);
    let challenges = &headers["www-authenticate"];
    assert!(
        challenges.contains("Digest realm=\"streaming-server\", nonce=\"") && challenges.contains("Basic"),
        "{challenges}"
    );
    let (status, _, _) = raw.request("DESCRIBE", &url, &[("Authorization", &basic("nvr", "wrong"))]);
    assert_eq!(status, 401);
    let (status, _, body) = raw.request("DESCRIBE", &url, &[("Authorization", &basic("any-user", "s3cret-token"))]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("sprop-parameter-sets="));

    // ffmpeg answers the Digest challenge; without credentials it fails.
    let no_credentials =
        Command::new("ffprobe").args(["-v", "error", "-rtsp_transport", "tcp", &url]).output().unwrap();
    assert!(!no_credentials.status.success());
    assert!(String::from_utf8_lossy(&no_credentials.stderr).contains("401"), "{no_credentials:?}");
    let with = format!("rtsp://viewer:s3cret-token@{}/cam", server.addrs["rtsp"]);
    let file = dir.path().join("auth.h264");
    finish(ffmpeg_pull(&with, "tcp", Codec::H264, "3", &file), "ffmpeg with the token");
    assert_is_the_clip(Codec::H264, &std::fs::read(&file).unwrap(), &common::demo_clip());
    let m = metrics(&server);
    assert!(m["streaming_rtsp_auth_failures_total{result=\"wrong\"}"] >= 1.0, "{m:?}");
    assert!(m["streaming_rtsp_auth_failures_total{result=\"missing\"}"] >= 2.0, "{m:?}");
}

#[test]
fn own_credentials_from_the_config_work_with_gstreamer_and_legacy_cam_names_the_first_path() {
    if !have_tool("gst-launch-1.0") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streams.yml");
    std::fs::write(&config, "rtspUser: nvr\nrtspPass: pw-of-nvr\npaths:\n  garden:\n    source: demo\n").unwrap();
    let server = start(&["-config", config.to_str().unwrap()]);
    wait_ready(&server, "garden");
    // `cam` is the legacy path: here the first one, `garden`.
    let file = dir.path().join("gst-auth.h264");
    let extra = ["user-id=nvr", "user-pw=pw-of-nvr"];
    let log = gstreamer_pull(&rtsp_url(&server, "cam"), "tcp", Codec::H264, &extra, 4, &file);
    let received = std::fs::read(&file).unwrap_or_default();
    assert!(!received.is_empty(), "GStreamer with credentials wrote nothing:\n{log}");
    assert_is_the_clip(Codec::H264, &received, &common::demo_clip());
    let mut raw = RawRtsp::connect(&server);
    let (status, _, _) =
        raw.request("DESCRIBE", &rtsp_url(&server, "garden"), &[("Authorization", &basic("nvr", "x"))]);
    assert_eq!(status, 401, "a wrong password");
    let (status, _, _) =
        raw.request("DESCRIBE", &rtsp_url(&server, "garden"), &[("Authorization", &basic("nvr", "pw-of-nvr"))]);
    assert_eq!(status, 200);
    let (status, _, _) =
        raw.request("DESCRIBE", &rtsp_url(&server, "nope"), &[("Authorization", &basic("nvr", "pw-of-nvr"))]);
    assert_eq!(status, 404);
}

#[test]
fn a_udp_session_gets_rtp_and_sender_reports_lives_on_keep_alives_and_times_out_without() {
    let server = start(&["-demo", "-rtsp-session-timeout", "5s", "-rtsp-udp-port-range", "47000-47999"]);
    wait_ready(&server, "cam");
    let url = rtsp_url(&server, "cam");
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    rtp.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    rtcp.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let (rtp_port, rtcp_port) = (rtp.local_addr().unwrap().port(), rtcp.local_addr().unwrap().port());
    let mut raw = RawRtsp::connect(&server);
    let transport = format!("RTP/AVP;unicast;client_port={rtp_port}-{rtcp_port};destination=192.0.2.1");
    let (status, headers, _) = raw.request("SETUP", &format!("{url}/trackID=0"), &[("Transport", &transport)]);
    assert_eq!(status, 200, "{headers:?}");
    assert!(headers["session"].ends_with(";timeout=5"), "{headers:?}");
    let server_ports =
        headers["transport"].split("server_port=").nth(1).expect("server_port").split(';').next().unwrap();
    let (low, high) = server_ports.split_once('-').unwrap();
    let (low, high): (u16, u16) = (low.parse().unwrap(), high.parse().unwrap());
    assert!(low % 2 == 0 && high == low + 1 && (47000..=47999).contains(&low), "{server_ports}: a pair from the range");
    let session = session_of(&headers);
    let (status, headers, _) = raw.request("PLAY", &url, &[("Session", &session)]);
    assert_eq!(status, 200);
    let rtp_info = &headers["rtp-info"];
    assert!(rtp_info.starts_with(&format!("url={url}/trackID=0;seq=")) && rtp_info.contains(";rtptime="), "{rtp_info}");
    let first_seq: u16 = rtp_info.split("seq=").nth(1).unwrap().split(';').next().unwrap().parse().unwrap();

    // RTP arrives, starting at RTP-Info's seq, on the client's port (not at
    // the `destination` the request named).
    let mut packet = [0u8; 2048];
    let (n, _) = rtp.recv_from(&mut packet).expect("RTP on the client port");
    assert!(n > 12 && packet[0] >> 6 == 2 && packet[1] & 0x7f == 96, "an RTP packet of PT 96");
    assert_eq!(u16::from_be_bytes([packet[2], packet[3]]), first_seq);
    // Keep-alives (no RTCP from us) hold the session past its timeout, and
    // a sender report (RTCP PT 200) comes in the meantime.
    let started = Instant::now();
    let mut last_keep_alive = Instant::now();
    let mut sender_reports = 0;
    while started.elapsed() < Duration::from_secs(8) {
        if let Ok((n, _)) = rtcp.recv_from(&mut packet) {
            if n >= 28 && packet[1] == 200 {
                sender_reports += 1;
            }
        }
        if last_keep_alive.elapsed() >= Duration::from_secs(2) {
            last_keep_alive = Instant::now();
            let (status, _, _) = raw.request("GET_PARAMETER", &url, &[("Session", &session)]);
            assert_eq!(status, 200);
        }
    }
    assert!(sender_reports >= 1, "no RTCP sender report in 8 s");
    assert!(rtp.recv_from(&mut packet).is_ok(), "RTP still flowing after 8 s");
    assert_eq!(
        control_support::path_named(&server, "cam")["rtsp_clients"],
        1,
        "still playing after 8 s of keep-alives"
    );
    // Silence: the session ends within the timeout and the RTP stops.
    let ended = server.proc.wait_for_line("(session timeout)", Duration::from_secs(10));
    assert!(ended.is_some(), "no session timeout:\n{}", server.proc.log());
    std::thread::sleep(Duration::from_millis(300));
    while rtp.recv_from(&mut packet).is_ok() {}
    assert_eq!(control_support::path_named(&server, "cam")["rtsp_clients"], 0);
    let (status, _, _) = raw.request("GET_PARAMETER", &url, &[("Session", &session)]);
    assert_eq!(status, 454, "the session is gone");
}

#[test]
fn a_tcp_session_gets_sender_reports_on_its_rtcp_channel() {
    let server = start(&["-demo"]);
    wait_ready(&server, "cam");
    let url = rtsp_url(&server, "cam");
    let mut raw = RawRtsp::connect(&server);
    let (status, headers, _) =
        raw.request("SETUP", &format!("{url}/trackID=0"), &[("Transport", "RTP/AVP/TCP;unicast;interleaved=4-5")]);
    assert_eq!(status, 200);
    assert!(headers["transport"].contains("interleaved=4-5"), "{headers:?}");
    let session = session_of(&headers);
    let (status, _, _) = raw.request("PLAY", &url, &[("Session", &session)]);
    assert_eq!(status, 200);
    let frames = raw.frames(Duration::from_secs(7));
    let rtp = frames.iter().filter(|(channel, data)| *channel == 4 && data[0] >> 6 == 2).count();
    let reports = frames.iter().filter(|(channel, data)| *channel == 5 && data.get(1) == Some(&200)).count();
    assert!(rtp >= 150, "{rtp} RTP packets in 7 s");
    assert!(reports >= 1, "no sender report on channel 5");
    let (status, _, _) = raw.request("TEARDOWN", &url, &[("Session", &session)]);
    assert_eq!(status, 200);
    wait_until(Duration::from_secs(5), || {
        (control_support::path_named(&server, "cam")["rtsp_clients"] == 0).then_some(())
    })
    .expect("TEARDOWN ends it");
}

/// Sends `bytes` on a new connection, half-closes, and reads everything the
/// server answers.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn malformed_requests_get_4xx_and_counters_and_never_a_crash() {
    let server = start(&["-demo"]);
    wait_ready(&server, "cam");
    let addr = server.addrs["rtsp"];
    let url = rtsp_url(&server, "cam");
    let status_of = |text: &str| -> u16 { text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0) };
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(), 400),
        (format!("OPTIONS {url} RTSP/1.0\r\n\r\n").into_bytes(), 400),
        (format!("OPTIONS {url} RTSP/1.0\r\nCSeq: nine\r\n\r\n").into_bytes(), 400),
        (format!("FROBNICATE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").into_bytes(), 501),
        (format!("OPTIONS {url} RTSP/2.0\r\nCSeq: 1\r\n\r\n").into_bytes(), 505),
        (format!("OPTIONS {url} RTSP/1.0\r\nCSeq: 1\r\nX: {}\r\n\r\n", "a".repeat(20_000)).into_bytes(), 400),
        (format!("SET_PARAMETER {url} RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 999999\r\n\r\n").into_bytes(), 413),
        (format!("DESCRIBE rtsp://{addr}/nope RTSP/1.0\r\nCSeq: 1\r\n\r\n").into_bytes(), 404),
        (format!("DESCRIBE rtsp://{addr}/cam/trackID=9 RTSP/1.0\r\nCSeq: 1\r\n\r\n").into_bytes(), 404),
        (format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\n\r\n").into_bytes(), 400),
        (
            format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP;multicast\r\n\r\n").into_bytes(),
            461,
        ),
        (
            format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP;unicast;client_port=0-0\r\n\r\n")
                .into_bytes(),
            461,
        ),
        (format!("SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\nTransport: ;;;==\r\n\r\n").into_bytes(), 400),
        (format!("PLAY {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").into_bytes(), 454),
        (format!("PLAY {url} RTSP/1.0\r\nCSeq: 1\r\nSession: deadbeef\r\n\r\n").into_bytes(), 454),
        (format!("TEARDOWN {url} RTSP/1.0\r\nCSeq: 1\r\nSession: {}\r\n\r\n", "z".repeat(500)).into_bytes(), 454),
        (format!("PAUSE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").into_bytes(), 455),
        (format!("GET_PARAMETER {url} RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 5\r\n\r\nabcde").into_bytes(), 451),
    ];
    for (bytes, want) in &cases {
        let answer = exchange(addr, bytes);
        assert_eq!(
            status_of(&answer),
            *want,
            "{:?} -> {answer}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        );
        assert!(answer.starts_with("RTSP/1.0 "), "{answer}");
    }
    // Interleaved garbage before a request is skipped and counted; the
    // request still gets its answer.
    let mut bytes = b"$\x07\x00\x03abc$\x09\x00\x00".to_vec();
    bytes.extend_from_slice(format!("OPTIONS {url} RTSP/1.0\r\nCSeq: 3\r\n\r\n").as_bytes());
    let answer = exchange(addr, &bytes);
    assert!(answer.starts_with("RTSP/1.0 200 ") && answer.contains("CSeq: 3"), "{answer}");
    let m = metrics(&server);
    for reason in ["parse", "cseq", "method", "version", "head_too_large", "body_too_large", "transport", "interleaved"]
    {
        assert!(m[&format!("streaming_rtsp_bad_requests_total{{reason=\"{reason}\"}}")] >= 1.0, "{reason}: {m:?}");
    }
    // Still serving.
    assert!(exchange(addr, format!("OPTIONS {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n").as_bytes()).starts_with("RTSP/1.0 200"));
    assert!(!server.proc.log().contains("panicked"), "{}", server.proc.log());
}

#[test]
fn an_on_demand_path_runs_while_an_rtsp_client_plays_and_sigterm_with_clients_exits_fast() {
    if !have_tool("ffmpeg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streams.yml");
    std::fs::write(
        &config,
        "paths:\n  lazy:\n    source: demo\n    sourceOnDemand: yes\n    sourceOnDemandCloseAfter: 1s\n",
    )
    .unwrap();
    let mut server = start(&["-config", config.to_str().unwrap()]);
    assert_eq!(control_support::path_named(&server, "lazy")["state"], "on_demand_idle");
    // DESCRIBE starts the source and waits for its parameter sets; the
    // session holds it while it plays.
    let file = dir.path().join("lazy.h264");
    let url = rtsp_url(&server, "lazy");
    let client = ffmpeg_pull(&url, "tcp", Codec::H264, "4", &file);
    let playing = wait_until(Duration::from_secs(15), || {
        let path = control_support::path_named(&server, "lazy");
        (path["rtsp_clients"] == 1 && path["state"] == "ready").then_some(())
    });
    assert!(playing.is_some(), "{}\n{}", control_support::path_named(&server, "lazy"), server.proc.log());
    finish(client, "ffmpeg on the on-demand path");
    assert_is_the_clip(Codec::H264, &std::fs::read(&file).unwrap(), &common::demo_clip());
    let idle = wait_until(Duration::from_secs(10), || {
        (control_support::path_named(&server, "lazy")["state"] == "on_demand_idle").then_some(())
    });
    assert!(idle.is_some(), "the source stops once the client left: {}", control_support::path_named(&server, "lazy"));

    // Clients playing over TCP and UDP at SIGTERM: a prompt, clean exit.
    let clients: Vec<Child> = ["tcp", "udp"]
        .iter()
        .map(|t| ffmpeg_pull(&url, t, Codec::H264, "30", &dir.path().join(format!("{t}.h264"))))
        .collect();
    wait_until(Duration::from_secs(15), || {
        (control_support::path_named(&server, "lazy")["rtsp_clients"] == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("two clients never played:\n{}", server.proc.log()));
    let started = Instant::now();
    server.proc.signal(libc::SIGTERM);
    let status = server.proc.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?} after {:?}:\n{}",
        started.elapsed(),
        server.proc.log()
    );
    assert!(server.proc.wait_for_line("stopped in", Duration::from_secs(1)).is_some(), "{}", server.proc.log());
    assert!(!server.proc.log().contains("tasks still running"), "{}", server.proc.log());
    for mut client in clients {
        let _ = client.kill();
        let _ = client.wait();
    }
}

#[test]
fn a_taken_rtsp_port_names_the_flag_and_a_bad_rtsp_address_names_the_config_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let mut proc =
        common::Proc::spawn(&["-demo", "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-rtsp", &port], &[]);
    let status = proc.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let needle = format!("-rtsp {port} is in use");
    assert!(proc.wait_for_line(&needle, Duration::from_secs(1)).is_some(), "{}", proc.log());

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streams.yml");
    std::fs::write(&config, "paths:\n  cam:\n    source: demo\nrtspAddress: nowhere\n").unwrap();
    let mut proc = common::Proc::spawn(&["-config", config.to_str().unwrap(), "-http", "127.0.0.1:0"], &[]);
    let status = proc.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let needle = format!("{}:4: rtspAddress: bad listen address", config.display());
    assert!(proc.wait_for_line(&needle, Duration::from_secs(1)).is_some(), "{}", proc.log());
}
