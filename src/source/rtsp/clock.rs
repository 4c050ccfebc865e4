//! RTP timestamps to capture times on CLOCK_MONOTONIC.
//!
//! The rule, per session (`mapped = rtp_time + offset`):
//! 1. The first frame is anchored to its arrival time: `offset = arrival -
//!    rtp_time`.
//! 2. Later frames map to `rtp_time + offset`: exact RTP spacing, arrival
//!    jitter does not show.
//! 3. If `mapped` is more than `max_jump` (default 1 s) away from arrival,
//!    either way, re-anchor to arrival: a timestamp jump (forward or back),
//!    a camera clock that drifted, a long stall. Never to before the
//!    previous capture time, so capture times do not go back on a re-anchor.
//! 4. If `mapped` is after arrival by less than that (the frame came sooner
//!    than the anchor frame predicts: the anchor was delayed, e.g. the first
//!    frames came in a burst, or the camera clock runs fast), the offset is
//!    pulled back by at most 1/10 of the frame's RTP advance. Capture times
//!    keep advancing (at >= 90% speed, so never backward) and converge to at
//!    most the arrival time; a frame is never stamped "captured" more than
//!    `max_jump` after it arrived.
//!
//! Small backward RTP steps (B-frames: a frame or two) keep their real
//! order. Later, RTCP sender reports could give the camera's wall clock;
//! not used now.

use std::time::Duration;

/// Maps one session's RTP timestamps to CLOCK_MONOTONIC (module doc).
#[derive(Debug)]
pub struct CaptureClock {
    /// `capture_ns - media_ns`, once anchored.
    offset_ns: Option<i128>,
    last_media_ns: i128,
    last_capture_ns: i128,
    max_jump_ns: i128,
    /// Re-anchors under rule 3.
    pub reanchors: u64,
}

impl CaptureClock {
    pub fn new(max_jump: Duration) -> CaptureClock {
        CaptureClock {
            offset_ns: None,
            last_media_ns: 0,
            last_capture_ns: 0,
            max_jump_ns: max_jump.as_nanos() as i128,
            reanchors: 0,
        }
    }

    /// The capture time of a frame with extended RTP timestamp `rtp` (clock
    /// `clock_rate` Hz) that arrived at `arrival`.
    pub fn map(&mut self, rtp: i64, clock_rate: u32, arrival: Duration) -> Duration {
        let rate = i128::from(clock_rate.max(1));
        let media_ns = i128::from(rtp) * 1_000_000_000 / rate;
        let arrival_ns = arrival.as_nanos() as i128;
        let offset = match self.offset_ns {
            None => arrival_ns - media_ns,
            Some(offset) => {
                let mapped = media_ns + offset;
                if (mapped - arrival_ns).abs() > self.max_jump_ns {
                    self.reanchors += 1;
                    log::debug!(
                        "capture clock re-anchored: frame mapped {} ms from its arrival",
                        (mapped - arrival_ns) / 1_000_000
                    );
                    arrival_ns.max(self.last_capture_ns) - media_ns
                } else if mapped > arrival_ns {
                    let step = (media_ns - self.last_media_ns).max(0);
                    offset - (mapped - arrival_ns).min(step / 10)
                } else {
                    offset
                }
            }
        };
        self.offset_ns = Some(offset);
        self.last_media_ns = media_ns;
        let capture_ns = (media_ns + offset).clamp(0, arrival_ns + self.max_jump_ns);
        self.last_capture_ns = capture_ns;
        Duration::from_nanos(u64::try_from(capture_ns).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    /// 90 kHz ticks of one frame at 30 fps.
    const FRAME: i64 = 3000;

    fn at(ms: u64) -> Duration {
        Duration::from_secs(1000) + MS * ms as u32
    }

    fn clock() -> CaptureClock {
        CaptureClock::new(Duration::from_secs(1))
    }

    #[test]
    fn anchors_first_frame_then_follows_rtp() {
        let mut c = clock();
        assert_eq!(c.map(1_000_000, 90_000, at(0)), at(0));
        // Arrivals jitter later; capture times follow the RTP clock exactly.
        let t1 = c.map(1_000_000 + FRAME, 90_000, at(40));
        assert_eq!(t1.as_nanos(), at(0).as_nanos() + 33_333_333);
        let t2 = c.map(1_000_000 + 2 * FRAME, 90_000, at(70));
        assert_eq!(t2.as_nanos(), at(0).as_nanos() + 66_666_666);
        assert_eq!(c.reanchors, 0);
    }

    #[test]
    fn a_burst_converges_without_going_backward() {
        let mut c = clock();
        // Six frames arrive at once (a server's backlog), then real time.
        let mut last = Duration::ZERO;
        let mut times = Vec::new();
        for i in 0..60 {
            let arrival = if i < 6 { at(0) } else { at(0) + MS * 33 * (i - 5) as u32 };
            let t = c.map(i64::from(i) * FRAME, 90_000, arrival);
            assert!(t > last, "frame {i}: {t:?} after {last:?}");
            let step = t - last;
            assert!(i == 0 || (step >= MS * 29 && step <= MS * 34), "frame {i}: step {step:?}");
            last = t;
            times.push((t, arrival));
        }
        // Converged: no longer after arrival.
        let (t, arrival) = times[59];
        assert!(t <= arrival, "{t:?} > {arrival:?}");
        assert_eq!(c.reanchors, 0);
    }

    #[test]
    fn reanchors_on_jumps_and_drift_and_stays_monotonic() {
        let mut c = clock();
        let mut last = c.map(900_000, 90_000, at(0));
        // Timestamp jumps back 10 s: re-anchored to arrival, not 10 s back.
        let t = c.map(0, 90_000, at(33));
        assert_eq!(t, at(33));
        assert!(t >= last);
        last = t;
        // Forward 100 s: re-anchored to arrival, not 100 s ahead.
        let t = c.map(9_000_000, 90_000, at(66));
        assert_eq!(t, at(66));
        assert!(t >= last);
        last = t;
        // Camera clock slow: RTP advances 0.5 s while 2 s pass.
        let t = c.map(9_045_000, 90_000, at(2066));
        assert_eq!(t, at(2066));
        assert!(t >= last);
        assert_eq!(c.reanchors, 3);
    }

    #[test]
    fn small_backward_steps_are_kept() {
        // B-frames: a timestamp a frame earlier than the previous one.
        let mut c = clock();
        c.map(3 * FRAME, 90_000, at(100));
        let b = c.map(2 * FRAME, 90_000, at(133));
        // 66_666_666 ns after the anchor's 100_000_000: one frame earlier.
        assert_eq!(b.as_nanos(), at(100).as_nanos() - 33_333_334);
        assert_eq!(c.reanchors, 0);
    }

    #[test]
    fn hostile_values_do_not_panic() {
        let mut c = clock();
        for (rtp, rate) in [(i64::MAX, 1), (i64::MIN, 1), (0, 0), (i64::MAX, u32::MAX), (-5, 90_000)] {
            let t = c.map(rtp, rate, at(0));
            assert!(t <= at(1000));
        }
        let mut c = clock();
        assert_eq!(c.map(i64::MIN, 1, Duration::ZERO), Duration::ZERO);
    }
}
