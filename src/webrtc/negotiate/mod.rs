//! Codec negotiation from the real stream: which offered H.264 payload type
//! the camera's SPS can be sent as, and the answer's `a=fmtp` for it.
//!
//! In: the browser's offer SDP (untrusted text) and the camera's
//! [`SpsInfo`]. Out: a [`Choice`] (payload type, the fmtp line to register
//! and to answer with) or a [`NegotiationError`] whose message says why
//! nothing fits. Plain functions, no I/O; called on the control-plane thread
//! that carries the offer.
//!
//! Rules (RFC 6184 8.2.2 and what browsers do):
//! - only packetization-mode=1 payload types qualify (Firefox also offers
//!   mode 0 types, which lack the parameter);
//! - the offered profile must be one a decoder of it can play the camera's
//!   stream with: Constrained Baseline fits every profile, Baseline fits
//!   Baseline, Main fits Main and High, High fits High; Constrained High
//!   offered needs a Constrained Baseline/High stream;
//! - the profile part of profile-level-id is used symmetrically: the answer
//!   keeps the offered profile_idc and constraint byte (so the browser
//!   matches it to its own codec), and carries the camera's level, with
//!   level-asymmetry-allowed=1, so the answer says what is really sent;
//! - among fitting types, the one naming the camera's own profile is
//!   preferred, then the smallest superset profile.
//!
//! [`finish_answer`] rewrites the answer the `rtc` crate produced so its
//! video `m=` line lists only the payload type really sent, with our fmtp,
//! and [`check_answer`] verifies the result is well formed (0.21 can emit a
//! malformed `m=` line when it falls back to MIME-only matching).

use std::fmt;
use std::io::Cursor;

use rtc::sdp::description::session::SessionDescription;

pub mod h265;

use crate::codec::h264::SpsInfo;
use crate::codec::{Codec, VideoInfo};

/// The payload type chosen from an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// What is sent: the camera's codec.
    pub codec: Codec,
    /// The `mid` of the offer's video section.
    pub mid: Option<String>,
    pub payload_type: u8,
    /// The offer's fmtp for that payload type, verbatim (registering it
    /// unchanged makes the `rtc` crate's matcher take the exact path).
    pub offered_fmtp: String,
    /// What the answer says: offered profile bytes, camera level.
    pub answer_fmtp: String,
}

/// Why an offer cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NegotiationError {
    /// The text is not SDP.
    BadSdp(String),
    /// SDP, but nothing the camera's stream can be sent as.
    NoCompatibleCodec(String),
}

impl fmt::Display for NegotiationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NegotiationError::BadSdp(why) | NegotiationError::NoCompatibleCodec(why) => f.write_str(why),
        }
    }
}

/// H.264 profiles as decoders see them (profile_idc plus constraint flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Profile {
    ConstrainedBaseline,
    Baseline,
    Main,
    ConstrainedHigh,
    High,
    /// High 10 (110), High 4:2:2 (122), High 4:4:4 Predictive (244): each
    /// decodes High and what the ones before it decode.
    HighPlus(u8),
    /// Anything else: only an exact profile_idc match.
    Other(u8),
}

