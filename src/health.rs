//! `/health`: is the camera delivering, from snapshots only.
//!
//! In: the media thread's [`CameraStatus`](crate::shm::CameraStatus)
//! atomics, the hub's parameter sets, the recorder's status copy, the viewer
//! count, and a frame-rate sample taken about once a second by `main`
//! ([`Health::tick`]). Out: a status code and JSON body. Nothing here waits
//! on the media path.
//!
//! The verdict: `media_thread_died` (503, with the reason in `error`) once
//! the media thread is gone (the process then exits for a restart),
//! `no_camera` (503) while the segment is not mapped, `stalled` (503) when
//! no frame came for [`STALL_AFTER`], else `ok` (200).
//! A recording that ended on an error does not make the server unhealthy
//! (viewers still stream) but shows as `"error"`.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::pipeline::Media;
use crate::recorder::Recorder;

/// No frame for this long and the camera counts as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Rate {
    last: Option<(Instant, u64)>,
    fps: f64,
}

/// Health state kept between requests: start time and frame rate.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    rate: Mutex<Rate>,
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health { started: Instant::now(), rate: Mutex::new(Rate { last: None, fps: 0.0 }) }
    }

    /// Samples the frames-read counter; call about once a second.
    pub fn tick(&self, frames_read: u64) {
        let now = Instant::now();
        let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((then, frames)) = rate.last {
            let seconds = now.duration_since(then).as_secs_f64();
            if seconds > 0.0 {
                rate.fps = frames_read.saturating_sub(frames) as f64 / seconds;
            }
        }
        rate.last = Some((now, frames_read));
    }

    /// Frames per second over the last tick interval.
    pub fn fps(&self) -> f64 {
        self.rate.lock().unwrap_or_else(|e| e.into_inner()).fps
    }

    /// The `/health` answer: status code and body.
    pub fn report(&self, media: &Media, recorder: &Recorder, viewers: usize) -> (u16, Value) {
        let camera = &media.camera;
        let attached = camera.attached.load(Ordering::Relaxed);
        let age = camera.last_frame_age();
        let verdict = if media.fatal().is_some() {
            "media_thread_died"
        } else if !attached {
            "no_camera"
        } else if age.is_none_or(|age| age > STALL_AFTER) {
            "stalled"
        } else {
            "ok"
        };
        let recording = recorder.status();
        let fps = if verdict == "ok" { (self.fps() * 10.0).round() / 10.0 } else { 0.0 };
        let mut body = json!({
            "status": verdict,
            "webrtc_clients": viewers,
            "recording": recording.recording,
            "has_headers": media.hub.parameter_sets().is_some(),
            "camera_attached": attached,
            "last_frame_age_ms": age.map(|a| a.as_millis() as u64),
            "fps": fps,
            "frames_read": camera.frames_read.load(Ordering::Relaxed),
            "width": camera.width.load(Ordering::Relaxed),
            "height": camera.height.load(Ordering::Relaxed),
            "camera_restarts": camera.restarts.load(Ordering::Relaxed),
            // Pre-roll a recording or viewer would start with now.
            "gop_cache_frames": media.hub.gop_cache_len(),
            "uptime_s": self.started.elapsed().as_secs(),
        });
        if let Some(error) = recording.error {
            body["error"] = json!(format!("recording: {error}"));
        }
        if let Some(why) = media.fatal() {
            body["error"] = json!(why);
        }
        (if verdict == "ok" { 200 } else { 503 }, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::sync::Arc;

    #[test]
    fn no_camera_then_stalled_then_ok() {
        let media = Media::new(Arc::new(Metrics::new()));
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(dir.path().to_path_buf(), media.clone());
        let health = Health::new();
        let (code, body) = health.report(&media, &recorder, 0);
        assert_eq!((code, body["status"].as_str()), (503, Some("no_camera")));
        media.camera.attached.store(true, Ordering::Relaxed);
        let (code, body) = health.report(&media, &recorder, 0);
        assert_eq!((code, body["status"].as_str()), (503, Some("stalled")));
        assert!(body["last_frame_age_ms"].is_null());
        let now = crate::clock::monotonic_now().as_nanos() as u64;
        media.camera.last_frame_read_ns.store(now, Ordering::Relaxed);
        let (code, body) = health.report(&media, &recorder, 2);
        assert_eq!((code, body["status"].as_str(), body["webrtc_clients"].as_u64()), (200, Some("ok"), Some(2)));
        assert_eq!(body["has_headers"], json!(false));
    }
}
