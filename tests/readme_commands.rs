//! The README's curl examples, run as written against a real server on the
//! built-in demo camera (only the address is changed to the test's port):
//! each must succeed and answer JSON with the fields its comment shows, so
//! the README cannot go stale.

mod common;
mod control_support;

use std::process::Command;
use std::time::Duration;

use common::Server;
use control_support::{get, wait_until};

/// `(command, comment)` for every line of a ```sh block starting with `curl`.
fn readme_curl_lines() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut in_sh = false;
    let mut lines = Vec::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if in_sh && line.starts_with("curl ") {
            let (command, comment) = line.split_once('#').unwrap_or((line, ""));
            lines.push((command.trim().to_string(), comment.trim().to_string()));
        }
    }
    lines
}

/// The JSON keys a README comment shows, e.g. `{"status":"ok",...}` -> status.
fn keys_in(comment: &str) -> Vec<String> {
    comment
        .split('"')
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[1].starts_with(':'))
        .map(|w| w[0].to_string())
        .collect()
}

#[test]
fn the_readme_curl_examples_work_as_written() {
    let examples = readme_curl_lines();
    assert!(examples.len() >= 4, "the README shows the API with curl: {examples:?}");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &["-demo", "-http", "127.0.0.1:0", "-metrics", "", "-pprof", "", "-record-path", dir.path().to_str().unwrap()],
        &["http"],
    );
    let health = server.url("http", "/health");
    wait_until(Duration::from_secs(15), || (get(&health).status == 200).then_some(()))
        .unwrap_or_else(|| panic!("demo never healthy:\n{}", server.proc.log()));
    let addr = server.addrs["http"].to_string();
    for (command, comment) in examples {
        let command = command.replace("127.0.0.1:8081", &addr);
        let output = Command::new("sh").arg("-c").arg(format!("{command} --fail --max-time 30")).output().unwrap();
        assert!(output.status.success(), "{command}: {output:?}");
        let json: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{command}: not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)));
        for key in keys_in(&comment) {
            let found = json.get(&key).is_some() || json["status"].get(&key).is_some();
            assert!(found, "{command}: the README promises \"{key}\" but the answer is {json}");
        }
        if command.ends_with("/start") {
            // Let a few frames reach the file before the README's /stop.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn keys_are_read_from_readme_comments() {
    assert_eq!(keys_in(r#"{"status":"ok","webrtc_clients":0,...}"#), vec!["status", "webrtc_clients"]);
    assert!(keys_in("answers once the file is synced").is_empty());
}
