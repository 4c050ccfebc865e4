//! LL-HLS against the real binary: a fake camera process playing a clip
//! into the ring, the server, and real clients: ffprobe and ffmpeg read
//! the playlist URL (H.264 and H.265) and what they copy out is the clip's
//! access units; blocking playlist reloads wait for the part asked for and
//! refuse what is too far ahead; delta playlists skip; a segment is its
//! parts; held requests never lock out the API at the connection cap; a
//! client that never reads stalls neither WebRTC viewers nor HLS clients;
//! an on-demand source runs only while HLS clients ask; the token guards
//! HLS and is carried into the playlist's URIs.

mod common;
mod control_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use control_support::*;
use streaming_server::codec::Codec;
use streaming_server::load_client::hls::{part_position, MediaPlaylist};

fn clip(codec: Codec) -> PathBuf {
    common::crate_file(if codec == Codec::H264 { "assets/demo.h264" } else { "assets/demo.h265" })
}

/// A fake camera playing `codec`'s demo clip and a server reading it.
fn start(tag: &str, codec: Codec, extra: &[&str]) -> (common::Proc, common::Server, tempfile::TempDir) {
    let shm = common::unique_shm(tag);
    let camera = common::fake_camera(&shm, &["-fps", "30", "-file", clip(codec).to_str().unwrap()]);
    let records = tempfile::tempdir().unwrap();
    let mut args = vec!["-shm", &shm, "-http", "127.0.0.1:0", "-metrics", "127.0.0.1:0", "-pprof", ""];
    args.extend(["-webrtc-ip", "127.0.0.1", "-record-path", records.path().to_str().unwrap()]);
    args.extend_from_slice(extra);
    let server = common::Server::start(&args, &["http", "metrics"]);
    (camera, server, records)
}

fn playlist(url: &str) -> MediaPlaylist {
    let answer = get(url);
    assert_eq!(answer.status, 200, "{url}: {}", answer.text());
    MediaPlaylist::parse(&answer.text()).unwrap_or_else(|e| panic!("{url}: {e}:\n{}", answer.text()))
}

fn metric(server: &common::Server, name: &str) -> f64 {
    parse_metrics(&get(&server.url("metrics", "/metrics")).text()).get(name).copied().unwrap_or(0.0)
}

fn ffmpeg(args: &[&str]) -> (bool, String) {
    let out = Command::new("ffmpeg").args(["-nostdin", "-v", "error"]).args(args).output().expect("run ffmpeg");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn ffmpeg_reads_the_playlist(codec: Codec, tag: &str) {
    if !have_tool("ffmpeg") || !have_tool("ffprobe") {
        return;
    }
    let (_camera, server, _records) = start(tag, codec, &[]);
    let url = server.url("http", "/cam/index.m3u8");
    let (name, fourcc, format) = match codec {
        Codec::H264 => ("h264", "avc1", "h264"),
        Codec::H265 => ("hevc", "hvc1", "hevc"),
    };
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,codec_tag_string,width,height",
        ])
        .args(["-of", "default=noprint_wrappers=1", &url])
        .output()
        .expect("run ffprobe");
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "ffprobe: {}", String::from_utf8_lossy(&probe.stderr));
    for expected in
        [format!("codec_name={name}"), format!("codec_tag_string={fourcc}"), "width=640".into(), "height=360".into()]
    {
        assert!(text.lines().any(|l| l == expected), "ffprobe says:\n{text}");
    }

    // Five seconds decoded straight from the URL: no error.
    let (ok, errors) = ffmpeg(&["-i", &url, "-t", "5", "-f", "null", "-"]);
    assert!(ok && errors.is_empty(), "ffmpeg decoding the playlist: {errors}");

    // Five seconds copied out as Annex-B: the clip's access units, in order.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("hls.{}", codec.extension()));
    let (ok, errors) = ffmpeg(&["-i", &url, "-t", "5", "-c", "copy", "-f", format, out.to_str().unwrap()]);
    assert!(ok && errors.is_empty(), "ffmpeg -c copy: {errors}");
    let copied = std::fs::read(&out).unwrap();
    let units = assert_nal_run_of_clip_through_mp4(codec, &copied, &std::fs::read(clip(codec)).unwrap());
    assert!(units >= 140, "only {units} access units in 5 s");
    assert_eq!(ffmpeg_errors(&out), "", "the copied stream decodes");
    eprintln!("{codec}: ffmpeg copied {units} access units from {url}, each the clip's");
    assert!(metric(&server, "streaming_path_hls_segments_total{path=\"cam\"}") >= 5.0);
    assert_eq!(metric(&server, "streaming_path_consumer_frames_dropped_total{consumer=\"hls\",path=\"cam\"}"), 0.0);
}

