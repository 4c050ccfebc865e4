//! H.265 codec negotiation (RFC 7798 7.2.2) for a camera that sends H.265
//! to a browser: which offered payload type the stream can be sent as, and
//! the answer's `a=fmtp` for it.
//!
//! In: the offer's codecs for one video section, in `m=` line order, as
//! `(payload_type, encoding name, clock rate, fmtp)` (the caller parses the
//! SDP; the fmtp is untrusted text), and the camera's [`SpsInfo`]. Out: a
//! [`Choice`] or an error message naming what the camera sends and what the
//! offer had. Plain functions, no I/O.
//!
//! Rules:
//! - only `H265/90000` payload types with `tx-mode=SRST` (the default)
//!   qualify, with RFC 7798's defaults for absent parameters (profile-space
//!   0, profile-id 1, tier-flag 0, level-id 93);
//! - the offered profile must be one whose decoder plays the stream: the
//!   same `profile-id`, or one the SPS's
//!   `general_profile_compatibility_flag`s claim (a Main stream sets flags 1
//!   and 2, so a Main 10 decoder plays it; a Main 10 stream sets only flag
//!   2, so a Main decoder does not), plus Main -> Main 10 and Main Still
//!   Picture -> Main/Main 10 for encoders that leave the flags unset;
//! - the answer repeats the offered profile-space, profile-id and tier-flag
//!   (they are configuration parameters used symmetrically; answering other
//!   values on the offered payload type would be a different configuration,
//!   which the answer may not carry under that payload type). Payload types
//!   naming the camera's exact profile are preferred, so against Chrome and
//!   Safari these are the stream's own values;
//! - the answer's level-id is the stream's level, capped at the highest
//!   level the offer indicates (`max-recv-level-id`, else `level-id`);
//!   `tx-mode=SRST`. A stream above the offered level or tier is still
//!   served, flagged in [`Choice::exceeds_offer`] (see [`choose`] for why).

use std::fmt;

use crate::codec::h265::{describe_ptl, level_name, profile_name, ProfileTierLevel, SpsInfo};

/// RFC 7798 7.1 defaults.
pub const DEFAULT_PROFILE_ID: u8 = 1;
pub const DEFAULT_LEVEL_ID: u8 = 93;

/// `tx-mode`: how the stream is carried (RFC 7798 7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxMode {
    /// Single RTP stream on a single transport (the only one served here).
    Srst,
    Mrst,
    Mrmt,
}

/// The H.265 parameters of one offered `a=fmtp` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H265Fmtp {
    pub profile_space: u8,
    pub profile_id: u8,
    pub tier_flag: u8,
    pub level_id: u8,
    /// Highest level the receiver supports when above level-id.
    pub max_recv_level_id: Option<u8>,
    pub tx_mode: TxMode,
    /// Base64 parameter sets, comma-separated lists as sent (unused for a
    /// recvonly offer, kept for diagnostics).
    pub sprop_vps: Vec<String>,
    pub sprop_sps: Vec<String>,
    pub sprop_pps: Vec<String>,
}

impl Default for H265Fmtp {
    fn default() -> H265Fmtp {
        H265Fmtp {
            profile_space: 0,
            profile_id: DEFAULT_PROFILE_ID,
            tier_flag: 0,
            level_id: DEFAULT_LEVEL_ID,
            max_recv_level_id: None,
            tx_mode: TxMode::Srst,
            sprop_vps: Vec::new(),
            sprop_sps: Vec::new(),
            sprop_pps: Vec::new(),
        }
    }
}

impl H265Fmtp {
    /// The highest level the offer indicates it receives.
    pub fn highest_level(&self) -> u8 {
        self.max_recv_level_id.map_or(self.level_id, |max| max.max(self.level_id))
    }

    fn ptl(&self) -> ProfileTierLevel {
        ProfileTierLevel {
            profile_space: self.profile_space,
            profile_id: self.profile_id,
            tier_flag: self.tier_flag,
            level_id: self.highest_level(),
        }
    }
}

