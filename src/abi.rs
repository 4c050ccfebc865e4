//! The camera daemon's shared-memory layout (`../shared/ABI.md`), as offsets.
//!
//! The daemon is existing C code; `ffi/camera_shm.h` mirrors its header. This
//! module describes the same layout to Rust as plain numbers ([`Layout`])
//! derived by the compiler from `#[repr(C)]` twins of the C structs, so the
//! reader never forms a Rust reference into memory another process writes.
//! `tests/abi_layout.rs` checks every number against the target's own C
//! compiler (`ffi/abi_layout.c`, built by `build.rs`).
//!
//! The only layout choice is the width of `time_t` in the daemon's build:
//! on 64-bit targets there is one answer; on 32-bit ARM the daemon may have
//! been built with a 32-bit `time_t` (Raspberry Pi OS, Debian 12: the
//! default here) or with `-D_TIME_BITS=64` (Debian 13), see [`TimeBits`].

use std::ffi::{c_int, c_long};
use std::mem::{offset_of, size_of};

/// Slots in the ring (`RING_BUFFER_SIZE`).
pub const RING_BUFFER_SIZE: u32 = 30;
/// Capacity of one slot's `data[]` (`MAX_FRAME_SIZE`).
pub const MAX_FRAME_SIZE: usize = 1920 * 1080 * 3 / 2;
/// `format` value of an H.264 Annex-B access unit.
pub const FORMAT_H264: i32 = 3;
/// H.265 Annex-B in the same ring (ABI.md, "Extension: H.265 in the same ring").
pub const FORMAT_H265: i32 = 4;
/// The segment name the daemon uses unless configured otherwise.
pub const DEFAULT_SHM_NAME: &str = "/pet_camera_stream";

/// `struct timespec` of a 32-bit build with `-D_TIME_BITS=64`: a 64-bit
/// `tv_sec`, a `long` `tv_nsec` and padding to 8 bytes. On 64-bit targets it
/// is the same as the native `timespec`.
#[repr(C)]
struct Timespec64 {
    tv_sec: i64,
    tv_nsec: c_long,
}

/// Twin of the C `Frame`; only ever used for `offset_of!`/`size_of`.
#[repr(C)]
struct Frame<Ts> {
    frame_number: u64,
    timestamp: Ts,
    camera_id: c_int,
    width: c_int,
    height: c_int,
    format: c_int,
    data_size: usize,
    data: [u8; MAX_FRAME_SIZE],
}

/// Twin of the C `SharedFrameBuffer`; only ever used for `offset_of!`/`size_of`.
#[repr(C)]
struct SharedFrameBuffer<Ts> {
    write_index: u32,
    frame_interval_ms: u32,
    new_frame_sem: libc::sem_t,
    frames: [Frame<Ts>; RING_BUFFER_SIZE as usize],
}

/// Width of `time_t` in the daemon's build, which decides the layout on
/// 32-bit targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeBits {
    /// The target's default `time_t` (64-bit on 64-bit targets, 32-bit on
    /// armv7 gnueabihf with Debian 12 / Raspberry Pi OS).
    Native,
    /// A 64-bit `time_t` on a 32-bit target (`-D_TIME_BITS=64`).
    Bits64,
}

impl TimeBits {
    /// Parses the `-time-bits` flag: `native`, `32` or `64`.
    pub fn parse(text: &str) -> Result<TimeBits, String> {
        let native_bits = libc::time_t::BITS;
        match text {
            "native" => Ok(TimeBits::Native),
            "64" if native_bits == 64 => Ok(TimeBits::Native),
            "64" => Ok(TimeBits::Bits64),
            "32" if native_bits == 32 => Ok(TimeBits::Native),
            "32" => Err("a 32-bit time_t exists only on 32-bit targets".into()),
            other => Err(format!("time bits must be native, 32 or 64, not {other:?}")),
        }
    }
}

/// Byte offsets and sizes of the segment, as the daemon's compiler lays it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub time_bits: TimeBits,
    /// `sizeof(SharedFrameBuffer)`: the segment's exact size.
    pub segment_size: usize,
    pub write_index: usize,
    pub frame_interval_ms: usize,
    pub new_frame_sem: usize,
    /// Offset of `frames[0]`.
    pub frames: usize,
    /// `sizeof(Frame)`: the distance between two slots.
    pub frame_size: usize,
    pub frame_number: usize,
    pub timestamp: usize,
    pub timespec_size: usize,
    /// Size of `tv_sec` (4 or 8); `tv_nsec` follows at [`Layout::tv_nsec`].
    pub tv_sec_size: usize,
    pub tv_nsec: usize,
    pub tv_nsec_size: usize,
    pub camera_id: usize,
    pub width: usize,
    pub height: usize,
    pub format: usize,
    pub data_size: usize,
    pub size_t_size: usize,
    pub data: usize,
}

