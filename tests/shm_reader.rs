//! The shared-memory reader against a real writer in another process (the
//! fake camera, which follows ABI.md's writer protocol), over a real POSIX
//! segment. Every test checks that what the reader hands on is byte-exact
//! with the clip and that no frame is lost, duplicated or reordered except
//! across a reported gap.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{fake_camera, unique_shm};
use streaming_server::abi::{Layout, TimeBits};
use streaming_server::fake_camera::{Clip, DEMO_CLIP};
use streaming_server::hub::{StartAt, SubscribeOptions};
use streaming_server::metrics::Metrics;
use streaming_server::shutdown::{self, Trigger};
use streaming_server::source;
use streaming_server::source::ring::{self, GapReason, ReaderConfig, ReaderEvent};
use streaming_server::stream::SourceStatus;
use streaming_server::stream::Stream;

/// What the reader handed on, simplified for comparison.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// Frame: (daemon frame_number, position of its bytes in the clip).
    Frame(u64, usize),
    Gap(GapReason),
}

struct Reader {
    trigger: Trigger,
    events: mpsc::Receiver<ReaderEvent>,
    thread: Option<JoinHandle<()>>,
    metrics: streaming_server::metrics::StreamMetrics,
    /// Sleep inside the sink when this frame number arrives (to fall behind).
    _stall: Option<(u64, Duration)>,
}

impl Reader {
    fn start(shm: &str, stall: Option<(u64, Duration)>) -> Reader {
        let (trigger, shutdown) = shutdown::channel();
        let (tx, events) = mpsc::channel();
        let metrics = Arc::new(Metrics::new()).stream("cam");
        let config = ReaderConfig {
            name: shm.to_string(),
            layout: Layout::new(TimeBits::Native),
            format3: streaming_server::codec::Codec::H264,
        };
        let thread_metrics = metrics.clone();
        let thread = std::thread::spawn(move || {
            let status = SourceStatus::default();
            let mut stalled = false;
            ring::run(&config, &shutdown, &thread_metrics, &status, |event| {
                if let (ReaderEvent::Frame(frame), Some((at, pause))) = (&event, stall) {
                    if frame.frame_number == at && !stalled {
                        stalled = true;
                        std::thread::sleep(pause);
                    }
                }
                let _ = tx.send(event);
            });
        });
        Reader { trigger, events, thread: Some(thread), metrics, _stall: stall }
    }

    /// Collects events until `frames` frames arrived or `timeout` passed.
    fn collect(&self, clip: &Clip, frames: usize, timeout: Duration) -> Vec<Seen> {
        self.collect_until(clip, |seen| seen.iter().filter(|s| matches!(s, Seen::Frame(..))).count() >= frames, timeout)
    }

    /// Collects events until `done` says so or `timeout` passed.
    fn collect_until(&self, clip: &Clip, done: impl Fn(&[Seen]) -> bool, timeout: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(ReaderEvent::Frame(frame)) => {
                    let pos =
                        clip.units.iter().position(|u| u[..] == frame.data[..]).unwrap_or_else(|| {
                            panic!("frame {} is not byte-exact with any clip unit", frame.frame_number)
                        });
                    seen.push(Seen::Frame(frame.frame_number, pos));
                }
                Ok(ReaderEvent::Gap(reason)) => seen.push(Seen::Gap(reason)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        seen
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.trigger.trigger();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn clip() -> Clip {
    Clip::parse(DEMO_CLIP, streaming_server::codec::Codec::H264).unwrap()
}

/// Splits the sequence at gaps and checks each run is consecutive: frame
/// numbers +1 and clip positions +1 (mod clip length).
fn runs(seen: &[Seen], clip_len: usize) -> Vec<Vec<(u64, usize)>> {
    let mut runs: Vec<Vec<(u64, usize)>> = vec![Vec::new()];
    for item in seen {
        match item {
            Seen::Gap(_) => runs.push(Vec::new()),
            Seen::Frame(n, pos) => runs.last_mut().unwrap().push((*n, *pos)),
        }
    }
    runs.retain(|r| !r.is_empty());
    for run in &runs {
        for pair in run.windows(2) {
            let ((n0, p0), (n1, p1)) = (pair[0], pair[1]);
            assert_eq!(n1, n0 + 1, "frame numbers jump without a reported gap: {run:?}");
            assert_eq!(p1, (p0 + 1) % clip_len, "clip order broken without a reported gap: {run:?}");
        }
    }
    runs
}

fn gaps(seen: &[Seen]) -> Vec<GapReason> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Gap(g) => Some(*g),
            _ => None,
        })
        .collect()
}

