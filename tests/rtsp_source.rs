//! The RTSP source against a real RTSP server (GStreamer's, through
//! tests/rtsp_server.py) on 127.0.0.1.

mod rtsp_support;

use std::path::Path;
use std::time::{Duration, Instant};

use rtsp_support::*;
use streaming_server::source::rtsp::{ConnectFailure, GapReason, RtspError, SourceEvent, Transport, VideoCodec};

const WAIT: Duration = Duration::from_secs(10);

fn errors(events: &[Timed]) -> Vec<(Instant, RtspError, Duration)> {
    events
        .iter()
        .filter_map(|(t, e)| match e {
            SourceEvent::Error { error, retry_in } => Some((*t, error.clone(), *retry_in)),
            _ => None,
        })
        .collect()
}

fn connected(events: &[Timed]) -> Vec<&SourceEvent> {
    events.iter().map(|(_, e)| e).filter(|e| matches!(e, SourceEvent::Connected { .. })).collect()
}

fn demo_server(extra: &[&str]) -> Server {
    let clip = demo_clip();
    let mut args = vec!["--clip", clip.to_str().unwrap(), "--codec", "h264", "--fps", "30"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn with_transport(url: url::Url, transport: Transport) -> streaming_server::source::rtsp::RtspConfig {
    streaming_server::source::rtsp::RtspConfig { transport, ..config(url) }
}

/// Frames received in order, byte-exact with the clip, capture times
/// following the RTP clock; `stop` is prompt.
async fn byte_exact(transport: Transport, frames_wanted: usize) {
    capture_logs();
    let clip = Clip::load(&demo_clip(), VideoCodec::H264);
    let server = demo_server(&["--path", &format!("exact-{transport}")]);
    let mut source = Source::start(with_transport(server.url.clone(), transport));
    let events = source.until(WAIT, |ev| frames(ev) >= frames_wanted).await;
    let started = source.started;
    let stop_took = source.stop().await;

    let first_frame = events.iter().find(|(_, e)| matches!(e, SourceEvent::Frame { .. })).unwrap().0;
    eprintln!("{transport}: connect to first frame {:?}, stop took {stop_took:?}", first_frame - started);
    match &events[0].1 {
        SourceEvent::Connected { codec, width, height, fps, transport: used } => {
            assert_eq!((*codec, *width, *height, *used), (VideoCodec::H264, 640, 360, transport));
            assert!(fps.is_some_and(|f| (f - 30.0).abs() < 0.01), "fps {fps:?}");
        }
        other => panic!("first event {other:?}"),
    }
    assert!(errors(&events).is_empty(), "{}", summary(&events));
    let runs = runs(&events);
    if transport == Transport::Tcp {
        assert_eq!(runs.len(), 1, "no gap over TCP: {}", summary(&events));
    }
    // Each session of the (non-shared) test server starts at the clip's
    // first access unit.
    assert_eq!(check_byte_exact(&clip, &runs)[0], 0);

    // Capture times: RTP advances exactly 3000 ticks per frame. Capture
    // times advance by that (33.33 ms), or by at least 90% of it while
    // absorbing the burst the server sends at PLAY (frames it queued before):
    // never backward, never compressed, never after arrival by more than the
    // re-anchor bound.
    let times: Vec<(Duration, i64)> = events
        .iter()
        .filter_map(|(_, e)| match e {
            SourceEvent::Frame { capture_time, rtp_timestamp, .. } => Some((*capture_time, *rtp_timestamp)),
            _ => None,
        })
        .collect();
    let run0 = runs[0].len();
    let (mut exact, mut slewed) = (0, 0);
    for w in times[..run0].windows(2) {
        assert_eq!(w[1].1 - w[0].1, 3000, "RTP timestamp step");
        let step = w[1].0.saturating_sub(w[0].0);
        assert!(
            step >= Duration::from_micros(29_999) && step <= Duration::from_micros(33_334),
            "capture step {step:?}"
        );
        if step >= Duration::from_micros(33_333) {
            exact += 1;
        } else {
            slewed += 1;
        }
    }
    eprintln!("{transport}: capture steps: {exact} exact, {slewed} slewed");
    let now = streaming_server::clock::monotonic_now();
    let last = times.last().unwrap().0;
    assert!(
        last <= now + Duration::from_secs(1) && now.saturating_sub(last) < Duration::from_secs(1),
        "capture {last:?} vs now {now:?}"
    );
    assert!(stop_took < Duration::from_millis(1500), "stop took {stop_took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_frames_are_byte_exact() {
    byte_exact(Transport::Tcp, 75).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_frames_are_byte_exact() {
    byte_exact(Transport::Udp, 75).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_over_tcp_is_byte_exact() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let clip_path = dir.path().join("clip.h265");
    make_h265_clip(&clip_path);
    let clip = Clip::load(&clip_path, VideoCodec::H265);
    assert_eq!(clip.len(), 60);
    assert_eq!(clip.parameter_sets().len(), 3, "VPS, SPS, PPS in band");
    let server = Server::start(&["--clip", clip_path.to_str().unwrap(), "--codec", "h265", "--path", "hevc"]);
    let mut source = Source::start(with_transport(server.url.clone(), Transport::Tcp));
    let events = source.until(WAIT, |ev| frames(ev) >= 45).await;
    source.stop().await;
    match &events[0].1 {
        SourceEvent::Connected { codec, width, height, .. } => {
            assert_eq!((*codec, *width, *height), (VideoCodec::H265, 320, 180))
        }
        other => panic!("first event {other:?}"),
    }
    let runs = runs(&events);
    assert_eq!(runs.len(), 1, "{}", summary(&events));
    assert_eq!(check_byte_exact(&clip, &runs), [0]);
}

/// 60 frames of x265 at 320x180, keyframe every 30, AUD on every frame,
/// VPS/SPS/PPS on every keyframe, no B-frames (as cameras send).
fn make_h265_clip(path: &Path) {
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30", "-frames:v", "60"])
        .args(["-pix_fmt", "yuv420p", "-c:v", "libx265", "-preset", "ultrafast"])
        .args([
            "-x265-params",
            "keyint=30:min-keyint=30:scenecut=0:open-gop=0:bframes=0:aud=1:repeat-headers=1:log-level=error",
        ])
        .args(["-f", "hevc"])
        .arg(path)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_ok() {
    capture_logs();
    let server = demo_server(&["--path", "basic", "--user", "admin", "--pass", "good-basic-pw", "--auth", "basic"]);
    let mut source = Source::start(config(server.url_with("admin", "good-basic-pw")));
    let events = source.until(WAIT, |ev| frames(ev) >= 3).await;
    source.stop().await;
    assert!(errors(&events).is_empty(), "{}", summary(&events));
    assert_no_secret_logged("good-basic-pw", "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_ok() {
    capture_logs();
    let server = demo_server(&["--path", "digest", "--user", "op", "--pass", "good-digest-pw", "--auth", "digest"]);
    let config = streaming_server::source::rtsp::RtspConfig {
        username: Some("op".into()),
        password: Some("good-digest-pw".into()),
        ..config(server.url.clone())
    };
    let mut source = Source::start(config);
    let events = source.until(WAIT, |ev| frames(ev) >= 3).await;
    source.stop().await;
    assert!(errors(&events).is_empty(), "{}", summary(&events));
    assert_no_secret_logged("good-digest-pw", "op");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_unauthorized_retried_slowly_logged_once() {
    capture_logs();
    let server = demo_server(&["--path", "auth", "--user", "admin", "--pass", "right-pw", "--auth", "basic"]);
    let url = server.url_with("admin", "wrong-pw-5150");

    // Defaults: the slow retry.
    let mut source = Source::start(config(url.clone()));
    let events = source.until(WAIT, |ev| !errors(ev).is_empty()).await;
    source.stop().await;
    assert_eq!(errors(&events)[0].1, RtspError::Unauthorized);
    assert_eq!(errors(&events)[0].2, Duration::from_secs(30));
    assert_eq!(errors(&events)[0].1.to_string(), "401 unauthorized");
    assert_eq!(frames(&events), 0);

    // Faster retries to see the log: one warning, repeats at debug.
    let before = logs_containing(&format!(":{}/auth", server.port)).len();
    let fast =
        streaming_server::source::rtsp::RtspConfig { unauthorized_retry: Duration::from_millis(100), ..config(url) };
    let mut source = Source::start(fast);
    let events = source.until(WAIT, |ev| errors(ev).len() >= 4).await;
    source.stop().await;
    assert!(errors(&events)
        .iter()
        .all(|(_, e, retry)| *e == RtspError::Unauthorized && *retry == Duration::from_millis(100)));
    let lines = logs_containing(&format!(":{}/auth", server.port));
    let new: Vec<_> = lines[before..].iter().filter(|l| l.contains("401")).collect();
    assert_eq!(new.iter().filter(|l| l.starts_with("WARN")).count(), 1, "{new:#?}");
    assert!(new.iter().filter(|l| l.starts_with("DEBUG")).count() >= 3, "{new:#?}");
    assert!(new[0].contains("rtsp://admin:***@127.0.0.1"), "{}", new[0]);
    assert_no_secret_logged("wrong-pw-5150", "admin");
}

/// Neither the password nor a Basic header made from it appears in any
/// log line (trace included, retina's too).
fn assert_no_secret_logged(password: &str, user: &str) {
    let basic = base64_encode(format!("{user}:{password}").as_bytes());
    for line in all_logs() {
        assert!(!line.contains(password), "password logged: {line}");
        assert!(!line.contains(&basic), "basic credentials logged: {line}");
    }
}

fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// retina sends keep-alives every half session timeout (here 2 s -> 1 s)
/// and the server answers them; the session runs on without a break.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_keep_a_short_session_alive() {
    capture_logs();
    let server = demo_server(&["--path", "keepalive", "--session-timeout", "2"]);
    let before = logs_containing("keepalive succeeded").len();
    let mut source = Source::start(with_transport(server.url.clone(), Transport::Udp));
    let events = source.until(WAIT, |ev| frames(ev) >= 140).await;
    source.stop().await;
    assert!(errors(&events).is_empty(), "{}", summary(&events));
    assert_eq!(runs(&events).len(), 1, "{}", summary(&events));
    let keepalives = logs_containing("keepalive succeeded").len() - before;
    assert!(keepalives >= 3, "{keepalives} keep-alives answered");
    assert!(logs_containing("keepalive failed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_unreachable_with_backoff() {
    capture_logs();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = url::Url::parse(&format!("rtsp://127.0.0.1:{port}/cam")).unwrap();
    let mut source = Source::start(config(url));
    let events = source.until(WAIT, |ev| errors(ev).len() >= 3).await;
    source.stop().await;
    let errs = errors(&events);
    for (_, error, _) in &errs {
        assert_eq!(*error, RtspError::Unreachable(ConnectFailure::Refused));
    }
    let delays: Vec<_> = errs.iter().map(|e| e.2).collect();
    assert_eq!(delays, [Duration::from_millis(500), Duration::from_secs(1), Duration::from_secs(2)]);
    // The retries really wait that long.
    let gap1 = errs[1].0 - errs[0].0;
    let gap2 = errs[2].0 - errs[1].0;
    assert!(gap1 >= Duration::from_millis(480) && gap1 < Duration::from_millis(1200), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(980) && gap2 < Duration::from_millis(1800), "{gap2:?}");
    assert!(!events.iter().any(|(_, e)| matches!(e, SourceEvent::Gap { .. })), "no gap before any frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_gaps_then_resumes_at_a_keyframe() {
    capture_logs();
    let clip = Clip::load(&demo_clip(), VideoCodec::H264);
    let server = demo_server(&["--path", "restart"]);
    let (url, port) = (server.url.clone(), server.port);
    let mut source = Source::start(with_transport(url, Transport::Tcp));
    let before = source.until(WAIT, |ev| frames(ev) >= 15).await;
    let killed = Instant::now();
    server.kill();
    let down = source.until(WAIT, |ev| !errors(ev).is_empty()).await;
    let gap = down.iter().position(|(_, e)| *e == SourceEvent::Gap { reason: GapReason::SessionEnded });
    let err = down.iter().position(|(_, e)| matches!(e, SourceEvent::Error { .. }));
    assert!(gap.is_some() && gap < err, "Gap before Error: {}", summary(&down));
    assert!(!down[gap.unwrap()..].iter().any(|(_, e)| matches!(e, SourceEvent::Frame { .. })));
    eprintln!("restart: session end noticed after {:?}: {}", down[gap.unwrap()].0 - killed, summary(&down));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let _server = demo_server(&["--path", "restart", "--port", &port.to_string()]);
    let after = source.until(WAIT, |ev| frames(ev) >= 10).await;
    source.stop().await;
    let first = after.iter().find(|(_, e)| matches!(e, SourceEvent::Frame { .. })).unwrap();
    eprintln!("restart: frames again {:?} after the kill: {}", first.0 - killed, summary(&after));
    assert!(first.0 - killed < Duration::from_secs(5));
    assert_eq!(connected(&after).len(), 1);
    let all: Vec<Timed> = before.into_iter().chain(down).chain(after).collect();
    let runs = runs(&all);
    assert_eq!(runs.len(), 2, "{}", summary(&all));
    assert_eq!(check_byte_exact(&clip, &runs), [0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_mid_gop_times_out_and_reconnects() {
    capture_logs();
    let clip = Clip::load(&demo_clip(), VideoCodec::H264);
    let server = demo_server(&["--path", "stall", "--stop-after-frames", "20"]);
    let stall = Duration::from_millis(1200);
    let config = streaming_server::source::rtsp::RtspConfig {
        stall_timeout: stall,
        ..with_transport(server.url.clone(), Transport::Tcp)
    };
    let mut source = Source::start(config);
    let events = source
        .until(WAIT, |ev| {
            let first_error = ev.iter().position(|(_, e)| matches!(e, SourceEvent::Error { .. }));
            first_error.is_some_and(|i| frames(&ev[i..]) >= 3)
        })
        .await;
    source.stop().await;
    let errs = errors(&events);
    assert_eq!(errs[0].1, RtspError::Stalled(stall));
    let last_frame = events.iter().filter(|(_, e)| matches!(e, SourceEvent::Frame { .. })).nth(19).unwrap().0;
    let waited = errs[0].0 - last_frame;
    assert!(waited >= stall - Duration::from_millis(100) && waited < stall + Duration::from_millis(600), "{waited:?}");
    let runs = runs(&events);
    assert_eq!(runs[0].len(), 20, "{}", summary(&events));
    assert_eq!(check_byte_exact(&clip, &runs), [0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdp_without_parameter_sets() {
    capture_logs();
    let clip = Clip::load(&demo_clip(), VideoCodec::H264);
    let server = demo_server(&["--path", "nosprop", "--no-sprop"]);
    let mut source = Source::start(config(server.url.clone()));
    let events = source.until(WAIT, |ev| frames(ev) >= 10).await;
    source.stop().await;
    assert!(matches!(events[0].1, SourceEvent::Connected { width: 640, height: 360, .. }), "{}", summary(&events));
    assert_eq!(check_byte_exact(&clip, &runs(&events)), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_sets_only_in_sdp() {
    capture_logs();
    let clip = Clip::load(&demo_clip(), VideoCodec::H264);
    let server = demo_server(&["--path", "sdponly", "--no-inband-params"]);
    let mut source = Source::start(config(server.url.clone()));
    let events = source.until(WAIT, |ev| frames(ev) >= 40).await;
    source.stop().await;
    assert!(matches!(events[0].1, SourceEvent::Connected { width: 640, height: 360, .. }), "{}", summary(&events));
    assert_eq!(check_byte_exact(&clip, &runs(&events)), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_parameter_sets_anywhere_is_an_error() {
    capture_logs();
    let server = demo_server(&["--path", "noparams", "--no-sprop", "--no-inband-params"]);
    let timeout = Duration::from_millis(1500);
    let config = streaming_server::source::rtsp::RtspConfig { keyframe_timeout: timeout, ..config(server.url.clone()) };
    let mut source = Source::start(config);
    let events = source.until(WAIT, |ev| !errors(ev).is_empty()).await;
    source.stop().await;
    assert_eq!(errors(&events)[0].1, RtspError::NoKeyframe { after: timeout, no_parameters: true });
    assert_eq!(frames(&events), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_is_no_video_track() {
    capture_logs();
    let server = Server::start(&["--no-video", "--path", "audio"]);
    let mut source = Source::start(config(server.url.clone()));
    let events = source.until(WAIT, |ev| !errors(ev).is_empty()).await;
    source.stop().await;
    let (_, error, retry_in) = &errors(&events)[0];
    assert_eq!(*error, RtspError::NoVideoTrack("audio PCMU/8000".into()));
    assert_eq!(error.to_string(), "no video track (SDP offers audio PCMU/8000)");
    assert_eq!(*retry_in, Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_udp() {
    capture_logs();
    let server = demo_server(&["--path", "udponly", "--protocols", "udp"]);
    let mut source = Source::start(with_transport(server.url.clone(), Transport::Auto));
    let events = source.until(WAIT, |ev| frames(ev) >= 3).await;
    source.stop().await;
    let errs = errors(&events);
    assert_eq!(errs.len(), 1, "{}", summary(&events));
    assert!(matches!(&errs[0].1, RtspError::Rejected { method, .. } if method == "SETUP"), "{}", summary(&events));
    assert!(matches!(connected(&events)[..], [SourceEvent::Connected { transport: Transport::Udp, .. }]));
}
