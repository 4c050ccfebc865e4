/*
 * Offsets and sizes of camera_shm.h as the target's C compiler lays them out.
 * build.rs compiles this file twice (native time_t, and 64-bit time_t) and
 * links it into the crate; tests/abi_layout.rs compares the numbers with the
 * Rust layout in src/abi.rs. ABI_LAYOUT_SYMBOL names the exported array.
 */
#include "camera_shm.h"

#ifndef ABI_LAYOUT_SYMBOL
#define ABI_LAYOUT_SYMBOL camera_shm_layout_native
#endif

/* Keep this order in sync with abi::CLayout in src/abi.rs. */
const uint64_t ABI_LAYOUT_SYMBOL[] = {
    sizeof(SharedFrameBuffer),
    offsetof(SharedFrameBuffer, write_index),
    offsetof(SharedFrameBuffer, frame_interval_ms),
    offsetof(SharedFrameBuffer, new_frame_sem),
    offsetof(SharedFrameBuffer, frames),
    sizeof(Frame),
    offsetof(Frame, frame_number),
    offsetof(Frame, timestamp),
    sizeof(struct timespec),
    offsetof(Frame, camera_id),
    offsetof(Frame, width),
    offsetof(Frame, height),
    offsetof(Frame, format),
    offsetof(Frame, data_size),
    sizeof(size_t),
    offsetof(Frame, data),
};