impl Profile {
    pub fn classify(profile_idc: u8, constraints: u8) -> Profile {
        let cs0 = constraints & 0x80 != 0;
        let cs1 = constraints & 0x40 != 0;
        let cs4 = constraints & 0x08 != 0;
        let cs5 = constraints & 0x04 != 0;
        match profile_idc {
            66 if cs1 => Profile::ConstrainedBaseline,
            77 if cs0 => Profile::ConstrainedBaseline,
            88 if cs0 && cs1 => Profile::ConstrainedBaseline,
            66 => Profile::Baseline,
            88 if cs0 => Profile::Baseline,
            77 => Profile::Main,
            100 if cs4 && cs5 => Profile::ConstrainedHigh,
            100 => Profile::High,
            110 | 122 | 244 => Profile::HighPlus(profile_idc),
            other => Profile::Other(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            Profile::ConstrainedBaseline => "Constrained Baseline".into(),
            Profile::Baseline => "Baseline".into(),
            Profile::Main => "Main".into(),
            Profile::ConstrainedHigh => "Constrained High".into(),
            Profile::High => "High".into(),
            Profile::HighPlus(110) => "High 10".into(),
            Profile::HighPlus(122) => "High 4:2:2".into(),
            Profile::HighPlus(idc) => format!("High 4:4:4 (profile_idc {idc})"),
            Profile::Other(idc) => format!("profile_idc {idc}"),
        }
    }

    /// Can a decoder of `self` play a `stream` bitstream? Lower is a better
    /// fit (0: same profile).
    fn fit(self, stream: Profile) -> Option<u8> {
        use Profile::*;
        if self == stream {
            return Some(0);
        }
        match (stream, self) {
            (ConstrainedBaseline, Baseline) => Some(1),
            (ConstrainedBaseline, Main) => Some(2),
            (ConstrainedBaseline, ConstrainedHigh) => Some(3),
            (ConstrainedBaseline, High) => Some(4),
            (Main, High) => Some(2),
            (ConstrainedHigh, High) => Some(1),
            // Chromium without a High-profile encoder offers High 4:4:4
            // Predictive (f4001f) as its only decoder above Main.
            (ConstrainedBaseline | Main | ConstrainedHigh | High, HighPlus(idc)) => Some(5 + idc / 100),
            (HighPlus(a), HighPlus(b)) if a <= b => Some(1 + b / 100),
            _ => None,
        }
    }
}

/// `profile-level-id` of an fmtp line as (profile_idc, constraints, level),
/// RFC 6184's default 42000a when absent.
fn profile_level_id(fmtp: &str) -> Option<(u8, u8, u8)> {
    let Some(value) = fmtp_param(fmtp, "profile-level-id") else {
        return Some((0x42, 0x00, 0x0a));
    };
    if value.len() != 6 || !value.is_ascii() {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&value[i..i + 2], 16).ok();
    Some((byte(0)?, byte(2)?, byte(4)?))
}

fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
}

/// Parses SDP text with the `rtc` crate's parser.
pub fn parse_sdp(sdp: &str) -> Result<SessionDescription, String> {
    if sdp.trim().is_empty() {
        return Err("empty SDP".into());
    }
    SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes())).map_err(|e| format!("SDP does not parse: {e}"))
}

/// Structural rules the SDP parser does not enforce (RFC 8866, RFC 8843):
/// at most one `c=` line and one direction per section, unique `mid`s.
/// Offers that break them made the `rtc` crate answer without a video
/// section (found by tests/offer_fuzz.rs).
fn check_structure(offer_sdp: &str) -> Result<(), String> {
    let mut mids: Vec<&str> = Vec::new();
    let mut section = 0;
    let (mut connections, mut directions) = (0, 0);
    for line in offer_sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("m=") {
            section += 1;
            (connections, directions) = (0, 0);
            continue;
        }
        if section == 0 {
            continue;
        }
        if line.starts_with("c=") {
            connections += 1;
            if connections > 1 {
                return Err(format!("m= section {section} has more than one c= line"));
            }
        } else if matches!(line, "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive") {
            directions += 1;
            if directions > 1 {
                return Err(format!("m= section {section} has more than one direction attribute"));
            }
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            let mid = mid.trim();
            if mids.contains(&mid) {
                return Err(format!("mid {mid:?} is used by more than one m= section"));
            }
            mids.push(mid);
        }
    }
    Ok(())
}

/// Picks the payload type to send the camera's stream as: the codec it
/// sends (H.264 or H.265, never transcoded), in a format the offer receives.
pub fn choose(offer_sdp: &str, camera: &VideoInfo) -> Result<Choice, NegotiationError> {
    let offer = parse_sdp(offer_sdp).map_err(NegotiationError::BadSdp)?;
    check_structure(offer_sdp).map_err(|why| NegotiationError::BadSdp(format!("malformed offer: {why}")))?;
    let videos: Vec<_> = offer
        .media_descriptions
        .iter()
        .filter(|m| m.media_name.media == "video" && m.media_name.port.value != 0)
        .collect();
    if videos.is_empty() {
        return Err(NegotiationError::NoCompatibleCodec("the offer has no video section".into()));
    }
    let receiving: Vec<Section> = videos
        .iter()
        .filter(|video| !(video.has_attribute("sendonly") || video.has_attribute("inactive")))
        .map(|video| {
            let codecs = video.codecs();
            // The m= line's order is the offerer's preference.
            let offered = video
                .media_name
                .formats
                .iter()
                .filter_map(|format| {
                    let pt = format.parse::<u8>().ok()?;
                    let codec = codecs.get(&pt)?;
                    Some((pt, codec.name.clone(), codec.clock_rate, codec.fmtp.clone()))
                })
                .collect();
            Section { mid: video.attribute("mid").flatten().map(str::to_string), offered }
        })
        .collect();
    if receiving.is_empty() {
        return Err(NegotiationError::NoCompatibleCodec(
            "the offer's video is send-only or inactive; a viewer must receive video (recvonly or sendrecv)".into(),
        ));
    }
    match camera {
        VideoInfo::H264(info) => choose_h264(&receiving, info),
        VideoInfo::H265(info) => choose_h265(&receiving, info),
    }
}