#[test]
fn normal_play_delivers_every_frame_in_order_byte_exact() {
    let clip = clip();
    let shm = unique_shm("normal");
    // Reader first: it must wait for the segment to appear.
    let reader = Reader::start(&shm, None);
    std::thread::sleep(Duration::from_millis(300));
    let _camera = fake_camera(&shm, &["-fps", "60", "-frames", "200", "-linger-ms", "2000"]);
    let seen = reader.collect(&clip, 200, Duration::from_secs(20));
    assert!(gaps(&seen).is_empty(), "no gap expected: {:?}", gaps(&seen));
    let runs = runs(&seen, clip.units.len());
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].len(), 200, "every frame, once");
    assert_eq!(runs[0][0], (0, 0), "starts at the first frame the daemon wrote");
    assert_eq!(reader.metrics.frames_read.get(), 200);
    assert_eq!(reader.metrics.read_errors.get(), 0);
}

#[test]
fn back_to_back_bursts_lose_nothing() {
    let clip = clip();
    let shm = unique_shm("burst");
    let reader = Reader::start(&shm, None);
    let _camera = fake_camera(&shm, &["-fps", "30", "-burst", "15", "-frames", "150", "-linger-ms", "2000"]);
    let seen = reader.collect(&clip, 150, Duration::from_secs(20));
    assert!(gaps(&seen).is_empty(), "no gap expected: {:?}", gaps(&seen));
    assert_eq!(runs(&seen, clip.units.len())[0].len(), 150);
}

#[test]
fn without_any_semaphore_post_the_reader_still_gets_every_frame() {
    let clip = clip();
    let shm = unique_shm("nopost");
    let reader = Reader::start(&shm, None);
    let _camera = fake_camera(&shm, &["-fps", "60", "-no-post", "-frames", "120", "-linger-ms", "2000"]);
    let seen = reader.collect(&clip, 120, Duration::from_secs(20));
    assert!(gaps(&seen).is_empty(), "no gap expected: {:?}", gaps(&seen));
    assert_eq!(runs(&seen, clip.units.len())[0].len(), 120);
}

#[test]
fn a_slow_writer_copy_is_never_read_torn() {
    // The writer pauses 25 ms between header and data: a reader trusting
    // write_index alone would copy the previous occupant's bytes.
    let clip = clip();
    let shm = unique_shm("slowcopy");
    let reader = Reader::start(&shm, None);
    let _camera = fake_camera(&shm, &["-fps", "20", "-slow-copy-ms", "25", "-frames", "60", "-linger-ms", "2000"]);
    let seen = reader.collect(&clip, 60, Duration::from_secs(20));
    assert!(gaps(&seen).is_empty(), "no gap expected: {:?}", gaps(&seen));
    assert_eq!(runs(&seen, clip.units.len())[0].len(), 60);
}

#[test]
fn a_reader_more_than_a_ring_behind_skips_to_the_newest_frame_and_reports_a_gap() {
    let clip = clip();
    let shm = unique_shm("overrun");
    // The sink stalls 1.5 s on frame 10: at 60 fps the writer gets ~90
    // frames ahead, three rings.
    let reader = Reader::start(&shm, Some((10, Duration::from_millis(1500))));
    let _camera = fake_camera(&shm, &["-fps", "60", "-frames", "240", "-linger-ms", "2000"]);
    let seen = reader.collect_until(&clip, |s| s.last() == Some(&Seen::Frame(239, 239 % 180)), Duration::from_secs(15));
    let gaps = gaps(&seen);
    assert!(matches!(gaps.as_slice(), [GapReason::Overrun { lost }] if *lost > 30), "one overrun gap: {gaps:?}");
    let runs = runs(&seen, clip.units.len());
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].last().unwrap().0, 10, "the stall happened after frame 10");
    let (resumed_at, _) = runs[1][0];
    let GapReason::Overrun { lost } = gaps[0] else { unreachable!() };
    assert_eq!(resumed_at, 11 + u64::from(lost), "lost count matches the frames skipped");
    assert_eq!(runs[1].last().unwrap().0, 239, "reads on to the end after catching up");
    assert_eq!(reader.metrics.frames_dropped.get(), u64::from(lost));
}

#[test]
fn a_daemon_restart_is_detected_and_followed() {
    let clip = clip();
    let shm = unique_shm("restart");
    let reader = Reader::start(&shm, None);
    let _camera = fake_camera(&shm, &["-fps", "30", "-restart-every", "45", "-frames", "120", "-linger-ms", "3000"]);
    let seen = reader.collect(&clip, 120, Duration::from_secs(20));
    let gaps = gaps(&seen);
    assert!(!gaps.is_empty() && gaps.iter().all(|g| *g == GapReason::CameraRestart), "restart gaps only: {gaps:?}");
    let runs = runs(&seen, clip.units.len());
    assert!(runs.len() >= 3, "two restarts split the stream: {runs:?}");
    // Frame numbers restart with the daemon; clip positions carry on, and
    // the reader read back the new segment from its start: nothing lost.
    let positions: Vec<usize> = runs.iter().flatten().map(|(_, p)| *p).collect();
    assert_eq!(positions, (0..120).collect::<Vec<_>>());
    assert!(runs[1][0].0 == 0 && runs[2][0].0 == 0, "each new segment starts at frame 0");
}

