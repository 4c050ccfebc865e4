//! `/recordings` routes: the list, each file's raw bytes and its MP4 form
//! (both with `Range`, `ETag`, `If-None-Match`, `HEAD`), and DELETE.
//!
//! In: requests routed by [`super::Control`] (names not yet checked: see
//! [`crate::recordings`]). Out: JSON for the list and every error; bodies
//! streamed with [`Body::Stream`]: a task on tokio's blocking pool reads
//! the file (or produces the MP4 bytes) 64 KiB at a time into a channel of
//! [`STREAM_CHUNKS`] chunks, so a response holds at most ~320 KiB however
//! large the file, the async workers never touch the disk, and a client
//! that stops reading stops the reader (its write times out, the channel
//! closes). At most [`MAX_STREAMS`] bodies stream at once (each holds a
//! blocking-pool thread); more get 503.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::blocking;
use crate::http::{etag_matches, Body, ByteRange, Head, Method, Reply, Request};
use crate::recordings::{Recordings, RecordingsError, Target};

/// Bytes read per chunk of a streamed body.
pub const CHUNK: usize = 64 * 1024;
/// Chunks a streamed body may have read ahead of the client.
pub const STREAM_CHUNKS: usize = 4;
/// Bodies streaming at once.
pub const MAX_STREAMS: usize = 16;

/// The recordings page, `GET /recordings/`.
pub static RECORDINGS_PAGE: &str = include_str!("../../assets/recordings.html");

/// The routes' state: the recordings and the streams in flight.
pub struct RecordingRoutes {
    pub recordings: Arc<Recordings>,
    streams: Arc<AtomicUsize>,
}

fn error_reply(error: &RecordingsError) -> Reply {
    let status = match error {
        RecordingsError::BadName(_) | RecordingsError::BadSize(..) => 400,
        RecordingsError::NotFound(_) => 404,
        RecordingsError::Writing(_) => 409,
        RecordingsError::Mp4(_) => 422,
        RecordingsError::Io(_) => {
            log::warn!("recordings: {error}");
            500
        }
    };
    Reply::error(status, error)
}

impl RecordingRoutes {
    pub fn new(recordings: Recordings) -> RecordingRoutes {
        RecordingRoutes { recordings: Arc::new(recordings), streams: Default::default() }
    }

    /// `GET /recordings`.
    pub async fn list(&self) -> Reply {
        let recordings = self.recordings.clone();
        let list = blocking(move || recordings.list()).await;
        let total: u64 = list.iter().map(|e| e.size).sum();
        Reply::json(200, &json!({"recordings": list, "total_bytes": total})).header("Cache-Control", "no-cache")
    }

    /// `GET`, `HEAD` or `DELETE /recordings/{id}`.
    pub async fn file(&self, request: &Request, id: &str) -> Reply {
        let target = match self.recordings.resolve(id) {
            Ok(target) => target,
            Err(e) => return error_reply(&e),
        };
        let head = &request.head;
        if head.method == Method::Delete {
            let (recordings, file) = (self.recordings.clone(), target.id());
            return match blocking(move || recordings.delete(&target)).await {
                Ok(()) => Reply::json(200, &json!({"success": true, "deleted": file})),
                Err(e) => error_reply(&e),
            };
        }
        match head.query_param("format") {
            None => self.raw(head, target).await,
            Some("mp4") => {
                let pin = match head.query_param("size").map(str::parse::<u64>) {
                    None => None,
                    Some(Ok(size)) => Some(size),
                    Some(Err(_)) => return Reply::error(400, "size must be a byte count"),
                };
                self.mp4(head, target, pin).await
            }
            Some(other) => {
                Reply::error(400, format!("unknown format {other:?} (leave it out for the raw file, or mp4)"))
            }
        }
    }

    /// The raw file, exactly as recorded.
    async fn raw(&self, head: &Head, target: Target) -> Reply {
        let recordings = self.recordings.clone();
        let name = target.name.clone();
        let opened = blocking(move || recordings.open(&target)).await;
        let (file, meta) = match opened {
            Ok(opened) => opened,
            Err(e) => return error_reply(&e),
        };
        let etag = crate::recordings::raw_etag(&meta);
        let file = Arc::new(file);
        let headers = [("Content-Disposition", format!("attachment; filename=\"{name}\""))];
        self.ranged(head, meta.len(), &etag, "application/octet-stream", headers, move |offset, buf| {
            file.read_exact_at(buf, offset)
        })
    }

