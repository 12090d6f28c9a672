/* Decompression of one qcow2 compressed cluster (zlib raw deflate or zstd),
 * with qemu 7.2's acceptance rules (block/qcow2-threads.c). */
#ifndef INSTAR_QCOW2_COMPRESS_H
#define INSTAR_QCOW2_COMPRESS_H
#include <stdint.h>

struct qcow2_decompressor {
    uint32_t type; /* 0 zlib, 1 zstd (the header's compression_type) */
    void *state;   /* z_stream or ZSTD_DCtx, created on first use and reused */
};

/*
 * Decompresses src[0, src_len) into exactly dst_len bytes of dst. Returns 0
 * when dst was filled completely, -1 otherwise (malformed stream, stream that
 * ends early, out of memory). Like qemu, a zlib stream that would produce
 * more than dst_len bytes is accepted and truncated: output never passes
 * dst_len. For zstd, an unfinished frame after dst is full is an error.
 */
int qcow2_decompress(struct qcow2_decompressor *d, uint8_t *dst, uint64_t dst_len, const uint8_t *src,
                     uint64_t src_len);
#endif
