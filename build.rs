//! Compiles ffi/abi_layout.c twice (native time_t and 64-bit time_t) with the
//! target's C compiler, so tests can compare the C layout with src/abi.rs on
//! every target, including cross targets run under qemu.

fn main() {
    println!("cargo:rerun-if-changed=ffi/camera_shm.h");
    println!("cargo:rerun-if-changed=ffi/abi_layout.c");
    cc::Build::new()
        .file("ffi/abi_layout.c")
        .define("ABI_LAYOUT_SYMBOL", "camera_shm_layout_native")
        .compile("abi_layout_native");
    cc::Build::new()
        .file("ffi/abi_layout.c")
        .define("ABI_LAYOUT_SYMBOL", "camera_shm_layout_time64")
        .define("_TIME_BITS", "64")
        .define("_FILE_OFFSET_BITS", "64")
        .compile("abi_layout_time64");
}
