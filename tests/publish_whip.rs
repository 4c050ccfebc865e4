//! WHIP publishing against a WHIP endpoint built on aiortc, an independent
//! WebRTC stack (tests/whip_endpoint.py), with the real binary and its demo
//! camera: every RTP payload aiortc receives is checked byte for byte
//! against the clip and aiortc decodes the frames; packets the endpoint drops
//! come back when aiortc NACKs them; a PLI restarts the stream at the cached
//! keyframe; the session is ended with DELETE when the server stops; a
//! killed and restarted endpoint gets a new session (reached through a 307); a wrong token shows as
//! 401 in `/paths` while the good target publishes; an HTTPS endpoint whose
//! certificate no root vouches for is refused with the TLS error.

mod common;
mod control_support;
mod publish_support;

use std::path::Path;
use std::time::Duration;

use control_support::{get, parse_metrics, wait_until};
use publish_support::{check_against_clip, python_with_aiortc, WhipEndpoint};
use serde_json::Value;
use streaming_server::codec::Codec;

const TOKEN: &str = "whip-test-token-7f3a";

fn start_server(publish: &[String], token_file: &Path) -> common::Server {
    let mut args: Vec<String> =
        ["-demo", "-http", "127.0.0.1:0", "-metrics", "127.0.0.1:0", "-pprof", "", "-webrtc-ip", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    for url in publish {
        args.push("-publish".into());
        args.push(url.clone());
    }
    args.push("-publish-token-file".into());
    args.push(token_file.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::Server::start(&args, &["http", "metrics"])
}

fn targets(server: &common::Server) -> Vec<Value> {
    let paths = get(&server.url("http", "/paths")).json();
    paths["paths"][0]["publish"].as_array().cloned().unwrap_or_default()
}

/// Waits until the endpoint has a session that decoded at least `frames`.
fn wait_decoded(endpoint: &WhipEndpoint, frames: u64, not: Option<&str>) -> Value {
    wait_until(Duration::from_secs(30), || {
        endpoint
            .sessions()
            .into_iter()
            .find(|s| s["frames_decoded"].as_u64() >= Some(frames) && s["id"].as_str() != not)
    })
    .unwrap_or_else(|| {
        panic!("no session decoded {frames} frames: {:?}\n{}", endpoint.sessions(), endpoint.process.log())
    })
}

/// Checks a session's recorded RTP against the demo clip: every NAL unit
/// the clip's, keyframes whole, no packet missing. Returns the check.
fn assert_byte_exact(endpoint: &WhipEndpoint, session: &str) -> streaming_server::load_client::ClipCheck {
    let packets = endpoint.packets(session);
    let check = check_against_clip(Codec::H264, &common::demo_clip(), &packets);
    assert_eq!(check.mismatched, 0, "{:?}", check.first_mismatch);
    assert!(check.keyframes_matched >= 1, "no whole keyframe in {} packets", packets.len());
    assert!(check.matched >= 60, "only {} NAL units matched", check.matched);
    check
}

#[test]
fn whip_publishes_byte_exact_to_aiortc_and_deletes_the_session_on_stop() {
    let Some(python) = python_with_aiortc() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Every 30th packet lost on its first arrival (aiortc's NACK gets it back).
    let endpoint = WhipEndpoint::start_with(&python, 0, Some(TOKEN), dir.path(), &["--drop-every", "30"]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // The same endpoint twice: once with the token, once without (its own
    // map entry has no token): 401 for that one, the other unaffected.
    let config = dir.path().join("streams.yml");
    std::fs::write(
        &config,
        format!(
            "paths:\n  cam:\n    source: demo\n    publish:\n      - url: {url}\n        tokenFile: {file}\n      - {url}\n",
            url = endpoint.url(),
            file = token_file.display()
        ),
    )
    .unwrap();
    let mut server = common::Server::start(
        &[
            "-config",
            config.to_str().unwrap(),
            "-http",
            "127.0.0.1:0",
            "-metrics",
            "127.0.0.1:0",
            "-pprof",
            "",
            "-webrtc-ip",
            "127.0.0.1",
        ],
        &["http", "metrics"],
    );

    let session = wait_decoded(&endpoint, 90, None);
    let id = session["id"].as_str().unwrap().to_string();
    let list = targets(&server);
    assert_eq!(list.len(), 2, "{list:?}");
    let good = &list[0];
    assert_eq!((good["kind"].as_str(), good["state"].as_str()), (Some("whip"), Some("publishing")), "{good:?}");
    assert!(good["frames_sent"].as_u64() >= Some(90) && good["bytes_sent"].as_u64() > Some(50_000), "{good:?}");
    let refused = wait_until(Duration::from_secs(10), || {
        let t = targets(&server).remove(1);
        t["last_error"].as_str().is_some_and(|e| e.contains("401")).then_some(t)
    })
    .unwrap_or_else(|| panic!("no 401 shown: {:?}", targets(&server)));
    assert_eq!(refused["state"], "retrying", "{refused:?}");
    assert_eq!(refused["frames_sent"], 0);
    let text = get(&server.url("http", "/paths")).text();
    assert!(!text.contains(TOKEN), "the token never shows in /paths");
    assert!(text.contains("whip+http://127.0.0.1"), "{text}");
    let metrics = get(&server.url("metrics", "/metrics")).text();
    let label = good["target"].as_str().unwrap();
    let series = parse_metrics(&metrics);
    assert_eq!(series.get(&format!("streaming_publish_up{{target=\"{label}\"}}")), Some(&1.0), "{metrics}");
    assert!(
        series.get(&format!("streaming_path_publish_frames_total{{path=\"cam\",target=\"{label}\"}}")) >= Some(&90.0)
    );
    assert!(!metrics.contains(TOKEN));
    // aiortc saw no viewer: the server has none either.
    assert_eq!(get(&server.url("http", "/paths")).json()["paths"][0]["viewers"], 0);

    // An SFU's keyframe request: answered from the GOP cache at once.
    endpoint.request_keyframe(&id);
    wait_until(Duration::from_secs(5), || (targets(&server)[0]["keyframe_requests"].as_u64() >= Some(1)).then_some(()))
        .unwrap_or_else(|| panic!("no keyframe request counted: {:?}", targets(&server)));
    std::thread::sleep(Duration::from_millis(500));

    // Stop: SIGTERM; the session gets its DELETE before the process exits.
    server.proc.signal(libc::SIGTERM);
    assert!(server.proc.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()), "{}", server.proc.log());
    let session = endpoint.sessions().into_iter().find(|s| s["id"] == id.as_str()).unwrap();
    assert_eq!(session["deleted"], true, "{session:?}\n{}", server.proc.log());
    assert!(session["frames_decoded"].as_u64() >= Some(90), "{session:?}");
    assert!(server.proc.log().contains("session deleted"), "{}", server.proc.log());
    let check = assert_byte_exact(&endpoint, &id);
    // The dropped packets were retransmitted (NACK answered from history),
    // and the PLI restarted the stream at a keyframe.
    assert!(session["dropped"].as_u64() >= Some(5), "{session:?}");
    assert_eq!(check.packets_missing, 0, "every dropped packet came back");
    assert!(check.restarts >= 1, "the PLI was answered with the cached keyframe");
}

#[test]
fn whip_reconnects_when_the_endpoint_is_killed_and_restarted_mid_stream() {
    let Some(python) = python_with_aiortc() else { return };
    let dir = tempfile::tempdir().unwrap();
    let first = WhipEndpoint::start(&python, 0, Some(TOKEN), dir.path());
    let port = first.port;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    // Through a 307 to /whip, followed with the method and body kept.
    let moved = format!("whip+http://127.0.0.1:{port}/moved");
    let server = start_server(&[moved], &token_file);
    let before = wait_decoded(&first, 30, None);
    let before_id = before["id"].as_str().unwrap().to_string();

    // A crash: no DELETE answered, no DTLS close, sockets gone.
    first.process.kill();
    // Back on the same port a moment later, knowing nothing of the session.
    std::thread::sleep(Duration::from_secs(1));
    let second = WhipEndpoint::start(&python, port, Some(TOKEN), dir.path());
    let after = wait_decoded(&second, 60, None);
    let after_id = after["id"].as_str().unwrap().to_string();
    assert_ne!(after_id, before_id);

    let target = targets(&server).remove(0);
    assert_eq!(target["state"], "publishing", "{target:?}");
    assert!(target["reconnects"].as_u64() >= Some(1), "{target:?}");
    let error = target["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("went silent") || error.contains("connection refused") || error.contains("closed"),
        "the failure shows why: {target:?}"
    );
    // Both sessions carried the clip byte for byte; the new one started at
    // a keyframe (from the GOP cache).
    assert_byte_exact(&first, &before_id);
    assert_byte_exact(&second, &after_id);
    let log = server.proc.log();
    assert!(log.contains("publishing H.264 over WHIP"), "{log}");
}

#[test]
fn an_https_endpoint_is_verified_with_tls() {
    let Some(python) = python_with_aiortc() else { return };
    let dir = tempfile::tempdir().unwrap();
    // HTTPS with a self-signed certificate: the handshake happens (rustls)
    // and fails verification, which is what an operator must see.
    let endpoint = WhipEndpoint::start_with(&python, 0, None, dir.path(), &["--tls"]);
    let url = format!("whip+https://127.0.0.1:{}/whip", endpoint.port);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let server = start_server(&[url], &token_file);
    let target = wait_until(Duration::from_secs(10), || {
        let t = targets(&server).remove(0);
        t["last_error"].is_string().then_some(t)
    })
    .unwrap_or_else(|| panic!("{:?}", targets(&server)));
    assert!(target["last_error"].as_str().unwrap().contains("invalid peer certificate"), "{target:?}");
    assert_eq!(target["state"], "retrying", "{target:?}");
    // The endpoint makes a recording per offer it takes: none came through.
    let offers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "rtp")));
    assert_eq!(offers.count(), 0, "nothing was sent before the certificate was checked");
}
