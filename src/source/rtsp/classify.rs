//! retina's errors to [`RtspError`].
//!
//! `retina::Error` is opaque: it gives the RTSP status code of a response
//! and a long human-readable text (with connection contexts, several lines).
//! The connect failure's `std::io::Error` is only in that text, as std
//! prints it ("... (os error 111)"), so the errno is parsed back from there;
//! anything not recognised falls back to a generic variant with the text's
//! first line, never a panic.

use std::time::Duration;

use super::{ConnectFailure, RtspError};

/// Where in the session an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Describe,
    Setup,
    Play,
    Streaming,
}

impl Phase {
    pub fn method(self) -> &'static str {
        match self {
            Phase::Describe => "DESCRIBE",
            Phase::Setup => "SETUP",
            Phase::Play => "PLAY",
            Phase::Streaming => "streaming",
        }
    }
}

/// Longest detail kept from a retina message: they can quote whole
/// responses.
const MAX_DETAIL: usize = 200;

/// The first line of `text`, at most [`MAX_DETAIL`] bytes (on a char boundary).
pub fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.len() <= MAX_DETAIL {
        return line.to_owned();
    }
    let mut end = MAX_DETAIL;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

pub fn classify(error: &retina::Error, phase: Phase) -> RtspError {
    classify_parts(error.status_code(), &error.to_string(), phase)
}

/// [`classify`] on the parts of a retina error, for tests.
pub fn classify_parts(status: Option<u16>, text: &str, phase: Phase) -> RtspError {
    match status {
        Some(401) => return RtspError::Unauthorized,
        // A 2xx "error": the response was fine but its content was not (an
        // SDP retina cannot parse, a bad Transport header).
        Some(200..=299) => return RtspError::Protocol(format!("{}: {}", phase.method(), first_line(text))),
        Some(status) => return RtspError::Rejected { method: phase.method().to_owned(), status },
        None => {}
    }
    if let Some(rest) = text.strip_prefix("Unable to connect to RTSP server: ") {
        return RtspError::Unreachable(connect_failure(rest));
    }
    if text.starts_with("Invalid argument: ") {
        return RtspError::InvalidUrl(first_line(text));
    }
    if phase == Phase::Streaming
        && (text.starts_with("Error reading from RTSP peer")
            || text.starts_with("Error writing to RTSP peer")
            || text.starts_with("Error receiving UDP packet"))
    {
        return RtspError::Disconnected(first_line(text));
    }
    RtspError::Protocol(format!("{}: {}", phase.method(), first_line(text)))
}

/// The errno in std's `io::Error` text ("Connection refused (os error 111)").
fn os_error(text: &str) -> Option<i32> {
    let start = text.rfind("(os error ")? + "(os error ".len();
    let end = start + text[start..].find(')')?;
    text[start..end].parse().ok()
}

fn connect_failure(io_text: &str) -> ConnectFailure {
    use std::io::ErrorKind;
    let detail = first_line(io_text);
    match os_error(io_text).map(|errno| std::io::Error::from_raw_os_error(errno).kind()) {
        Some(ErrorKind::ConnectionRefused) => ConnectFailure::Refused,
        Some(ErrorKind::TimedOut) => ConnectFailure::NoAnswer(None),
        Some(_) => ConnectFailure::NoRoute(detail),
        // No errno: a resolver failure ("failed to lookup address
        // information: ...") is the usual one.
        None if detail.contains("lookup") || detail.contains("resolve") => ConnectFailure::Dns(detail),
        None => ConnectFailure::NoRoute(detail),
    }
}

/// The setup phase did not finish in time.
pub fn timed_out(phase: Phase, after: Duration) -> RtspError {
    match phase {
        // Most likely the TCP connect (SYN unanswered), or a server that
        // accepts and never answers; both look the same from here.
        Phase::Describe => RtspError::Unreachable(ConnectFailure::NoAnswer(Some(after))),
        _ => RtspError::Protocol(format!("no answer to {} within {after:?}", phase.method())),
    }
}

/// Whether the other transport might get around this failure.
pub fn transport_related(error: &RtspError, phase: Phase) -> bool {
    match error {
        RtspError::Stalled(_) => true,
        RtspError::Rejected { .. } | RtspError::Protocol(_) => matches!(phase, Phase::Setup | Phase::Play),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(
            classify_parts(Some(401), "401 response to DESCRIBE CSeq=2: ...", Phase::Describe),
            RtspError::Unauthorized
        );
        assert_eq!(
            classify_parts(
                Some(404),
                "404 response to DESCRIBE CSeq=1: Unexpected RTSP response status\n\nconn: x",
                Phase::Describe
            ),
            RtspError::Rejected { method: "DESCRIBE".into(), status: 404 }
        );
        assert_eq!(
            classify_parts(Some(200), "200 response to DESCRIBE CSeq=1: bad SDP\n\nconn: x", Phase::Describe),
            RtspError::Protocol("DESCRIBE: 200 response to DESCRIBE CSeq=1: bad SDP".into())
        );
    }

    #[test]
    fn connect_failures() {
        let refused = "Unable to connect to RTSP server: Connection refused (os error 111)";
        assert_eq!(classify_parts(None, refused, Phase::Describe), RtspError::Unreachable(ConnectFailure::Refused));
        let no_route = "Unable to connect to RTSP server: No route to host (os error 113)";
        assert_eq!(
            classify_parts(None, no_route, Phase::Describe),
            RtspError::Unreachable(ConnectFailure::NoRoute("No route to host (os error 113)".into()))
        );
        let timeout = "Unable to connect to RTSP server: Connection timed out (os error 110)";
        assert_eq!(
            classify_parts(None, timeout, Phase::Describe),
            RtspError::Unreachable(ConnectFailure::NoAnswer(None))
        );
        let dns = "Unable to connect to RTSP server: failed to lookup address information: Name or service not known";
        assert!(matches!(classify_parts(None, dns, Phase::Describe), RtspError::Unreachable(ConnectFailure::Dns(_))));
    }

    #[test]
    fn streaming_and_garbage() {
        let eof = "Error reading from RTSP peer: EOF while expecting response\n\nconn: a";
        assert!(matches!(classify_parts(None, eof, Phase::Streaming), RtspError::Disconnected(_)));
        assert!(matches!(classify_parts(None, "", Phase::Streaming), RtspError::Protocol(_)));
        assert!(matches!(classify_parts(None, "(os error ", Phase::Setup), RtspError::Protocol(_)));
        let odd = "Unable to connect to RTSP server: weird (os error 99999999999)";
        assert!(matches!(
            classify_parts(None, odd, Phase::Describe),
            RtspError::Unreachable(ConnectFailure::NoRoute(_))
        ));
        let long = "é".repeat(500);
        assert!(first_line(&long).len() <= MAX_DETAIL + 3);
    }
}
