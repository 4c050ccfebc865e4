//! Janus's HTTP API (its REST transport), as much as a viewer of the
//! streaming plugin needs: create a session and attach the plugin, `watch`
//! a mountpoint (Janus answers with an event carrying its SDP offer),
//! `start` with our answer, keep the session alive, destroy it. Blocking
//! `ureq` calls on the runtime's blocking pool.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One request at most this long (a long poll for events included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `watch` waits for Janus's offer.
const OFFER_WAIT: Duration = Duration::from_secs(15);
/// Janus ends sessions idle for 60 s (its `session_timeout`).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);

/// A Janus session with the streaming plugin attached.
pub(super) struct Session {
    agent: ureq::Agent,
    /// `http://HOST:PORT/janus/SESSION`.
    session_url: String,
    /// `.../SESSION/HANDLE`.
    handle_url: String,
    handle: u64,
}

/// POSTs (or GETs, without a body) one request and reads its JSON.
async fn call(agent: &ureq::Agent, url: &str, body: Option<Value>) -> Result<Value, String> {
    let (agent, url) = (agent.clone(), url.to_string());
    tokio::task::spawn_blocking(move || {
        let response = match body {
            Some(body) => agent.post(&url).send_string(&body.to_string()),
            None => agent.get(&url).call(),
        };
        let response = response.map_err(|e| format!("Janus {url}: {e}"))?;
        serde_json::from_reader::<_, Value>(response.into_reader()).map_err(|e| format!("Janus {url}: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A request body with a fresh transaction id.
fn request(janus: &str, extra: Value) -> Value {
    let mut body = json!({"janus": janus, "transaction": crate::random::random_id()});
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

/// Janus's `success`/`ack` answer, or its error in words.
fn expect(answer: Value, what: &str) -> Result<Value, String> {
    match answer["janus"].as_str() {
        Some("success" | "ack") => Ok(answer),
        _ => Err(format!(
            "Janus {what}: {}",
            answer["error"]["reason"].as_str().map_or_else(|| answer.to_string(), str::to_string)
        )),
    }
}

impl Session {
    /// Creates a session on the API at `base` (`http://HOST:PORT/janus`)
    /// and attaches the streaming plugin.
    pub(super) async fn create(base: &str) -> Result<Session, String> {
        let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
        let base = base.trim_end_matches('/');
        let created = expect(call(&agent, base, Some(request("create", json!({})))).await?, "create")?;
        let session = created["data"]["id"].as_u64().ok_or("Janus create: no session id")?;
        let session_url = format!("{base}/{session}");
        let attach = request("attach", json!({"plugin": "janus.plugin.streaming"}));
        let attached = expect(call(&agent, &session_url, Some(attach)).await?, "attach")?;
        let handle = attached["data"]["id"].as_u64().ok_or("Janus attach: no handle id")?;
        Ok(Session { handle_url: format!("{session_url}/{handle}"), agent, session_url, handle })
    }

    /// Asks to watch `mountpoint`; returns Janus's SDP offer.
    pub(super) async fn watch(&self, mountpoint: u64) -> Result<String, String> {
        let watch = request("message", json!({"body": {"request": "watch", "id": mountpoint}}));
        expect(call(&self.agent, &self.handle_url, Some(watch)).await?, "watch")?;
        let deadline = Instant::now() + OFFER_WAIT;
        while Instant::now() < deadline {
            let events = call(&self.agent, &format!("{}?maxev=5", self.session_url), None).await?;
            let events = match events {
                Value::Array(list) => list,
                single => vec![single],
            };
            for event in events {
                if event["janus"] != "event" || event["sender"].as_u64() != Some(self.handle) {
                    continue;
                }
                if let Some(error) = event["plugindata"]["data"]["error"].as_str() {
                    return Err(format!("Janus watch {mountpoint}: {error}"));
                }
                if event["jsep"]["type"] == "offer" {
                    return event["jsep"]["sdp"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or("Janus: an offer without SDP".into());
                }
            }
        }
        Err(format!("Janus watch {mountpoint}: no offer within {OFFER_WAIT:?}"))
    }

    /// Starts the playout with our answer.
    pub(super) async fn start(&self, answer: &str) -> Result<(), String> {
        let start =
            request("message", json!({"body": {"request": "start"}, "jsep": {"type": "answer", "sdp": answer}}));
        expect(call(&self.agent, &self.handle_url, Some(start)).await?, "start").map(|_| ())
    }

    /// Keeps the session alive until the returned task is aborted.
    pub(super) fn keep_alive(&self) -> tokio::task::JoinHandle<()> {
        let (agent, url) = (self.agent.clone(), self.session_url.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(KEEPALIVE_EVERY).await;
                if let Err(e) = call(&agent, &url, Some(request("keepalive", json!({})))).await {
                    log::warn!("{e}");
                }
            }
        })
    }

    /// Ends the session (Janus hangs up its peer connection).
    pub(super) async fn destroy(&self) {
        let _ = call(&self.agent, &self.session_url, Some(request("destroy", json!({})))).await;
    }
}

/// The video codecs of Janus's offer that a viewer can take, as (MIME type,
/// payload type, fmtp): H.264 and H.265, each registered exactly as offered.
pub(super) fn offered_codecs(sdp: &str) -> Vec<(String, u8, String)> {
    use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_HEVC};
    let lines: Vec<&str> = sdp.lines().map(str::trim).collect();
    let fmtp = |pt: &str| {
        lines.iter().find_map(|l| l.strip_prefix(&format!("a=fmtp:{pt} ")).map(str::to_string)).unwrap_or_default()
    };
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|rest| {
            let (pt, codec) = rest.split_once(' ')?;
            let mime = match codec.split('/').next()?.to_ascii_uppercase().as_str() {
                "H264" => MIME_TYPE_H264,
                "H265" => MIME_TYPE_HEVC,
                _ => return None,
            };
            Some((mime.to_string(), pt.parse().ok()?, fmtp(pt)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_video_codecs_janus_offers() {
        let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 H264/90000\r\n\
                     a=fmtp:96 profile-level-id=42e01f;packetization-mode=1\r\na=rtpmap:97 rtx/90000\r\n\
                     a=fmtp:97 apt=96\r\n";
        let codecs = offered_codecs(offer);
        assert_eq!(codecs.len(), 1);
        assert_eq!(codecs[0].1, 96);
        assert_eq!(codecs[0].2, "profile-level-id=42e01f;packetization-mode=1");
        assert_eq!(offered_codecs("v=0\r\na=rtpmap:100 H265/90000\r\n")[0].2, "");
    }
}