/// Parses an H.265 fmtp value (`key=value;key=value`). Unknown parameters
/// are ignored (RFC 7798 7.1: "The receiver MUST ignore any unrecognized
/// parameter"); a known one with a bad value is an error.
pub fn parse_fmtp(fmtp: &str) -> Result<H265Fmtp, String> {
    let mut out = H265Fmtp::default();
    for part in fmtp.split(';') {
        let Some((key, value)) = part.split_once('=') else { continue };
        let (key, value) = (key.trim(), value.trim());
        let number = |max: u8| -> Result<u8, String> {
            value.parse::<u8>().ok().filter(|v| *v <= max).ok_or_else(|| format!("bad {key}={value:?}"))
        };
        let list = || value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        match key.to_ascii_lowercase().as_str() {
            "profile-space" => out.profile_space = number(3)?,
            "profile-id" => out.profile_id = number(31)?,
            "tier-flag" => out.tier_flag = number(1)?,
            "level-id" => out.level_id = number(255)?,
            "max-recv-level-id" => out.max_recv_level_id = Some(number(255)?),
            "tx-mode" => {
                out.tx_mode = match value.to_ascii_uppercase().as_str() {
                    "SRST" => TxMode::Srst,
                    "MRST" => TxMode::Mrst,
                    "MRMT" => TxMode::Mrmt,
                    _ => return Err(format!("bad tx-mode={value:?}")),
                }
            }
            "sprop-vps" => out.sprop_vps = list(),
            "sprop-sps" => out.sprop_sps = list(),
            "sprop-pps" => out.sprop_pps = list(),
            _ => {}
        }
    }
    Ok(out)
}

/// The H.265 payload type chosen from an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub payload_type: u8,
    /// The offer's fmtp for that payload type, verbatim.
    pub offered_fmtp: String,
    /// What the answer says: offered profile-space/profile-id/tier-flag,
    /// the stream's level capped at the offer's, tx-mode=SRST.
    pub answer_fmtp: String,
    /// Set when the stream's level or tier is above what the offer says it
    /// receives: the payload type is still usable (browsers decode it), but
    /// the caller should log it.
    pub exceeds_offer: Option<String>,
}

/// How well a decoder of `offered` profile plays the camera's stream:
/// 0 the same profile, 1 a superset, None not at all.
fn profile_fit(offered: u8, camera: &SpsInfo) -> Option<u8> {
    let stream = camera.general_profile_idc;
    if offered == stream {
        return Some(0);
    }
    // Main -> Main 10, Main Still Picture -> Main and Main 10 (A.3.2-A.3.4),
    // for encoders that do not set the compatibility flags.
    let known_superset = matches!((stream, offered), (1, 2) | (3, 1) | (3, 2));
    (camera.compatible_with_profile(offered) || known_superset).then_some(1)
}

fn why_not(offered: &H265Fmtp, camera: &SpsInfo) -> Option<String> {
    if offered.tx_mode != TxMode::Srst {
        return Some("tx-mode is not SRST".into());
    }
    if offered.profile_space != camera.general_profile_space {
        return Some(format!("profile-space {}", offered.profile_space));
    }
    if profile_fit(offered.profile_id, camera).is_none() {
        return Some(format!(
            "a {} decoder cannot play {}",
            profile_name(offered.profile_id),
            profile_name(camera.general_profile_idc)
        ));
    }
    None
}

