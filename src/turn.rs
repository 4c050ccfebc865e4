//! TURN relays, for viewers that cannot reach the board directly (behind
//! NAT, on another network): which servers, with which credentials, and
//! whether they work.
//!
//! In: `-turn URL` (repeatable) with `-turn-user`/`-turn-pass`(-file) or
//! `-turn-secret-file`, or a path's `turn:` list in the config file. Out:
//! [`TurnServer::ice_server`] for the server's own peer connections (its
//! answers then carry relay candidates), [`TurnServer::browser_json`] for the
//! viewer page (`GET /NAME/ice-servers`, so browsers use the same relay), and
//! [`TurnMonitor`]: each server's state from a real allocation made at start
//! and every [`PROBE_INTERVAL`], shown in `/health` and
//! `streaming_turn_up{url}`, so a wrong secret is a clear error rather than
//! viewers that silently never connect.
//!
//! Credentials are long-term (`user`/`pass`, coturn's `user=`) or
//! time-limited from a shared secret (coturn's `use-auth-secret`, the "TURN
//! REST API"): username `EXPIRY:USER`, password base64(HMAC-SHA1(secret,
//! username)), made fresh for every peer connection and every page.
//!
//! The `webrtc` crate allocates over UDP only, so the server itself uses the
//! `turn:` URLs with UDP transport; `turns:` and `?transport=tcp` URLs are
//! handed to browsers (which support them) and named as browser-only in the
//! status. URLs never carry credentials; nothing here logs a secret.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::BytesMut;
use serde::Serialize;
use serde_json::{json, Value};

/// How often each server is allocated from again (a relay that goes away,
/// or a secret rotated on the TURN server, shows within this).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(300);
/// How long one probe waits for the allocation.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lifetime of time-limited credentials when the configuration names none.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 3600);

/// `turn:` or `turns:` (TLS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Turn,
    Turns,
}

/// How the client reaches the TURN server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A checked TURN URL (RFC 7065): `turn:HOST[:PORT][?transport=udp|tcp]`,
/// `turns:` likewise; no credentials in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

impl TurnUrl {
    pub fn parse(text: &str) -> Result<TurnUrl, String> {
        let text = text.trim();
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("turn:") {
            (Scheme::Turn, rest)
        } else if let Some(rest) = text.strip_prefix("turns:") {
            (Scheme::Turns, rest)
        } else {
            return Err(format!("TURN URL {text:?}: must start with turn: or turns:"));
        };
        if rest.starts_with("//") || rest.contains('@') {
            return Err(format!(
                "TURN URL {text:?}: the form is turn:HOST[:PORT][?transport=udp|tcp], credentials go in their own settings"
            ));
        }
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let transport = match query {
            "" => match scheme {
                Scheme::Turn => Transport::Udp,
                Scheme::Turns => Transport::Tcp,
            },
            "transport=udp" => Transport::Udp,
            "transport=tcp" => Transport::Tcp,
            other => {
                return Err(format!("TURN URL {text:?}: unknown query {other:?} (transport=udp or transport=tcp)"))
            }
        };
        let default_port = if scheme == Scheme::Turns { 5349 } else { 3478 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, tail) =
                v6.split_once(']').ok_or_else(|| format!("TURN URL {text:?}: unclosed [ in the host"))?;
            let port = match tail.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| format!("TURN URL {text:?}: bad port {port:?}"))?,
                None if tail.is_empty() => default_port,
                None => return Err(format!("TURN URL {text:?}: junk after the host")),
            };
            (format!("[{host}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => {
                    (host.to_string(), port.parse().map_err(|_| format!("TURN URL {text:?}: bad port {port:?}"))?)
                }
                None => (authority.to_string(), default_port),
            }
        };
        let valid_host = !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
        if !valid_host || port == 0 {
            return Err(format!("TURN URL {text:?}: bad host or port"));
        }
        Ok(TurnUrl { scheme, host, port, transport })
    }

    /// Whether the server's own peer connections can allocate here (the
    /// `webrtc` crate: UDP to a plain `turn:` server).
    pub fn usable_by_server(&self) -> bool {
        self.scheme == Scheme::Turn && self.transport == Transport::Udp
    }

    /// `HOST:PORT`, for resolving.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for TurnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Turn => "turn",
            Scheme::Turns => "turns",
        };
        let transport = match self.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        write!(f, "{scheme}:{}:{}?transport={transport}", self.host, self.port)
    }
}

