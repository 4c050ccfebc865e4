//! The SDP a DESCRIBE answers: one video track in the path's codec, with
//! the parameter sets the stream uses now (`sprop-parameter-sets` for
//! H.264, RFC 6184 8.1; `sprop-vps/sps/pps` for H.265, RFC 7798 7.1), so a
//! client can set up its decoder before the first keyframe arrives.

use std::net::IpAddr;

use base64::Engine;

use crate::codec::{ParameterSets, VideoInfo};

/// The RTP payload type of the video track.
pub const PAYLOAD_TYPE: u8 = 96;
/// The track's control URL, relative to the path's (Content-Base).
pub const TRACK: &str = "trackID=0";

/// SDP for `name` whose stream carries `parameter_sets`; `server_ip` goes in
/// the origin line.
pub fn describe(name: &str, server_ip: IpAddr, session_version: u64, parameter_sets: &ParameterSets) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let family = if server_ip.is_ipv6() { "IP6" } else { "IP4" };
    let fmtp = match &parameter_sets.info {
        VideoInfo::H264(sps) => format!(
            "packetization-mode=1;profile-level-id={};sprop-parameter-sets={},{}",
            sps.profile_level_id(),
            b64(&parameter_sets.sps),
            b64(&parameter_sets.pps)
        ),
        VideoInfo::H265(sps) => {
            let ptl = sps.profile_tier_level();
            let vps = parameter_sets.vps.as_deref().map(|vps| format!("sprop-vps={};", b64(vps))).unwrap_or_default();
            format!(
                "profile-id={};tier-flag={};level-id={};{vps}sprop-sps={};sprop-pps={}",
                ptl.profile_id,
                ptl.tier_flag,
                ptl.level_id,
                b64(&parameter_sets.sps),
                b64(&parameter_sets.pps)
            )
        }
    };
    let encoding = parameter_sets.codec().encoding_name();
    let (width, height) = parameter_sets.info.size();
    let mut sdp = String::with_capacity(512);
    for line in [
        "v=0".to_string(),
        format!("o=- {session_version} {session_version} IN {family} {server_ip}"),
        format!("s={name}"),
        format!("c=IN {family} {}", if server_ip.is_ipv6() { "::" } else { "0.0.0.0" }),
        "t=0 0".to_string(),
        "a=tool:streaming-server".to_string(),
        "a=control:*".to_string(),
        "a=range:npt=now-".to_string(),
        format!("m=video 0 RTP/AVP {PAYLOAD_TYPE}"),
        format!("a=rtpmap:{PAYLOAD_TYPE} {encoding}/90000"),
        format!("a=fmtp:{PAYLOAD_TYPE} {fmtp}"),
        format!("a=framesize:{PAYLOAD_TYPE} {width}-{height}"),
        format!("a=control:{TRACK}"),
        "a=recvonly".to_string(),
    ] {
        sdp.push_str(&line);
        sdp.push_str("\r\n");
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use bytes::Bytes;

    #[test]
    fn h264_sdp_carries_the_parameter_sets_and_control() {
        let clip = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.h264")).unwrap();
        let sets = first_parameter_sets(Codec::H264, &clip);
        let sdp = describe("cam", "127.0.0.1".parse().unwrap(), 7, &sets);
        let b64 = |b: &Bytes| base64::engine::general_purpose::STANDARD.encode(b);
        assert!(sdp.contains(&format!("sprop-parameter-sets={},{}", b64(&sets.sps), b64(&sets.pps))), "{sdp}");
        assert!(sdp.contains("a=rtpmap:96 H264/90000\r\n"), "{sdp}");
        assert!(sdp.contains("packetization-mode=1;profile-level-id="), "{sdp}");
        assert!(sdp.contains("a=control:trackID=0\r\n") && sdp.contains("a=range:npt=now-\r\n"), "{sdp}");
        assert!(sdp.starts_with("v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=cam\r\n"), "{sdp}");
    }

    #[test]
    fn h265_sdp_carries_vps_sps_pps() {
        let clip = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo.h265")).unwrap();
        let sets = first_parameter_sets(Codec::H265, &clip);
        let sdp = describe("cam", "::1".parse().unwrap(), 1, &sets);
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        assert!(sdp.contains("a=rtpmap:96 H265/90000\r\n"), "{sdp}");
        assert!(sdp.contains(&format!("sprop-vps={}", b64(sets.vps.as_deref().unwrap()))), "{sdp}");
        assert!(sdp.contains(&format!("sprop-sps={};sprop-pps={}", b64(&sets.sps), b64(&sets.pps))), "{sdp}");
        assert!(sdp.contains("IN IP6 ::1"), "{sdp}");
    }

    /// The parameter sets the codec processor finds in a clip's first access unit.
    fn first_parameter_sets(codec: Codec, clip: &[u8]) -> std::sync::Arc<ParameterSets> {
        let mut processor = crate::codec::Processor::new(codec);
        let range = codec.split_access_units(clip).into_iter().next().unwrap();
        let au = processor
            .process(crate::codec::RawFrame {
                codec,
                data: Bytes::copy_from_slice(&clip[range]),
                frame_number: 1,
                index: 0,
                capture_time: std::time::Duration::ZERO,
                read_time: std::time::Duration::ZERO,
                camera_id: 0,
                width: 0,
                height: 0,
            })
            .unwrap();
        au.parameter_sets.unwrap()
    }
}