/// One receiving video section of an offer: its mid and its codecs
/// (payload type, name, clock rate, fmtp) in the offerer's order.
struct Section {
    mid: Option<String>,
    offered: Vec<(u8, String, u32, String)>,
}

fn choose_h264(sections: &[Section], camera: &SpsInfo) -> Result<Choice, NegotiationError> {
    let stream = Profile::classify(camera.profile_idc, camera.constraint_flags);
    let mut offered_names = Vec::new();
    let mut h264_seen = Vec::new();
    let mut best: Option<(u8, usize, Choice)> = None;
    for (index, section) in sections.iter().enumerate() {
        for (pt, name, clock_rate, fmtp) in &section.offered {
            let pt = *pt;
            if !name.eq_ignore_ascii_case("H264") {
                if !offered_names.iter().any(|n: &String| n.eq_ignore_ascii_case(name)) {
                    offered_names.push(name.clone());
                }
                continue;
            }
            let mode = fmtp_param(fmtp, "packetization-mode").unwrap_or("0");
            let Some((idc, constraints, level)) = profile_level_id(fmtp) else {
                h264_seen.push(format!("PT {pt} (unreadable profile-level-id)"));
                continue;
            };
            let decoder = Profile::classify(idc, constraints);
            h264_seen.push(format!("{} {idc:02x}{constraints:02x}{level:02x} mode {mode}", decoder.name()));
            if mode != "1" || *clock_rate != 90_000 {
                continue;
            }
            let Some(mut fit) = decoder.fit(stream) else { continue };
            // Among same-profile types, prefer the camera's exact bytes.
            fit = fit * 2 + u8::from(idc != camera.profile_idc || constraints != camera.constraint_flags);
            if best.as_ref().is_some_and(|(f, i, _)| (*f, *i) <= (fit, index)) {
                continue;
            }
            let answer_fmtp = format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={idc:02x}{constraints:02x}{:02x}",
                camera.level_idc
            );
            best = Some((
                fit,
                index,
                Choice {
                    codec: Codec::H264,
                    mid: section.mid.clone(),
                    payload_type: pt,
                    offered_fmtp: fmtp.clone(),
                    answer_fmtp,
                },
            ));
        }
    }
    if let Some((_, _, choice)) = best {
        return Ok(choice);
    }
    let camera_desc = format!("{} ({})", stream.name(), camera.profile_level_id());
    let why = if h264_seen.is_empty() {
        let offered = if offered_names.is_empty() { "no codecs".to_string() } else { offered_names.join(", ") };
        format!("the offer has no H.264 (it offers {offered}); the camera sends H.264 {camera_desc}")
    } else {
        format!(
            "the camera sends H.264 {camera_desc} with packetization-mode=1, but the offer's H.264 is only: {}",
            h264_seen.join("; ")
        )
    };
    Err(NegotiationError::NoCompatibleCodec(why))
}

fn choose_h265(sections: &[Section], camera: &crate::codec::h265::SpsInfo) -> Result<Choice, NegotiationError> {
    let mut reasons = Vec::new();
    for section in sections {
        let offered: Vec<(u8, &str, u32, &str)> =
            section.offered.iter().map(|(pt, name, rate, fmtp)| (*pt, name.as_str(), *rate, fmtp.as_str())).collect();
        match h265::choose(&offered, camera) {
            Ok(choice) => {
                if let Some(why) = &choice.exceeds_offer {
                    log::info!("webrtc: H.265 sent above what the offer says it receives: {why}");
                }
                return Ok(Choice {
                    codec: Codec::H265,
                    mid: section.mid.clone(),
                    payload_type: choice.payload_type,
                    offered_fmtp: choice.offered_fmtp,
                    answer_fmtp: choice.answer_fmtp,
                });
            }
            Err(why) => reasons.push(why),
        }
    }
    Err(NegotiationError::NoCompatibleCodec(reasons.join("; ")))
}