macro_rules! layout_of {
    ($ts:ty, $bits:expr) => {
        Layout {
            time_bits: $bits,
            segment_size: size_of::<SharedFrameBuffer<$ts>>(),
            write_index: offset_of!(SharedFrameBuffer<$ts>, write_index),
            frame_interval_ms: offset_of!(SharedFrameBuffer<$ts>, frame_interval_ms),
            new_frame_sem: offset_of!(SharedFrameBuffer<$ts>, new_frame_sem),
            frames: offset_of!(SharedFrameBuffer<$ts>, frames),
            frame_size: size_of::<Frame<$ts>>(),
            frame_number: offset_of!(Frame<$ts>, frame_number),
            timestamp: offset_of!(Frame<$ts>, timestamp),
            timespec_size: size_of::<$ts>(),
            // A 32-bit native timespec is two 4-byte fields; every other
            // variant starts with an 8-byte tv_sec.
            tv_sec_size: if size_of::<$ts>() == 8 { 4 } else { 8 },
            tv_nsec: if size_of::<$ts>() == 8 { 4 } else { 8 },
            tv_nsec_size: size_of::<c_long>(),
            camera_id: offset_of!(Frame<$ts>, camera_id),
            width: offset_of!(Frame<$ts>, width),
            height: offset_of!(Frame<$ts>, height),
            format: offset_of!(Frame<$ts>, format),
            data_size: offset_of!(Frame<$ts>, data_size),
            size_t_size: size_of::<usize>(),
            data: offset_of!(Frame<$ts>, data),
        }
    };
}

impl Layout {
    /// The layout for a daemon built with the given `time_t` width.
    pub fn new(time_bits: TimeBits) -> Layout {
        match time_bits {
            TimeBits::Native => layout_of!(libc::timespec, TimeBits::Native),
            TimeBits::Bits64 => layout_of!(Timespec64, TimeBits::Bits64),
        }
    }

    /// Byte offset of slot `index % RING_BUFFER_SIZE`.
    pub fn slot_offset(&self, index: u32) -> usize {
        self.frames + (index % RING_BUFFER_SIZE) as usize * self.frame_size
    }

    /// One line for logs and `--help`: which layout this process reads.
    pub fn describe(&self) -> String {
        format!(
            "{} time_t ({}-byte timespec, {}-byte size_t): frames at {}, slot {} bytes, segment {} bytes",
            match self.time_bits {
                TimeBits::Native => "native",
                TimeBits::Bits64 => "64-bit",
            },
            self.timespec_size,
            self.size_t_size,
            self.frames,
            self.frame_size,
            self.segment_size
        )
    }

    /// The numbers in the order `ffi/abi_layout.c` lists them.
    pub fn c_order(&self) -> [u64; 16] {
        [
            self.segment_size,
            self.write_index,
            self.frame_interval_ms,
            self.new_frame_sem,
            self.frames,
            self.frame_size,
            self.frame_number,
            self.timestamp,
            self.timespec_size,
            self.camera_id,
            self.width,
            self.height,
            self.format,
            self.data_size,
            self.size_t_size,
            self.data,
        ]
        .map(|n| n as u64)
    }
}

extern "C" {
    static camera_shm_layout_native: [u64; 16];
    static camera_shm_layout_time64: [u64; 16];
}

/// The same numbers as [`Layout::c_order`], computed by the target's C
/// compiler from `ffi/camera_shm.h` (with `-D_TIME_BITS=64` for `Bits64`).
#[doc(hidden)]
pub fn c_compiler_layout(time_bits: TimeBits) -> [u64; 16] {
    // SAFETY: both arrays are immutable `const uint64_t[16]` defined in
    // ffi/abi_layout.c and linked by build.rs.
    unsafe {
        match time_bits {
            TimeBits::Native => camera_shm_layout_native,
            TimeBits::Bits64 => camera_shm_layout_time64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn matches_the_figures_in_abi_md_on_64_bit() {
        let layout = Layout::new(TimeBits::Native);
        assert_eq!(layout.frames, 40);
        assert_eq!(layout.frame_size, 3_110_448);
        assert_eq!(layout.data, 48);
        assert_eq!(layout.segment_size, 93_313_480);
        assert_eq!(Layout::new(TimeBits::Bits64), Layout { time_bits: TimeBits::Bits64, ..layout });
    }

    #[test]
    fn slots_wrap_every_ring() {
        let layout = Layout::new(TimeBits::Native);
        assert_eq!(layout.slot_offset(0), layout.slot_offset(RING_BUFFER_SIZE));
        assert_eq!(layout.slot_offset(u32::MAX), layout.frames + 15 * layout.frame_size);
    }
}
