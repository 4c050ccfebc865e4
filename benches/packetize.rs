//! Packetization benchmark: what packetizing an access unit into RTP costs
//! (done once per frame for all viewers) and what a viewer's cache lookup
//! costs, on real clips: the same 1080p30 ~6 Mbit/s picture in H.264
//! (RFC 6184) and in H.265 (RFC 7798), one after the other.
//!
//! `cargo bench --bench packetize` (env: `BENCH_CLIP`, `BENCH_CLIP_H265`,
//! Annex-B files; by default 1080p30 clips made once with ffmpeg in
//! target/bench/; under `cargo test` the bundled 640x360 demo clips).

#[path = "support/clip.rs"]
mod clip;

use std::time::{Duration, Instant};

use rtc::shared::marshal::Marshal;
use streaming_server::codec::h264::split_annexb;
use streaming_server::fake_camera::Clip;
use streaming_server::rtp::{packetize, rtp_packet, PacketCache, MAX_PAYLOAD};

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this too,
    // without it: a quick smoke run on the demo clips there.
    let benching = std::env::args().any(|a| a == "--bench");
    for path in clip::both_codecs(benching) {
        bench_clip(&path, benching);
    }
}

fn bench_clip(path: &std::path::Path, benching: bool) {
    let codec = streaming_server::fake_camera::codec_of_file(path);
    let clip = Clip::parse(&std::fs::read(path).expect("read the clip"), codec).expect("parse the clip");
    let units = clip.access_units(clip.units.len(), Duration::from_millis(33));
    let bytes: usize = units.iter().map(|u| u.data.len()).sum();
    println!(
        "\n{codec} clip {} ({}x{}): {} access units, {:.0} KiB per frame on average",
        path.display(),
        clip.width,
        clip.height,
        units.len(),
        bytes as f64 / units.len() as f64 / 1024.0
    );

    // Annex-B split (start-code scan) of each access unit as the camera
    // wrote it: what the processor does once per frame.
    let rounds = if benching { (20_000 / units.len()).max(3) } else { 1 };
    let started = Instant::now();
    let mut nals = 0usize;
    for _ in 0..rounds {
        for au in &units {
            nals += std::hint::black_box(split_annexb(&au.data)).len();
        }
    }
    let per_frame = started.elapsed() / (rounds * units.len()) as u32;
    println!(
        "Annex-B split (once per frame): {:.1} us per frame, {:.0} MB/s, {:.1} NAL units per frame",
        per_frame.as_secs_f64() * 1e6,
        (bytes * rounds) as f64 / started.elapsed().as_secs_f64() / 1e6,
        nals as f64 / (rounds * units.len()) as f64
    );

    // Packetize every access unit, many rounds; IDRs and the rest apart.
    let (mut idr, mut other) = (Vec::new(), Vec::new());
    let mut packets = 0usize;
    for _ in 0..rounds {
        for au in &units {
            let started = Instant::now();
            let p = packetize(au, MAX_PAYLOAD);
            let took = started.elapsed();
            packets += p.payloads.len();
            std::hint::black_box(&p);
            if au.is_keyframe {
                idr.push(took)
            } else {
                other.push(took)
            }
        }
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let mean = v.iter().sum::<Duration>() / v.len().max(1) as u32;
        (mean, v[v.len() * 99 / 100])
    };
    let (idr_mean, idr_p99) = stats(&mut idr);
    let (p_mean, p_p99) = stats(&mut other);
    println!(
        "packetize (once per frame for all viewers): keyframes mean {:.1} us p99 {:.1} us; other frames mean {:.1} us p99 {:.1} us; {:.1} packets per frame",
        idr_mean.as_secs_f64() * 1e6,
        idr_p99.as_secs_f64() * 1e6,
        p_mean.as_secs_f64() * 1e6,
        p_p99.as_secs_f64() * 1e6,
        packets as f64 / (rounds * units.len()) as f64
    );

    // Per viewer per frame, this crate's part of a send: the viewer's RTP
    // headers around the shared payloads, and each packet marshalled as the
    // `webrtc` crate does before SRTP (SRTP and sendmsg are the crate's and
    // the kernel's: scripts/bench.sh measures the whole).
    let packetized: Vec<_> = units.iter().map(|au| packetize(au, MAX_PAYLOAD)).collect();
    let frames = if benching { 20_000 } else { 100 };
    let started = Instant::now();
    let mut sent = 0usize;
    for i in 0..frames {
        let au = &packetized[i % packetized.len()];
        let count = au.payloads.len();
        for (j, payload) in au.payloads.iter().enumerate() {
            let packet = rtp_packet(payload, 0x1234_5678, 102, (sent & 0xffff) as u16, au.rtp_time, j + 1 == count);
            std::hint::black_box(packet.marshal().expect("a valid RTP packet"));
            sent += 1;
        }
    }
    let took = started.elapsed();
    println!(
        "per-viewer send, headers + marshal: {:.2} us per frame, {:.0} ns per packet",
        took.as_secs_f64() * 1e6 / frames as f64,
        took.as_secs_f64() * 1e9 / sent as f64
    );

    // A viewer's lookup of an access unit another viewer packetized.
    let cache = PacketCache::new();
    let window = &units[..units.len().min(100)];
    for au in window {
        cache.get(au);
    }
    let lookups = if benching { 200_000 } else { 1000 };
    let started = Instant::now();
    for i in 0..lookups {
        std::hint::black_box(cache.get(&window[i % window.len()]));
    }
    println!("cache hit (per viewer per frame): {:.0} ns", started.elapsed().as_secs_f64() * 1e9 / lookups as f64);
}