/// The id an SDP gives a header extension (`a=extmap:ID[/direction] URI`).
pub fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().filter_map(|l| l.trim().strip_prefix("a=extmap:")).find_map(|rest| {
        let mut parts = rest.split_whitespace();
        let id = parts.next()?.split('/').next()?.parse().ok()?;
        (parts.next()? == uri).then_some(id)
    })
}

/// Rewrites the answer's video section for `choice`: the `m=` line lists
/// only the payload type sent, and its `a=fmtp` describes the stream. Other
/// lines of that payload type (`rtpmap`, `rtcp-fb`) are kept; lines of other
/// payload types are dropped.
///
/// It also moves our ICE candidates out of a rejected section: `rtc` 0.21
/// writes them into the first `m=` section even when that one is rejected
/// (port 0, e.g. the audio a Firefox or Safari offer puts first), where a
/// browser ignores them.
pub fn finish_answer(answer: &str, choice: &Choice) -> String {
    let answer = move_candidates_to_active_section(answer);
    let pt = choice.payload_type.to_string();
    let mut out = String::with_capacity(answer.len() + 64);
    let mut in_video = false;
    let mut fmtp_written = false;
    let lines: Vec<&str> = answer.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()).collect();
    for line in &lines {
        if let Some(rest) = line.strip_prefix("m=") {
            if in_video && !fmtp_written {
                push_line(&mut out, &format!("a=fmtp:{pt} {}", choice.answer_fmtp));
            }
            in_video = rest.starts_with("video ") && !rest.starts_with("video 0 ");
            fmtp_written = false;
            if in_video {
                let parts: Vec<&str> = rest.split(' ').collect();
                let head = parts.iter().take(3).copied().collect::<Vec<_>>().join(" ");
                push_line(&mut out, &format!("m={head} {pt}"));
                continue;
            }
        } else if in_video {
            if let Some(value) = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().find_map(|p| line.strip_prefix(p)) {
                let line_pt = value.split([' ', ':']).next().unwrap_or("");
                if line_pt != pt && line_pt != "*" {
                    continue;
                }
                if line.starts_with("a=fmtp:") {
                    if !fmtp_written {
                        push_line(&mut out, &format!("a=fmtp:{pt} {}", choice.answer_fmtp));
                        fmtp_written = true;
                    }
                    continue;
                }
                push_line(&mut out, line);
                // Keep the fmtp next to its rtpmap.
                if line.starts_with("a=rtpmap:") && !fmtp_written {
                    push_line(&mut out, &format!("a=fmtp:{pt} {}", choice.answer_fmtp));
                    fmtp_written = true;
                }
                continue;
            }
        }
        push_line(&mut out, line);
    }
    if in_video && !fmtp_written {
        push_line(&mut out, &format!("a=fmtp:{pt} {}", choice.answer_fmtp));
    }
    out
}

fn move_candidates_to_active_section(answer: &str) -> String {
    let lines: Vec<&str> = answer.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()).collect();
    // Sections: index of each m= line; the session part precedes the first.
    let starts: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].starts_with("m=")).collect();
    let section_of = |i: usize| starts.iter().rposition(|&s| s <= i);
    let rejected = |section: usize| lines[starts[section]].split(' ').nth(1) == Some("0");
    let is_candidate = |l: &str| l.starts_with("a=candidate:") || l == "a=end-of-candidates";
    let Some(active) = (0..starts.len()).find(|&s| !rejected(s)) else {
        return answer.to_string();
    };
    let active_has = (0..lines.len()).any(|i| section_of(i) == Some(active) && is_candidate(lines[i]));
    let moved: Vec<&str> = (0..lines.len())
        .filter(|&i| section_of(i).is_some_and(rejected) && is_candidate(lines[i]))
        .map(|i| lines[i])
        .collect();
    let mut out = String::with_capacity(answer.len());
    for (i, line) in lines.iter().enumerate() {
        let section = section_of(i);
        if section.is_some_and(rejected) && is_candidate(line) {
            continue;
        }
        push_line(&mut out, line);
        // Right after the active section's c= line, as browsers write them.
        if !active_has && section == Some(active) && line.starts_with("c=") {
            for candidate in &moved {
                push_line(&mut out, candidate);
            }
        }
    }
    out
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push_str("\r\n");
}

