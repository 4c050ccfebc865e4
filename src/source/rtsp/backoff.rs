//! Reconnect delays and the transport to try next.

use std::time::Duration;

use super::Transport;

/// Capped exponential backoff: `min`, doubling up to `max`.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff { min, max, next: min }
    }

    /// The delay before the next attempt; the one after doubles (capped).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to `min`: the last session was healthy.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The concrete transport for each attempt. `Auto` starts with TCP and
/// switches to the other one after an attempt that failed in a way the
/// transport may explain (SETUP/PLAY refused, or no frame at all within
/// the stall timeout); other failures (auth, DNS, refused port, wrong path)
/// keep the current choice.
#[derive(Debug)]
pub struct TransportChoice {
    auto: bool,
    current: Transport,
}

impl TransportChoice {
    pub fn new(configured: Transport) -> TransportChoice {
        match configured {
            Transport::Auto => TransportChoice { auto: true, current: Transport::Tcp },
            other => TransportChoice { auto: false, current: other },
        }
    }

    /// Tcp or Udp, never Auto.
    pub fn current(&self) -> Transport {
        self.current
    }

    /// An attempt with `current()` failed before delivering a frame;
    /// `transport_related` says whether the other transport might work.
    pub fn failed(&mut self, transport_related: bool) {
        if self.auto && transport_related {
            self.current = match self.current {
                Transport::Tcp => Transport::Udp,
                _ => Transport::Tcp,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let got: Vec<_> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn auto_alternates_only_on_transport_failures() {
        let mut t = TransportChoice::new(Transport::Auto);
        assert_eq!(t.current(), Transport::Tcp);
        t.failed(false);
        assert_eq!(t.current(), Transport::Tcp);
        t.failed(true);
        assert_eq!(t.current(), Transport::Udp);
        t.failed(true);
        assert_eq!(t.current(), Transport::Tcp);
        let mut fixed = TransportChoice::new(Transport::Udp);
        fixed.failed(true);
        assert_eq!(fixed.current(), Transport::Udp);
    }
}
