//! Relaying to an SFU: Debian's Janus (its streaming plugin, with mountpoints
//! this test writes) fed by the real binary's `publish:` targets, and viewers
//! watching through Janus with the load client's Janus mode (Janus offers,
//! each viewer answers; every NAL unit checked byte for byte against the
//! clip). Plain RTP with RTCP both ways (Janus's keyframe requests come back
//! on videortcpport), SRTP with an SDES key, and H.265 (Janus 1.1's
//! streaming plugin relays it) from an on-demand camera that its publish
//! target keeps running. The board serves none of these viewers itself.
//!
//! Janus's ICE (libnice) never offers loopback candidates, so the test
//! creates a network namespace with `lo` and one interface of its own,
//! [`MEDIA_IP`], and runs everything there: the server, Janus (ICE on
//! [`MEDIA_IP`] only), the viewers (bound to it) and the test's own HTTP
//! requests, from a thread that entered the namespace. Janus's API and the
//! RTP feeds are on the namespace's 127.0.0.1; the host's interfaces are
//! neither used nor touched, and the namespace with anything left running
//! in it is deleted when the test ends, passed or not.
//!
//! Needs root (network namespaces), iproute2 and `janus`; skipped with a
//! note elsewhere, required in CI.

mod common;
mod control_support;
mod publish_support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Netns;
use control_support::{get, parse_metrics, wait_until};
use publish_support::{free_udp_port, have_janus, Janus};
use serde_json::Value;
use streaming_server::codec::Codec;
use streaming_server::load_client::{clip_nal_units, LoadOptions, LoadReport};

const SRTP_KEY: &str = "WbTBosdVUZqEb6Htqhn+m3z7wUh4RJVR8nE15GbN";

/// The address of the namespace's one interface (`janus0`, a /24 of its
/// own): Janus's ICE candidates and the viewers' sockets.
const MEDIA_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 87, 0, 1));

fn clip(codec: Codec) -> std::path::PathBuf {
    let name = if codec == Codec::H265 { "assets/demo.h265" } else { "assets/demo.h264" };
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// `viewers` load-client viewers of Janus mountpoint `id` for 5 s, bound to
/// Janus's media address, each checking every NAL unit against the clip of
/// `codec`. Its runtime's threads are in the caller's network namespace.
fn watch_through_janus(janus: &Janus, id: u64, codec: Codec, viewers: usize) -> LoadReport {
    let options = LoadOptions {
        url: janus.api.clone(),
        viewers,
        duration: Duration::from_secs(5),
        stagger: Duration::from_millis(150),
        local_ip: janus.media_ip,
        token: None,
        path: String::new(),
        codecs: vec![codec],
        verify: Some((codec, Arc::new(clip_nal_units(codec, &std::fs::read(clip(codec)).unwrap())))),
        janus_mountpoint: Some(id),
        hls: 0,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(streaming_server::load_client::run(options))
}

fn assert_every_viewer_byte_exact(report: &LoadReport, what: &str) {
    let errors: Vec<_> = report.per_viewer.iter().map(|v| &v.error).collect();
    assert_eq!(report.connected, report.viewers, "{what}: {errors:?}");
    for viewer in &report.per_viewer {
        assert_eq!(viewer.clip_nal_units_mismatched, Some(0), "{what}: {:?}", viewer.clip_first_mismatch);
        // 5 s at 30 fps with a 1 s GOP: most frames and whole keyframes.
        assert!(viewer.clip_nal_units_matched >= Some(200), "{what}: {viewer:?}");
        assert!(viewer.clip_keyframes_matched >= Some(3), "{what}: {viewer:?}");
        assert!(viewer.frames >= 120, "{what}: {viewer:?}");
    }
}

fn target<'a>(targets: &'a [Value], kind: &str) -> &'a Value {
    targets.iter().find(|t| t["kind"] == kind).unwrap_or_else(|| panic!("no {kind} target in {targets:?}"))
}

#[test]
fn janus_serves_viewers_the_board_never_sees_over_rtp_srtp_and_h265() {
    if !have_janus() || !common::can_create_netns("the Janus publish test") {
        return;
    }
    let netns = Netns::create("ssj").expect("a network namespace");
    netns.add_interface("janus0", &format!("{MEDIA_IP}/24")).expect("janus0 in the namespace");
    let dir = tempfile::tempdir().unwrap();
    // Ports, processes, HTTP requests and the load client's runtime: all
    // from the namespace's thread.
    netns.enter(|| publish_and_watch_through_janus(&netns, dir.path()));
}

