//! The webrtc crate's tokio runtime as the load client uses it: the same in
//! every respect except that each viewer's UDP socket gets a receive buffer
//! large enough for a whole keyframe.
//!
//! A camera's keyframe of 1-1.5 MB leaves the server as ~1,200 packets in
//! one burst. Linux's default receive buffer (net.core.rmem_default, 208
//! KiB) holds about 150 of them, so on a fast link (loopback, a LAN) the
//! rest of the burst was dropped by the kernel before the client read it,
//! and no keyframe ever arrived whole. A browser sizes its own sockets; this
//! makes the load client measure the server, not its own socket.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime, TokioRuntime,
};

/// The receive buffer asked for: a few of the largest keyframes cameras send.
pub const RECEIVE_BUFFER_BYTES: usize = 8 << 20;

/// [`TokioRuntime`] with [`RECEIVE_BUFFER_BYTES`] on every UDP socket.
#[derive(Debug)]
pub struct LoadClientRuntime;

/// Sets the socket's receive buffer to [`RECEIVE_BUFFER_BYTES`]: past
/// net.core.rmem_max where allowed (SO_RCVBUFFORCE needs CAP_NET_ADMIN),
/// else as much as rmem_max lets SO_RCVBUF have, with a warning once.
fn enlarge_receive_buffer(socket: &UdpSocket) {
    if setsockopt(socket, sockopt::RcvBufForce, &RECEIVE_BUFFER_BYTES).is_ok() {
        return;
    }
    let _ = setsockopt(socket, sockopt::RcvBuf, &RECEIVE_BUFFER_BYTES);
    // The kernel reports twice what it grants (its bookkeeping overhead).
    let granted = getsockopt(socket, sockopt::RcvBuf).unwrap_or(0) / 2;
    static WARNED: AtomicBool = AtomicBool::new(false);
    if granted < RECEIVE_BUFFER_BYTES && !WARNED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "UDP receive buffers are {granted} bytes (net.core.rmem_max; run as root or raise it to \
             {RECEIVE_BUFFER_BYTES}): keyframes larger than that may lose packets in this client's kernel"
        );
    }
}

impl Runtime for LoadClientRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        enlarge_receive_buffer(&socket);
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        TokioRuntime.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TokioRuntime.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TokioRuntime.resolve_host(host)
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TokioRuntime.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TokioRuntime.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.yield_now()
    }

    fn name(&self) -> &'static str {
        TokioRuntime.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_get_the_large_receive_buffer_or_what_the_system_allows() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = getsockopt(&socket, sockopt::RcvBuf).unwrap();
        enlarge_receive_buffer(&socket);
        let after = getsockopt(&socket, sockopt::RcvBuf).unwrap();
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if root || max >= RECEIVE_BUFFER_BYTES {
            assert!(after / 2 >= RECEIVE_BUFFER_BYTES, "{after} (was {before})");
        } else {
            assert!(after >= before, "{after} (was {before})");
        }
    }
}
