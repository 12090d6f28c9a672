/*
 * Compressed grains (streamOptimized): qemu 7.2's vmdk_read_extent for a
 * compressed extent. Two grains' worth of bytes are read from the grain's
 * offset (past EOF: zeroes), the marker's size field (when the extent has
 * markers) bounds the deflate stream, zlib's uncompress() must end the
 * stream within one grain, and the requested bytes must lie inside what it
 * produced; anything else fails the read as qemu's -EINVAL does. One grain
 * is kept inflated, so reading a grain in pieces inflates it once. Linked
 * only by the programs that read data (convert, compare).
 */
#include "../chain/layer.h"
#include "vmdk.h"
#include "bytes.h"
#include <zlib.h>

/* zlib's uncompress(): the whole stream into at most cap bytes (also the
 * one-pass stream reader's, guest/vmdk/stream.c). */
int vmdk_inflate(struct vmdk *v, const uint8_t *src, uint64_t n, uint8_t *dst, uint64_t cap, uint64_t *out)
{
    z_stream *s = v->z;
    if (!s) {
        s = rt_calloc(1, sizeof *s);
        if (!s || inflateInit(s) != Z_OK) return -1;
        v->z = s;
    } else if (inflateReset(s) != Z_OK) {
        return -1;
    }
    s->next_in = (Bytef *)src;
    s->avail_in = (uInt)n;
    s->next_out = dst;
    s->avail_out = (uInt)cap;
    int r = inflate(s, Z_FINISH);
    if (r != Z_STREAM_END) return -1;
    *out = s->total_out;
    return 0;
}

static int load_grain(struct layer *l, struct vmdk_extent *e, uint64_t co)
{
    struct vmdk *v = l->state;
    uint64_t idx = (uint64_t)(e - v->ext);
    uint64_t key = (idx + 1) << 56 | co;
    if (v->grain && v->grain_at == key) return 0;
    uint64_t cbytes = e->cluster_sectors * 512;
    if (cbytes > VMDK_COMPRESSED_GRAIN_MAX) return vmdk_fail(v, VMDK_E_GRAIN_CAP, cbytes, 0);
    if (!v->grain || v->grain_cap < cbytes) {
        v->cbuf = rt_alloc(2 * cbytes);
        v->grain = rt_alloc(cbytes);
        if (!v->cbuf || !v->grain) {
            v->grain = NULL;
            return rt_error(l->r.input, GERR_OUT_OF_MEMORY, cbytes, 0, 0);
        }
        v->grain_cap = cbytes;
    }
    v->grain_at = 0;
    uint64_t want = 2 * cbytes;
    if (reader_read(e->r, co, v->cbuf, want)) return rt_error(e->r->input, GERR_IO, co, want, 0);
    const uint8_t *data = v->cbuf;
    uint64_t n = cbytes;
    if (e->has_marker) {
        data = v->cbuf + 12;
        n = le32(v->cbuf + 8);
        /* qemu accepts up to 2 grains from the marker's data on, 12 bytes
         * past its buffer; instar stops at its buffer's end */
        if (n > want - 12) return rt_error(e->r->input, GERR_IO, co, n, 1);
    }
    if (!n) return rt_error(e->r->input, GERR_IO, co, 0, 2);
    uint64_t got = 0;
    if (vmdk_inflate(v, data, n, v->grain, cbytes, &got)) return rt_error(e->r->input, GERR_IO, co, n, 3);
    v->grain_len = got;
    v->grain_at = key;
    return 0;
}

int vmdk_layer_read(struct layer *l, uint64_t pos, uint64_t len, uint8_t *buf)
{
    struct vmdk *v = l->state;
    for (uint64_t done = 0; done < len;) {
        uint64_t at = pos + done;
        struct vmdk_extent *e = vmdk_find_extent(v, at);
        if (!e) return rt_error(l->r.input, GERR_IO, at, 0, 4);
        uint64_t co = 0;
        if (vmdk_cluster(v, e, at, &co) != VMDK_OK || !e->compressed)
            return rt_error(l->r.input, GERR_INTERNAL, at, 0, 5);
        uint64_t cbytes = e->cluster_sectors * 512;
        uint64_t in = (at - (e->end_sector - e->sectors) * 512) % cbytes;
        uint64_t k = cbytes - in;
        if (k > len - done) k = len - done;
        if (load_grain(l, e, co)) return -1;
        if (in + k > v->grain_len) return rt_error(e->r->input, GERR_IO, co, in + k, 6);
        memcpy(buf + done, v->grain + in, k);
        done += k;
    }
    return 0;
}
