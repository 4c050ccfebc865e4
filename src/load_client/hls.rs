//! HLS clients for the load client (`load-client -hls N`): each behaves
//! like an LL-HLS player at the live edge: it reads the playlist, then
//! asks for the next part with a blocking reload (`_HLS_msn`/`_HLS_part`)
//! and fetches every new part (and each new init segment), without
//! decoding. It reports parts, bytes, errors, parts it missed, and the
//! delay from a part's capture (its segment's program date time plus the
//! parts before it) to the part fully received: the wall clocks of server
//! and client must agree (the same machine, or NTP).
//!
//! Blocking HTTP (ureq) on one thread per client: a client is a loop of
//! requests, each waiting for the last.
//!
//! The playlist reader ([`MediaPlaylist::parse`]) reads only the tags a
//! live LL-HLS client needs. `m3u8-rs` (6.0) has no LL-HLS tags
//! (`EXT-X-PART`, `EXT-X-PRELOAD-HINT`, `EXT-X-SKIP`, `EXT-X-SERVER-CONTROL`
//! would be unknown tags whose attributes we would parse ourselves anyway).

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::percentile;

/// A part as the playlist lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaylistPart {
    pub uri: String,
    pub duration: f64,
    pub independent: bool,
}

/// A segment as the playlist lists it: complete (with a URI) or the one
/// being made (parts only).
#[derive(Clone, Debug, PartialEq)]
pub struct PlaylistSegment {
    pub msn: u64,
    /// `None` for the segment still being made.
    pub uri: Option<String>,
    pub duration: f64,
    pub parts: Vec<PlaylistPart>,
    pub program_date_time: Option<SystemTime>,
    pub discontinuity: bool,
    /// The `EXT-X-MAP` URI in force for it.
    pub map: Option<String>,
}

/// A media playlist, as far as a live LL-HLS client reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaPlaylist {
    pub version: u32,
    pub target_duration: u64,
    pub media_sequence: u64,
    pub discontinuity_sequence: u64,
    pub part_target: Option<f64>,
    pub can_block_reload: bool,
    pub can_skip_until: Option<f64>,
    pub part_hold_back: Option<f64>,
    /// `EXT-X-SKIP:SKIPPED-SEGMENTS` of a delta update.
    pub skipped_segments: u64,
    pub segments: Vec<PlaylistSegment>,
    /// `EXT-X-PRELOAD-HINT:TYPE=PART` URI.
    pub preload_hint: Option<String>,
}

/// The value of `NAME=` in a tag's attribute list (quotes removed).
pub fn attribute<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = list;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], quoted[end + 1..].strip_prefix(',').unwrap_or(""))
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        if key.trim() == name {
            return Some(value);
        }
        rest = next;
    }
    None
}

