/*
 * The reader interface every parser reads through. A reader is a byte range
 * of known size plus a read callback for in-range bytes; reader_read() adds
 * the semantics qemu's file driver has: bytes past the end read as zero, and
 * an offset+length past READER_MAX_END (or overflowing) is refused.
 * Parsers never call hc_read directly, so the same code runs over a guest
 * input, a hosted file or a fuzzer's memory buffer.
 */
#ifndef INSTAR_READER_H
#define INSTAR_READER_H
#include <stdint.h>
#include <stdbool.h>
#include "rt.h"

/* qemu refuses any request reaching past BDRV_MAX_LENGTH (INT64_MAX rounded
 * down to 1 GiB) with -EIO; reads there fail here too, so callers can react
 * the way qemu does. */
#define READER_MAX_END 0x7fffffffc0000000ull

struct reader {
    void *ctx;
    uint64_t size;
    uint32_t input; /* input index, for ERROR records */
    /* Set by reader_from_input: reads may be batched into READV (a flag,
     * because the static inline read function has one address per file). */
    bool from_input;
    /* Reads [off, off+len) which lies inside [0, size); 0 on success. */
    int (*read)(void *ctx, uint64_t off, void *buf, uint64_t len);
};

/* 0 on success, -1 on overflow or a failed read (buf contents undefined). */
static inline int reader_read(const struct reader *r, uint64_t off, void *buf, uint64_t len)
{
    uint64_t end;
    if (__builtin_add_overflow(off, len, &end) || end > READER_MAX_END) return -1;
    if (len == 0) return 0;
    uint64_t in = 0;
    if (off < r->size) in = (end <= r->size ? end : r->size) - off;
    if (in && r->read(r->ctx, off, buf, in) != 0) return -1;
    if (in < len) memset((uint8_t *)buf + in, 0, len - in);
    return 0;
}

static inline int reader_input_read(void *ctx, uint64_t off, void *buf, uint64_t len)
{
    uint32_t input = (uint32_t)(uintptr_t)ctx;
    int64_t got = hc_read(input, off, len, buf);
    return got >= 0 && (uint64_t)got == len ? 0 : -1;
}

/* A reader over attached input `input` (size from the parameter block). */
static inline void reader_from_input(struct reader *r, uint32_t input)
{
    r->ctx = (void *)(uintptr_t)input;
    r->size = rt_input(input)->size;
    r->input = input;
    r->from_input = true;
    r->read = reader_input_read;
}

static inline int reader_mem_read(void *ctx, uint64_t off, void *buf, uint64_t len)
{
    memcpy(buf, (const uint8_t *)ctx + off, len);
    return 0;
}

/* A reader over a memory buffer (fuzz targets, tests). */
static inline void reader_from_mem(struct reader *r, const void *p, uint64_t size)
{
    r->ctx = (void *)p;
    r->size = size;
    r->input = 0;
    r->from_input = false;
    r->read = reader_mem_read;
}

#endif
