//! CPU profiling over HTTP on `-pprof`, at Go's paths.
//!
//! In: `GET /debug/pprof/profile?seconds=N` (gzipped pprof protobuf, what
//! `go tool pprof` and `pprof` read), `GET /debug/pprof/flamegraph?seconds=N`
//! (SVG), `GET /debug/pprof/` (index). Out: the profile of the whole process
//! over N seconds (default 30, at most [`MAX_SECONDS`]), sampled at
//! [`FREQUENCY`] Hz by the `pprof` crate's SIGPROF handler.
//!
//! Cost: nothing while nobody profiles. The signal handler and timer exist
//! only while a profile runs (on tokio's blocking pool); the listener is an
//! idle accept task. One profile at a time: a second request gets 409 with
//! `Retry-After`. A profile in progress ends early at shutdown.
//!
//! 32-bit ARM: pprof 0.15 arms its timer through its own `itimerval` with
//! 64-bit fields, which a 32-bit `time_t` kernel ABI reads as "interval 0,
//! first expiry in 10000 s", so no sample is ever taken. Right after pprof
//! starts, `arm_timer` sets the same timer again through `libc`'s
//! `itimerval`, which has the target's real layout (a no-op change on
//! 64-bit targets, so the same code runs everywhere). pprof's own stop
//! writes all zeroes, which disarms correctly under either layout.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::http::{self, BoxFuture, Head, Limits, Listener, Method, Reply, Request, Service};
use crate::shutdown::Shutdown;

/// Samples per second (Go's default).
pub const FREQUENCY: i32 = 100;
/// Longest profile a request may ask for.
pub const MAX_SECONDS: u64 = 300;
/// Profile length when `seconds` is not given (Go's default).
pub const DEFAULT_SECONDS: u64 = 30;

const INDEX: &str = "<!doctype html><title>/debug/pprof/</title><h1>/debug/pprof/</h1>\
<p>CPU profiles of the streaming server, one at a time.</p><ul>\
<li><a href=\"profile?seconds=30\">profile?seconds=30</a>: gzipped pprof protobuf \
(<code>go tool pprof http://HOST:6060/debug/pprof/profile?seconds=30</code>)</li>\
<li><a href=\"flamegraph?seconds=10\">flamegraph?seconds=10</a>: SVG flamegraph</li></ul>";

/// What a finished profile is turned into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Pprof,
    Flamegraph,
}

/// Guards the one profile that may run.
struct Busy(Arc<AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Starts the `-pprof` listener.
pub fn serve(
    addr: SocketAddr,
    limits: Limits,
    runtime: &tokio::runtime::Handle,
    shutdown: Shutdown,
) -> std::io::Result<Listener> {
    let service = Profiler { busy: Arc::new(AtomicBool::new(false)), shutdown };
    let limits = Limits { max_connections: 16, ..limits };
    http::start("pprof", addr, limits, runtime, Arc::new(service))
}

struct Profiler {
    busy: Arc<AtomicBool>,
    shutdown: Shutdown,
}

/// The profile a path asks for; `None` for the index.
fn output_for(path: &str) -> Result<Option<Output>, Reply> {
    match path {
        "/debug/pprof/" | "/debug/pprof" => Ok(None),
        "/debug/pprof/profile" => Ok(Some(Output::Pprof)),
        "/debug/pprof/flamegraph" => Ok(Some(Output::Flamegraph)),
        _ => Err(Reply::not_found()),
    }
}

impl Service for Profiler {
    fn admit(&self, head: &Head) -> Result<usize, Reply> {
        output_for(&head.path)?;
        if !matches!(head.method, Method::Get | Method::Head) {
            return Err(Reply::method_not_allowed("GET, HEAD"));
        }
        Ok(0)
    }

    fn call(&self, request: Request) -> BoxFuture<'_, Reply> {
        Box::pin(async move {
            let output = match output_for(&request.head.path) {
                Ok(Some(output)) => output,
                Ok(None) => return Reply::new(200, "text/html; charset=utf-8", INDEX),
                Err(reply) => return reply,
            };
            let seconds = match request.head.query_param("seconds") {
                None => DEFAULT_SECONDS,
                Some(text) => match text.parse::<u64>() {
                    Ok(n) if (1..=MAX_SECONDS).contains(&n) => n,
                    _ => return Reply::error(400, format!("seconds must be a whole number from 1 to {MAX_SECONDS}")),
                },
            };
            if self.busy.swap(true, Ordering::SeqCst) {
                return Reply::error(409, "a profile is already running").header("Retry-After", "5");
            }
            let busy = Busy(self.busy.clone());
            let shutdown = self.shutdown.clone();
            // The profile sleeps for its length and builds the report: off
            // the runtime's workers.
            let result = tokio::task::spawn_blocking(move || {
                let _busy = busy;
                profile(Duration::from_secs(seconds), output, &shutdown)
            })
            .await
            .unwrap_or_else(|_| Err("the profiler panicked".to_string()));
            match result {
                Ok((content_type, body)) => {
                    let name = if output == Output::Pprof { "profile.pb.gz" } else { "flamegraph.svg" };
                    Reply::new(200, content_type, body)
                        .header("Content-Disposition", format!("inline; filename=\"{name}\""))
                        .header("Cache-Control", "no-store")
                }
                Err(error) => {
                    log::error!("profiling: {error}");
                    Reply::error(500, error)
                }
            }
        })
    }
}