/// The test proper, run inside `netns`.
fn publish_and_watch_through_janus(netns: &Netns, dir: &Path) {
    let (rtp, rtp_rtcp, srtp, srtp_rtcp, hevc) =
        (free_udp_port(), free_udp_port(), free_udp_port(), free_udp_port(), free_udp_port());
    let mountpoints = format!(
        "h264: {{\n  type = \"rtp\"\n  id = 1\n  audio = false\n  video = true\n  videoport = {rtp}\n  \
         videortcpport = {rtp_rtcp}\n  videopt = 96\n  videocodec = \"h264\"\n  \
         videofmtp = \"profile-level-id=42e01f;packetization-mode=1\"\n}}\n\
         secure: {{\n  type = \"rtp\"\n  id = 2\n  audio = false\n  video = true\n  videoport = {srtp}\n  \
         videortcpport = {srtp_rtcp}\n  videopt = 96\n  videocodec = \"h264\"\n  \
         videofmtp = \"profile-level-id=42e01f;packetization-mode=1\"\n  srtpsuite = 80\n  \
         srtpcrypto = \"{SRTP_KEY}\"\n}}\n\
         hevc: {{\n  type = \"rtp\"\n  id = 3\n  audio = false\n  video = true\n  videoport = {hevc}\n  \
         videopt = 96\n  videocodec = \"h265\"\n}}\n"
    );
    let janus = Janus::start(netns, MEDIA_IP, dir, &mountpoints);

    let config = dir.join("streams.yml");
    std::fs::write(
        &config,
        format!(
            "paths:\n  cam:\n    source: demo\n    publish:\n      - rtp://127.0.0.1:{rtp}?pt=96&rtcpport={rtp_rtcp}\n      \
             - srtp://127.0.0.1:{srtp}?pt=96&rtcpport={srtp_rtcp}&key={SRTP_KEY}\n  \
             hevc:\n    source: demo\n    codec: h265\n    sourceOnDemand: yes\n    publish:\n      - rtp://127.0.0.1:{hevc}?rtcpport=0\n"
        ),
    )
    .unwrap();
    let server = common::Server::start(
        &[
            "-config",
            config.to_str().unwrap(),
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "-pprof",
            "",
            "-webrtc-ip",
            "127.0.0.1",
        ],
        &["http", "metrics"],
    );
    let paths = || get(&server.url("http", "/paths")).json()["paths"].as_array().cloned().unwrap();
    wait_until(Duration::from_secs(10), || {
        paths()
            .iter()
            .all(|p| p["publish"].as_array().unwrap().iter().all(|t| t["state"] == "publishing"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("targets not publishing: {:?}", paths()));

    let h264 = watch_through_janus(&janus, 1, Codec::H264, 3);
    assert_every_viewer_byte_exact(&h264, "RTP mountpoint");
    let secure = watch_through_janus(&janus, 2, Codec::H264, 2);
    assert_every_viewer_byte_exact(&secure, "SRTP mountpoint");
    let hevc_report = watch_through_janus(&janus, 3, Codec::H265, 2);
    assert_every_viewer_byte_exact(&hevc_report, "H.265 mountpoint");

    let paths = paths();
    let cam = paths.iter().find(|p| p["name"] == "cam").unwrap();
    let targets = cam["publish"].as_array().unwrap();
    let plain = target(targets, "rtp");
    let sealed = target(targets, "srtp");
    for t in [plain, sealed] {
        assert_eq!(t["state"], "publishing", "{t:?}");
        assert_eq!(t["errors"], 0, "{t:?}");
        assert_eq!(t["frames_dropped"], 0, "{t:?}");
        assert!(t["frames_sent"].as_u64() >= Some(300), "{t:?}");
        // Janus asked for a keyframe as viewers joined (PLI on
        // videortcpport, answered from the GOP cache).
        assert!(t["keyframe_requests"].as_u64() >= Some(1), "{t:?}");
    }
    assert!(!get(&server.url("http", "/paths")).text().contains(SRTP_KEY), "the key never shows");
    assert_eq!(sealed["target"], format!("srtp://127.0.0.1:{srtp}?pt=96&rtcpport={srtp_rtcp}&key=***"));
    // Seven viewers watched through Janus; the board served none of them and
    // sent each path's stream once per target.
    for path in &paths {
        assert_eq!(path["viewers"], 0, "{path:?}");
    }
    let metrics = parse_metrics(&get(&server.url("metrics", "/metrics")).text());
    assert_eq!(metrics.get("streaming_total_clients"), Some(&0.0));
    let frames_read = cam["frames_read"].as_u64().unwrap();
    let frames_sent = plain["frames_sent"].as_u64().unwrap();
    // Each frame once, plus the GOP replays that answered keyframe requests
    // (at most a second's worth each).
    let replays = plain["keyframe_requests"].as_u64().unwrap();
    assert!(frames_sent <= frames_read + 31 * replays + 31, "{frames_sent} frames sent for {frames_read} read");
    // The H.265 path's camera is on demand: its publish target is the
    // demand that keeps it running, with no viewer or recording.
    let hevc_path = paths.iter().find(|p| p["name"] == "hevc").unwrap();
    assert_eq!((hevc_path["on_demand"].as_bool(), hevc_path["state"].as_str()), (Some(true), Some("ready")));
    let hevc_target = &hevc_path["publish"][0];
    assert_eq!((hevc_target["kind"].as_str(), hevc_target["state"].as_str()), (Some("rtp"), Some("publishing")));
}
