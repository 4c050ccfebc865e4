//! WebRTC viewers end to end, in process: a fake camera process writes the
//! demo clip into a real shared-memory segment, the real media thread reads
//! it, and real `webrtc` peers receive it over loopback through
//! `Viewers::offer`. NAL units are compared byte for byte with the clip.

mod common;
mod webrtc_common;

use std::time::{Duration, Instant};

use streaming_server::webrtc::OfferError;
use webrtc_common::{clip_nals, exclusive, find_in_loop, Client, Rig, CHROME_H264};

async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_receives_the_cameras_nal_units_byte_for_byte() {
    let rig = Rig::start("rtc_bytes", 4);
    let (client, id) = rig.connect().await;
    let frames = client.frames(90, Duration::from_secs(15)).await;
    assert_eq!(frames.len(), 90, "frames received in 15 s");
    assert!(frames.iter().all(|f| !f.damaged), "loss on loopback");

    // Starts at an IDR with SPS and PPS in front, from the GOP cache.
    let kinds: Vec<u8> = frames[0].nals.iter().map(|n| n[0] & 0x1f).collect();
    assert_eq!(&kinds[..2], &[7, 8], "first frame starts with SPS, PPS: {kinds:?}");
    assert!(kinds.contains(&5), "first frame is an IDR: {kinds:?}");

    // Byte for byte what the camera wrote, in order.
    let clip = clip_nals(&std::fs::read(common::demo_clip()).unwrap());
    let received: Vec<_> = frames.iter().flat_map(|f| f.nals.iter().cloned()).collect();
    assert!(find_in_loop(&clip, &received).is_some(), "received NAL units are not the clip's");

    // RTP timestamps: never backwards; live frames 1/30 s apart on 90 kHz.
    let steps: Vec<u32> = frames.windows(2).map(|w| w[1].timestamp.wrapping_sub(w[0].timestamp)).collect();
    assert!(steps.iter().all(|&s| (s as i32) > 0), "timestamps must increase: {steps:?}");
    let live = &steps[steps.len() - 30..];
    let mean = live.iter().map(|&s| f64::from(s)).sum::<f64>() / live.len() as f64;
    assert!((2900.0..3100.0).contains(&mean), "live spacing {mean} ticks, expected ~3000");

    assert_eq!(rig.viewers.count(), 1);
    assert!(rig.media.metrics.webrtc_frames_sent.get() >= 90);
    assert_eq!(rig.media.metrics.active_clients.get(), 1);
    assert!(rig.viewers.close(&id), "close frees the slot");
    assert_eq!(rig.viewers.count(), 0);
    assert!(!rig.viewers.close(&id), "a second close finds nothing");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_share_one_packetization_and_the_limit_holds() {
    let rig = Rig::start("rtc_many", 3);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(rig.connect().await);
    }
    // A fourth is refused at once, and does not disturb the others.
    let extra = Client::new(CHROME_H264).await;
    let started = Instant::now();
    assert!(matches!(rig.offer(&extra.offer).await, Err(OfferError::TooManyViewers)));
    assert!(started.elapsed() < Duration::from_secs(1));
    extra.close().await;

    for (client, _) in &clients {
        let frames = client.frames(60, Duration::from_secs(15)).await;
        assert_eq!(frames.len(), 60);
        assert!(frames.iter().all(|f| !f.damaged));
    }
    let stats = rig.viewers.stats();
    // Each access unit is packetized at most once, however many viewers...
    assert!(
        stats.packetized <= rig.media.hub.published(),
        "packetized {} access units, {} published",
        stats.packetized,
        rig.media.hub.published()
    );
    // ...and with three viewers about two lookups in three are cache hits.
    let lookups = stats.packetized + stats.cache_hits;
    assert!(stats.cache_hits * 10 >= lookups * 6, "{stats:?}");

    for (client, id) in &clients {
        assert!(rig.viewers.close(id));
        client.close().await;
    }
    assert_eq!(rig.viewers.count(), 0);
    assert_eq!(rig.media.metrics.active_clients.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_with_audio_first_connects_video_only() {
    // Firefox and Safari put audio first; the server rejects it and must
    // still put its candidates where the browser looks (the video section).
    let rig = Rig::start("rtc_audio_first", 2);
    let client = Client::with_audio_first(CHROME_H264).await;
    let session = rig.offer(&client.offer).await.expect("offer accepted");
    assert!(session.answer_sdp.contains("m=audio 0 "), "audio rejected:\n{}", session.answer_sdp);
    client.accept(session.answer_sdp).await;
    let frames = client.frames(10, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 10);
    rig.viewers.close(&session.id);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_are_refused_with_reasons() {
    let rig = Rig::start("rtc_bad", 2);
    assert!(matches!(rig.offer("").await, Err(OfferError::BadSdp(_))));
    assert!(matches!(rig.offer("this is not sdp").await, Err(OfferError::BadSdp(_))));
    // A receiver that only speaks High profile cannot take Constrained
    // Baseline? It can: High decoders play it. One that only offers
    // packetization-mode=0 cannot.
    let mode0 = Client::new(&[(97, "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f")]).await;
    match rig.offer(&mode0.offer).await {
        Err(OfferError::NoCompatibleCodec(why)) => assert!(why.contains("mode 0"), "{why}"),
        other => panic!("expected NoCompatibleCodec, got {other:?}"),
    }
    mode0.close().await;
    let high_only =
        Client::new(&[(112, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f")]).await;
    let session = rig.offer(&high_only.offer).await.expect("a High decoder plays Constrained Baseline");
    assert!(session
        .answer_sdp
        .contains("a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"));
    high_only.close().await;
    rig.viewers.close(&session.id);
    assert_eq!(rig.viewers.count(), 0, "refused offers hold no slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_viewer_frees_its_slot() {
    let rig = Rig::start("rtc_gone", 2);
    let (client, _id) = rig.connect().await;
    assert_eq!(client.frames(5, Duration::from_secs(10)).await.len(), 5);
    // The client goes away without a WHEP DELETE.
    client.close().await;
    drop(client);
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || rig.viewers.count() == 0).await,
        "slot still held {:?} after the viewer left",
        started.elapsed()
    );
    eprintln!("departed viewer detected in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard keeps other tests (on other threads and runtimes) out while
// this one counts the process's fds; no task here waits for it.
#[allow(clippy::await_holding_lock)]
async fn connect_disconnect_churn_leaks_nothing() {
    let cycles: usize = std::env::var("WEBRTC_CHURN_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let _alone = exclusive();
    let rig = Rig::start_alone("rtc_churn", 64);
    let fds = || std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let rss_kib = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    };
    let threads = || std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    // Warm up once so lazily created runtime pieces are not counted.
    let (client, id) = rig.connect().await;
    assert!(!client.frames(1, Duration::from_secs(10)).await.is_empty());
    rig.viewers.close(&id);
    client.close().await;
    drop(client);
    assert!(wait_until(Duration::from_secs(5), || rig.viewers.live_tasks() == 0).await);
    let (fds_before, rss_before, threads_before) = (fds(), rss_kib(), threads());
    let started = Instant::now();
    for cycle in 0..cycles {
        let (client, id) = rig.connect().await;
        assert!(!client.frames(1, Duration::from_secs(10)).await.is_empty(), "cycle {cycle}: no frame");
        // Most leave with a WHEP DELETE; every tenth just vanishes and is
        // found gone by ICE consent.
        if cycle % 10 != 0 {
            assert!(rig.viewers.close(&id));
        }
        client.close().await;
    }
    assert!(wait_until(Duration::from_secs(15), || rig.viewers.count() == 0 && rig.viewers.live_tasks() == 0).await);
    assert!(
        wait_until(Duration::from_secs(5), || rig.media.hub.consumer_count() == 0).await,
        "hub subscriptions leaked"
    );
    let fds_after = fds();
    eprintln!(
        "{cycles} cycles in {:?}; fds {fds_before} -> {fds_after}; RSS {rss_before:?} -> {:?} KiB; threads {threads_before} -> {}",
        started.elapsed(),
        rss_kib(),
        threads()
    );
    assert!(fds_after <= fds_before + 4, "file descriptors leaked: {fds_before} -> {fds_after}");
}

/// A clip with an IDR every `gop` frames (640x360, 30 fps), made with ffmpeg.
fn clip_with_gop(dir: &std::path::Path, gop: u32, seconds: u32) -> std::path::PathBuf {
    let path = dir.join(format!("gop{gop}.h264"));
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=640x360:rate=30:duration={seconds}"))
        .args(["-c:v", "libx264", "-profile:v", "baseline", "-preset", "veryfast", "-tune", "zerolatency"])
        .args(["-g", &gop.to_string(), "-keyint_min", &gop.to_string(), "-sc_threshold", "0", "-b:v", "800k"])
        .args(["-pix_fmt", "yuv420p", "-x264-params", "aud=1"])
        .arg(&path)
        .status()
        .expect("ffmpeg runs (scripts/test.sh installs it)");
    assert!(status.success());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_s_gop_and_a_1_s_gop_both_start_a_joining_viewer_at_once_without_a_freeze() {
    let dir = tempfile::tempdir().unwrap();
    for gop in [120, 30] {
        let rig = Rig::start_clip(&format!("rtc_gop{gop}"), 2, &clip_with_gop(dir.path(), gop, 12));
        // Join late in the GOP: the cache then holds most of it.
        let started = Instant::now();
        while rig.media.hub.gop_cache_len() < (gop as usize) * 3 / 4 && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cached = rig.media.hub.gop_cache_len();
        let joined = Instant::now();
        let (client, id) = rig.connect().await;
        let first = client.frames(1, Duration::from_secs(5)).await;
        let first_after = joined.elapsed();
        assert_eq!(first.len(), 1, "GOP {gop}: no frame");
        assert_eq!(first[0].nals[0][0] & 0x1f, 7, "GOP {gop}: starts with the SPS of an IDR");
        // The whole cached GOP and then live frames, with nothing dropped.
        let rest = client.frames(cached + 30, Duration::from_secs(10)).await;
        assert_eq!(rest.len(), cached + 30, "GOP {gop}: frames stopped (a freeze)");
        assert!(rest.iter().all(|f| !f.damaged), "GOP {gop}: damaged frames");
        assert_eq!(rig.media.metrics.webrtc_frames_dropped.get(), 0, "GOP {gop}: the viewer lost frames at join");
        eprintln!("GOP {gop}: joined with {cached} frames cached, first frame after {first_after:?}");
        assert!(first_after < Duration::from_secs(1), "GOP {gop}: first frame after {first_after:?}");
        rig.viewers.close(&id);
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyframe_request_restarts_the_viewer_from_the_cached_idr() {
    let rig = Rig::start("rtc_pli", 2);
    let (client, id) = rig.connect().await;
    // Past the GOP-cache catch-up and the restart rate limit.
    assert_eq!(client.frames(45, Duration::from_secs(10)).await.len(), 45);
    tokio::time::sleep(streaming_server::webrtc::KEYFRAME_RESTART_INTERVAL).await;
    let _ = client.frames.drain();
    let before = rig.viewers.stats().keyframe_restarts;
    client.send_pli().await;
    // Several more at once: rate limited to one restart.
    for _ in 0..4 {
        client.send_pli().await;
    }
    assert!(wait_until(Duration::from_secs(5), || rig.viewers.stats().keyframe_restarts > before).await);
    let frames = client.frames(40, Duration::from_secs(10)).await;
    assert_eq!(frames.len(), 40);
    assert_eq!(rig.viewers.stats().keyframe_restarts, before + 1, "PLIs are rate limited");
    // An IDR with SPS/PPS follows within a few frames (not up to a GOP).
    let restart = frames
        .iter()
        .position(|f| f.nals.first().is_some_and(|n| n[0] & 0x1f == 7) && f.nals.iter().any(|n| n[0] & 0x1f == 5))
        .expect("an IDR after the PLI");
    assert!(restart <= 3, "the IDR came {restart} frames after the PLI");
    // From there the stream is the clip again, and timestamps still rise.
    let clip = clip_nals(&std::fs::read(common::demo_clip()).unwrap());
    let received: Vec<_> = frames[restart..].iter().flat_map(|f| f.nals.iter().cloned()).collect();
    assert!(find_in_loop(&clip, &received).is_some());
    assert!(frames.windows(2).all(|w| (w[1].timestamp.wrapping_sub(w[0].timestamp) as i32) > 0));
    rig.viewers.close(&id);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_stun_server_does_not_hold_up_the_answer() {
    // A STUN "server" that never answers: a bound socket nobody reads.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let stun = format!("stun:{}", silent.local_addr().unwrap());
    let rig = Rig::start_with("rtc_stun", 2, |config| config.stun = vec![stun]);
    let client = Client::new(CHROME_H264).await;
    let started = Instant::now();
    // Ok (not the OFFER_TIMEOUT error): the gathering wait is bounded.
    let session = rig.offer(&client.offer).await.expect("answered despite the silent STUN server");
    eprintln!("answer with a silent STUN server after {:?}", started.elapsed());
    assert!(session.answer_sdp.contains("127.0.0.1"), "host candidates are in the answer");
    client.accept(session.answer_sdp).await;
    assert_eq!(client.frames(5, Duration::from_secs(10)).await.len(), 5);
    rig.viewers.close(&session.id);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_stay_inside_the_udp_port_range() {
    // A block of three free ports (bind them, release them), away from the
    // kernel's ephemeral range.
    let free = |p: u16| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok();
    let start = 20_000 + (std::process::id() % 5_000) as u16 * 3;
    let low = (0..500u16).map(|i| start + i * 3).find(|&p| free(p) && free(p + 1) && free(p + 2));
    let Some(low) = low else {
        panic!("no three consecutive free UDP ports between {start} and {}", start + 1500);
    };
    let range = (low, low + 2);
    let rig = Rig::start_with("rtc_ports", 4, |config| config.udp_port_range = Some(range));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = Client::new(CHROME_H264).await;
        let session = rig.offer(&client.offer).await.expect("offer accepted");
        let ports: Vec<u16> = session
            .answer_sdp
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .filter_map(|l| l.split_whitespace().nth(5)?.parse().ok())
            .collect();
        assert!(!ports.is_empty());
        assert!(ports.iter().all(|p| (range.0..=range.1).contains(p)), "{ports:?} outside {range:?}");
        client.accept(session.answer_sdp).await;
        assert_eq!(client.frames(3, Duration::from_secs(10)).await.len(), 3);
        clients.push((client, session.id));
    }
    // The range is full: the next viewer is refused like at -max-clients.
    let extra = Client::new(CHROME_H264).await;
    assert!(matches!(rig.offer(&extra.offer).await, Err(OfferError::TooManyViewers)));
    assert_eq!(rig.viewers.count(), 3, "a refused offer holds no slot");
    for (client, id) in &clients {
        rig.viewers.close(id);
        client.close().await;
    }
}
