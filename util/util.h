// util — small shared helpers: error reporting, checked allocation, files, RNG, timing.
// Every user-caused failure in lora.c is reported through an Err: the function that fails
// fills it with one clear message (naming the file, line or tensor) and returns an error
// value; the command line prints it and exits non-zero.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define ERR_LEN 512
typedef struct {
    char msg[ERR_LEN];
} Err;

// Formats a message into e (when e != NULL). Always returns -1, so callers can write
// `return err_set(e, "...")`.
int err_set(Err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Allocation that reports failure through Err instead of crashing. Returns NULL on failure.
// what names the buffer in the message ("logits (4096 x 32000)").
void *xmalloc(size_t bytes, const char *what, Err *e);
void *xcalloc(size_t n, size_t size, const char *what, Err *e);
// 64-byte aligned allocation (free with free()).
void *xmalloc_aligned(size_t bytes, const char *what, Err *e);
// Aborts with a message: only for internal invariants a user cannot cause.
void die_internal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

// Reads a whole file into a NUL-terminated buffer. *len gets the size without the NUL.
char *read_file(const char *path, size_t *len, Err *e);
int file_exists(const char *path);
int is_directory(const char *path);
// path_join(buf, n, "dir", "file") -> "dir/file"
const char *path_join(char *buf, size_t n, const char *dir, const char *name);
int make_dirs(const char *path, Err *e);  // mkdir -p

// Atomic file writing: writes go to "PATH.tmp.<pid>", atomic_close renames it to PATH.
// On any error the temporary file is removed and Err filled.
typedef struct {
    FILE *f;
    char path[1024];
    char tmp[1100];
    int failed;
} AtomicFile;
int atomic_open(AtomicFile *af, const char *path, Err *e);
int atomic_write(AtomicFile *af, const void *data, size_t n, Err *e);
int atomic_close(AtomicFile *af, Err *e);  // fsync + rename
void atomic_abort(AtomicFile *af);
// Convenience: whole buffer to a file, atomically.
int write_file_atomic(const char *path, const void *data, size_t n, Err *e);

// RNG: a small, fast, seedable generator whose whole state is one struct (saved in
// checkpoints). Same seed -> same stream on every machine.
typedef struct {
    uint64_t s;
} Rng;
void rng_seed(Rng *r, uint64_t seed);
uint64_t rng_next(Rng *r);           // 64 random bits
float rng_uniform(Rng *r);           // [0,1)
float rng_normal(Rng *r);            // N(0,1)
uint32_t rng_below(Rng *r, uint32_t n);  // [0,n)

double now_seconds(void);            // monotonic clock
size_t peak_rss_bytes(void);         // from getrusage

// fp16 / bf16 <-> fp32 conversion
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);       // round to nearest even

// Thread count used by OpenMP kernels and OpenBLAS (the one allowed global).
void set_num_threads(int n);
int get_num_threads(void);