    /// The MP4 made on the fly.
    async fn mp4(&self, head: &Head, target: Target, pin: Option<u64>) -> Reply {
        let recordings = self.recordings.clone();
        let stem = target.name.rsplit_once('.').map_or(target.name.as_str(), |(stem, _)| stem).to_string();
        let made = blocking(move || recordings.mp4(&target, pin)).await;
        let (mp4, file) = match made {
            Ok(made) => made,
            Err(e) => return error_reply(&e),
        };
        let length = mp4.layout.total_len();
        let headers =
            [("Content-Disposition", format!("inline; filename=\"{stem}.mp4\"")), ("X-Timing", mp4.timing.to_string())];
        let mut reader = mp4.layout.clone().shared_reader(file);
        self.ranged(head, length, &mp4.etag, "video/mp4", headers, move |offset, buf| {
            reader.seek(SeekFrom::Start(offset))?;
            reader.read_exact(buf)
        })
    }

    /// A body of `length` bytes with validators and ranges: 304 for a
    /// matching `If-None-Match`, 206 for a satisfiable `Range` (unless an
    /// `If-Range` names another version), 416 for one past the end, else
    /// 200. `read(offset, buf)` fills all of `buf` from `offset`.
    fn ranged<const N: usize>(
        &self,
        head: &Head,
        length: u64,
        etag: &str,
        content_type: &str,
        headers: [(&str, String); N],
        read: impl FnMut(u64, &mut [u8]) -> io::Result<()> + Send + 'static,
    ) -> Reply {
        let with_headers = |mut reply: Reply| {
            for (name, value) in &headers {
                reply = reply.header(name, value.clone());
            }
            reply.header("ETag", etag).header("Accept-Ranges", "bytes").header("Cache-Control", "no-cache")
        };
        if head.header("If-None-Match").is_some_and(|h| etag_matches(h, etag)) {
            return with_headers(Reply::new(304, content_type, Bytes::new()));
        }
        let range = match head.header("If-Range") {
            Some(tag) if tag.trim() != etag => ByteRange::Full,
            _ => ByteRange::parse(head.header("Range"), length),
        };
        let (status, start, end) = match range {
            ByteRange::Full => (200, 0, length),
            ByteRange::Partial { start, end } => (206, start, end + 1),
            ByteRange::Unsatisfiable => {
                return with_headers(Reply::error(416, format!("the range is past the end ({length} bytes)")))
                    .header("Content-Range", format!("bytes */{length}"));
            }
        };
        let body = if head.method == Method::Head || start == end {
            // Nothing to read: a HEAD answer, or an empty file.
            Body::Stream { length: end - start, chunks: tokio::sync::mpsc::channel(1).1 }
        } else {
            match self.stream(start, end, read) {
                Ok(body) => body,
                Err(reply) => return reply,
            }
        };
        let mut reply = with_headers(Reply { status, content_type: content_type.to_string(), headers: vec![], body });
        if status == 206 {
            reply = reply.header("Content-Range", format!("bytes {start}-{}/{length}", end - 1));
        }
        reply
    }

    /// Streams bytes `start..end` from a blocking-pool task.
    fn stream(
        &self,
        start: u64,
        end: u64,
        mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()> + Send + 'static,
    ) -> Result<Body, Reply> {
        let slot = super::Slot::take(&self.streams, MAX_STREAMS, "too many recordings being downloaded", "2")?;
        let (sender, chunks) = tokio::sync::mpsc::channel(STREAM_CHUNKS);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut at = start;
            while at < end {
                let mut buf = vec![0u8; (end - at).min(CHUNK as u64) as usize];
                let filled = buf.len() as u64;
                // An early end of file means the file got shorter.
                let chunk = read(at, &mut buf).map(|()| Bytes::from(buf));
                let failed = chunk.is_err();
                if let Err(e) = &chunk {
                    log::warn!("recordings: read of bytes {at}..{} failed: {e}", at + filled);
                }
                // Fails when the client went away: stop reading.
                if sender.blocking_send(chunk).is_err() || failed {
                    return;
                }
                at += filled;
            }
        });
        Ok(Body::Stream { length: end - start, chunks })
    }
}