/// How a TURN server authenticates its clients.
#[derive(Clone, PartialEq, Eq)]
pub enum TurnAuth {
    /// Long-term credentials (coturn `user=NAME:PASSWORD`).
    LongTerm { user: String, pass: String },
    /// Time-limited credentials from a secret shared with the server (coturn
    /// `use-auth-secret` + `static-auth-secret`).
    Secret { secret: String, user: String, ttl: Duration },
}

impl fmt::Debug for TurnAuth {
    // Never prints a password or secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TurnAuth::LongTerm { user, .. } => write!(f, "LongTerm {{ user: {user:?}, pass: *** }}"),
            TurnAuth::Secret { user, ttl, .. } => write!(f, "Secret {{ user: {user:?}, ttl: {ttl:?}, secret: *** }}"),
        }
    }
}

/// One TURN server and its credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnServer {
    pub url: TurnUrl,
    pub auth: TurnAuth,
}

impl TurnServer {
    /// Checks one server's settings: a URL and either a user and password
    /// or a shared secret (with an optional user name), never both.
    pub fn from_parts(
        url: &str,
        user: Option<&str>,
        pass: Option<&str>,
        secret: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<TurnServer, String> {
        let url = TurnUrl::parse(url)?;
        let user = user.unwrap_or("").trim();
        let auth = match (pass.filter(|p| !p.is_empty()), secret.filter(|s| !s.is_empty())) {
            (Some(_), Some(_)) => return Err(format!("{url}: give a password or a shared secret, not both")),
            (Some(pass), None) => {
                if user.is_empty() {
                    return Err(format!("{url}: a password needs a user name"));
                }
                TurnAuth::LongTerm { user: user.to_string(), pass: pass.to_string() }
            }
            (None, Some(secret)) => TurnAuth::Secret {
                secret: secret.to_string(),
                user: user.to_string(),
                ttl: ttl.unwrap_or(DEFAULT_CREDENTIAL_TTL),
            },
            (None, None) => {
                return Err(format!("{url}: no credentials (a user and password, or the server's shared secret)"))
            }
        };
        Ok(TurnServer { url, auth })
    }
}

/// Username and password for coturn's `use-auth-secret` (the TURN REST API
/// draft): valid until `expires` (Unix seconds).
pub fn rest_credentials(secret: &str, user: &str, expires: u64) -> (String, String) {
    let username = if user.is_empty() { expires.to_string() } else { format!("{expires}:{user}") };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    (username, base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
}

impl TurnServer {
    /// Username and password to use now.
    pub fn credentials(&self, now: SystemTime) -> (String, String) {
        match &self.auth {
            TurnAuth::LongTerm { user, pass } => (user.clone(), pass.clone()),
            TurnAuth::Secret { secret, user, ttl } => {
                let expires = now.duration_since(UNIX_EPOCH).unwrap_or_default().saturating_add(*ttl).as_secs();
                rest_credentials(secret, user, expires)
            }
        }
    }

    /// The entry for one of the server's own peer connections.
    pub fn ice_server(&self, now: SystemTime) -> rtc::peer_connection::configuration::RTCIceServer {
        let (username, credential) = self.credentials(now);
        rtc::peer_connection::configuration::RTCIceServer { urls: vec![self.url.to_string()], username, credential }
    }

    /// The entry a page gives `new RTCPeerConnection({iceServers})`.
    pub fn browser_json(&self, now: SystemTime) -> Value {
        let (username, credential) = self.credentials(now);
        json!({"urls": self.url.to_string(), "username": username, "credential": credential})
    }
}

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TurnState {
    /// Not probed yet.
    Checking,
    /// An allocation succeeded: the relayed address the server gave.
    Ok { relay: String },
    /// The allocation failed: why, in the TURN server's words when it
    /// answered.
    Error { error: String },
    /// `turns:` or TCP: handed to browsers only (see the module docs).
    BrowserOnly,
}

/// The latest probe of every configured TURN server, shared with `/health`
/// and the metrics.
#[derive(Clone, Debug, Default)]
pub struct TurnMonitor {
    servers: Arc<Mutex<Vec<(TurnServer, TurnState)>>>,
}

impl TurnMonitor {
    /// Watches `servers` (duplicates once).
    pub fn new(servers: impl IntoIterator<Item = TurnServer>) -> TurnMonitor {
        let mut list: Vec<(TurnServer, TurnState)> = Vec::new();
        for server in servers {
            if !list.iter().any(|(known, _)| *known == server) {
                let state = if server.url.usable_by_server() { TurnState::Checking } else { TurnState::BrowserOnly };
                list.push((server, state));
            }
        }
        TurnMonitor { servers: Arc::new(Mutex::new(list)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(TurnServer, TurnState)>> {
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Each server's URL (no credentials) and state, for `/health`.
    pub fn report(&self) -> Value {
        let list: Vec<Value> = self
            .lock()
            .iter()
            .map(|(server, state)| {
                let mut entry = serde_json::to_value(state).unwrap_or_default();
                entry["url"] = json!(server.url.to_string());
                entry
            })
            .collect();
        Value::Array(list)
    }

    /// `(url, up)` for the metrics: 1 after a successful allocation.
    pub fn up(&self) -> Vec<(String, bool)> {
        self.lock()
            .iter()
            .filter(|(server, _)| server.url.usable_by_server())
            .map(|(server, state)| (server.url.to_string(), matches!(state, TurnState::Ok { .. })))
            .collect()
    }

    /// Probes every server the server itself uses, now; logs changes.
    pub async fn probe_all(&self) {
        let servers: Vec<TurnServer> =
            self.lock().iter().filter(|(s, _)| s.url.usable_by_server()).map(|(s, _)| s.clone()).collect();
        for server in servers {
            let state = match probe(&server).await {
                Ok(relay) => TurnState::Ok { relay: relay.to_string() },
                Err(error) => TurnState::Error { error },
            };
            let mut list = self.lock();
            if let Some((_, old)) = list.iter_mut().find(|(s, _)| *s == server) {
                if *old != state {
                    match &state {
                        TurnState::Ok { relay } => log::info!("TURN {}: allocation works (relay {relay})", server.url),
                        TurnState::Error { error } => log::error!("TURN {}: {error}", server.url),
                        _ => {}
                    }
                }
                *old = state;
            }
        }
    }

    /// Probes at once, then every [`PROBE_INTERVAL`], until `shutdown`.
    pub async fn run(self, shutdown: crate::shutdown::Shutdown) {
        loop {
            self.probe_all().await;
            if tokio::time::timeout(PROBE_INTERVAL, shutdown.wait()).await.is_ok() {
                return;
            }
        }
    }
}

/// Allocates a relay on `server` the way a peer connection would, and
/// releases it: the relayed address, or why not.
pub async fn probe(server: &TurnServer) -> Result<SocketAddr, String> {
    use rtc::sansio::Protocol;
    use rtc::shared::{TransportContext, TransportMessage, TransportProtocol};
    use rtc::turn::client::{Client, ClientConfig, Event};

    let peer = tokio::net::lookup_host(server.url.host_port().trim_start_matches('[').replace("]:", ":"))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", server.url.host))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", server.url.host))?;
    let any: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("static address");
    let socket = tokio::net::UdpSocket::bind(any).await.map_err(|e| format!("UDP socket: {e}"))?;
    socket.connect(peer).await.map_err(|e| format!("cannot reach {peer}: {e}"))?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let (username, password) = server.credentials(SystemTime::now());
    let provider = rtc::turn::crypto::default_provider().map_err(|e| format!("crypto: {e}"))?;
    let config = ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: peer.to_string(),
        local_addr: local,
        transport_protocol: TransportProtocol::UDP,
        username,
        password,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        allocation_refresh_interval_cap: None,
    };
    let mut client = Client::new(config, provider).map_err(|e| format!("TURN client: {e}"))?;
    client.allocate(Instant::now()).map_err(|e| format!("allocate: {e}"))?;
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(out) = client.poll_write() {
            // A failed send shows as the transaction timing out.
            let _ = socket.send(&out.message).await;
        }
        while let Some(event) = client.poll_event() {
            match event {
                Event::AllocateResponse(_, relay) => {
                    // Give the allocation back rather than leave it to expire.
                    if let Ok(mut allocation) = client.relay(relay) {
                        let _ = allocation.close(Instant::now());
                    }
                    while let Some(out) = client.poll_write() {
                        let _ = socket.send(&out.message).await;
                    }
                    return Ok(relay);
                }
                Event::AllocateError(_, e) => return Err(format!("allocation refused by {peer}: {e}")),
                Event::TransactionTimeout(_) => return Err(format!("no answer from {peer}")),
                _ => {}
            }
        }
        let wake = client.poll_timeout().map(|at| tokio::time::Instant::from_std(at).min(deadline)).unwrap_or(deadline);
        tokio::select! {
            received = socket.recv(&mut buf) => {
                let n = received.map_err(|e| format!("from {peer}: {e}"))?;
                let message = TransportMessage {
                    now: Instant::now(),
                    transport: TransportContext {
                        local_addr: local,
                        peer_addr: peer,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: BytesMut::from(&buf[..n]),
                };
                // Garbage from the network is the server's problem, not a
                // reason to stop waiting for its real answer.
                let _ = client.handle_read(message);
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("no allocation from {peer} within {PROBE_TIMEOUT:?}"));
                }
                let _ = client.handle_timeout(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_defaults_and_refuse_credentials() {
        let url = TurnUrl::parse("turn:turn.example.com").unwrap();
        assert_eq!((url.port, url.transport, url.usable_by_server()), (3478, Transport::Udp, true));
        assert_eq!(url.to_string(), "turn:turn.example.com:3478?transport=udp");
        let url = TurnUrl::parse("turns:turn.example.com").unwrap();
        assert_eq!((url.port, url.transport, url.usable_by_server()), (5349, Transport::Tcp, false));
        let url = TurnUrl::parse("turn:10.0.0.1:3479?transport=tcp").unwrap();
        assert_eq!((url.port, url.transport, url.usable_by_server()), (3479, Transport::Tcp, false));
        let url = TurnUrl::parse("turn:[fd00::1]:3478").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("[fd00::1]", 3478));
        for bad in [
            "stun:a",
            "turn:",
            "turn:user:pass@host",
            "turn://host",
            "turn:host:99999",
            "turn:host:0",
            "turn:host?transport=sctp",
            "turn:ho st",
            "turn:[fd00::1",
        ] {
            assert!(TurnUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rest_credentials_are_coturns() {
        // The worked example of draft-uberti-behave-turn-rest-00 as coturn
        // implements it: HMAC-SHA1 of "EXPIRY:USER", base64.
        let (username, password) = rest_credentials("secret", "alice", 1_700_000_000);
        assert_eq!(username, "1700000000:alice");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"secret");
        assert!(ring::hmac::verify(
            &key,
            b"1700000000:alice",
            &base64::engine::general_purpose::STANDARD.decode(&password).unwrap()
        )
        .is_ok());
        assert_eq!(password.len(), 28, "20 bytes of SHA-1 in base64");
        let server = TurnServer {
            url: TurnUrl::parse("turn:t:3478").unwrap(),
            auth: TurnAuth::Secret { secret: "secret".into(), user: "alice".into(), ttl: Duration::from_secs(60) },
        };
        let (username, _) = server.credentials(UNIX_EPOCH + Duration::from_secs(1000));
        assert_eq!(username, "1060:alice");
        assert!(!format!("{server:?}").contains("secret\""), "{server:?}");
    }

    #[test]
    fn the_monitor_reports_without_credentials() {
        let long_term = |url: &str| TurnServer {
            url: TurnUrl::parse(url).unwrap(),
            auth: TurnAuth::LongTerm { user: "u".into(), pass: "hunter2".into() },
        };
        let monitor = TurnMonitor::new([long_term("turn:a"), long_term("turn:a"), long_term("turns:b")]);
        let report = monitor.report().to_string();
        assert!(!report.contains("hunter2"), "{report}");
        assert_eq!(monitor.report().as_array().unwrap().len(), 2, "{report}");
        assert!(report.contains("\"state\":\"checking\"") && report.contains("\"state\":\"browser_only\""), "{report}");
        assert_eq!(monitor.up(), vec![("turn:a:3478?transport=udp".to_string(), false)]);
    }
}