/// Picks the payload type to send the camera's stream as (RFC 7798 7.2.2,
/// the offerer receiving, this answerer sending).
///
/// Preference: payload types whose level and tier cover the stream, then
/// the camera's exact profile over a superset, then the offer's order.
///
/// Level and tier: RFC 7798 7.2.2 lets the answerer "maintain all
/// configuration parameters with the values remaining the same as in the
/// offer for the media format (payload type), with the exception that the
/// value of level-id is changeable as long as the highest level indicated
/// by the answer is not higher than that indicated by the offer". So the
/// answer never says more than the offer: level-id is min(stream, offer's
/// highest level) and tier-flag is the offer's. When the stream is above
/// that (a 4K level-5.1 camera against Safari, whose H265 line carries no
/// fmtp and so means level 3.1), the answer is still RFC-valid but
/// understates the stream; we send anyway and say so in
/// [`Choice::exceeds_offer`]: the SDP level is a default, not what the
/// browser's hardware decoder can do, and neither libwebrtc nor WebKit
/// limits received streams to it: mediamtx announces
/// `level-id=93;profile-id=1;tier-flag=0;tx-mode=SRST` for every H.265
/// camera (internal/protocols/webrtc/from_stream.go) and go2rtc registers
/// H265 with no fmtp at all (pkg/webrtc/api.go, i.e. level 3.1), and both
/// are watched with 1080p/4K cameras in Chrome and Safari. Not verified
/// here with a browser. A caller that wants the strict reading refuses when
/// it is set.
pub fn choose(offered: &[(u8, &str, u32, &str)], camera: &SpsInfo) -> Result<Choice, String> {
    let stream = camera.profile_tier_level();
    let camera_desc = format!("H.265 {}", describe_ptl(stream));
    let mut names: Vec<String> = Vec::new();
    let mut h265_seen = Vec::new();
    // (exceeds, profile fit, index) ranks; lower is better.
    let mut best: Option<((bool, u8, usize), Choice)> = None;
    for (index, &(pt, name, clock_rate, fmtp)) in offered.iter().enumerate() {
        if !name.eq_ignore_ascii_case("H265") {
            // Retransmission and FEC formats are not codecs a viewer picks.
            let repair = ["rtx", "red", "ulpfec", "flexfec-03"].iter().any(|r| name.eq_ignore_ascii_case(r));
            if !repair && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name.to_string());
            }
            continue;
        }
        let params = match parse_fmtp(fmtp) {
            Ok(params) => params,
            Err(why) => {
                h265_seen.push(format!("PT {pt} (unreadable fmtp: {why})"));
                continue;
            }
        };
        let mut desc = format!("PT {pt} {}", describe_ptl(params.ptl()));
        if clock_rate != 90_000 {
            h265_seen.push(format!("{desc} at clock rate {clock_rate}"));
            continue;
        }
        if let Some(why) = why_not(&params, camera) {
            desc += &format!(" ({why})");
            h265_seen.push(desc);
            continue;
        }
        h265_seen.push(desc);
        let Some(fit) = profile_fit(params.profile_id, camera) else { continue };
        let highest = params.highest_level();
        let mut exceeds = Vec::new();
        if stream.level_id > highest {
            exceeds.push(format!("level {} above the offered {}", level_name(stream.level_id), level_name(highest)));
        }
        if stream.tier_flag > params.tier_flag {
            exceeds.push("High tier, the offer receives Main tier".to_string());
        }
        let rank = (!exceeds.is_empty(), fit, index);
        if best.as_ref().is_some_and(|(r, _)| *r <= rank) {
            continue;
        }
        let space =
            if params.profile_space == 0 { String::new() } else { format!("profile-space={};", params.profile_space) };
        let answer_fmtp = format!(
            "level-id={};profile-id={};{space}tier-flag={};tx-mode=SRST",
            stream.level_id.min(highest),
            params.profile_id,
            params.tier_flag
        );
        let exceeds_offer = (!exceeds.is_empty())
            .then(|| format!("the camera's {camera_desc} is sent as PT {pt}: {}", exceeds.join(", ")));
        best = Some((rank, Choice { payload_type: pt, offered_fmtp: fmtp.to_string(), answer_fmtp, exceeds_offer }));
    }
    if let Some((_, choice)) = best {
        return Ok(choice);
    }
    Err(if h265_seen.is_empty() {
        let offered = if names.is_empty() { "no codecs".to_string() } else { names.join(", ") };
        format!("the offer has no H.265 (it offers {offered}); the camera sends {camera_desc}")
    } else {
        format!("the camera sends {camera_desc}, but the offer's H.265 is only: {}", h265_seen.join("; "))
    })
}

