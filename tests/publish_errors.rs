//! Publish targets that cannot be reached show why in `/paths` and the
//! metrics, retry with backoff, log each distinct error once, and disturb
//! nobody: WebRTC viewers of the same path receive every frame byte for byte
//! meanwhile. Real binary, demo camera, load client.

mod common;
mod control_support;
mod publish_support;

use std::sync::Arc;
use std::time::Duration;

use control_support::{get, parse_metrics, wait_until};
use publish_support::free_udp_port;
use serde_json::Value;
use streaming_server::codec::Codec;
use streaming_server::load_client::{clip_nal_units, LoadOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_targets_show_their_errors_without_disturbing_viewers() {
    // Nothing listens on these: a refused TCP port for WHIP, a name that
    // never resolves, a UDP port with no receiver (ICMP port unreachable).
    let closed_udp = free_udp_port();
    let server = common::Server::start(
        &[
            "-demo",
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "-pprof",
            "",
            "-webrtc-ip",
            "127.0.0.1",
            "-publish",
            "whip+http://127.0.0.1:1/whip",
            "-publish",
            "whip+https://nonexistent.invalid/live/KEY123/whip",
            "-publish",
            &format!("rtp://127.0.0.1:{closed_udp}?pt=96"),
        ],
        &["http", "metrics"],
    );
    let options = LoadOptions {
        url: server.url("http", ""),
        viewers: 2,
        duration: Duration::from_secs(5),
        stagger: Duration::from_millis(37),
        local_ip: "127.0.0.1".parse().unwrap(),
        token: None,
        path: "cam".into(),
        codecs: vec![Codec::H264],
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
    assert_eq!(report.lost, 0);
    assert!(report.min_fps > 25.0, "{report:?}");

    let targets = |server: &common::Server| -> Vec<Value> {
        get(&server.url("http", "/paths")).json()["paths"][0]["publish"].as_array().cloned().unwrap()
    };
    let list = wait_until(Duration::from_secs(10), || {
        let list = targets(&server);
        list.iter().all(|t| t["last_error"].is_string()).then_some(list)
    })
    .unwrap_or_else(|| panic!("{:?}", targets(&server)));
    let error = |i: usize| list[i]["last_error"].as_str().unwrap().to_string();
    assert!(error(0).contains("connection refused"), "{:?}", list[0]);
    assert!(error(1).contains("cannot resolve"), "{:?}", list[1]);
    assert!(error(2).contains("refused: nothing receives"), "{:?}", list[2]);
    for whip in &list[..2] {
        assert_eq!(whip["state"], "retrying", "{whip:?}");
        assert!(whip["reconnects"].as_u64() >= Some(2), "retried with backoff: {whip:?}");
        assert_eq!(whip["frames_sent"], 0);
    }
    // An RTP target goes on sending (a receiver may appear any time) and
    // shows the failing sends.
    assert_eq!(list[2]["state"], "error", "{:?}", list[2]);
    assert_eq!(list[1]["target"], "whip+https://nonexistent.invalid/…", "no stream key shown");
    assert!(!get(&server.url("http", "/paths")).text().contains("KEY123"));

    let metrics = get(&server.url("metrics", "/metrics")).text();
    assert!(!metrics.contains("KEY123"));
    let series = parse_metrics(&metrics);
    let rtp_label = format!("rtp://127.0.0.1:{closed_udp}?pt=96");
    assert!(series.get(&format!("streaming_publish_errors_total{{target=\"{rtp_label}\"}}")) > Some(&0.0), "{metrics}");
    assert_eq!(series.get("streaming_publish_up{target=\"whip+http://127.0.0.1:1/…\"}"), Some(&0.0), "{metrics}");
    assert!(series.get("streaming_publish_reconnects_total{target=\"whip+http://127.0.0.1:1/…\"}") >= Some(&2.0));

    // The path itself is fine, and each distinct failure was logged once.
    let path = &get(&server.url("http", "/paths")).json()["paths"][0];
    assert_eq!(path["state"], "ready", "{path:?}");
    let log = server.proc.log();
    assert_eq!(log.matches("whip+http://127.0.0.1:1/…: unreachable: connection refused").count(), 1, "{log}");
}