/// Checks an answer is well formed for `choice`: it parses, its active video
/// section's `m=` line carries exactly the chosen payload type with an
/// `rtpmap` of the chosen codec at 90000, and every `m=` line has a port, a protocol and at
/// least one format.
pub fn check_answer(answer: &str, choice: &Choice) -> Result<(), String> {
    let parsed = parse_sdp(answer)?;
    let mut video_ok = false;
    for media in &parsed.media_descriptions {
        let name = &media.media_name;
        if name.protos.is_empty() || name.formats.is_empty() || name.formats.iter().any(|f| f.is_empty()) {
            return Err(format!("malformed m= line: m={name}"));
        }
        if name.media != "video" || name.port.value == 0 {
            continue;
        }
        if name.formats != [choice.payload_type.to_string()] {
            return Err(format!("video m= line lists {:?}, expected only {}", name.formats, choice.payload_type));
        }
        let codecs = media.codecs();
        let codec = codecs.get(&choice.payload_type).ok_or("no rtpmap for the chosen payload type")?;
        if !codec.name.eq_ignore_ascii_case(choice.codec.encoding_name()) || codec.clock_rate != 90_000 {
            return Err(format!("payload type {} is {}/{}", choice.payload_type, codec.name, codec.clock_rate));
        }
        if codec.fmtp != choice.answer_fmtp {
            return Err(format!("fmtp is {:?}, expected {:?}", codec.fmtp, choice.answer_fmtp));
        }
        if answer.contains("a=candidate:") && !media.has_attribute("candidate") && !video_ok {
            // Only the first active section carries candidates (BUNDLE).
            return Err("our ICE candidates are not in the active video section".into());
        }
        video_ok = true;
    }
    if !video_ok {
        return Err("the answer has no active video section".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sps(profile_idc: u8, constraint_flags: u8, level_idc: u8) -> VideoInfo {
        VideoInfo::H264(SpsInfo::with_profile(profile_idc, constraint_flags, level_idc, 640, 360))
    }

    fn offer(fmtps: &[(u8, &str)]) -> String {
        let pts: Vec<String> = fmtps.iter().map(|(pt, _)| pt.to_string()).collect();
        let mut sdp = format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF {}\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n",
            pts.join(" ")
        );
        for (pt, fmtp) in fmtps {
            if fmtp.starts_with("VP8") {
                sdp += &format!("a=rtpmap:{pt} VP8/90000\r\n");
            } else {
                sdp += &format!("a=rtpmap:{pt} H264/90000\r\na=fmtp:{pt} {fmtp}\r\n");
            }
        }
        sdp
    }

    #[test]
    fn constrained_baseline_camera_prefers_the_same_profile() {
        let sdp = offer(&[
            (96, "VP8"),
            (100, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640c1f"),
            (102, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
            (104, "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f"),
            (106, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
        ]);
        let choice = choose(&sdp, &sps(0x42, 0xc0, 0x1f)).unwrap();
        assert_eq!(choice.payload_type, 106);
        assert_eq!(choice.answer_fmtp, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f");
        // Camera level goes into the answer.
        let choice = choose(&sdp, &sps(0x42, 0xc0, 0x28)).unwrap();
        assert!(choice.answer_fmtp.ends_with("42e028"), "{}", choice.answer_fmtp);
    }

    #[test]
    fn high_camera_needs_high_offered() {
        let baseline_only = offer(&[(102, "packetization-mode=1;profile-level-id=42e01f")]);
        let err = choose(&baseline_only, &sps(100, 0, 0x28)).unwrap_err();
        assert!(
            matches!(&err, NegotiationError::NoCompatibleCodec(m) if m.contains("High") && m.contains("Constrained Baseline")),
            "{err}"
        );
        let with_high = offer(&[
            (102, "packetization-mode=1;profile-level-id=42e01f"),
            (122, "packetization-mode=1;profile-level-id=640032"),
        ]);
        assert_eq!(choose(&with_high, &sps(100, 0, 0x28)).unwrap().payload_type, 122);
        // Main fits High.
        assert_eq!(choose(&with_high, &sps(77, 0, 0x28)).unwrap().payload_type, 122);
    }

    #[test]
    fn mode_zero_and_vp8_only_are_refused_with_reasons() {
        let mode0 = offer(&[(97, "profile-level-id=42e01f;level-asymmetry-allowed=1")]);
        let err = choose(&mode0, &sps(0x42, 0xc0, 0x1f)).unwrap_err();
        assert!(err.to_string().contains("mode 0"), "{err}");
        let vp8 = offer(&[(96, "VP8")]);
        let err = choose(&vp8, &sps(0x42, 0xc0, 0x1f)).unwrap_err();
        assert!(err.to_string().contains("no H.264") && err.to_string().contains("VP8"), "{err}");
        assert!(matches!(choose("garbage", &sps(66, 0xc0, 0x1f)), Err(NegotiationError::BadSdp(_))));
        let send_only =
            offer(&[(106, "packetization-mode=1;profile-level-id=42e01f")]).replace("a=recvonly", "a=sendonly");
        let err = choose(&send_only, &sps(0x42, 0xc0, 0x1f)).unwrap_err();
        assert!(err.to_string().contains("send-only"), "{err}");
        let no_video = offer(&[(106, "x")]).replace("m=video", "m=audio");
        assert!(choose(&no_video, &sps(0x42, 0xc0, 0x1f)).unwrap_err().to_string().contains("no video"));
        assert!(matches!(choose("", &sps(66, 0xc0, 0x1f)), Err(NegotiationError::BadSdp(_))));
    }

    #[test]
    fn answers_are_rewritten_to_the_chosen_type_only() {
        let choice = Choice {
            codec: Codec::H264,
            mid: Some("0".into()),
            payload_type: 106,
            offered_fmtp: String::new(),
            answer_fmtp: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".into(),
        };
        let answer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 106 107\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:106 H264/90000\r\na=fmtp:106 x=1\r\na=rtcp-fb:106 nack\r\na=rtpmap:107 H264/90000\r\na=fmtp:107 y=2\r\na=sendonly\r\n";
        let finished = finish_answer(answer, &choice);
        assert!(finished.contains("m=video 9 UDP/TLS/RTP/SAVPF 106\r\n"), "{finished}");
        assert!(!finished.contains(":107"), "{finished}");
        check_answer(&finished, &choice).unwrap();
        let broken = answer.replace("m=video 9 UDP/TLS/RTP/SAVPF 106 107", "m=video 9 UDP/TLS/RTP/SAVPF ");
        assert!(check_answer(&broken, &choice).is_err());
    }

    #[test]
    fn candidates_leave_a_rejected_first_section() {
        let choice = Choice {
            codec: Codec::H264,
            mid: Some("1".into()),
            payload_type: 126,
            offered_fmtp: String::new(),
            answer_fmtp: "packetization-mode=1;profile-level-id=42e01f".into(),
        };
        let answer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 1\r\nm=audio 0 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\nm=video 9 UDP/TLS/RTP/SAVPF 126\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:126 H264/90000\r\na=sendonly\r\n";
        let finished = finish_answer(answer, &choice);
        let video = &finished[finished.find("m=video").unwrap()..];
        assert!(
            video.contains("a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates"),
            "{finished}"
        );
        assert_eq!(finished.matches("a=candidate").count(), 1, "{finished}");
        check_answer(&finished, &choice).unwrap();
    }

    #[test]
    fn profiles_classify_like_browsers() {
        assert_eq!(Profile::classify(0x42, 0xe0), Profile::ConstrainedBaseline);
        assert_eq!(Profile::classify(0x42, 0xc0), Profile::ConstrainedBaseline);
        assert_eq!(Profile::classify(0x42, 0x00), Profile::Baseline);
        assert_eq!(Profile::classify(0x4d, 0x00), Profile::Main);
        assert_eq!(Profile::classify(0x64, 0x0c), Profile::ConstrainedHigh);
        assert_eq!(Profile::classify(0x64, 0x00), Profile::High);
        assert_eq!(Profile::classify(0xf4, 0x00), Profile::HighPlus(0xf4));
        assert_eq!(Profile::classify(0x58, 0x00), Profile::Other(0x58));
    }
}