impl MediaPlaylist {
    /// Parses the text; `Err` says what is wrong with it.
    pub fn parse(text: &str) -> Result<MediaPlaylist, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some("#EXTM3U") {
            return Err("no #EXTM3U first".into());
        }
        let mut playlist = MediaPlaylist::default();
        let mut map = None;
        let mut pending = PlaylistSegment {
            msn: 0,
            uri: None,
            duration: 0.0,
            parts: Vec::new(),
            program_date_time: None,
            discontinuity: false,
            map: None,
        };
        let mut extinf = None;
        let number = |v: &str| v.parse::<f64>().map_err(|_| format!("bad number {v:?}"));
        for line in lines {
            let (tag, value) = line.split_once(':').unwrap_or((line, ""));
            match tag {
                "#EXT-X-VERSION" => playlist.version = value.parse().map_err(|_| "bad version")?,
                "#EXT-X-TARGETDURATION" => {
                    playlist.target_duration = value.parse().map_err(|_| "bad target duration")?
                }
                "#EXT-X-MEDIA-SEQUENCE" => playlist.media_sequence = value.parse().map_err(|_| "bad media sequence")?,
                "#EXT-X-DISCONTINUITY-SEQUENCE" => {
                    playlist.discontinuity_sequence = value.parse().map_err(|_| "bad discontinuity sequence")?
                }
                "#EXT-X-PART-INF" => playlist.part_target = attribute(value, "PART-TARGET").map(number).transpose()?,
                "#EXT-X-SERVER-CONTROL" => {
                    playlist.can_block_reload = attribute(value, "CAN-BLOCK-RELOAD") == Some("YES");
                    playlist.can_skip_until = attribute(value, "CAN-SKIP-UNTIL").map(number).transpose()?;
                    playlist.part_hold_back = attribute(value, "PART-HOLD-BACK").map(number).transpose()?;
                }
                "#EXT-X-SKIP" => {
                    playlist.skipped_segments = attribute(value, "SKIPPED-SEGMENTS")
                        .ok_or("EXT-X-SKIP without SKIPPED-SEGMENTS")?
                        .parse()
                        .map_err(|_| "bad SKIPPED-SEGMENTS")?
                }
                "#EXT-X-MAP" => map = Some(attribute(value, "URI").ok_or("EXT-X-MAP without URI")?.to_string()),
                "#EXT-X-DISCONTINUITY" => pending.discontinuity = true,
                "#EXT-X-PROGRAM-DATE-TIME" => {
                    let parsed = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| format!("bad program date time {value:?}: {e}"))?;
                    pending.program_date_time = Some(parsed.into());
                }
                "#EXT-X-PART" => pending.parts.push(PlaylistPart {
                    uri: attribute(value, "URI").ok_or("EXT-X-PART without URI")?.to_string(),
                    duration: number(attribute(value, "DURATION").ok_or("EXT-X-PART without DURATION")?)?,
                    independent: attribute(value, "INDEPENDENT") == Some("YES"),
                }),
                "#EXTINF" => extinf = Some(number(value.split(',').next().unwrap_or(""))?),
                "#EXT-X-PRELOAD-HINT" if attribute(value, "TYPE") == Some("PART") => {
                    playlist.preload_hint = attribute(value, "URI").map(str::to_string);
                }
                _ if !line.starts_with('#') => {
                    let duration = extinf.take().ok_or_else(|| format!("URI {line:?} without EXTINF"))?;
                    let msn = playlist.media_sequence + playlist.skipped_segments + playlist.segments.len() as u64;
                    let mut segment = std::mem::replace(
                        &mut pending,
                        PlaylistSegment {
                            msn: 0,
                            uri: None,
                            duration: 0.0,
                            parts: Vec::new(),
                            program_date_time: None,
                            discontinuity: false,
                            map: None,
                        },
                    );
                    segment.msn = msn;
                    segment.uri = Some(line.to_string());
                    segment.duration = duration;
                    segment.map.clone_from(&map);
                    playlist.segments.push(segment);
                }
                _ => {}
            }
        }
        if !pending.parts.is_empty() {
            pending.msn = playlist.media_sequence + playlist.skipped_segments + playlist.segments.len() as u64;
            pending.duration = pending.parts.iter().map(|p| p.duration).sum();
            pending.map = map;
            playlist.segments.push(pending);
        }
        if playlist.target_duration == 0 {
            return Err("no EXT-X-TARGETDURATION".into());
        }
        Ok(playlist)
    }
}

/// `part-MSN-INDEX.m4s` (the server's part URIs) as numbers.
pub fn part_position(uri: &str) -> Option<(u64, u32)> {
    let name = uri.split('?').next()?.rsplit('/').next()?;
    let (msn, index) = name.strip_prefix("part-")?.strip_suffix(".m4s")?.split_once('-')?;
    Some((msn.parse().ok()?, index.parse().ok()?))
}

/// One HLS client's figures, as printed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HlsClientReport {
    pub client: usize,
    pub error: Option<String>,
    pub playlists: u64,
    pub parts: u64,
    pub bytes: u64,
    pub inits: u64,
    /// Requests answered with an error status (or not at all).
    pub errors: u64,
    /// Times the next part this client wanted was no longer listed (it
    /// fell behind the window): each is a skip in what it would play.
    pub parts_missed: u64,
    /// Capture of a part's first frame to the part fully received.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

/// Where the playlist is (`.../index.m3u8`) and how to ask.
#[derive(Clone, Debug)]
pub struct HlsClientOptions {
    pub playlist_url: String,
    pub duration: Duration,
    pub token: Option<String>,
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token_query: String,
    report: HlsClientReport,
}

