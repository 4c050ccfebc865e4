//! RTSP authentication: Basic, and Digest as RFC 2617 without `qop` (the
//! form RTSP clients and cameras speak: ffmpeg, GStreamer, VLC, go2rtc).
//! Sans-IO: a request's method and `Authorization` value in, a verdict out.

use base64::Engine;
use md5::{Digest, Md5};

use crate::control::constant_time_eq;

/// The realm in challenges.
pub const REALM: &str = "streaming-server";

/// Who may play.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// Anyone on the network.
    Open,
    /// Any user name, with the API's bearer token (`-auth-token-file`) as
    /// the password.
    Token(String),
    /// The config file's `rtspUser`/`rtspPass`.
    Credentials { user: String, pass: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        match self {
            Auth::Open => f.write_str("Open"),
            Auth::Token(_) => f.write_str("Token(***)"),
            Auth::Credentials { user, .. } => write!(f, "Credentials({user:?}, ***)"),
        }
    }
}

/// Why a request is not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No (usable) `Authorization` header: challenge.
    Missing,
    /// Credentials that do not match.
    Wrong,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Wrong => "wrong",
        }
    }
}

impl Auth {
    pub fn is_open(&self) -> bool {
        matches!(self, Auth::Open)
    }

    /// The password `user` must give, if that user may play at all.
    fn password_for(&self, user: &str) -> Option<&str> {
        match self {
            Auth::Open => None,
            Auth::Token(token) => Some(token),
            Auth::Credentials { user: expected, pass } => (user == expected).then_some(pass.as_str()),
        }
    }

    /// Checks a request's `Authorization` value. `nonce` is the one this
    /// connection challenged with.
    pub fn check(&self, method: &str, authorization: Option<&str>, nonce: &str) -> Result<(), Refusal> {
        if self.is_open() {
            return Ok(());
        }
        let Some(value) = authorization.map(str::trim) else { return Err(Refusal::Missing) };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| Refusal::Wrong)?;
            let decoded = String::from_utf8(decoded).map_err(|_| Refusal::Wrong)?;
            let (user, pass) = decoded.split_once(':').ok_or(Refusal::Wrong)?;
            let expected = self.password_for(user).ok_or(Refusal::Wrong)?;
            return if constant_time_eq(pass.as_bytes(), expected.as_bytes()) { Ok(()) } else { Err(Refusal::Wrong) };
        }
        if scheme.eq_ignore_ascii_case("digest") {
            let params = digest_params(rest);
            let get = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
            let (Some(user), Some(uri), Some(response)) = (get("username"), get("uri"), get("response")) else {
                return Err(Refusal::Wrong);
            };
            if get("nonce") != Some(nonce) {
                // A nonce of another connection (or made up): challenge anew.
                return Err(Refusal::Missing);
            }
            if get("realm").is_some_and(|realm| realm != REALM) {
                return Err(Refusal::Wrong);
            }
            let expected = self.password_for(user).ok_or(Refusal::Wrong)?;
            let want = digest_response(user, expected, method, uri, nonce);
            return if constant_time_eq(response.to_ascii_lowercase().as_bytes(), want.as_bytes()) {
                Ok(())
            } else {
                Err(Refusal::Wrong)
            };
        }
        Err(Refusal::Missing)
    }

    /// `WWW-Authenticate` values of a 401: Digest first (clients take the
    /// strongest they know), then Basic.
    pub fn challenges(&self, nonce: &str) -> [String; 2] {
        [format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", algorithm=MD5"), format!("Basic realm=\"{REALM}\"")]
    }
}

/// RFC 2617 3.2.2.1 without qop: MD5(HA1:nonce:HA2), lower-case hex.
pub fn digest_response(user: &str, pass: &str, method: &str, uri: &str, nonce: &str) -> String {
    let ha1 = md5_hex(&format!("{user}:{REALM}:{pass}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    md5_hex(&format!("{ha1}:{nonce}:{ha2}"))
}

fn md5_hex(text: &str) -> String {
    crate::random::hex(&Md5::digest(text.as_bytes()))
}

/// `name="value", name=value, ...` of a Digest header (quoted values may
/// hold commas).
fn digest_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once('=') else { break };
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.push((name.trim().to_string(), value.trim().to_string()));
        rest = next.trim_start().trim_start_matches(',').trim_start();
        if params.len() > 32 {
            break;
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
    }

    #[test]
    fn open_lets_everyone_through() {
        assert_eq!(Auth::Open.check("DESCRIBE", None, "n"), Ok(()));
    }

    #[test]
    fn basic_with_own_credentials_or_the_token() {
        let own = Auth::Credentials { user: "nvr".into(), pass: "pw".into() };
        assert_eq!(own.check("DESCRIBE", None, "n"), Err(Refusal::Missing));
        assert_eq!(own.check("DESCRIBE", Some(&basic("nvr", "pw")), "n"), Ok(()));
        assert_eq!(own.check("DESCRIBE", Some(&basic("nvr", "nope")), "n"), Err(Refusal::Wrong));
        assert_eq!(own.check("DESCRIBE", Some(&basic("other", "pw")), "n"), Err(Refusal::Wrong));
        assert_eq!(own.check("DESCRIBE", Some("Basic !!!"), "n"), Err(Refusal::Wrong));
        let token = Auth::Token("t0ken".into());
        assert_eq!(token.check("PLAY", Some(&basic("anyone", "t0ken")), "n"), Ok(()));
        assert_eq!(token.check("PLAY", Some(&basic("anyone", "t0ke")), "n"), Err(Refusal::Wrong));
        assert!(!format!("{own:?}{token:?}").contains("pw") && !format!("{token:?}").contains("t0ken"));
    }

    #[test]
    fn digest_as_rfc_2617_computes_it() {
        // RFC 2617 3.5's example values, with our realm and without qop.
        let want =
            digest_response("Mufasa", "Circle Of Life", "GET", "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093");
        let ha1 = md5_hex("Mufasa:streaming-server:Circle Of Life");
        let ha2 = md5_hex("GET:/dir/index.html");
        assert_eq!(want, md5_hex(&format!("{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{ha2}")));
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");

        let auth = Auth::Credentials { user: "nvr".into(), pass: "pw".into() };
        let uri = "rtsp://127.0.0.1:8554/cam";
        let response = digest_response("nvr", "pw", "DESCRIBE", uri, "abc");
        let header = format!(
            "Digest username=\"nvr\", realm=\"{REALM}\", nonce=\"abc\", uri=\"{uri}\", response=\"{response}\""
        );
        assert_eq!(auth.check("DESCRIBE", Some(&header), "abc"), Ok(()));
        assert_eq!(auth.check("SETUP", Some(&header), "abc"), Err(Refusal::Wrong), "the method is in the hash");
        assert_eq!(auth.check("DESCRIBE", Some(&header), "other"), Err(Refusal::Missing), "a stale nonce");
        assert_eq!(auth.check("DESCRIBE", Some("Digest garbage"), "abc"), Err(Refusal::Wrong));
        assert_eq!(auth.check("DESCRIBE", Some("Bearer x"), "abc"), Err(Refusal::Missing));
    }

    #[test]
    fn digest_params_keep_commas_in_quotes() {
        let params = digest_params("username=\"a,b\", uri=rtsp://x/y, response=\"r\"");
        assert_eq!(params[0], ("username".into(), "a,b".into()));
        assert_eq!(params[1], ("uri".into(), "rtsp://x/y".into()));
        assert_eq!(params[2], ("response".into(), "r".into()));
        assert!(digest_params(&"a=b,".repeat(1000)).len() <= 33, "bounded");
    }
}
