//! WebRTC through the real binary: a fake camera process, the server
//! process, and a real `webrtc` client negotiating over HTTP (`POST /offer`
//! JSON and WHEP), receiving the camera's NAL units byte for byte.

mod common;
mod control_support;
mod webrtc_common;

use std::sync::Arc;
use std::time::Duration;

use control_support::{call, get, post, wait_until};
use streaming_server::codec::Codec;
use streaming_server::load_client::clip_nal_units;
use webrtc_common::{clip_nals, find_in_loop, Client, CHROME_H264};

fn start(tag: &str, max_clients: &str) -> (common::Proc, common::Server) {
    let shm = common::unique_shm(tag);
    let camera = common::fake_camera(&shm, &["-fps", "30"]);
    let server = common::Server::start(
        &[
            "-shm",
            &shm,
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "-pprof",
            "",
            "-webrtc-ip",
            "127.0.0.1",
            "-max-clients",
            max_clients,
            "-record-path",
            std::env::temp_dir().join(format!("rec_{tag}_{}", std::process::id())).to_str().unwrap(),
        ],
        &["http", "metrics"],
    );
    // The first offer needs the camera's SPS: wait for the stream.
    let health = server.url("http", "/health");
    wait_until(Duration::from_secs(10), || get(&health).json()["has_headers"].as_bool().filter(|h| *h))
        .expect("the server never saw the camera's SPS/PPS");
    (camera, server)
}

