//! Reconnect delays ([`Backoff`], shared with the publishers) and the
//! transport to try next.

pub use crate::backoff::Backoff;

use super::Transport;

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
