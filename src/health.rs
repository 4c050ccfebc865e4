//! `/health`: is the camera delivering, from snapshots only.
//!
//! In: a path's [`SourceStatus`](crate::stream::SourceStatus) atomics, the
//! hub's parameter sets, the recorder's status copy, the viewer count, and
//! a frame-rate sample per path taken about once a second by `main`
//! ([`Health::tick`]). Out: a status code and JSON body. Nothing here waits
//! on the media path.
//!
//! The verdict: `media_thread_died` (503, with the reason in `error`) once
//! the media thread is gone (the process then exits for a restart),
//! `no_camera` (503) while the segment is not mapped, `stalled` (503) when
//! no frame came for [`STALL_AFTER`], else `ok` (200).
//! A recording that ended on an error does not make the server unhealthy
//! (viewers still stream) but shows as `"error"`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Value};

use crate::recorder::RecordingStatus;
use crate::stream::{Stream, STALL_AFTER};

#[derive(Debug)]
struct Rate {
    last: Option<(Instant, u64)>,
    fps: f64,
}

/// Health state kept between requests: start time and each path's frame rate.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    rates: Mutex<HashMap<String, Rate>>,
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health { started: Instant::now(), rates: Mutex::new(HashMap::new()) }
    }

    /// Samples a path's frames-read counter; call about once a second.
    pub fn tick(&self, path: &str, frames_read: u64) {
        let now = Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let rate = rates.entry(path.to_string()).or_insert(Rate { last: None, fps: 0.0 });
        if let Some((then, frames)) = rate.last {
            let seconds = now.duration_since(then).as_secs_f64();
            if seconds > 0.0 {
                rate.fps = frames_read.saturating_sub(frames) as f64 / seconds;
            }
        }
        rate.last = Some((now, frames_read));
    }

    /// A path's frames per second over the last tick interval.
    pub fn fps(&self, path: &str) -> f64 {
        self.rates.lock().unwrap_or_else(|e| e.into_inner()).get(path).map_or(0.0, |r| r.fps)
    }

    /// Seconds since start.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The verdict for one path's stream: `ok`, `stalled`, `no_camera` or
    /// `media_thread_died`.
    pub fn verdict(stream: &Stream) -> &'static str {
        let attached = stream.source.attached.load(Ordering::Relaxed);
        let age = stream.source.last_frame_age();
        if stream.fatal().is_some() {
            "media_thread_died"
        } else if !attached {
            "no_camera"
        } else if age.is_none_or(|age| age > STALL_AFTER) {
            "stalled"
        } else {
            "ok"
        }
    }

    /// The `/health` answer for one path (API.md's contract): status code
    /// and body.
    pub fn report(&self, stream: &Stream, recording: &RecordingStatus, viewers: usize) -> (u16, Value) {
        let source = &stream.source;
        let attached = source.attached.load(Ordering::Relaxed);
        let age = source.last_frame_age();
        let verdict = Health::verdict(stream);
        let fps = if verdict == "ok" { (self.fps(&stream.name) * 10.0).round() / 10.0 } else { 0.0 };
        let mut body = json!({
            "status": verdict,
            "webrtc_clients": viewers,
            "recording": recording.recording,
            "has_headers": stream.hub.parameter_sets().is_some(),
            // "H.264" or "H.265" once the parameter sets were seen.
            "codec": stream.hub.parameter_sets().map(|ps| ps.codec().name()),
            "camera_attached": attached,
            "last_frame_age_ms": age.map(|a| a.as_millis() as u64),
            "fps": fps,
            "frames_read": source.frames_read.load(Ordering::Relaxed),
            "width": source.width.load(Ordering::Relaxed),
            "height": source.height.load(Ordering::Relaxed),
            "camera_restarts": source.restarts.load(Ordering::Relaxed),
            // Pre-roll a recording or viewer would start with now.
            "gop_cache_frames": stream.hub.gop_cache_len(),
            "uptime_s": self.uptime_s(),
        });
        if let Some(error) = &recording.error {
            body["error"] = json!(format!("recording: {error}"));
        }
        if let Some(why) = stream.fatal() {
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
        let stream = Stream::new("cam", &Arc::new(Metrics::new()));
        let health = Health::new();
        let idle = RecordingStatus::default();
        let (code, body) = health.report(&stream, &idle, 0);
        assert_eq!((code, body["status"].as_str()), (503, Some("no_camera")));
        stream.source.attached.store(true, Ordering::Relaxed);
        let (code, body) = health.report(&stream, &idle, 0);
        assert_eq!((code, body["status"].as_str()), (503, Some("stalled")));
        assert!(body["last_frame_age_ms"].is_null());
        stream.source.frame_arrived(1, 640, 360, 0);
        let (code, body) = health.report(&stream, &idle, 2);
        assert_eq!((code, body["status"].as_str(), body["webrtc_clients"].as_u64()), (200, Some("ok"), Some(2)));
        assert_eq!(body["has_headers"], json!(false));
        let _ = stream.fatal.set("media thread died: test".into());
        let (code, body) = health.report(&stream, &idle, 2);
        assert_eq!((code, body["status"].as_str()), (503, Some("media_thread_died")));
        assert_eq!(body["error"], "media thread died: test");
    }
}