impl Client {
    /// GETs `url`; the body, or `None` (counted) for an error status.
    fn get(&mut self, url: &str) -> Option<Vec<u8>> {
        let url = if self.token_query.is_empty() {
            url.to_string()
        } else if url.contains('?') {
            format!("{url}&{}", &self.token_query[1..])
        } else {
            format!("{url}{}", self.token_query)
        };
        let result = self.agent.get(&url).call();
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                self.report.errors += 1;
                self.report.error.get_or_insert_with(|| format!("GET {url}: {e}"));
                return None;
            }
        };
        let mut body = Vec::new();
        if let Err(e) = response.into_reader().take(64 << 20).read_to_end(&mut body) {
            self.report.errors += 1;
            self.report.error.get_or_insert_with(|| format!("GET {url}: {e}"));
            return None;
        }
        Some(body)
    }

    fn playlist(&mut self, query: &str) -> Option<MediaPlaylist> {
        let url = format!("{}index.m3u8{query}", self.base);
        let body = self.get(&url)?;
        self.report.playlists += 1;
        match MediaPlaylist::parse(&String::from_utf8_lossy(&body)) {
            Ok(playlist) => Some(playlist),
            Err(e) => {
                self.report.errors += 1;
                self.report.error.get_or_insert(format!("bad playlist: {e}"));
                None
            }
        }
    }
}

/// Runs one client until `options.duration` has passed.
pub fn run_client(client: usize, options: &HlsClientOptions) -> HlsClientReport {
    let base = options.playlist_url.rsplit_once('/').map_or(String::new(), |(b, _)| format!("{b}/"));
    let token_query = options
        .token
        .as_ref()
        .map(|t| format!("?token={}", percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC)))
        .unwrap_or_default();
    let mut c = Client {
        agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(15)).build(),
        base,
        token_query,
        report: HlsClientReport { client, ..HlsClientReport::default() },
    };
    let deadline = Instant::now() + options.duration;
    let mut map = None;
    // The next part to fetch, once the first is chosen.
    let mut next: Option<(u64, u32)> = None;
    let mut query = String::new();
    while Instant::now() < deadline {
        let Some(playlist) = c.playlist(&query) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        // Start at the newest independent part, as a player at the live edge.
        if next.is_none() {
            next = playlist
                .segments
                .iter()
                .flat_map(|s| s.parts.iter().filter(|p| p.independent))
                .filter_map(|p| part_position(&p.uri))
                .next_back();
        }
        for segment in &playlist.segments {
            let mut offset = 0.0;
            for part in &segment.parts {
                let Some(position) = part_position(&part.uri) else { continue };
                let start = offset;
                offset += part.duration;
                match next {
                    Some(wanted) if position < wanted => continue,
                    Some(wanted) if position > wanted => {
                        // Listed parts before this one were never fetched.
                        c.report.parts_missed += 1;
                    }
                    _ => {}
                }
                if segment.map != map {
                    if let Some(uri) = &segment.map {
                        if c.get(&format!("{}{}", c.base, uri.split('?').next().unwrap_or(uri))).is_some() {
                            c.report.inits += 1;
                        }
                    }
                    map.clone_from(&segment.map);
                }
                let uri = part.uri.split('?').next().unwrap_or(&part.uri).to_string();
                if let Some(body) = c.get(&format!("{}{uri}", c.base)) {
                    c.report.parts += 1;
                    c.report.bytes += body.len() as u64;
                    if let Some(pdt) = segment.program_date_time {
                        let captured = pdt + Duration::from_secs_f64(start);
                        if let Ok(age) = SystemTime::now().duration_since(captured) {
                            c.report.latencies_ms.push(age.as_secs_f64() * 1e3);
                        }
                    }
                }
                next = Some((position.0, position.1 + 1));
            }
            // A complete segment's next part is the next segment's first.
            if segment.uri.is_some() && next.is_some_and(|(msn, _)| msn == segment.msn) {
                next = Some((segment.msn + 1, 0));
            }
        }
        // Wait for what the preload hint names (the next part).
        query = match playlist.preload_hint.as_deref().and_then(part_position) {
            Some((msn, part)) => format!("?_HLS_msn={msn}&_HLS_part={part}"),
            None => String::new(),
        };
    }
    let mut report = c.report;
    report.latencies_ms.sort_by(f64::total_cmp);
    report.latency_p50_ms = percentile(&report.latencies_ms, 0.5);
    report.latency_p99_ms = percentile(&report.latencies_ms, 0.99);
    report
}

/// Totals over all HLS clients.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HlsReport {
    pub clients: usize,
    /// Clients that fetched at least one part.
    pub receiving: usize,
    pub parts: u64,
    pub bytes: u64,
    pub errors: u64,
    pub parts_missed: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub per_client: Vec<HlsClientReport>,
}

