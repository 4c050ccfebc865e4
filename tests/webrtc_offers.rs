//! Canned real-world offers (Chrome, Firefox, Safari; tests/fixtures/)
//! against the real negotiation path: the answer must be well formed SDP
//! that names exactly the right H.264 payload type.

mod common;
mod h265_support;
mod webrtc_common;

use streaming_server::codec::h264::SpsInfo;
use streaming_server::codec::VideoInfo;
use streaming_server::webrtc::negotiate::{self, NegotiationError};
use webrtc_common::Rig;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// (fixture, payload type expected for the demo clip's 42c01f stream)
const OFFERS: &[(&str, u8)] =
    &[("chrome_156_linux_offer.sdp", 108), ("firefox_99_offer.sdp", 126), ("safari_16_6_macos_offer.sdp", 98)];

/// Checks what a browser checks, with the `rtc` crate's SDP parser: every
/// `m=` line well formed, audio rejected, video with exactly `pt`, the
/// transport attributes present.
fn assert_answer_well_formed(answer: &str, pt: u8, name: &str) {
    let parsed =
        negotiate::parse_sdp(answer).unwrap_or_else(|e| panic!("{name}: answer does not parse: {e}\n{answer}"));
    let mut video = 0;
    for media in &parsed.media_descriptions {
        let m = &media.media_name;
        assert!(!m.protos.is_empty() && !m.formats.is_empty(), "{name}: malformed m={m}");
        assert!(m.formats.iter().all(|f| f.parse::<u8>().is_ok()), "{name}: m={m}");
        if m.media == "audio" {
            assert_eq!(m.port.value, 0, "{name}: audio must be rejected: m={m}");
            continue;
        }
        assert_eq!(m.media, "video", "{name}");
        assert_eq!(m.formats, vec![pt.to_string()], "{name}: m={m}");
        video += 1;
        let codecs = media.codecs();
        let codec = &codecs[&pt];
        assert_eq!((codec.name.as_str(), codec.clock_rate), ("H264", 90_000), "{name}");
        assert!(codec.fmtp.contains("packetization-mode=1"), "{name}: {}", codec.fmtp);
        assert!(codec.fmtp.contains("profile-level-id=42e01f"), "{name}: {}", codec.fmtp);
        assert!(codec.rtcp_feedback.iter().any(|f| f == "nack"), "{name}: NACK stays on: {:?}", codec.rtcp_feedback);
        assert!(codec.rtcp_feedback.iter().any(|f| f == "nack pli"), "{name}: {:?}", codec.rtcp_feedback);
        assert!(media.has_attribute("sendonly"), "{name}: direction");
        for key in ["ice-ufrag", "ice-pwd", "setup", "mid"] {
            assert!(media.has_attribute(key) || parsed.attribute(key).is_some(), "{name}: no a={key}");
        }
        assert!(
            media.attributes.iter().any(|a| a.key == "candidate" && a.to_string().contains("127.0.0.1")),
            "{name}: the answer must carry our host candidate (no trickle)"
        );
    }
    assert_eq!(video, 1, "{name}: one active video section");
    assert!(answer.contains("a=fingerprint:sha-256 "), "{name}");
    assert!(!answer.contains("a=setup:actpass"), "{name}: an answer picks a DTLS role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chrome_firefox_and_safari_offers_get_well_formed_answers() {
    let rig = Rig::start("rtc_offers", 8);
    for (name, pt) in OFFERS {
        let session = rig.offer(&fixture(name)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        if std::env::var_os("PRINT_ANSWERS").is_some() {
            eprintln!("--- {name}\n{}", session.answer_sdp);
        }
        assert_answer_well_formed(&session.answer_sdp, *pt, name);
        assert!(rig.viewers.close(&session.id));
    }
    assert_eq!(rig.viewers.count(), 0);
}

fn sps(profile_idc: u8, constraint_flags: u8, level_idc: u8) -> VideoInfo {
    VideoInfo::H264(SpsInfo::with_profile(profile_idc, constraint_flags, level_idc, 1920, 1080))
}

#[test]
fn other_camera_profiles_against_the_canned_offers() {
    // A 1080p High-profile camera (640028).
    let high = sps(100, 0, 0x28);
    let chrome = negotiate::choose(&fixture("chrome_156_linux_offer.sdp"), &high).unwrap();
    assert_eq!(chrome.payload_type, 41, "Debian Chromium offers High 4:4:4 (f4001f) as its High-capable decoder");
    assert_eq!(chrome.answer_fmtp, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=f40028");
    let safari = negotiate::choose(&fixture("safari_16_6_macos_offer.sdp"), &high);
    // Safari offers only Constrained High (640c1f): a plain High stream may
    // use B-frames/CABAC features it does not promise to decode.
    match safari {
        Err(NegotiationError::NoCompatibleCodec(why)) => assert!(why.contains("High"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match negotiate::choose(&fixture("firefox_99_offer.sdp"), &high) {
        Err(NegotiationError::NoCompatibleCodec(why)) => {
            assert!(why.contains("High (640028)") && why.contains("Constrained Baseline 42e01f mode 1"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A Constrained High camera (640c28) fits Safari's first choice.
    let safari = negotiate::choose(&fixture("safari_16_6_macos_offer.sdp"), &sps(100, 0x0c, 0x28)).unwrap();
    assert_eq!(safari.payload_type, 96);
    // Main (4d0028) fits Chrome's Main.
    assert_eq!(negotiate::choose(&fixture("chrome_156_linux_offer.sdp"), &sps(77, 0, 0x28)).unwrap().payload_type, 116);
}

/// Composite H.265 offers (tests/fixtures/README.md says how each was made):
/// (fixture, the payload type an H.265 Main camera must be sent as).
const H265_OFFERS: &[(&str, u8)] = &[("chrome_h265_composite_offer.sdp", 49), ("safari_h265_composite_offer.sdp", 104)];

/// The camera's parameters for negotiation: the first SPS of an H.265 clip.
fn h265_camera(clip: &[u8]) -> VideoInfo {
    let codec = streaming_server::codec::Codec::H265;
    let sps = streaming_server::codec::annexb::split_annexb(clip)
        .into_iter()
        .map(|r| &clip[r])
        .find(|nal| codec.nal_type(nal) == 33)
        .expect("an SPS in the clip");
    VideoInfo::H265(streaming_server::codec::h265::parse_sps(sps).expect("the clip's SPS parses"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_offers_from_chrome_and_safari_get_answers_checked_field_by_field() {
    let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo.h265");
    let rig = Rig::start_clip("rtc_h265_offers", 8, &clip);
    for (name, pt) in H265_OFFERS {
        let session = rig.offer(&fixture(name)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let answer = &session.answer_sdp;
        let parsed = negotiate::parse_sdp(answer).unwrap_or_else(|e| panic!("{name}: {e}\n{answer}"));
        let videos: Vec<_> = parsed
            .media_descriptions
            .iter()
            .filter(|m| m.media_name.media == "video" && m.media_name.port.value != 0)
            .collect();
        assert_eq!(videos.len(), 1, "{name}: one active video section\n{answer}");
        let video = videos[0];
        assert_eq!(video.media_name.formats, vec![pt.to_string()], "{name}: exactly the chosen PT");
        let codecs = video.codecs();
        let codec = &codecs[pt];
        assert_eq!((codec.name.as_str(), codec.clock_rate), ("H265", 90_000), "{name}");
        // The demo camera is Main, tier Main, level 3.1: its own values,
        // on the payload type offered for Main (profile-id=1, or Safari's
        // empty fmtp, which RFC 7798 reads as Main at level 3.1).
        assert_eq!(codec.fmtp, "level-id=93;profile-id=1;tier-flag=0;tx-mode=SRST", "{name}");
        for feedback in ["nack", "nack pli", "ccm fir"] {
            assert!(codec.rtcp_feedback.iter().any(|f| f == feedback), "{name}: {feedback}: {:?}", codec.rtcp_feedback);
        }
        assert!(video.has_attribute("sendonly"), "{name}: direction");
        for media in parsed.media_descriptions.iter().filter(|m| m.media_name.media == "audio") {
            assert_eq!(media.media_name.port.value, 0, "{name}: audio rejected");
        }
        assert!(answer.contains("a=candidate:") && answer.contains("127.0.0.1"), "{name}: our host candidate");
        assert!(rig.viewers.close(&session.id));
    }
    // An H.264-only offer names both sides.
    match rig.offer(&fixture("chrome_156_linux_offer.sdp")).await {
        Err(streaming_server::webrtc::OfferError::NoCompatibleCodec(why)) => assert!(
            why.contains("the offer has no H.265 (it offers VP8, VP9, H264, AV1)")
                && why.contains("the camera sends H.265 Main, tier Main, level 3.1"),
            "{why}"
        ),
        other => panic!("expected NoCompatibleCodec, got {other:?}"),
    }
    assert_eq!(rig.viewers.count(), 0);
}

#[test]
fn a_1080p_h265_camera_against_the_h265_offers() {
    let Some(path) = h265_support::camera_clip_1080p() else { return };
    let clip = std::fs::read(path).expect("the 1080p clip");
    // Main, tier Main, level 4 (level-id=120).
    let camera = h265_camera(&clip);
    // Chrome offers level 6 (180): the answer says the stream's level 4.
    let chrome = negotiate::choose(&fixture("chrome_h265_composite_offer.sdp"), &camera).unwrap();
    assert_eq!(
        (chrome.payload_type, chrome.answer_fmtp.as_str()),
        (49, "level-id=120;profile-id=1;tier-flag=0;tx-mode=SRST")
    );
    assert_eq!(chrome.offered_fmtp, "level-id=180;profile-id=1;tier-flag=0;tx-mode=SRST");
    // Safari's empty fmtp means level 3.1: the answer cannot claim more
    // than the offer (the stream is still sent; the server logs it).
    let safari = negotiate::choose(&fixture("safari_h265_composite_offer.sdp"), &camera).unwrap();
    assert_eq!(
        (safari.payload_type, safari.answer_fmtp.as_str()),
        (104, "level-id=93;profile-id=1;tier-flag=0;tx-mode=SRST")
    );
    // Neither H.265 offer lets a Firefox-like H.264-only offer through.
    assert!(matches!(
        negotiate::choose(&fixture("firefox_99_offer.sdp"), &camera),
        Err(NegotiationError::NoCompatibleCodec(_))
    ));
}
