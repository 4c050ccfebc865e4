/*
 * camera_shm.h - the camera daemon's shared-memory layout, mirrored
 * byte for byte from ../shared/ABI.md (the daemon's own header, which we
 * cannot change). streaming-server's Rust view lives in src/abi.rs; the
 * test tests/abi_layout.rs checks every offset and size against this file
 * compiled by the target's own C compiler.
 *
 * On 32-bit ARM the layout depends on the daemon's time_t width: build with
 * -D_TIME_BITS=64 -D_FILE_OFFSET_BITS=64 for the 64-bit time_t variant.
 */
#ifndef CAMERA_SHM_H
#define CAMERA_SHM_H

#include <semaphore.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define SHM_NAME_DEFAULT "/pet_camera_stream"
#define RING_BUFFER_SIZE 30
#define MAX_FRAME_SIZE (1920 * 1080 * 3 / 2) /* 3 110 400 bytes */

#define FORMAT_JPEG 0
#define FORMAT_NV12 1
#define FORMAT_RGB 2
#define FORMAT_H264 3
/* Extension (ABI.md): a daemon that encodes H.265 writes Annex-B H.265 access
 * units, VPS/SPS/PPS before IRAP pictures as its encoder emits them, with
 * format 4; layout and writer protocol are unchanged. */
#define FORMAT_H265 4

typedef struct {
    uint64_t frame_number;     /* monotonic counter from the daemon    */
    struct timespec timestamp; /* capture time, CLOCK_MONOTONIC         */
    int camera_id;             /* 0 = day, 1 = night                    */
    int width;
    int height;
    int format;                   /* 3 for H.264                        */
    size_t data_size;             /* bytes used in data[]               */
    uint8_t data[MAX_FRAME_SIZE]; /* one Annex-B access unit            */
} Frame;

typedef struct {
    volatile uint32_t write_index;       /* monotonic, wraps at 2^32     */
    volatile uint32_t frame_interval_ms; /* owned by another controller  */
    sem_t new_frame_sem;                 /* posted once per frame written */
    Frame frames[RING_BUFFER_SIZE];
} SharedFrameBuffer;

#endif /* CAMERA_SHM_H */