impl fmt::Display for TxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TxMode::Srst => "SRST",
            TxMode::Mrst => "MRST",
            TxMode::Mrmt => "MRMT",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A camera's SpsInfo with the compatibility flags encoders set: Main
    /// sets Main and Main 10, Main 10 only Main 10.
    fn camera(profile: u8, high_tier: bool, level: u8) -> SpsInfo {
        let flags = match profile {
            1 => 0x6000_0000,
            3 => 0x7000_0000,
            p => 1u32 << (31 - p),
        };
        SpsInfo {
            general_profile_space: 0,
            general_tier_flag: high_tier,
            general_profile_idc: profile,
            general_profile_compatibility_flags: flags,
            general_constraint_indicator_flags: 0x9000_0000_0000,
            general_level_idc: level,
            max_sub_layers: 1,
            temporal_id_nesting: true,
            chroma_format_idc: 1,
            bit_depth_luma: 8,
            bit_depth_chroma: 8,
            width: 1920,
            height: 1080,
            frame_rate: Some((30, 1)),
            max_num_reorder_pics: 0,
        }
    }

    const CHROME_MAIN: &str = "level-id=180;profile-id=1;tier-flag=0;tx-mode=SRST";
    const CHROME_MAIN10: &str = "level-id=180;profile-id=2;tier-flag=0;tx-mode=SRST";

    #[test]
    fn fmtp_defaults_and_values() {
        assert_eq!(parse_fmtp("").unwrap(), H265Fmtp::default());
        let d = H265Fmtp::default();
        assert_eq!((d.profile_space, d.profile_id, d.tier_flag, d.level_id, d.tx_mode), (0, 1, 0, 93, TxMode::Srst));
        let f = parse_fmtp(CHROME_MAIN10).unwrap();
        assert_eq!((f.profile_id, f.level_id, f.highest_level()), (2, 180, 180));
        let f = parse_fmtp(
            " level-id=93 ; max-recv-level-id=153;x-google-start-bitrate=9;TX-MODE=srst; sprop-vps=QAEM,AQ==",
        )
        .unwrap();
        assert_eq!((f.level_id, f.max_recv_level_id, f.highest_level()), (93, Some(153), 153));
        assert_eq!(f.sprop_vps, vec!["QAEM".to_string(), "AQ==".to_string()]);
        assert_eq!(parse_fmtp("tx-mode=MRMT").unwrap().tx_mode, TxMode::Mrmt);
        for bad in ["profile-id=32", "tier-flag=2", "level-id=256", "level-id=x", "profile-space=4", "tx-mode=SSM"] {
            assert!(parse_fmtp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn main_camera_takes_the_main_payload_type_with_its_own_level() {
        let offer = [(96, "VP8", 90_000, ""), (49, "H265", 90_000, CHROME_MAIN), (51, "H265", 90_000, CHROME_MAIN10)];
        let choice = choose(&offer, &camera(1, false, 123)).unwrap();
        assert_eq!(choice.payload_type, 49);
        assert_eq!(choice.offered_fmtp, CHROME_MAIN);
        assert_eq!(choice.answer_fmtp, "level-id=123;profile-id=1;tier-flag=0;tx-mode=SRST");
        assert_eq!(choice.exceeds_offer, None);
        // Order in the m= line does not beat the exact profile.
        let reversed = [offer[2], offer[1]];
        assert_eq!(choose(&reversed, &camera(1, false, 123)).unwrap().payload_type, 49);
    }

    #[test]
    fn main10_decoders_play_main_but_not_the_reverse() {
        let main10_only = [(51, "H265", 90_000, CHROME_MAIN10)];
        let choice = choose(&main10_only, &camera(1, false, 93)).unwrap();
        assert_eq!(choice.payload_type, 51);
        // profile-id is a symmetric configuration parameter: the answer
        // keeps the offered one.
        assert_eq!(choice.answer_fmtp, "level-id=93;profile-id=2;tier-flag=0;tx-mode=SRST");
        let main_only = [(96, "H264", 90_000, "profile-level-id=42e01f"), (49, "H265", 90_000, CHROME_MAIN)];
        let err = choose(&main_only, &camera(2, false, 123)).unwrap_err();
        assert_eq!(
            err,
            "the camera sends H.265 Main 10, tier Main, level 4.1 (level-id=123), but the offer's H.265 is only: \
             PT 49 Main, tier Main, level 6 (level-id=180) (a Main decoder cannot play Main 10)"
        );
        // Main 10 camera with the Main 10 payload type present.
        let chrome = [(49, "H265", 90_000, CHROME_MAIN), (51, "H265", 90_000, CHROME_MAIN10)];
        assert_eq!(choose(&chrome, &camera(2, false, 123)).unwrap().payload_type, 51);
        // Main Still Picture plays on Main.
        assert_eq!(choose(&chrome, &camera(3, false, 93)).unwrap().payload_type, 49);
    }

    #[test]
    fn level_above_the_offer_is_capped_in_the_answer_and_flagged() {
        // Safari's H265 line has no fmtp: RFC defaults, level 3.1.
        let safari_like = [(98, "H264", 90_000, "profile-level-id=640c1f"), (104, "H265", 90_000, "")];
        let choice = choose(&safari_like, &camera(1, false, 123)).unwrap();
        assert_eq!(choice.payload_type, 104);
        assert_eq!(choice.answer_fmtp, "level-id=93;profile-id=1;tier-flag=0;tx-mode=SRST");
        assert_eq!(
            choice.exceeds_offer.as_deref(),
            Some(
                "the camera's H.265 Main, tier Main, level 4.1 (level-id=123) is sent as PT 104: \
                 level 4.1 above the offered 3.1"
            )
        );
        // max-recv-level-id raises the highest level offered.
        let offer = [(104, "H265", 90_000, "level-id=93;max-recv-level-id=153")];
        let choice = choose(&offer, &camera(1, false, 123)).unwrap();
        assert_eq!(
            (choice.answer_fmtp.as_str(), choice.exceeds_offer),
            ("level-id=123;profile-id=1;tier-flag=0;tx-mode=SRST", None)
        );
        // A payload type that covers the level wins over an earlier one that does not.
        let two = [(100, "H265", 90_000, "level-id=93"), (102, "H265", 90_000, "level-id=156")];
        assert_eq!(choose(&two, &camera(1, false, 153)).unwrap().payload_type, 102);
    }

    #[test]
    fn high_tier_camera_on_main_tier_offer_is_flagged() {
        let offer = [(49, "H265", 90_000, CHROME_MAIN)];
        let choice = choose(&offer, &camera(1, true, 153)).unwrap();
        assert_eq!(choice.answer_fmtp, "level-id=153;profile-id=1;tier-flag=0;tx-mode=SRST");
        assert!(choice.exceeds_offer.unwrap().ends_with("High tier, the offer receives Main tier"));
        let high = [(49, "H265", 90_000, "level-id=153;profile-id=1;tier-flag=1")];
        let choice = choose(&high, &camera(1, true, 153)).unwrap();
        assert_eq!(
            (choice.answer_fmtp.as_str(), choice.exceeds_offer),
            ("level-id=153;profile-id=1;tier-flag=1;tx-mode=SRST", None)
        );
    }

    #[test]
    fn nothing_fits_says_why() {
        let err = choose(
            &[(96, "VP8", 90_000, ""), (97, "rtx", 90_000, "apt=96"), (98, "VP8", 90_000, "")],
            &camera(1, false, 93),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "the offer has no H.265 (it offers VP8); the camera sends H.265 Main, tier Main, level 3.1 (level-id=93)"
        );
        assert!(choose(&[], &camera(1, false, 93)).unwrap_err().contains("it offers no codecs"));
        let odd = [
            (49, "H265", 90_000, "tx-mode=MRST"),
            (50, "H265", 90_000, "profile-id=99"),
            (51, "H265", 48_000, ""),
            (52, "h265", 90_000, "profile-space=1"),
        ];
        let err = choose(&odd, &camera(1, false, 93)).unwrap_err();
        assert!(err.contains("PT 49 Main, tier Main, level 3.1 (level-id=93) (tx-mode is not SRST)"), "{err}");
        assert!(err.contains("PT 50 (unreadable fmtp: bad profile-id=\"99\")"), "{err}");
        assert!(err.contains("at clock rate 48000"), "{err}");
        assert!(
            err.contains("PT 52 Main (profile-space 1), tier Main, level 3.1 (level-id=93) (profile-space 1)"),
            "{err}"
        );
    }
}
