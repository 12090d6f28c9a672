/*
 * One compressed cluster -> cluster_size bytes. qemu decides success by
 * whether the output buffer was filled: the compressed length it passes is
 * only known to sector precision, so trailing input bytes are expected and
 * ignored. We use the same rule so that images qemu reads, we read, and
 * images it refuses (-EIO), we refuse. The libraries never write past the
 * output buffer we hand them, which is the cap.
 */
#include "compress.h"
#include <zlib.h>
#include <zstd.h>
#include "rt.h"

/* zlib and zstd take 32-bit / size_t lengths: clusters are <= 2 MiB and
 * compressed ranges <= 4 MiB, checked by the caller, so these fit. */
#define MAX_LEN (64ull << 20)

static int zlib_decompress(struct qcow2_decompressor *d, uint8_t *dst, uint64_t dst_len, const uint8_t *src,
                           uint64_t src_len)
{
    z_stream *s = d->state;
    if (!s) {
        s = rt_calloc(1, sizeof *s);
        if (!s) return -1;
        /* Raw deflate with a 4 KiB window, as qemu writes it. */
        if (inflateInit2(s, -12) != Z_OK) return -1;
        d->state = s;
    } else if (inflateReset(s) != Z_OK) {
        return -1;
    }
    s->next_in = (Bytef *)src;
    s->avail_in = (uInt)src_len;
    s->next_out = dst;
    s->avail_out = (uInt)dst_len;
    int ret = inflate(s, Z_FINISH);
    /* Z_BUF_ERROR with a full output: the input had bytes left over. */
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && s->avail_out == 0) return 0;
    return -1;
}

static int zstd_decompress(struct qcow2_decompressor *d, uint8_t *dst, uint64_t dst_len, const uint8_t *src,
                           uint64_t src_len)
{
    ZSTD_DCtx *dc = d->state;
    if (!dc) {
        dc = ZSTD_createDCtx();
        if (!dc) return -1;
        d->state = dc;
    } else {
        ZSTD_DCtx_reset(dc, ZSTD_reset_session_only);
    }
    ZSTD_outBuffer out = {.dst = dst, .size = (size_t)dst_len, .pos = 0};
    ZSTD_inBuffer in = {.src = src, .size = (size_t)src_len, .pos = 0};
    size_t r = 0;
    /* Several frames may make up the cluster; stop once it is full, fail on
     * an error or when a call makes no progress (input exhausted early). */
    while (out.pos < out.size) {
        size_t ip = in.pos, op = out.pos;
        r = ZSTD_decompressStream(dc, &out, &in);
        if (ZSTD_isError(r)) return -1;
        if (in.pos <= ip && out.pos <= op) return -1;
    }
    /* Output full but the frame not finished: it decodes to more than a
     * cluster, which qemu refuses. */
    if (r > 0) return -1;
    return 0;
}

int qcow2_decompress(struct qcow2_decompressor *d, uint8_t *dst, uint64_t dst_len, const uint8_t *src,
                     uint64_t src_len)
{
    if (dst_len == 0 || dst_len > MAX_LEN || src_len > MAX_LEN) return -1;
    if (d->type == 0) return zlib_decompress(d, dst, dst_len, src, src_len);
    if (d->type == 1) return zstd_decompress(d, dst, dst_len, src, src_len);
    return -1;
}