fn metric(server: &common::Server, name: &str) -> f64 {
    let text = get(&server.url("metrics", "/metrics")).text();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Runs a blocking HTTP call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_over_http_delivers_the_cameras_nal_units() {
    let (_camera, server) = start("http_offer", "4");
    let client = Client::new(CHROME_H264).await;
    let body = serde_json::json!({"type": "offer", "sdp": client.offer}).to_string();
    let url = server.url("http", "/offer");
    let answer = blocking(move || post(&url, body.as_bytes())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    assert_eq!(json["type"], "answer");
    client.accept(json["sdp"].as_str().unwrap().to_string()).await;

    let frames = client.frames(60, Duration::from_secs(15)).await;
    assert_eq!(frames.len(), 60);
    let clip = clip_nals(&std::fs::read(common::demo_clip()).unwrap());
    let received: Vec<_> = frames.iter().flat_map(|f| f.nals.iter().cloned()).collect();
    assert_eq!(received[0][0] & 0x1f, 7, "starts with the SPS of an IDR");
    assert!(find_in_loop(&clip, &received).is_some(), "received NAL units differ from what the camera wrote");

    let health = server.url("http", "/health");
    assert_eq!(blocking(move || get(&health)).await.json()["webrtc_clients"], 1);
    assert_eq!(metric(&server, "streaming_active_clients"), 1.0);
    assert!(metric(&server, "streaming_webrtc_frames_sent_total") >= 60.0);
    assert!(metric(&server, "streaming_total_clients") >= 1.0);
    client.close().await;
    // Gone without a DELETE: ICE consent frees the slot within seconds.
    let health = server.url("http", "/health");
    let freed = blocking(move || {
        wait_until(Duration::from_secs(10), || (get(&health).json()["webrtc_clients"] == 0).then_some(()))
    })
    .await;
    assert!(freed.is_some(), "the departed viewer's slot was not freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_creates_and_deletes_a_session_and_the_limit_answers_503() {
    let (_camera, server) = start("http_whep", "1");
    let client = Client::new(CHROME_H264).await;
    let url = server.url("http", "/whep");
    let offer = client.offer.clone();
    let created =
        blocking(move || call("POST", &url, &[("Content-Type", "application/sdp")], Some(offer.as_bytes()))).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("content-type"), Some("application/sdp"));
    let location = created.header("location").expect("Location").to_string();
    assert!(location.starts_with("/whep/"), "{location}");
    client.accept(created.text()).await;
    assert_eq!(client.frames(10, Duration::from_secs(10)).await.len(), 10);

    // One viewer allowed: the next offer is refused at once, with Retry-After.
    let other = Client::new(CHROME_H264).await;
    let body = serde_json::json!({"type": "offer", "sdp": other.offer}).to_string();
    let url = server.url("http", "/offer");
    let refused = blocking(move || post(&url, body.as_bytes())).await;
    refused.assert_json_error(503);
    assert!(refused.header("retry-after").is_some());
    other.close().await;

    // DELETE frees the slot at once.
    let url = server.url("http", &location);
    let deleted = blocking(move || call("DELETE", &url, &[], None)).await;
    assert!(deleted.status == 200 || deleted.status == 204, "{}", deleted.text());
    let health = server.url("http", "/health");
    assert_eq!(blocking(move || get(&health)).await.json()["webrtc_clients"], 0);
    let url = server.url("http", &location);
    assert_eq!(blocking(move || call("DELETE", &url, &[], None)).await.status, 404);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_the_stream_cannot_fit_is_a_400_with_the_reason() {
    let (_camera, server) = start("http_vp8", "2");
    let client = Client::new(&[(97, "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f")]).await;
    let body = serde_json::json!({"type": "offer", "sdp": client.offer}).to_string();
    let url = server.url("http", "/offer");
    let answer = blocking(move || post(&url, body.as_bytes())).await;
    answer.assert_json_error(400);
    assert!(answer.json()["error"].as_str().unwrap().contains("packetization-mode"), "{}", answer.text());
    client.close().await;
}

/// abs-capture-time: the load client offers it, the server sends each live
/// frame's capture time, and the client's capture -> receive delays over
/// loopback are sane (sanity bounds, not a timing target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_client_gets_capture_times_and_sane_latencies() {
    let (_camera, server) = start("http_abs_capture", "4");
    let options = streaming_server::load_client::LoadOptions {
        url: server.url("http", ""),
        viewers: 2,
        duration: Duration::from_secs(3),
        stagger: Duration::from_millis(37),
        local_ip: "127.0.0.1".parse().unwrap(),
        token: None,
        path: "cam".into(),
        codecs: vec![Codec::H264],
        // The camera plays the demo clip: every NAL unit is checked.
        verify: Some((
            Codec::H264,
            Arc::new(clip_nal_units(Codec::H264, &std::fs::read(common::demo_clip()).unwrap())),
        )),
        janus_mountpoint: None,
        hls: 0,
    };
    let report = streaming_server::load_client::run(options).await;
    assert_eq!(report.connected, 2, "{:?}", report.per_viewer.iter().map(|v| &v.error).collect::<Vec<_>>());
    assert_eq!(report.clip_nal_units_mismatched, Some(0), "{:?}", report.per_viewer[0].clip_first_mismatch);
    assert!(report.clip_nal_units_matched.unwrap() >= 150, "{:?}", report.clip_nal_units_matched);
    assert!(report.clip_keyframes_matched.unwrap() >= 4, "{:?}", report.clip_keyframes_matched);
    for viewer in &report.per_viewer {
        // ~30 fps for 3 s minus the catch-up frames, which carry no capture time.
        assert!(viewer.latency_samples >= 30, "viewer {}: {} samples", viewer.viewer, viewer.latency_samples);
        assert!(viewer.latencies_ms.iter().all(|ms| *ms > 0.0 && *ms < 1000.0), "{:?}", viewer.latencies_ms);
    }
    let (p50, p99) = (report.latency_p50_ms.unwrap(), report.latency_p99_ms.unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 < 1000.0, "p50 {p50} ms, p99 {p99} ms");
    let sent = metric(&server, "streaming_capture_to_sent_ms_count");
    assert!(sent >= 60.0, "capture -> sent observed {sent} times");
    let sum = metric(&server, "streaming_capture_to_sent_ms_sum");
    assert!(sum > 0.0 && sum / sent < 1000.0, "mean capture -> sent {} ms", sum / sent);
}
