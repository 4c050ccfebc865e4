//! Recordings over HTTP, end to end: the real binary recording two fake
//! cameras (an H.264 and an H.265 ring playing the demo clips), then
//! `GET /recordings`, each file raw (ranges, validators, HEAD) byte for
//! byte against the file on disk, its MP4 read by ffprobe and decoded by
//! ffmpeg frame for frame like the raw file, name checks that read
//! nothing, and DELETE with the token rules.

mod common;
mod control_support;
mod mp4_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{fake_camera, unique_shm, Proc, Server};
use control_support::*;
use serde_json::Value;
use streaming_server::codec::Codec;

struct Rig {
    server: Server,
    /// Headers for reading: the bearer token when the server has one.
    auth: Vec<(&'static str, &'static str)>,
    _cameras: Vec<Proc>,
    /// `-record-path`: `cam` records here, `garage` into `garage/`.
    records: PathBuf,
    _dir: tempfile::TempDir,
}

fn demo(codec: Codec) -> PathBuf {
    mp4_support::demo(codec)
}

/// A server with `cam` (H.264 ring) and `garage` (H.265 ring), both
/// playing the demo clips at 30 fps, ready.
fn rig(extra: &[&str]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let (cam, garage) = (unique_shm("rec_cam"), unique_shm("rec_garage"));
    let cameras = vec![
        fake_camera(&cam, &["-fps", "30", "-file", demo(Codec::H264).to_str().unwrap()]),
        fake_camera(&garage, &["-fps", "30", "-file", demo(Codec::H265).to_str().unwrap()]),
    ];
    let config = dir.path().join("streams.yml");
    std::fs::write(&config, format!("paths:\n  cam:\n    source: shm:{cam}\n  garage:\n    source: shm:{garage}\n"))
        .unwrap();
    let records = dir.path().join("rec");
    let mut args = vec!["-config", config.to_str().unwrap(), "-http", "127.0.0.1:0", "-metrics", "", "-pprof", ""];
    args.extend(["-record-path", records.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let server = Server::start(&args, &["http"]);
    for name in ["cam", "garage"] {
        wait_until(Duration::from_secs(20), || {
            let paths = get(&server.url("http", "/paths")).json();
            paths["paths"].as_array()?.iter().find(|p| p["name"] == name && p["state"] == "ready").map(|_| ())
        })
        .unwrap_or_else(|| panic!("{name} never ready:\n{}", server.proc.log()));
    }
    Rig { server, auth: Vec::new(), _cameras: cameras, records, _dir: dir }
}

impl Rig {
    fn url(&self, path: &str) -> String {
        self.server.url("http", path)
    }

    fn start(&self, path: &str) -> String {
        let started = post(&self.url(&format!("/{path}/start")), b"");
        assert_eq!(started.status, 200, "{}", started.text());
        started.json()["status"]["filename"].as_str().unwrap().to_string()
    }

    fn stop(&self, path: &str) -> String {
        let stopped = post(&self.url(&format!("/{path}/stop")), b"");
        assert_eq!(stopped.status, 200, "{}", stopped.text());
        stopped.json()["status"]["filename"].as_str().unwrap().to_string()
    }

    /// Where a path's file is on disk.
    fn file(&self, path: &str, name: &str) -> PathBuf {
        if path == "cam" {
            self.records.join(name)
        } else {
            self.records.join(path).join(name)
        }
    }

    fn list(&self) -> Vec<Value> {
        let answer = call("GET", &self.url("/recordings"), &self.auth, None);
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["recordings"].as_array().unwrap().clone()
    }

    fn entry(&self, id: &str) -> Value {
        self.list().into_iter().find(|e| e["file"] == id).unwrap_or_else(|| panic!("{id} not listed"))
    }
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    call("GET", url, headers, None)
}

/// Range requests, validators and HEAD on `url`, whose whole body is `whole`.
fn check_ranges_and_validators(url: &str, whole: &[u8], content_type: &str) -> String {
    let n = whole.len();
    let full = get(url);
    assert_eq!(full.status, 200);
    assert!(full.body == whole, "{url}: the whole body differs ({} vs {n} bytes)", full.body.len());
    assert_eq!(full.header("content-type"), Some(content_type));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    let etag = full.header("etag").expect("an ETag").to_string();

    let middle = n / 2;
    let cases = [
        ("bytes=0-99".to_string(), 0, 99),
        (format!("bytes={middle}-{}", middle + 999), middle, middle + 999),
        (format!("bytes={}-{}", n - 100, n - 1), n - 100, n - 1),
        (format!("bytes={}-", n - 10), n - 10, n - 1),
        (format!("bytes={}-{}", n - 5, n + 1000), n - 5, n - 1),
        ("bytes=-500".to_string(), n - 500, n - 1),
    ];
    for (range, first, last) in cases {
        let part = get_with(url, &[("Range", &range)]);
        assert_eq!(part.status, 206, "{range}: {}", part.text());
        assert_eq!(part.header("content-range"), Some(format!("bytes {first}-{last}/{n}").as_str()), "{range}");
        assert!(part.body == whole[first..=last], "{url} {range}: bytes differ");
        assert_eq!(part.header("etag"), Some(etag.as_str()));
    }
    let past = get_with(url, &[("Range", &format!("bytes={n}-"))]);
    past.assert_json_error(416);
    assert_eq!(past.header("content-range"), Some(format!("bytes */{n}").as_str()));

    let unchanged = get_with(url, &[("If-None-Match", &etag)]);
    assert_eq!(unchanged.status, 304);
    assert!(unchanged.body.is_empty());
    assert_eq!(get_with(url, &[("If-None-Match", "\"something-else\"")]).status, 200);
    // An If-Range naming another version gets the whole, current body.
    let stale = get_with(url, &[("Range", "bytes=0-9"), ("If-Range", "\"old\"")]);
    assert_eq!((stale.status, stale.body.len()), (200, n));

    let head = call("HEAD", url, &[], None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some(n.to_string().as_str()));
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    etag
}

#[test]
fn recordings_are_listed_served_byte_exact_with_ranges_and_as_mp4s_that_decode_like_the_files() {
    if !have_tool("ffprobe") || !have_tool("ffmpeg") {
        return;
    }
    let rig = rig(&[]);
    let before = SystemTime::now();
    let names: Vec<(String, Codec)> =
        [("cam", Codec::H264), ("garage", Codec::H265)].iter().map(|&(p, c)| (rig.start(p), c)).collect();
    std::thread::sleep(Duration::from_millis(3000));
    for path in ["cam", "garage"] {
        rig.stop(path);
    }
    let after = SystemTime::now();
    let tmp = tempfile::tempdir().unwrap();
    for ((name, codec), path) in names.iter().zip(["cam", "garage"]) {
        let id = format!("{path}/{name}");
        let file = rig.file(path, name);
        let bytes = std::fs::read(&file).unwrap();
        let frames = codec.split_access_units(&bytes).len();
        assert!(frames >= 60, "{id}: {frames} frames");

        // The list: what the file is, when and how long.
        let entry = rig.entry(&id);
        eprintln!("{entry}");
        assert_eq!(entry["path"], path);
        assert_eq!(entry["codec"], codec.name());
        assert_eq!(entry["size"].as_u64(), Some(bytes.len() as u64));
        assert_eq!(entry["frames"].as_u64(), Some(frames as u64), "one capture time per frame");
        assert_eq!((entry["writing"].as_bool(), entry["timing"].as_str()), (Some(false), Some("capture")));
        assert_eq!((entry["recording"].as_str(), entry["segment"].as_u64()), (Some(id.as_str()), Some(1)));
        let start = chrono_free_parse(entry["start"].as_str().unwrap());
        // The pre-roll from the GOP cache starts up to a GOP (1 s) early.
        assert!(start + Duration::from_secs(3) >= before && start <= after, "start {} out of range", entry["start"]);
        let duration = entry["duration"].as_f64().unwrap();
        assert!(duration > 0.0, "{entry}");

        // Raw: the file as it is on disk.
        let url = rig.url(&format!("/recordings/{id}"));
        let raw_etag = check_ranges_and_validators(&url, &bytes, "application/octet-stream");

        // MP4: ffprobe reads every frame, ffmpeg decodes them like the raw file's.
        let mp4_url = format!("{url}?format=mp4");
        let mp4 = get(&mp4_url);
        assert_eq!(mp4.status, 200, "{}", mp4.text());
        assert_eq!(mp4.header("x-timing"), Some("capture"));
        let mp4_etag = check_ranges_and_validators(&mp4_url, &mp4.body, "video/mp4");
        assert_ne!(mp4_etag, raw_etag);
        let out = tmp.path().join(format!("{path}.mp4"));
        std::fs::write(&out, &mp4.body).unwrap();
        let info = mp4_support::probe(&out);
        eprintln!("{id} as MP4: {info:?}");
        let (ff_name, tag) = if *codec == Codec::H264 { ("h264", "avc1") } else { ("hevc", "hvc1") };
        assert_eq!((info["codec_name"].as_str(), info["codec_tag_string"].as_str()), (ff_name, tag));
        assert_eq!(info["nb_read_frames"], frames.to_string());
        assert_eq!(info["nb_frames"], frames.to_string());
        let mp4_duration: f64 = info["format_duration"].parse().unwrap();
        assert!((mp4_duration - duration).abs() < 0.01, "MP4 {mp4_duration} s, list {duration} s");
        let errors = mp4_support::decode_errors(&out);
        assert!(errors.is_empty(), "{id}: ffmpeg: {errors}");
        let format = if *codec == Codec::H264 { "h264" } else { "hevc" };
        let raw_frames = mp4_support::frame_hashes(&file, &["-f", format]);
        assert_eq!(raw_frames.len(), frames);
        assert_eq!(mp4_support::frame_hashes(&out, &[]), raw_frames, "{id}: the MP4 decodes to other pictures");
    }
}

/// Seconds since the epoch of an RFC 3339 time with milliseconds and an
/// offset (`2025-12-26T22:30:31.042+01:00` or `...Z`), without a date crate.
fn chrono_free_parse(text: &str) -> SystemTime {
    let field = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
    let (year, month, day) = (field(0..4), field(5..7), field(8..10));
    let (hour, minute, second, millis) = (field(11..13), field(14..16), field(17..19), field(20..23));
    let offset = match &text[23..] {
        "Z" => 0,
        zone => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (zone[1..3].parse::<i64>().unwrap() * 3600 + zone[4..6].parse::<i64>().unwrap() * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    SystemTime::UNIX_EPOCH + Duration::from_millis((secs * 1000 + millis) as u64)
}

/// A FIFO at `path`; a thread blocks opening it for writing until someone
/// opens it for reading. Returns whether that happened by the time the
/// returned closure is called (which then unblocks the thread).
fn fifo_tripwire(path: &Path) -> impl FnOnce() -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo {}", path.display());
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = opened.clone();
    let writer_path = path.to_path_buf();
    let thread = std::thread::spawn(move || {
        // Blocks until a reader opens the FIFO.
        let _writer = std::fs::OpenOptions::new().write(true).open(&writer_path).unwrap();
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let path = path.to_path_buf();
    move || {
        let tripped = opened.load(std::sync::atomic::Ordering::SeqCst);
        // Release a writer still waiting: open for reading ourselves
        // (without blocking: a writer already gone would never come).
        use std::os::unix::fs::OpenOptionsExt;
        let _reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).unwrap();
        thread.join().unwrap();
        tripped
    }
}

#[test]
fn names_that_leave_the_recording_directory_get_400_or_404_and_read_nothing() {
    let rig = rig(&[]);
    let name = rig.start("cam");
    std::thread::sleep(Duration::from_millis(1200));
    rig.stop("cam");
    // Beside the recording: a symlink with a recording's name to a FIFO
    // outside (opening it would trip the wire), a FIFO and a directory
    // with recording names, and a secret one level up.
    let secret = rig.records.parent().unwrap().join("secret.h264");
    std::fs::write(&secret, b"SECRET").unwrap();
    let outside = rig.records.parent().unwrap().join("outside-fifo");
    let outside_wire = fifo_tripwire(&outside);
    let link = "recording_20250101_000000.h264";
    std::os::unix::fs::symlink(&outside, rig.records.join(link)).unwrap();
    let inside_wire = fifo_tripwire(&rig.records.join("recording_20250101_000001.h264"));
    std::fs::create_dir(rig.records.join("recording_20250101_000002.h264")).unwrap();

    let addr = rig.server.addrs["http"];
    let cases: Vec<(String, u16)> = vec![
        ("/recordings/../secret.h264".into(), 400),
        ("/recordings/../../etc/passwd".into(), 400),
        ("/recordings/cam/../secret.h264".into(), 400),
        ("/recordings/cam/../../secret.h264".into(), 400),
        ("/recordings/%2e%2e/secret.h264".into(), 400),
        ("/recordings/%2e%2e%2fsecret.h264".into(), 400),
        ("/recordings/cam%2f..%2f..%2fsecret.h264".into(), 400),
        ("/recordings/cam/%2e%2e%2f%2e%2e%2fsecret.h264".into(), 400),
        ("/recordings//etc/passwd".into(), 400),
        ("/recordings/%2Fetc%2Fpasswd".into(), 400),
        ("/recordings/cam//etc/passwd".into(), 400),
        ("/recordings/cam/.recording_20250101_000000.h264.times".into(), 400),
        ("/recordings/cam/recording_x.h264".into(), 400),
        ("/recordings/nosuchpath/recording_20250101_000000.h264".into(), 404),
        (format!("/recordings/cam/{link}"), 404),
        (format!("/recordings/{link}"), 404),
        (format!("/recordings/cam/{link}?format=mp4"), 404),
        ("/recordings/cam/recording_20250101_000001.h264".into(), 404),
        ("/recordings/cam/recording_20250101_000001.h264?format=mp4".into(), 404),
        ("/recordings/cam/recording_20250101_000002.h264".into(), 404),
        ("/recordings/cam/recording_20250101_000003.h264".into(), 404),
    ];
    for (target, status) in &cases {
        for method in ["GET", "HEAD"] {
            let request = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let (got, text) = raw(addr, request.as_bytes(), Duration::from_secs(5));
            assert_eq!(got, *status, "{method} {target}: {text}");
            assert!(!text.contains("SECRET"), "{method} {target}: {text}");
            if method == "GET" {
                let body = text.split_once("\r\n\r\n").unwrap().1;
                let json: Value =
                    serde_json::from_str(body).unwrap_or_else(|e| panic!("{target}: not JSON ({e}): {text}"));
                assert_eq!(json["success"], false, "{target}");
            }
        }
    }
    // DELETE of the symlink: 404, and the link and its target stay.
    let deleted = call("DELETE", &rig.url(&format!("/recordings/cam/{link}")), &[], None);
    deleted.assert_json_error(404);
    assert!(rig.records.join(link).symlink_metadata().is_ok() && outside.exists());
    // Only the real recording is listed.
    let files: Vec<String> = rig.list().iter().map(|e| e["file"].as_str().unwrap().to_string()).collect();
    assert_eq!(files, [format!("cam/{name}")]);
    assert!(!outside_wire(), "the server opened the FIFO a planted symlink points to");
    assert!(!inside_wire(), "the server opened a FIFO named like a recording");
}

#[test]
fn delete_needs_the_token_and_never_takes_the_file_being_written() {
    if !have_tool("ffprobe") {
        return;
    }
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let mut rig = rig(&["-auth-token-file", token_file.to_str().unwrap()]);
    let auth = [("Authorization", "Bearer s3cret")];
    rig.auth = auth.to_vec();
    let start = |path: &str| {
        let answer = call("POST", &rig.url(&format!("/{path}/start")), &auth, Some(b""));
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["status"]["filename"].as_str().unwrap().to_string()
    };
    let done = start("cam");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(call("POST", &rig.url("/cam/stop"), &auth, Some(b"")).status, 200);
    std::thread::sleep(Duration::from_millis(1100)); // a new second: a new name
    let writing = start("cam");
    assert_ne!(done, writing);
    std::thread::sleep(Duration::from_millis(1500));

    let url = |name: &str| rig.url(&format!("/recordings/cam/{name}"));
    // Reading needs the token too: as a header, or in the query (what a
    // <video> element or a download link can send); the page itself is open.
    get(&url(&done)).assert_json_error(401);
    get(&rig.url("/recordings")).assert_json_error(401);
    get(&format!("{}?token=nope", url(&done))).assert_json_error(401);
    assert_eq!(get_with(&url(&done), &auth).status, 200);
    assert_eq!(get(&format!("{}?token=s3cret", url(&done))).status, 200);
    assert_eq!(get(&rig.url("/recordings/")).status, 200, "the page");
    // The file being written is listed as such.
    let entry = rig.entry(&format!("cam/{writing}"));
    assert_eq!(entry["writing"], true, "{entry}");
    assert_eq!(rig.entry(&format!("cam/{done}"))["writing"], false);

    // Its MP4, pinned to the size listed, is a snapshot that plays.
    let size = entry["size"].as_u64().unwrap();
    let snapshot = get_with(&format!("{}?format=mp4&size={size}", url(&writing)), &auth);
    assert_eq!(snapshot.status, 200, "{}", snapshot.text());
    let again = get_with(&format!("{}?format=mp4&size={size}&token=s3cret", url(&writing)), &[("Range", "bytes=100-")]);
    assert_eq!(again.status, 206);
    assert!(again.body == snapshot.body[100..], "the pinned snapshot changed while the file grew");
    let out = token_dir.path().join("snapshot.mp4");
    std::fs::write(&out, &snapshot.body).unwrap();
    assert!(mp4_support::decode_errors(&out).is_empty());
    assert!(mp4_support::probe(&out)["nb_read_frames"].parse::<u64>().unwrap() >= 30);
    get_with(&format!("{}?format=mp4&size={}", url(&writing), size + (1 << 30)), &auth).assert_json_error(400);

    // Without or with a wrong token: 401, nothing deleted.
    call("DELETE", &url(&done), &[], None).assert_json_error(401);
    call("DELETE", &url(&done), &[("Authorization", "Bearer nope")], None).assert_json_error(401);
    assert!(rig.file("cam", &done).exists());
    // The file being written: 409 even with the token.
    call("DELETE", &url(&writing), &auth, None).assert_json_error(409);
    assert!(rig.file("cam", &writing).exists());
    // A finished one goes, with its sidecar.
    let deleted = call("DELETE", &url(&done), &auth, None);
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["deleted"], format!("cam/{done}"));
    assert!(!rig.file("cam", &done).exists());
    assert!(!rig.records.join(format!(".{done}.times")).exists(), "the sidecar stayed");
    get_with(&url(&done), &auth).assert_json_error(404);
    call("DELETE", &url(&done), &auth, None).assert_json_error(404);
    assert!(rig.list().iter().all(|e| e["file"] != format!("cam/{done}")));

    // Once stopped, the last file can go too.
    assert_eq!(call("POST", &rig.url("/cam/stop"), &auth, Some(b"")).status, 200);
    assert_eq!(call("DELETE", &url(&writing), &auth, None).status, 200);
    assert!(rig.list().is_empty(), "{:?}", rig.list());
}

#[test]
fn the_segments_of_one_recording_name_its_first_file_and_their_place() {
    let rig = rig(&["-record-segment", "1s"]);
    let first = rig.start("cam");
    std::thread::sleep(Duration::from_millis(3500));
    let last = rig.stop("cam");
    assert_ne!(first, last, "no second segment");
    let mut segments: Vec<Value> = rig.list().into_iter().filter(|e| e["path"] == "cam").collect();
    segments.reverse(); // oldest first
    assert!(segments.len() >= 3, "{segments:?}");
    assert_eq!(segments[0]["file"], format!("cam/{first}"));
    assert_eq!(segments.last().unwrap()["file"], format!("cam/{last}"));
    let starts: Vec<SystemTime> = segments.iter().map(|e| chrono_free_parse(e["start"].as_str().unwrap())).collect();
    for (i, entry) in segments.iter().enumerate() {
        assert_eq!(entry["recording"], format!("cam/{first}"), "{entry}");
        assert_eq!(entry["segment"].as_u64(), Some(i as u64 + 1), "{entry}");
        assert_eq!(entry["timing"], "capture");
        if i > 0 {
            assert!(starts[i] > starts[i - 1], "segments out of order: {segments:?}");
        }
    }
}
