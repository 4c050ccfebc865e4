//! Viewers that come and go, and one client flooding `/offer`, against the
//! real binary: a viewer that closes its peer connection (DTLS
//! close_notify) is gone within 500 ms; churn never meets a 503 and leaves
//! the server's fds, threads and RSS where they were; a burst of offers
//! larger than the negotiation slots waits its turn; an address that
//! floods offers that never connect gets 429 while a viewer from another
//! address still connects and plays.

mod common;
mod control_support;
mod webrtc_common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_support::{get, post, wait_until};
use webrtc_common::{Client, CHROME_H264};

fn start(tag: &str, max_clients: &str) -> (common::Proc, common::Server) {
    let shm = common::unique_shm(tag);
    let camera = common::fake_camera(&shm, &["-fps", "30"]);
    let server = common::Server::start(
        &[
            "-shm",
            &shm,
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "",
            "-pprof",
            "",
            "-webrtc-ip",
            "127.0.0.1",
            "-max-clients",
            max_clients,
            "-record-path",
            std::env::temp_dir().join(format!("rec_{tag}_{}", std::process::id())).to_str().unwrap(),
        ],
        &["http"],
    );
    let health = server.url("http", "/health");
    wait_until(Duration::from_secs(10), || get(&health).json()["has_headers"].as_bool().filter(|h| *h))
        .expect("the server never saw the camera's SPS/PPS");
    (camera, server)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn viewers_now(server: &common::Server) -> u64 {
    get(&server.url("http", "/health")).json()["webrtc_clients"].as_u64().unwrap()
}

/// The server process's open fds, threads and RSS (KiB).
fn footprint(pid: u32) -> (usize, usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (fds, threads, rss)
}

/// What one offer came to.
enum Offered {
    Answer(String),
    Refused(u16, String),
}

async fn offer(server: &common::Server, sdp: &str) -> Offered {
    let url = server.url("http", "/offer");
    let body = serde_json::json!({"type": "offer", "sdp": sdp}).to_string();
    let answer = blocking(move || post(&url, body.as_bytes())).await;
    match answer.status {
        200 => Offered::Answer(answer.json()["sdp"].as_str().unwrap().to_string()),
        status => Offered::Refused(status, answer.text()),
    }
}

/// One viewer's life: connect, watch `watch`, close its peer connection.
async fn watch_once(server: &common::Server, watch: Duration) -> Result<(), String> {
    let client = Client::new(CHROME_H264).await;
    let answer = match offer(server, &client.offer).await {
        Offered::Answer(sdp) => sdp,
        Offered::Refused(status, text) => {
            client.close().await;
            return Err(format!("{status} {text}"));
        }
    };
    client.accept(answer).await;
    let frames = client.frames(1, Duration::from_secs(10)).await;
    if frames.is_empty() {
        client.close().await;
        return Err("no frame".into());
    }
    tokio::time::sleep(watch).await;
    client.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_closes_is_gone_within_500_ms_and_churn_is_never_refused() {
    let (_camera, server) = start("depart", "20");
    let pid = server.proc.child.id();

    // One viewer, closed: how long until the server has let it go.
    for round in 0..3 {
        let client = Client::new(CHROME_H264).await;
        let Offered::Answer(answer) = offer(&server, &client.offer).await else { panic!("refused") };
        client.accept(answer).await;
        assert!(!client.frames(5, Duration::from_secs(10)).await.is_empty());
        assert_eq!(viewers_now(&server), 1);
        client.close().await;
        let closed = Instant::now();
        let gone = wait_until(Duration::from_secs(10), || (viewers_now(&server) == 0).then(Instant::now))
            .expect("the viewer never left");
        let took = gone.duration_since(closed);
        eprintln!("round {round}: slot free {took:?} after the client closed");
        assert!(took < Duration::from_millis(500), "slot held {took:?} after a proper close");
    }
    assert!(
        wait_until(Duration::from_secs(3), || server.proc.log().contains("DTLS close_notify").then_some(())).is_some()
    );

    // Churn: 5 viewers that watch 1 s, close and come back 0.3 s later,
    // against -max-clients 20.
    let cycles: usize = std::env::var("DEPARTURE_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let baseline = footprint(pid);
    let refused = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let server = Arc::new(server);
    let mut loops = Vec::new();
    for _ in 0..5 {
        let (server, refused, done) = (server.clone(), refused.clone(), done.clone());
        loops.push(tokio::spawn(async move {
            for _ in 0..cycles {
                match watch_once(&server, Duration::from_secs(1)).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(why) => {
                        eprintln!("refused or failed: {why}");
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    for handle in loops {
        handle.await.unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || (viewers_now(&server) == 0).then_some(())).is_some());
    // Let the last peer connections' sockets close and the heap settle
    // (the server trims its heap every 5 s).
    let settled = wait_until(Duration::from_secs(12), || {
        let now = footprint(pid);
        (now.0 <= baseline.0 && now.1 <= baseline.1 && now.2 <= baseline.2 + 3 * 1024).then_some(now)
    });
    let after = footprint(pid);
    eprintln!(
        "{} viewer cycles ({} refused): fds {} -> {}, threads {} -> {}, RSS {} -> {} KiB",
        done.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        baseline.0,
        after.0,
        baseline.1,
        after.1,
        baseline.2,
        after.2
    );
    assert_eq!(refused.load(Ordering::Relaxed), 0, "no offer may be refused in this churn");
    assert_eq!(done.load(Ordering::Relaxed), 5 * cycles);
    assert!(settled.is_some(), "fds/threads/RSS did not return to the baseline {baseline:?}: {after:?}");
    let log = server.proc.log();
    assert!(!log.contains(" failed:"), "a normal close was logged as a failure:\n{log}");
}

/// POST /offer from a chosen local address (127.0.0.x), raw HTTP.
async fn offer_from(source: IpAddr, server: SocketAddr, sdp: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let body = serde_json::json!({"type": "offer", "sdp": sdp}).to_string();
    let request = format!(
        "POST /offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_flooding_offers_gets_429_and_others_still_watch() {
    let (_camera, server) = start("flood", "5");
    let addr = server.addrs["http"];
    // Offers that never connect: the client never takes the answer.
    let bait = Client::new(CHROME_H264).await;
    let flood_sdp = bait.offer.clone();
    let flooder: IpAddr = "127.0.0.2".parse().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let flood = {
        let (stop, statuses) = (stop.clone(), statuses.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, text) = offer_from(flooder, addr, &flood_sdp).await;
                if status == 429 {
                    assert!(text.contains("Retry-After:"), "{text}");
                }
                statuses.lock().unwrap().push(status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Meanwhile a real viewer from 127.0.0.1 connects and plays.
    let viewer = Client::new(CHROME_H264).await;
    let (status, text) = offer_from("127.0.0.1".parse().unwrap(), addr, &viewer.offer).await;
    assert_eq!(status, 200, "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let answer: serde_json::Value = serde_json::from_str(body).unwrap();
    viewer.accept(answer["sdp"].as_str().unwrap().to_string()).await;
    let frames = viewer.frames(30, Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();
    viewer.close().await;
    bait.close().await;
    assert_eq!(frames.len(), 30, "the viewer from another address plays during the flood");
    let statuses = statuses.lock().unwrap();
    let answered = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!("flood: {} offers, {answered} answered, {limited} refused with 429", statuses.len());
    assert!(limited > 0, "the flooding address was never limited: {statuses:?}");
    // Once the real viewer holds the last free slot, the flooder meets the
    // -max-clients limit (503) as well.
    assert!(statuses.iter().all(|s| [200, 429, 503].contains(s)), "{statuses:?}");
    assert!(answered <= 4, "the flooder held at most -max-clients - 1 slots: {statuses:?}");
}

/// A burst of offers larger than the number negotiated at once (a
/// dashboard opening every camera, viewers arriving together) waits its
/// turn: every offer is answered, none gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_offers_waits_its_turn_instead_of_503() {
    let (_camera, server) = start("burst", "20");
    let addr = server.addrs["http"];
    let bait = Client::new(CHROME_H264).await;
    let burst: Vec<_> = (2..18u8)
        .map(|host| {
            let sdp = bait.offer.clone();
            tokio::spawn(async move { offer_from(IpAddr::from([127, 0, 0, host]), addr, &sdp).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for offer in burst {
        statuses.push(offer.await.unwrap().0);
    }
    bait.close().await;
    eprintln!("burst of {} offers: {statuses:?}", statuses.len());
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
}