#[test]
fn ffmpeg_reads_the_h264_playlist_and_copies_out_the_clips_access_units() {
    ffmpeg_reads_the_playlist(Codec::H264, "hls_ffmpeg_264");
}

#[test]
fn ffmpeg_reads_the_h265_playlist_and_copies_out_the_clips_access_units() {
    ffmpeg_reads_the_playlist(Codec::H265, "hls_ffmpeg_265");
}

/// The part the preload hint names, as numbers.
fn hint(list: &MediaPlaylist) -> (u64, u32) {
    part_position(list.preload_hint.as_deref().expect("a preload hint")).expect("a part URI")
}

fn lists_part(list: &MediaPlaylist, position: (u64, u32)) -> bool {
    list.segments.iter().flat_map(|s| &s.parts).any(|p| part_position(&p.uri) == Some(position))
}

#[test]
fn blocking_reloads_parts_segments_deltas_and_headers_follow_the_spec() {
    let (_camera, server, _records) = start("hls_blocking", Codec::H264, &["-cors-origin", "http://ui.example"]);
    let base = server.url("http", "/cam/");
    let first = get(&format!("{base}index.m3u8"));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("content-type"), Some("application/vnd.apple.mpegurl"));
    assert_eq!(first.header("cache-control"), Some("no-cache"));
    let list = MediaPlaylist::parse(&first.text()).unwrap();
    assert!(list.version >= 9 && list.can_block_reload, "{list:?}");
    assert_eq!(list.target_duration, 1, "one-second GOPs make one-second segments");
    let part_target = list.part_target.unwrap();
    assert!((0.19..=0.34).contains(&part_target), "PART-TARGET {part_target}");
    assert_eq!(list.can_skip_until, Some(6.0));

    // A blocking reload for the hinted part answers once it exists.
    let next = hint(&list);
    assert!(!lists_part(&list, next));
    let later = playlist(&format!("{base}index.m3u8?_HLS_msn={}&_HLS_part={}", next.0, next.1));
    assert!(lists_part(&later, next), "the answer lists the part asked for");

    // The hinted part itself is waited for too, then served as immutable fMP4.
    let upcoming = hint(&later);
    let part = get(&format!("{base}part-{}-{}.m4s", upcoming.0, upcoming.1));
    assert_eq!(part.status, 200, "{}", part.text());
    assert_eq!(&part.body[4..8], b"moof");
    assert_eq!(part.header("content-type"), Some("video/mp4"));
    assert_eq!(part.header("cache-control"), Some("max-age=31536000, immutable"));
    let head = call("HEAD", &format!("{base}part-{}-{}.m4s", upcoming.0, upcoming.1), &[], None);
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some(part.body.len().to_string().as_str()));

    // The init segment, and a segment that is its parts one after the other.
    let init = get(&format!("{base}{}", later.segments[0].map.as_deref().unwrap()));
    assert_eq!((init.status, &init.body[4..8]), (200, &b"ftyp"[..]));
    let complete = later.segments.iter().rev().find(|s| s.uri.is_some() && !s.parts.is_empty()).unwrap();
    let segment = get(&format!("{base}{}", complete.uri.as_deref().unwrap()));
    assert_eq!(segment.status, 200);
    let joined: Vec<u8> = complete.parts.iter().flat_map(|p| get(&format!("{base}{}", p.uri)).body).collect();
    assert_eq!(segment.body, joined, "a segment is its parts");
    assert_eq!(get(&format!("{base}part-{}-99.m4s", complete.msn)).status, 404);

    // Too far ahead, and malformed: 400 with JSON.
    let last = later.segments.last().unwrap().msn;
    for query in [
        format!("_HLS_msn={}", last + 3),
        format!("_HLS_msn={}&_HLS_part=60", last + 1),
        "_HLS_part=1".to_string(),
        "_HLS_msn=x".to_string(),
        "_HLS_skip=NO".to_string(),
    ] {
        get(&format!("{base}index.m3u8?{query}")).assert_json_error(400);
    }
    assert!(metric(&server, "streaming_path_hls_request_errors_total{path=\"cam\",reason=\"too_far\"}") >= 2.0);

    // CORS as for the API.
    let cors = call("GET", &format!("{base}index.m3u8"), &[("Origin", "http://ui.example")], None);
    assert_eq!(cors.header("access-control-allow-origin"), Some("http://ui.example"));

    // Once the playlist is longer than CAN-SKIP-UNTIL, a delta update skips
    // the older segments and lists the rest exactly as the full playlist.
    let full = wait_until(Duration::from_secs(20), || {
        let full = playlist(&format!("{base}index.m3u8"));
        (full.segments.iter().filter(|s| s.uri.is_some()).count() >= 8).then_some(full)
    })
    .expect("eight segments within 20 s");
    let last = full.segments.last().unwrap();
    let (msn, part) = (last.msn, last.parts.len().saturating_sub(1) as u32);
    // Both at the same moment: the same blocking point.
    let query = format!("_HLS_msn={msn}&_HLS_part={part}");
    let full = playlist(&format!("{base}index.m3u8?{query}"));
    let delta = playlist(&format!("{base}index.m3u8?{query}&_HLS_skip=YES"));
    assert!(delta.skipped_segments > 0, "{delta:?}");
    assert_eq!(delta.media_sequence, full.media_sequence);
    let tail: Vec<_> = full.segments.iter().filter(|s| s.msn >= delta.segments[0].msn).collect();
    assert_eq!(
        delta.segments.iter().map(|s| (s.msn, &s.uri)).collect::<Vec<_>>(),
        tail.iter().map(|s| (s.msn, &s.uri)).collect::<Vec<_>>()
    );
    assert_eq!(delta.segments[0].msn, full.media_sequence + delta.skipped_segments);
    eprintln!("delta: {} of {} segments skipped", delta.skipped_segments, full.segments.len());
    assert!(delta.segments[0].map.is_some(), "the delta names the init segment again");
}