#[test]
fn write_index_wrapping_at_2_pow_32_is_seamless() {
    let clip = clip();
    let shm = unique_shm("wrap");
    let reader = Reader::start(&shm, None);
    let start = (u32::MAX - 40).to_string();
    let _camera = fake_camera(&shm, &["-fps", "60", "-start-index", &start, "-frames", "90", "-linger-ms", "2000"]);
    let seen = reader.collect(&clip, 90, Duration::from_secs(20));
    assert!(gaps(&seen).is_empty(), "no gap expected: {:?}", gaps(&seen));
    assert_eq!(runs(&seen, clip.units.len())[0].len(), 90);
    assert_eq!(reader.metrics.read_errors.get(), 0);
}

#[test]
fn malformed_frames_of_each_kind_are_counted_and_skipped() {
    let clip = clip();
    let shm = unique_shm("malformed");
    let reader = Reader::start(&shm, None);
    // After every 10 good frames, one malformed one (empty, too large, not
    // H.264, not Annex-B, in turn).
    let _camera = fake_camera(&shm, &["-fps", "60", "-malformed-every", "10", "-frames", "85", "-linger-ms", "2000"]);
    let seen = reader.collect(&clip, 85, Duration::from_secs(20));
    let gaps = gaps(&seen);
    assert_eq!(gaps.len(), 8, "one gap per malformed frame: {gaps:?}");
    assert!(gaps.iter().all(|g| matches!(g, GapReason::Malformed { .. })));
    // Good frames: all 85 clip units in order, in runs of 10.
    let runs = runs(&seen, clip.units.len());
    let positions: Vec<usize> = runs.iter().flatten().map(|(_, p)| *p).collect();
    assert_eq!(positions, (0..85).collect::<Vec<_>>());
    assert_eq!(reader.metrics.read_errors.get(), 8);
    for kind in ["empty", "too_large", "bad_format", "not_annexb"] {
        assert_eq!(reader.metrics.frame_errors("read", kind), 2, "{kind}");
    }
}

#[test]
fn a_hub_consumer_starts_at_an_idr_and_gets_consecutive_access_units() {
    let shm = unique_shm("pipeline");
    let (trigger, shutdown) = shutdown::channel();
    let media = Stream::new("cam", &Arc::new(Metrics::new()));
    let config = ReaderConfig {
        name: shm.clone(),
        layout: Layout::new(TimeBits::Native),
        format3: streaming_server::codec::Codec::H264,
    };
    let thread = source::spawn_ring(config, media.clone(), shutdown).unwrap();
    let sub = media.hub.subscribe(SubscribeOptions {
        name: "test".into(),
        budget: streaming_server::hub::QueueBudget { bytes: 64 << 20, frames: 300 },
        start: StartAt::NextIdr,
        dropped_metric: None,
    });
    let _camera = fake_camera(&shm, &["-fps", "60", "-frames", "100", "-linger-ms", "2000"]);
    let mut received = Vec::new();
    while let Ok(au) = sub.frames.recv_timeout(Duration::from_secs(5)) {
        received.push(au);
        if received.len() == 70 {
            break;
        }
    }
    trigger.trigger();
    thread.join().unwrap();
    assert_eq!(received.len(), 70);
    assert!(received[0].is_keyframe, "a consumer always starts at an IDR");
    assert!(received[0].parameter_sets.is_some());
    for pair in received.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    let ps = media.hub.parameter_sets().unwrap();
    let info = ps.h264().unwrap();
    assert_eq!((info.width, info.height, info.profile_idc), (640, 360, 66));
    assert_eq!(sub.stats.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_segment_of_the_wrong_size_is_refused_then_the_real_one_is_read() {
    let clip = clip();
    let shm = unique_shm("wrongsize");
    // Something else holds the name with the wrong size (or a daemon built
    // with another time_t layout): the reader must wait, not crash.
    let path = format!("/dev/shm{shm}");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let reader = Reader::start(&shm, None);
    let early = reader.collect(&clip, 1, Duration::from_millis(600));
    assert!(early.is_empty(), "nothing read from a wrong-size segment: {early:?}");
    std::fs::remove_file(&path).unwrap();
    let _camera = fake_camera(&shm, &["-fps", "60", "-frames", "60", "-linger-ms", "2000"]);
    let seen = reader.collect(&clip, 60, Duration::from_secs(20));
    assert_eq!(runs(&seen, clip.units.len())[0].len(), 60);
}
