//! Fake camera: plays an H.264 Annex-B clip into a shared-memory segment
//! with the daemon's exact writer protocol, so the whole product runs and is
//! tested on a machine without a camera.
//!
//! It creates the segment as the daemon does, writes one access unit per
//! frame interval (looping the clip), and unlinks the segment when it stops.
//! Options reproduce what a real daemon does on a bad day: restarts, bursts,
//! slow copies, missing semaphore posts, malformed frames, `write_index`
//! near 2^32.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::abi::{Layout, FORMAT_H264, FORMAT_H265, MAX_FRAME_SIZE};
use crate::clock::monotonic_now;
use crate::codec::annexb::split_annexb;
use crate::codec::{h264, h265, AccessUnit, Codec, Processor, RawFrame};
use crate::shutdown::Shutdown;
use crate::source::ring::{AttachError, Segment, WriteFrame};

/// The built-in demo clip: 6 s of 640x360 constrained-baseline H.264 at 30
/// fps, an IDR every second, with a moving test pattern, a clock and a
/// frame counter (made by `scripts/make-demo-clip.sh`).
pub static DEMO_CLIP: &[u8] = include_bytes!("../assets/demo.h264");
/// The same picture in H.265 (`scripts/make-demo-clip-h265.sh`).
pub static DEMO_CLIP_H265: &[u8] = include_bytes!("../assets/demo.h265");

/// The built-in demo clip of `codec`.
pub fn demo_clip(codec: Codec) -> Result<Clip, String> {
    match codec {
        Codec::H264 => Clip::parse(DEMO_CLIP, Codec::H264),
        Codec::H265 => Clip::parse(DEMO_CLIP_H265, Codec::H265),
    }
}

/// Kinds of malformed frame the fake camera can inject, in turn.
pub const MALFORMED_KINDS: [&str; 4] = ["empty", "too_large", "bad_format", "not_annexb"];

#[derive(Clone, Debug)]
pub struct FakeCameraOptions {
    pub shm_name: String,
    pub layout: Layout,
    pub fps: f64,
    /// Stop after this many clip frames (None: run until shutdown).
    pub frames: Option<u64>,
    /// First `write_index` value (to test wrap-around at 2^32).
    pub start_index: u32,
    /// Unlink and recreate the segment after this many frames, as a
    /// restarted daemon does.
    pub restart_every: Option<u64>,
    /// Insert one malformed frame after every N good ones.
    pub malformed_every: Option<u64>,
    /// Write this many frames back to back, then sleep as long.
    pub burst: u64,
    /// Sleep between header and data copy (torn-read window).
    pub slow_copy: Option<Duration>,
    /// Post the semaphore (a daemon whose posts are all taken by others
    /// looks like `false`).
    pub post: bool,
    /// Linger this long after the last frame before unlinking, so readers
    /// can finish.
    pub linger: Duration,
}

impl FakeCameraOptions {
    pub fn new(shm_name: &str, layout: Layout) -> FakeCameraOptions {
        FakeCameraOptions {
            shm_name: shm_name.to_string(),
            layout,
            fps: 30.0,
            frames: None,
            start_index: 0,
            restart_every: None,
            malformed_every: None,
            burst: 1,
            slow_copy: None,
            post: true,
            linger: Duration::ZERO,
        }
    }
}

/// The clip's access units and picture size.
#[derive(Debug)]
pub struct Clip {
    pub codec: Codec,
    pub units: Vec<Vec<u8>>,
    pub width: i32,
    pub height: i32,
    /// The ring's `format` for these frames: 3 (H.264) or 4 (H.265); an
    /// older daemon writes H.265 with 3 (`fake-camera -format 3`).
    pub format: i32,
}

impl Clip {
    /// Clip frame `n` (looping) as the daemon would write it now.
    pub fn frame(&self, n: u64, frame_number: u64) -> WriteFrame<'_> {
        let unit = &self.units[(n % self.units.len() as u64) as usize];
        WriteFrame {
            frame_number,
            capture_time: monotonic_now(),
            camera_id: 0,
            width: self.width,
            height: self.height,
            format: self.format,
            data_size: unit.len() as u64,
            data: unit,
            post: true,
        }
    }

    /// The access units of an Annex-B elementary stream of `codec`.
    pub fn parse(stream: &[u8], codec: Codec) -> Result<Clip, String> {
        let units: Vec<Vec<u8>> = codec.split_access_units(stream).into_iter().map(|r| stream[r].to_vec()).collect();
        if units.is_empty() {
            return Err(format!("the clip holds no {codec} access units"));
        }
        if let Some(unit) = units.iter().find(|u| u.len() > MAX_FRAME_SIZE) {
            return Err(format!("an access unit of {} bytes exceeds MAX_FRAME_SIZE", unit.len()));
        }
        let nals = || split_annexb(stream).into_iter().map(|r| &stream[r]);
        let (width, height, format) = match codec {
            Codec::H264 => {
                let sps =
                    nals().find(|nal| h264::nal_unit_type(nal) == h264::nal_type::SPS).ok_or("the clip has no SPS")?;
                let info = h264::parse_sps(sps).map_err(|e| format!("the clip's SPS: {e}"))?;
                (info.width, info.height, FORMAT_H264)
            }
            Codec::H265 => {
                let sps =
                    nals().find(|nal| h265::nal_unit_type(nal) == h265::nal_type::SPS).ok_or("the clip has no SPS")?;
                let info = h265::parse_sps(sps).map_err(|e| format!("the clip's SPS: {e}"))?;
                (info.width, info.height, FORMAT_H265)
            }
        };
        Ok(Clip { codec, units, width: width as i32, height: height as i32, format })
    }

    /// Clip frames `0..count` (looping) through the codec processor, as the
    /// hub hands them to outputs, capture times `interval` apart (for
    /// benchmarks and tests of the outputs); frames the processor refuses
    /// are left out.
    pub fn access_units(&self, count: usize, interval: Duration) -> Vec<Arc<AccessUnit>> {
        let mut processor = Processor::new(self.codec);
        (0..count)
            .filter_map(|i| {
                let frame = RawFrame {
                    codec: self.codec,
                    data: Bytes::copy_from_slice(&self.units[i % self.units.len()]),
                    frame_number: i as u64,
                    index: i as u32,
                    capture_time: interval * i as u32,
                    read_time: Duration::ZERO,
                    camera_id: 0,
                    width: self.width,
                    height: self.height,
                };
                processor.process(frame).ok().map(Arc::new)
            })
            .collect()
    }
}

