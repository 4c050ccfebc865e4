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
