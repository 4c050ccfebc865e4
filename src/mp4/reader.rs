//! A minimal ISO BMFF box walker, for tests and diagnostics (box order,
//! faststart checks): it lists boxes without decoding them.
//!
//! In: bytes of a file or of a box's body. Out: each box's type, offset,
//! total size and header length. Bad input: a size that runs past the end
//! or is smaller than the header ends the list (the truncated box is
//! reported with `truncated`); nothing panics.

/// One box found by [`boxes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoxInfo {
    pub kind: [u8; 4],
    pub offset: u64,
    /// Header included.
    pub size: u64,
    pub header_len: u64,
    /// The size field claims more bytes than there are.
    pub truncated: bool,
}

impl BoxInfo {
    /// The box's body within `data` (the buffer passed to [`boxes`]).
    pub fn body<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        let start = self.offset.saturating_add(self.header_len).min(data.len() as u64) as usize;
        let end = self.offset.saturating_add(self.size).min(data.len() as u64) as usize;
        data.get(start..end).unwrap_or_default()
    }
}

/// The boxes at the top level of `data`.
pub fn boxes(data: &[u8]) -> Vec<BoxInfo> {
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    let len = data.len() as u64;
    while pos + 8 <= len {
        let at = pos as usize;
        let size32 = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let kind = [data[at + 4], data[at + 5], data[at + 6], data[at + 7]];
        let (size, header_len) = match size32 {
            0 => (len - pos, 8), // to the end of the file
            1 if pos + 16 <= len => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&data[at + 8..at + 16]);
                (u64::from_be_bytes(b), 16)
            }
            1 => break,
            n => (u64::from(n), 8),
        };
        if size < header_len {
            break;
        }
        let truncated = pos.saturating_add(size) > len;
        out.push(BoxInfo { kind, offset: pos, size, header_len, truncated });
        if truncated {
            break;
        }
        pos += size;
    }
    out
}

/// The first box of type `kind` inside `data` at any depth, following the
/// container boxes this crate writes (moov/trak/mdia/minf/stbl, moof/traf).
pub fn find<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    let (first, rest) = path.split_first()?;
    let found = boxes(data).into_iter().find(|b| &b.kind == *first)?;
    let body = found.body(data);
    if rest.is_empty() {
        Some(body)
    } else {
        find(body, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_boxes_and_stops_at_garbage() {
        let mut data = vec![0, 0, 0, 8, b'f', b'r', b'e', b'e'];
        data.extend_from_slice(&[0, 0, 0, 1, b'm', b'd', b'a', b't', 0, 0, 0, 0, 0, 0, 0, 17, 0xaa]);
        data.extend_from_slice(&[0, 0, 0, 99, b'x', b'x', b'x', b'x']);
        let list = boxes(&data);
        assert_eq!(list.len(), 3);
        assert_eq!(list[1].size, 17);
        assert_eq!(list[1].body(&data), [0xaa]);
        assert!(list[2].truncated);
        assert!(boxes(&[0, 0, 0, 2, 1, 2, 3, 4]).is_empty());
    }
}
