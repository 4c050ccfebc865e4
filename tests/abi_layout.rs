//! The Rust view of the camera daemon's segment (src/abi.rs) must equal the
//! layout the target's own C compiler gives ffi/camera_shm.h, field by
//! field, for both time_t widths. Runs on every target, including ARM ones
//! under qemu (the C side is compiled for the target by build.rs).

use streaming_server::abi::{c_compiler_layout, Layout, TimeBits};

const FIELDS: [&str; 16] = [
    "sizeof(SharedFrameBuffer)",
    "offsetof(write_index)",
    "offsetof(frame_interval_ms)",
    "offsetof(new_frame_sem)",
    "offsetof(frames)",
    "sizeof(Frame)",
    "offsetof(Frame.frame_number)",
    "offsetof(Frame.timestamp)",
    "sizeof(struct timespec)",
    "offsetof(Frame.camera_id)",
    "offsetof(Frame.width)",
    "offsetof(Frame.height)",
    "offsetof(Frame.format)",
    "offsetof(Frame.data_size)",
    "sizeof(size_t)",
    "offsetof(Frame.data)",
];

fn check(time_bits: TimeBits) {
    let rust = Layout::new(time_bits).c_order();
    let c = c_compiler_layout(time_bits);
    let mismatches: Vec<String> = FIELDS
        .iter()
        .zip(rust.iter().zip(c.iter()))
        .filter(|(_, (r, c))| r != c)
        .map(|(name, (r, c))| format!("{name}: Rust {r}, C {c}"))
        .collect();
    assert!(mismatches.is_empty(), "{time_bits:?} layout differs from the C header:\n{}", mismatches.join("\n"));
    eprintln!("{time_bits:?}: {}", Layout::new(time_bits).describe());
}

#[test]
fn native_time_t_layout_matches_the_c_header() {
    check(TimeBits::Native);
}

#[test]
fn time64_layout_matches_the_c_header_built_with_time_bits_64() {
    check(TimeBits::Bits64);
}

#[test]
fn timespec_field_offsets_fit_inside_the_timespec() {
    for time_bits in [TimeBits::Native, TimeBits::Bits64] {
        let l = Layout::new(time_bits);
        assert_eq!(l.tv_nsec, l.tv_sec_size, "tv_nsec follows tv_sec");
        assert!(l.tv_nsec + l.tv_nsec_size <= l.timespec_size);
        assert_eq!(l.timestamp + l.timespec_size, l.camera_id, "camera_id follows the timespec");
    }
}