/// The codec of a clip file by its name: `.h265`/`.hevc` are H.265,
/// everything else H.264.
pub fn codec_of_file(path: &std::path::Path) -> Codec {
    path.extension().and_then(|e| e.to_str()).and_then(Codec::from_extension).unwrap_or(Codec::H264)
}

/// Plays `clip` until `options.frames` are written or shutdown; unlinks the
/// segment at the end. Returns the number of clip frames written.
pub fn run(options: &FakeCameraOptions, clip: &Clip, shutdown: &Shutdown) -> Result<u64, AttachError> {
    let interval = Duration::from_secs_f64(1.0 / options.fps.max(0.1));
    let mut segment = Segment::create(&options.shm_name, options.layout)?;
    segment.set_write_index(options.start_index);
    log::info!(
        "fake camera: writing {}x{} {} (format {}) at {} fps into {} ({} access units in the clip)",
        clip.width,
        clip.height,
        clip.codec,
        clip.format,
        options.fps,
        options.shm_name,
        clip.units.len()
    );
    let garbage = vec![0xAB; 64];
    let mut written: u64 = 0;
    let mut frame_number: u64 = 0;
    let mut next_due = Instant::now();
    while options.frames.is_none_or(|limit| written < limit) && !shutdown.is_triggered() {
        if options.restart_every.is_some_and(|n| n > 0 && written > 0 && written.is_multiple_of(n)) {
            log::info!("fake camera: restarting (unlink and recreate the segment)");
            drop(segment);
            Segment::unlink(&options.shm_name);
            shutdown.wait_timeout(Duration::from_millis(300));
            segment = Segment::create(&options.shm_name, options.layout)?;
            segment.set_write_index(options.start_index);
            frame_number = 0;
        }
        let mut frame = clip.frame(written, frame_number);
        frame.post = options.post;
        segment.write_frame(&frame, || {
            if let Some(pause) = options.slow_copy {
                std::thread::sleep(pause);
            }
        });
        written += 1;
        frame_number += 1;
        if let Some(every) = options.malformed_every.filter(|&n| n > 0 && written.is_multiple_of(n)) {
            let kind = MALFORMED_KINDS[((written / every - 1) % MALFORMED_KINDS.len() as u64) as usize];
            match kind {
                "empty" => frame.data_size = 0,
                "too_large" => frame.data_size = MAX_FRAME_SIZE as u64 + 1,
                "bad_format" => frame.format = 1,
                _ => {
                    frame.data = &garbage;
                    frame.data_size = garbage.len() as u64;
                }
            }
            frame.frame_number = frame_number;
            frame.capture_time = monotonic_now();
            segment.write_frame(&frame, || {});
            frame_number += 1;
        }
        if written.is_multiple_of(options.burst.max(1)) {
            next_due += interval * options.burst.max(1) as u32;
            let now = Instant::now();
            if next_due > now {
                if shutdown.wait_timeout(next_due - now) {
                    break;
                }
            } else if now - next_due > interval * 10 {
                next_due = now; // fell far behind (machine was suspended): don't race
            }
        }
    }
    if !options.linger.is_zero() {
        shutdown.wait_timeout(options.linger);
    }
    drop(segment);
    Segment::unlink(&options.shm_name);
    log::info!("fake camera: wrote {written} frames, segment {} removed", options.shm_name);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_clip_is_640x360_with_an_idr_every_second() {
        let clip = Clip::parse(DEMO_CLIP, Codec::H264).unwrap();
        assert_eq!((clip.width, clip.height, clip.format), (640, 360, FORMAT_H264));
        assert_eq!(clip.units.len(), 180);
        let idrs: Vec<usize> = clip
            .units
            .iter()
            .enumerate()
            .filter(|(_, u)| split_annexb(u).iter().any(|r| h264::nal_unit_type(&u[r.clone()]) == h264::nal_type::IDR))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(idrs, (0..6).map(|s| s * 30).collect::<Vec<_>>());
        assert_eq!(clip.units.concat(), DEMO_CLIP);
    }

    #[test]
    fn the_h265_demo_clip_is_its_twin() {
        let clip = demo_clip(Codec::H265).unwrap();
        assert_eq!((clip.width, clip.height, clip.format, clip.units.len()), (640, 360, FORMAT_H265, 180));
        assert_eq!(clip.units.concat(), DEMO_CLIP_H265);
    }
}