/// Profiles the process for `length` (less if shutdown comes first).
fn profile(length: Duration, output: Output, shutdown: &Shutdown) -> Result<(&'static str, Vec<u8>), String> {
    log::info!("profiling: CPU profile for {} s", length.as_secs());
    let builder = ::pprof::ProfilerGuardBuilder::default().frequency(FREQUENCY);
    // Unwinding through these from a signal handler can deadlock.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    let builder = builder.blocklist(&["libc", "libgcc", "pthread", "vdso"]);
    let guard = builder.build().map_err(|e| format!("cannot start the profiler: {e}"))?;
    arm_timer(FREQUENCY).map_err(|e| format!("setitimer: {e}"))?;
    shutdown.wait_timeout(length);
    let report = guard.report().build().map_err(|e| format!("cannot build the report: {e}"))?;
    drop(guard);
    let samples: isize = report.data.values().sum();
    log::info!("profiling: done, {samples} samples");
    match output {
        Output::Pprof => {
            use ::pprof::protos::Message;
            let proto = report.pprof().map_err(|e| format!("cannot encode the profile: {e}"))?;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&proto.encode_to_vec()).map_err(|e| e.to_string())?;
            Ok(("application/octet-stream", gz.finish().map_err(|e| e.to_string())?))
        }
        Output::Flamegraph if samples == 0 => {
            // inferno refuses an empty profile; an idle process is a fair
            // answer, so say so in an SVG rather than fail.
            let svg = format!(
                "<?xml version=\"1.0\" standalone=\"no\"?><svg version=\"1.1\" width=\"600\" height=\"60\" \
                 xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"30\">No CPU samples in {} s: \
                 the process was idle.</text></svg>",
                length.as_secs()
            );
            Ok(("image/svg+xml", svg.into_bytes()))
        }
        Output::Flamegraph => {
            let mut svg = Vec::new();
            report.flamegraph(&mut svg).map_err(|e| format!("cannot draw the flamegraph: {e}"))?;
            Ok(("image/svg+xml", svg))
        }
    }
}

/// (Re)arms ITIMER_PROF at `frequency` Hz with the target's own
/// `itimerval` layout: the 32-bit ARM fix described at the top.
fn arm_timer(frequency: i32) -> std::io::Result<()> {
    let interval = interval_for(frequency);
    let value = libc::itimerval { it_interval: interval, it_value: interval };
    // SAFETY: setitimer reads a valid itimerval and writes nothing (old value null).
    let rc = unsafe { libc::setitimer(libc::ITIMER_PROF, &value, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn interval_for(frequency: i32) -> libc::timeval {
    let micros = 1_000_000 / i64::from(frequency.max(1));
    libc::timeval { tv_sec: (micros / 1_000_000) as libc::time_t, tv_usec: (micros % 1_000_000) as libc::suseconds_t }
}

/// The interval ITIMER_PROF is armed with now (zero when disarmed).
pub fn timer_interval() -> std::io::Result<Duration> {
    // SAFETY: getitimer fills a plain-data itimerval.
    let mut value: libc::itimerval = unsafe { std::mem::zeroed() };
    if unsafe { libc::getitimer(libc::ITIMER_PROF, &mut value) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let it = value.it_interval;
    Ok(Duration::from_secs(it.tv_sec as u64) + Duration::from_micros(it.tv_usec as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arming_sets_the_interval_and_zeroes_disarm() {
        let tv = interval_for(FREQUENCY);
        assert_eq!((tv.tv_sec, tv.tv_usec), (0, 10_000));
        // One second, not 10 ms: with no SIGPROF handler installed here, an
        // expiry would kill the test binary, and other tests burn CPU
        // meanwhile. Disarmed again microseconds later.
        arm_timer(1).unwrap();
        assert_eq!(timer_interval().unwrap(), Duration::from_secs(1));
        let zero = libc::itimerval {
            it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
            it_value: libc::timeval { tv_sec: 0, tv_usec: 0 },
        };
        // SAFETY: as in arm_timer.
        unsafe { libc::setitimer(libc::ITIMER_PROF, &zero, std::ptr::null_mut()) };
        assert_eq!(timer_interval().unwrap(), Duration::ZERO);
    }
}
