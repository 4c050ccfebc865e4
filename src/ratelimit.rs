//! Rate-limited logging for warnings that can repeat once per frame.

use std::time::{Duration, Instant};

/// Lets one message through per `interval` and counts the ones it held back.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimiter {
    pub const fn new(interval: Duration) -> RateLimiter {
        RateLimiter { interval, last: None, suppressed: 0 }
    }

    /// `Some(n)` if a message may be logged now, with `n` messages suppressed
    /// since the last one; `None` if this one should be dropped.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// `warn!` at most once per interval per call site's limiter, noting how many
/// similar messages were suppressed.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.allow(::std::time::Instant::now()) {
            if suppressed > 0 {
                log::warn!("{} ({} similar suppressed)", format_args!($($arg)+), suppressed);
            } else {
                log::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval_and_counts_the_rest() {
        let mut limiter = RateLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limiter.allow(t0), Some(0));
        assert_eq!(limiter.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_millis(20)), None);
        assert_eq!(limiter.allow(t0 + Duration::from_millis(1001)), Some(2));
    }
}