impl HlsReport {
    pub fn from_clients(per_client: Vec<HlsClientReport>) -> HlsReport {
        let mut latencies: Vec<f64> = per_client.iter().flat_map(|c| c.latencies_ms.iter().copied()).collect();
        latencies.sort_by(f64::total_cmp);
        HlsReport {
            clients: per_client.len(),
            receiving: per_client.iter().filter(|c| c.parts > 0).count(),
            parts: per_client.iter().map(|c| c.parts).sum(),
            bytes: per_client.iter().map(|c| c.bytes).sum(),
            errors: per_client.iter().map(|c| c.errors).sum(),
            parts_missed: per_client.iter().map(|c| c.parts_missed).sum(),
            latency_p50_ms: percentile(&latencies, 0.5),
            latency_p99_ms: percentile(&latencies, 0.99),
            per_client,
        }
    }
}

/// Runs `clients` HLS clients, one thread each, joined `stagger` apart.
pub fn run(clients: usize, stagger: Duration, options: &HlsClientOptions) -> HlsReport {
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let options = options.clone();
            let thread = std::thread::Builder::new()
                .name(format!("hls-client-{client}"))
                .spawn(move || run_client(client, &options));
            std::thread::sleep(stagger);
            thread
        })
        .collect();
    let per_client = threads
        .into_iter()
        .enumerate()
        .map(|(client, thread)| {
            thread
                .map_err(|e| e.to_string())
                .and_then(|t| t.join().map_err(|_| "client thread panicked".into()))
                .unwrap_or_else(|error| HlsClientReport { client, error: Some(error), ..Default::default() })
        })
        .collect();
    HlsReport::from_clients(per_client)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LL: &str = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:1\n\
        #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6.0,PART-HOLD-BACK=0.60000\n\
        #EXT-X-PART-INF:PART-TARGET=0.20000\n#EXT-X-MEDIA-SEQUENCE:10\n#EXT-X-DISCONTINUITY-SEQUENCE:0\n\
        #EXT-X-SKIP:SKIPPED-SEGMENTS=2\n#EXT-X-MAP:URI=\"init-3.mp4?token=a\"\n\
        #EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.100Z\n\
        #EXT-X-PART:DURATION=0.20000,URI=\"part-12-0.m4s\",INDEPENDENT=YES\n\
        #EXT-X-PART:DURATION=0.80000,URI=\"part-12-1.m4s\"\n#EXTINF:1.00000,\nseg-12.m4s\n\
        #EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:21.100Z\n\
        #EXT-X-PART:DURATION=0.20000,URI=\"part-13-0.m4s\",INDEPENDENT=YES\n\
        #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-13-1.m4s\"\n";

    #[test]
    fn reads_an_ll_hls_delta_playlist() {
        let p = MediaPlaylist::parse(LL).unwrap();
        assert_eq!((p.version, p.target_duration, p.media_sequence, p.skipped_segments), (9, 1, 10, 2));
        assert!(p.can_block_reload);
        assert_eq!((p.can_skip_until, p.part_hold_back, p.part_target), (Some(6.0), Some(0.6), Some(0.2)));
        assert_eq!(p.segments.len(), 2);
        assert_eq!(p.segments[0].msn, 12);
        assert_eq!(p.segments[0].uri.as_deref(), Some("seg-12.m4s"));
        assert_eq!(p.segments[0].map.as_deref(), Some("init-3.mp4?token=a"));
        assert_eq!(p.segments[0].parts.len(), 2);
        assert!(p.segments[0].parts[0].independent && !p.segments[0].parts[1].independent);
        assert_eq!(p.segments[1].msn, 13);
        assert_eq!(p.segments[1].uri, None);
        assert!(p.segments[1].discontinuity);
        let pdt = p.segments[1].program_date_time.unwrap();
        assert_eq!(pdt.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis(), 1_700_000_001_100);
        assert_eq!(p.preload_hint.as_deref(), Some("part-13-1.m4s"));
        assert_eq!(part_position("part-13-1.m4s?token=x"), Some((13, 1)));
        assert!(MediaPlaylist::parse("#EXTM3U\nseg-1.m4s\n").is_err());
        assert!(MediaPlaylist::parse("nothing").is_err());
    }

    #[test]
    fn attributes_with_and_without_quotes() {
        let list = "TYPE=PART,URI=\"a,b=c\",DURATION=0.2";
        assert_eq!(attribute(list, "URI"), Some("a,b=c"));
        assert_eq!(attribute(list, "DURATION"), Some("0.2"));
        assert_eq!(attribute(list, "TYPE"), Some("PART"));
        assert_eq!(attribute(list, "X"), None);
    }
}
