//! CLOCK_MONOTONIC as a `Duration` since boot: the clock the camera daemon
//! stamps frames with, so capture-to-now latencies compare like with like.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Now on CLOCK_MONOTONIC.
pub fn monotonic_now() -> Duration {
    // CLOCK_MONOTONIC always exists on Linux; a failure here is a broken
    // kernel, not bad input.
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}

/// Milliseconds from `earlier` to `later`, zero if the clock says otherwise
/// (a bogus timestamp from the daemon must not produce a huge figure).
pub fn millis_between(earlier: Duration, later: Duration) -> f64 {
    later.saturating_sub(earlier).as_secs_f64() * 1e3
}

/// The wall-clock NTP time (RFC 5905 64-bit, 32.32 fixed point) of a
/// CLOCK_MONOTONIC instant: the realtime - monotonic offset is taken now, so
/// a wall-clock step (NTP sync) applies from the next frame on.
pub fn ntp_of_monotonic(capture: Duration) -> Option<u64> {
    let monotonic = monotonic_now();
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
    let captured_unix = unix.checked_sub(monotonic.checked_sub(capture)?)?;
    let seconds = captured_unix.as_secs().checked_add(2_208_988_800)?;
    let fraction = (u64::from(captured_unix.subsec_nanos()) << 32) / 1_000_000_000;
    Some((seconds << 32) | fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_time_maps_to_wall_clock_ntp() {
        let ten_ms_ago = monotonic_now() - Duration::from_millis(10);
        let ntp = ntp_of_monotonic(ten_ms_ago).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let now_ntp = ((now.as_secs() + 2_208_988_800) << 32) | ((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000);
        let age_ms = now_ntp.wrapping_sub(ntp) as f64 * 1000.0 / 4_294_967_296.0;
        assert!((10.0..1000.0).contains(&age_ms), "{age_ms}");
        assert_eq!(ntp_of_monotonic(monotonic_now() + Duration::from_secs(5)), None, "from the future");
    }
}
