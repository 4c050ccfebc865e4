//! Random values from the OS: session ids that must not be guessable, and
//! the random starting points RTP asks for (SSRC, sequence number,
//! timestamp; RFC 3550 5.1). A leaf: knows nothing of video.

use std::io::Read;

/// `N` random bytes from `/dev/urandom`.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_err() {
        // No /dev/urandom (never on the boards): fall back to std's
        // per-process random hasher keys.
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(std::time::SystemTime::now().elapsed().unwrap_or_default().as_nanos());
            chunk.copy_from_slice(&hasher.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    bytes
}

/// 128 random bits, hex: session ids must not be guessable, since knowing
/// one lets a client end that session (WHEP DELETE).
pub fn random_id() -> String {
    hex(&random_bytes::<16>())
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random u32 (SSRCs, initial sequence numbers and timestamps).
pub fn random_u32() -> u32 {
    u32::from_ne_bytes(random_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(random_u32(), random_u32());
    }
}
