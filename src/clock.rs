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

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The wall clock now as an NTP timestamp (RFC 5905 64-bit, 32.32 fixed
/// point), as RTCP sender reports carry it.
pub fn ntp_now() -> u64 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ntp_of_unix(unix).unwrap_or(0)
}

/// The wall-clock NTP time of a CLOCK_MONOTONIC instant: the realtime -
/// monotonic offset is taken now, so a wall-clock step (NTP sync) applies
/// from the next frame on. None for an instant in the future.
pub fn ntp_of_monotonic(capture: Duration) -> Option<u64> {
    let monotonic = monotonic_now();
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?;
    ntp_of_unix(unix.checked_sub(monotonic.checked_sub(capture)?)?)
}

/// A time since the Unix epoch as an NTP timestamp.
pub fn ntp_of_unix(unix: Duration) -> Option<u64> {
    let seconds = unix.as_secs().checked_add(NTP_UNIX_OFFSET)?;
    let fraction = (u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000;
    Some((seconds << 32) | fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_time_maps_to_wall_clock_ntp() {
        let ten_ms_ago = monotonic_now() - Duration::from_millis(10);
        let ntp = ntp_of_monotonic(ten_ms_ago).unwrap();
        let age_ms = ntp_now().wrapping_sub(ntp) as f64 * 1000.0 / 4_294_967_296.0;
        assert!((10.0..1000.0).contains(&age_ms), "{age_ms}");
        assert_eq!(ntp_of_monotonic(monotonic_now() + Duration::from_secs(5)), None, "from the future");
    }
}
