/*
 * qcow2's read op: the bytes of compressed clusters (LS_COMPRESSED runs),
 * decompressed one cluster at a time (each has its own descriptor) into a
 * buffer kept per layer, so reads of one cluster in pieces decompress it
 * once. Linked by the programs that read (convert, compare).
 */
#include "layer.h"
#include "bytes.h"

/* The L2 entry of the cluster holding pos (block status has already
 * validated the L1 entry and the L2 table's alignment). */
static int l2_entry(struct qcow2_layer *s, uint64_t pos, uint64_t *e)
{
    struct qcow2 *q = &s->q;
    uint32_t input = q->r->input;
    uint64_t l1i = pos >> (q->cluster_bits + q->l2_bits);
    uint64_t l1e = 0;
    if (l1i >= q->l1_size || table_window_get(&s->m.l1, l1i, &l1e)) return rt_error(input, GERR_IO, 0, 0, 0);
    uint64_t l2off = l1e & QCOW2_L1E_OFFSET_MASK;
    if (!l2off || (l2off & (q->cluster_size - 1))) return rt_error(input, GERR_INTERNAL, pos, 0, 0);
    const uint8_t *l2 = cluster_cache_get(&s->m.l2, l2off);
    if (!l2) return rt_error(input, GERR_IO, l2off, 0, 0);
    uint64_t l2i = (pos >> q->cluster_bits) & (q->l2_entries - 1);
    *e = be64(l2 + l2i * q->l2_entry_bytes);
    return 0;
}

/* Decompresses the compressed cluster holding pos into s->cluster. */
static int load_compressed(struct qcow2_layer *s, uint64_t pos)
{
    struct qcow2 *q = &s->q;
    uint32_t input = q->r->input;
    uint64_t e = 0;
    if (l2_entry(s, pos, &e)) return -1;
    if (!(e & QCOW2_OFLAG_COMPRESSED)) return rt_error(input, GERR_INTERNAL, pos, e, 0);
    if (s->cluster && s->cluster_l2e == e) return 0;
    uint64_t off, len, cap;
    qcow2_compressed_range(q, e, &off, &len);
    /* The descriptor's size field cannot describe more than two clusters. */
    if (__builtin_mul_overflow(q->cluster_size, 2, &cap) || len > cap) return rt_error(input, GERR_INTERNAL, e, len, 0);
    if (!s->cluster) {
        s->cbuf = rt_alloc(cap);
        s->cluster = rt_alloc(q->cluster_size);
        if (!s->cbuf || !s->cluster) {
            s->cluster = NULL;
            return rt_error(input, GERR_OUT_OF_MEMORY, cap, 0, 0);
        }
    }
    s->cluster_l2e = 0;
    /* Bytes past the end of the file read as zeroes, as qemu's file driver
     * pads short reads. */
    if (reader_read(q->r, off, s->cbuf, len)) return rt_error(input, GERR_IO, off, len, 0);
    /* qemu fails such a read with -EIO: "Input/output error". a1 = 1 marks
     * a decompression failure for diagnostics. */
    if (qcow2_decompress(&s->dec, s->cluster, q->cluster_size, s->cbuf, len))
        return rt_error(input, GERR_IO, off, 1, e);
    s->cluster_l2e = e;
    return 0;
}

int qcow2_layer_read(struct layer *l, uint64_t pos, uint64_t len, uint8_t *buf)
{
    struct qcow2_layer *s = l->state;
    uint64_t csize = s->q.cluster_size;
    /* pos + len <= l->length (a block_status run): done never wraps. */
    for (uint64_t done = 0; done < len;) {
        uint64_t at = pos + done;
        uint64_t in = at & (csize - 1);
        uint64_t k = csize - in;
        if (k > len - done) k = len - done;
        if (load_compressed(s, at)) return -1;
        memcpy(buf + done, s->cluster + in, k);
        done += k;
    }
    return 0;
}
