//! LL-HLS muxing benchmark: what turning the camera's access units into
//! fMP4 parts costs (done once per frame for all HLS clients), and what
//! rendering the two playlists costs (once per part), on real clips: the
//! same 1080p30 ~6 Mbit/s picture in H.264 and in H.265.
//!
//! `cargo bench --bench hls_mux` (env: `BENCH_CLIP`, `BENCH_CLIP_H265`;
//! by default 1080p30 clips made once with ffmpeg in target/bench/; under
//! `cargo test` the bundled 640x360 demo clips, one quick round).

#[path = "support/clip.rs"]
mod clip;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use streaming_server::codec::AccessUnit;
use streaming_server::fake_camera::Clip;
use streaming_server::hls::muxer::{Muxer, Output};
use streaming_server::hls::playlist;
use streaming_server::hls::window::{Part, Window, WindowLimits};

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // too, without it: a quick smoke run on the demo clips there.
    let benching = std::env::args().any(|a| a == "--bench");
    let h264 = clip::clip_path(benching).unwrap_or_else(|e| panic!("bench clip: {e}"));
    let h265 = clip::clip_path_h265(benching).unwrap_or_else(|e| panic!("H.265 bench clip: {e}"));
    for path in [h264, h265] {
        bench_clip(&path, benching);
    }
}

/// The clip's access units through the codec processor, looped `loops`
/// times with consecutive sequence numbers and 30 fps capture times.
fn access_units(path: &std::path::Path, loops: usize) -> (Clip, Vec<Arc<AccessUnit>>) {
    let codec = streaming_server::fake_camera::codec_of_file(path);
    let clip = Clip::parse(&std::fs::read(path).expect("read the clip"), codec).expect("parse the clip");
    let units = clip.access_units(clip.units.len() * loops, Duration::from_nanos(33_333_333));
    (clip, units)
}

fn bench_clip(path: &std::path::Path, benching: bool) {
    let loops = if benching { 6 } else { 1 };
    let (clip, units) = access_units(path, loops);
    let codec = units[0].codec;
    let bytes: usize = units.iter().map(|u| u.data.len()).sum();
    println!(
        "\n{codec} clip {} ({}x{}): {} access units, {:.0} KiB per frame on average",
        path.display(),
        clip.width,
        clip.height,
        units.len(),
        bytes as f64 / units.len() as f64 / 1024.0
    );

    // Segmenter + fMP4 (sample conversion, moof+mdat), the muxer task's
    // work per frame; a keyframe's cost lands on the frame that closes its
    // part, so the figure is a mean over whole runs.
    let rounds = if benching { 5 } else { 1 };
    let mut outputs = Vec::new();
    let (mut parts, mut part_bytes) = (0usize, 0usize);
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    for _ in 0..rounds {
        let mut muxer = Muxer::new();
        for au in &units {
            let one = Instant::now();
            muxer.push(au, &mut outputs);
            worst = worst.max(one.elapsed());
            for output in outputs.drain(..) {
                if let Output::Part { data, .. } = output {
                    parts += 1;
                    part_bytes += data.len();
                    std::hint::black_box(data);
                }
            }
        }
        assert_eq!(muxer.errors(), 0);
    }
    let took = started.elapsed();
    let frames = rounds * units.len();
    println!(
        "mux (once per frame for all HLS clients): {:.1} us per frame on average ({:.0} MB/s), worst frame {:.0} us; {:.1} frames and {:.0} KiB per part",
        took.as_secs_f64() * 1e6 / frames as f64,
        (bytes * rounds) as f64 / took.as_secs_f64() / 1e6,
        worst.as_secs_f64() * 1e6,
        frames as f64 / parts.max(1) as f64,
        part_bytes as f64 / parts.max(1) as f64 / 1024.0
    );

    // The playlists (full and delta) of a full window, rendered once per
    // part for every client.
    let mut window = Window::new(WindowLimits::default(), 1_700_000_000_000);
    let init = window.add_init(Bytes::from_static(b"init"), "avc1.640028".into());
    for segment in 0..13 {
        window.begin_segment(init, false, SystemTime::now());
        for part in 0..5 {
            window.add_part(Part { data: Bytes::from_static(b"x"), duration: 18_000, independent: part == 0 });
        }
        if segment < 12 {
            window.end_segment();
        }
    }
    let renders = if benching { 20_000 } else { 100 };
    let started = Instant::now();
    let mut length = 0;
    for _ in 0..renders {
        let full = playlist::render(&window, false, "").expect("a playlist");
        let delta = playlist::render(&window, true, "").expect("a delta playlist");
        length = full.len();
        std::hint::black_box((full, delta));
    }
    println!(
        "playlists (full {length} bytes + delta, once per part): {:.1} us per part",
        started.elapsed().as_secs_f64() * 1e6 / renders as f64
    );
}