/// Sends `request` on a new connection and leaves it unread.
fn send_unread(addr: std::net::SocketAddr, request: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    stream
}

#[test]
fn held_playlist_requests_never_lock_out_the_api_at_the_connection_cap() {
    let (_camera, server, _records) = start("hls_cap", Codec::H264, &[]);
    let addr = server.addrs["http"];
    let list = playlist(&server.url("http", "/cam/index.m3u8"));
    let (msn, _) = hint(&list);
    // More held blocking reloads than the control plane keeps connections
    // (256): each waits up to three target durations for segment msn + 2.
    let request = format!("GET /cam/index.m3u8?_HLS_msn={} HTTP/1.1\r\nHost: t\r\n\r\n", msn + 2);
    let held: Vec<TcpStream> = (0..280).map(|_| send_unread(addr, &request)).collect();
    wait_until(Duration::from_secs(5), || {
        (metric(&server, "streaming_path_hls_held_requests{path=\"cam\"}") >= 200.0).then_some(())
    })
    .expect("the requests are held");
    // The API still answers: the longest-held requests made room.
    let health = get(&server.url("http", "/health"));
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(get(&server.url("http", "/status")).status, 200);
    let mut answers = std::collections::HashMap::new();
    for mut stream in held {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = [0u8; 12];
        let status = match stream.read_exact(&mut head) {
            Ok(()) => String::from_utf8_lossy(&head[9..12]).into_owned(),
            Err(_) => "none".into(),
        };
        *answers.entry(status).or_insert(0) += 1;
    }
    eprintln!("held requests' answers: {answers:?}");
    assert!(answers.get("503").copied().unwrap_or(0) >= 280 - 256, "{answers:?}");
    assert!(answers.get("200").copied().unwrap_or(0) >= 200, "the others got their playlist: {answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stalls_neither_webrtc_viewers_nor_hls_clients() {
    let (_camera, server, _records) = start("hls_unread", Codec::H264, &[]);
    let addr = server.addrs["http"];
    let list = playlist(&server.url("http", "/cam/index.m3u8"));
    let segments: Vec<String> = list.segments.iter().filter_map(|s| s.uri.clone()).collect();
    let (msn, part) = hint(&list);
    // One connection pipelines 200 segment requests and 50 blocking
    // reloads and never reads an answer; 20 more hold blocking reloads
    // unread.
    let mut pipelined = String::new();
    for i in 0..200 {
        pipelined.push_str(&format!("GET /cam/{} HTTP/1.1\r\nHost: t\r\n\r\n", segments[i % segments.len()]));
    }
    for _ in 0..50 {
        pipelined.push_str(&format!("GET /cam/index.m3u8?_HLS_msn={msn}&_HLS_part={part} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    let _stuck = send_unread(addr, &pipelined);
    let request = format!("GET /cam/index.m3u8?_HLS_msn={msn}&_HLS_part={part} HTTP/1.1\r\nHost: t\r\n\r\n");
    let _unread: Vec<TcpStream> = (0..20).map(|_| send_unread(addr, &request)).collect();

    let clip = std::fs::read(common::demo_clip()).unwrap();
    let options = streaming_server::load_client::LoadOptions {
        url: server.url("http", ""),
        viewers: 2,
        duration: Duration::from_secs(5),
        stagger: Duration::from_millis(37),
        local_ip: "127.0.0.1".parse().unwrap(),
        token: None,
        path: "cam".into(),
        codecs: vec![Codec::H264],
        verify: Some((Codec::H264, Arc::new(streaming_server::load_client::clip_nal_units(Codec::H264, &clip)))),
        hls: 2,
        janus_mountpoint: None,
    };
    let report = streaming_server::load_client::run(options).await;
    let errors: Vec<_> = report.per_viewer.iter().map(|v| &v.error).collect();
    assert_eq!(report.connected, 2, "{errors:?}");
    assert_eq!(report.clip_nal_units_mismatched, Some(0), "{:?}", report.per_viewer[0].clip_first_mismatch);
    for viewer in &report.per_viewer {
        assert!(viewer.frames >= 100, "viewer {} got {} frames in 5 s", viewer.viewer, viewer.frames);
        assert!(viewer.keyframes >= 3, "{viewer:?}");
    }
    let hls = report.hls.expect("HLS clients ran");
    eprintln!(
        "with a stuck client: WebRTC {} frames, {} lost; HLS {} parts, {} errors, {} missed, capture -> part p50 {:?} ms",
        report.frames, report.lost, hls.parts, hls.errors, hls.parts_missed, hls.latency_p50_ms
    );
    assert_eq!((hls.receiving, hls.errors, hls.parts_missed), (2, 0, 0), "{:?}", hls.per_client);
    for client in &hls.per_client {
        assert!(client.parts >= 15, "HLS client {} got {} parts in 5 s", client.client, client.parts);
    }
    assert_eq!(get(&server.url("http", "/health")).status, 200);
}

#[test]
fn an_on_demand_source_runs_only_while_hls_clients_ask() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streams.yml");
    std::fs::write(
        &config,
        "paths:\n  day:\n    source: demo\n    sourceOnDemand: yes\n    sourceOnDemandCloseAfter: 1s\n",
    )
    .unwrap();
    let server = common::Server::start(
        &["-config", config.to_str().unwrap(), "-http", "127.0.0.1:0", "-metrics", "127.0.0.1:0", "-pprof", ""]
            .into_iter()
            .chain(["-record-path", dir.path().to_str().unwrap(), "-hls-close-after", "2s"])
            .collect::<Vec<_>>(),
        &["http", "metrics"],
    );
    let state = || {
        let list = get(&server.url("http", "/paths")).json();
        list["paths"][0]["state"].as_str().unwrap().to_string()
    };
    assert_eq!(state(), "on_demand_idle");
    let first = playlist(&server.url("http", "/day/index.m3u8"));
    assert_eq!(state(), "ready", "the HLS request started the source");
    assert_eq!(metric(&server, "streaming_path_hls_muxing{path=\"day\"}"), 1.0);
    assert!(metric(&server, "streaming_path_hls_window_bytes{path=\"day\"}") > 0.0);
    // Nobody asks any more: the muxer stops, frees its window and lets the
    // source go.
    wait_until(Duration::from_secs(15), || (state() == "on_demand_idle").then_some(()))
        .expect("the source stops after the HLS clients left");
    assert_eq!(metric(&server, "streaming_path_hls_muxing{path=\"day\"}"), 0.0);
    assert_eq!(metric(&server, "streaming_path_hls_window_bytes{path=\"day\"}"), 0.0);
    let summary = get(&server.url("http", "/paths")).json()["paths"][0]["hls"].clone();
    assert_eq!(summary["muxing"], false, "{summary}");
    // A new client starts it again; numbering goes on, after a discontinuity.
    let again = playlist(&server.url("http", "/day/index.m3u8"));
    let first_last = first.segments.last().unwrap().msn;
    assert!(again.media_sequence > first_last, "{} after {first_last}", again.media_sequence);
    assert!(
        again.discontinuity_sequence > first.discontinuity_sequence,
        "a restart is a discontinuity (counted in the sequence, as the first segment's)"
    );
}

#[test]
fn with_a_token_hls_needs_it_and_carries_it_into_the_playlist() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret/+=\n").unwrap();
    let (_camera, server, _records) =
        start("hls_token", Codec::H264, &["-auth-token-file", token_file.to_str().unwrap()]);
    let base = server.url("http", "/cam/");
    get(&format!("{base}index.m3u8")).assert_json_error(401);
    get(&server.url("http", "/index.m3u8")).assert_json_error(401);
    // The query form (what a page gives Safari's player and hls.js).
    let encoded = "s3cret%2F%2B%3D";
    let text = get(&format!("{base}index.m3u8?token={encoded}")).text();
    let list = MediaPlaylist::parse(&text).unwrap();
    for uri in list.segments.iter().flat_map(|s| s.parts.iter().map(|p| p.uri.clone()).chain(s.uri.clone())) {
        assert!(uri.ends_with(&format!("?token={encoded}")), "{uri}");
    }
    assert!(list.segments[0].map.as_deref().unwrap().ends_with(&format!("?token={encoded}")));
    let part = &list.segments[0].parts[0].uri;
    assert_eq!(get(&format!("{base}{part}")).status, 200, "the URI as listed works");
    let bare = part.split('?').next().unwrap();
    get(&format!("{base}{bare}")).assert_json_error(401);
    let with_header = call("GET", &format!("{base}{bare}"), &[("Authorization", "Bearer s3cret/+=")], None);
    assert_eq!(with_header.status, 200);
    // The header form; its playlist carries no token.
    let headed = call("GET", &format!("{base}index.m3u8"), &[("Authorization", "Bearer s3cret/+=")], None);
    assert_eq!(headed.status, 200);
    assert!(!headed.text().contains("token="));
    // The page and hls.js stay open (they hold no video).
    assert_eq!(get(&base).status, 200);
    let js = get(&server.url("http", "/assets/hls.light.min.js"));
    assert_eq!((js.status, js.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
}

#[test]
fn a_codec_change_brings_a_new_init_segment_after_a_discontinuity() {
    let shm = common::unique_shm("hls_codec_change");
    let camera = common::fake_camera(&shm, &["-fps", "30", "-file", clip(Codec::H264).to_str().unwrap()]);
    let records = tempfile::tempdir().unwrap();
    let server = common::Server::start(
        &["-shm", &shm, "-http", "127.0.0.1:0", "-metrics", "127.0.0.1:0", "-pprof", ""]
            .into_iter()
            .chain(["-record-path", records.path().to_str().unwrap()])
            .collect::<Vec<_>>(),
        &["http", "metrics"],
    );
    let base = server.url("http", "/cam/");
    let before = playlist(&format!("{base}index.m3u8"));
    let h264_init = before.segments[0].map.clone().unwrap();
    // The daemon restarts with the H.265 encoder (ring format 4).
    drop(camera);
    let _camera = common::fake_camera(&shm, &["-fps", "30", "-file", clip(Codec::H265).to_str().unwrap()]);
    let after = wait_until(Duration::from_secs(20), || {
        // Keep asking, so the muxer keeps running.
        let list = playlist(&format!("{base}index.m3u8"));
        list.segments.iter().any(|s| s.uri.is_some() && s.map.as_ref() != Some(&h264_init)).then_some(list)
    })
    .expect("a segment with a new init segment");
    let changed = after.segments.iter().find(|s| s.map.as_ref() != Some(&h264_init)).unwrap();
    assert!(changed.discontinuity, "the new init segment comes after EXT-X-DISCONTINUITY: {after:?}");
    let new_init = get(&format!("{base}{}", changed.map.as_deref().unwrap()));
    assert!(new_init.body.windows(4).any(|w| w == b"hvc1"), "the new init segment is H.265");
    if let Some(old) = after.segments.iter().find(|s| s.map.as_ref() == Some(&h264_init)) {
        let old_init = get(&format!("{base}{}", old.map.as_deref().unwrap()));
        assert!(old_init.body.windows(4).any(|w| w == b"avc1"), "the old one is H.264");
    }
    if have_tool("ffmpeg") {
        // ffmpeg's HLS reader keeps the codec of the first segment it reads
        // (it starts three from the end), so once those are all H.265 it
        // reads the new stream cleanly.
        wait_until(Duration::from_secs(20), || {
            let list = playlist(&format!("{base}index.m3u8"));
            let complete: Vec<_> = list.segments.iter().filter(|s| s.uri.is_some()).collect();
            complete.iter().rev().take(4).all(|s| s.map.as_ref() != Some(&h264_init)).then_some(())
        })
        .expect("four H.265 segments");
        let (ok, errors) = ffmpeg(&["-i", &format!("{base}index.m3u8"), "-t", "3", "-f", "null", "-"]);
        assert!(ok && errors.is_empty(), "{errors}");
    }
}
