/*
 * The qcow2 read path. Ranges are resolved with qcow2_block_status (the same
 * walk map uses, so both agree on every entry's meaning and on which
 * corruptions fail), then filled per run: stored bytes with one read, zero
 * runs with memset, unallocated runs from the layer below, compressed
 * clusters through the decompressor.
 */
#include "read.h"
#include "bytes.h"
#include "layer.h"

static int open_layer(struct qread_chain *c, uint32_t i, uint32_t requested)
{
    struct qread_layer *l = &c->layers[i];
    l->data = &l->r;
    if (chain_layer_open(i, requested, &l->r, &l->fmt, &l->length, &l->q, &l->m)) return -1;
    if (l->fmt == FMT_QCOW2) l->dec.type = l->q.compression_type;
    return 0;
}

int qread_open(struct qread_chain *c, uint32_t data_input)
{
    const struct params *p = rt_params();
    if (p->n_inputs < 1 || p->n_inputs > LIMIT_MAX_INPUTS || data_input >= p->n_inputs)
        return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    c->n = 0;
    for (uint32_t i = 0; i < p->n_inputs; i++) {
        if (data_input && i == data_input) break;
        if (p->input_format[i] > FMT_QCOW2) return rt_error(i, GERR_BAD_PARAMS, 0, 0, 0);
        if (open_layer(c, i, p->input_format[i])) return -1;
        c->n = i + 1;
        struct qread_layer *l = &c->layers[i];
        if (l->fmt == FMT_RAW) break; /* a raw layer has no backing file */
        if (l->q.has_data_file) {
            /* Only the top layer's data file can be attached. */
            if (i != 0 || !data_input) return rt_error(i, GERR_DATA_FILE_REQUIRED, 0, 0, 0);
            if (p->input_format[data_input] != FMT_RAW) return rt_error(data_input, GERR_BAD_PARAMS, 2, 0, 0);
            reader_from_input(&l->data_r, data_input);
            l->data = &l->data_r;
        }
        if (!(l->q.flags & Q2F_HAS_BACKING)) break;
    }
    c->size = c->layers[0].length;
    return 0;
}

/* The L2 entry of the cluster holding pos (block status has already
 * validated the L1 entry and the L2 table's alignment). */
static int l2_entry(struct qread_layer *l, uint64_t pos, uint64_t *e)
{
    struct qcow2 *q = &l->q;
    uint64_t l1i = pos >> (q->cluster_bits + q->l2_bits);
    uint64_t l1e = 0;
    if (l1i >= q->l1_size || table_window_get(&l->m.l1, l1i, &l1e)) return rt_error(l->r.input, GERR_IO, 0, 0, 0);
    uint64_t l2off = l1e & QCOW2_L1E_OFFSET_MASK;
    if (!l2off || (l2off & (q->cluster_size - 1))) return rt_error(l->r.input, GERR_INTERNAL, pos, 0, 0);
    const uint8_t *l2 = cluster_cache_get(&l->m.l2, l2off);
    if (!l2) return rt_error(l->r.input, GERR_IO, l2off, 0, 0);
    uint64_t l2i = (pos >> q->cluster_bits) & (q->l2_entries - 1);
    *e = be64(l2 + l2i * q->l2_entry_bytes);
    return 0;
}

/* Decompresses the compressed cluster holding pos into l->cluster (kept, so
 * reads of the same cluster in pieces decompress it once). */
static int load_compressed(struct qread_layer *l, uint64_t pos)
{
    struct qcow2 *q = &l->q;
    uint64_t e = 0;
    if (l2_entry(l, pos, &e)) return -1;
    if (!(e & QCOW2_OFLAG_COMPRESSED)) return rt_error(l->r.input, GERR_INTERNAL, pos, e, 0);
    if (l->cluster && l->cluster_l2e == e) return 0;
    uint64_t off, len, cap;
    qcow2_compressed_range(q, e, &off, &len);
    /* The descriptor's size field cannot describe more than two clusters. */
    if (__builtin_mul_overflow(q->cluster_size, 2, &cap) || len > cap)
        return rt_error(l->r.input, GERR_INTERNAL, e, len, 0);
    if (!l->cluster) {
        l->cbuf = rt_alloc(cap);
        l->cluster = rt_alloc(q->cluster_size);
        if (!l->cbuf || !l->cluster) {
            l->cluster = NULL;
            return rt_error(l->r.input, GERR_OUT_OF_MEMORY, cap, 0, 0);
        }
    }
    l->cluster_l2e = 0;
    /* Bytes past the end of the file read as zeroes, as qemu's file driver
     * pads short reads. */
    if (reader_read(&l->r, off, l->cbuf, len)) return rt_error(l->r.input, GERR_IO, off, len, 0);
    /* qemu fails such a read with -EIO: "Input/output error". a1 = 1 marks
     * a decompression failure for diagnostics. */
    if (qcow2_decompress(&l->dec, l->cluster, q->cluster_size, l->cbuf, len))
        return rt_error(l->r.input, GERR_IO, off, 1, e);
    l->cluster_l2e = e;
    return 0;
}

static int layer_read(struct qread_chain *c, uint32_t i, uint64_t off, uint64_t len, uint8_t *buf)
{
    struct qread_layer *l = &c->layers[i];
    /* Past this layer's end everything reads as zeroes. */
    if (off >= l->length) {
        memset(buf, 0, len);
        return 0;
    }
    if (len > l->length - off) {
        uint64_t in = l->length - off;
        memset(buf + in, 0, len - in);
        len = in;
    }
    if (l->fmt == FMT_RAW) {
        c->read_data = true;
        if (reader_read(&l->r, off, buf, len)) return rt_error(l->r.input, GERR_IO, off, len, 0);
        return 0;
    }
    struct qcow2 *q = &l->q;
    uint64_t pos = off, end = off + len;
    while (pos < end) {
        uint64_t n = 0, host = 0;
        int st = qcow2_block_status(&l->m, pos, end - pos, &n, &host);
        if (st < 0) return -1;
        if (n == 0 || n > end - pos) return rt_error(l->r.input, GERR_INTERNAL, pos, n, 0);
        uint8_t *dst = buf + (pos - off);
        if (st & QST_ZERO) {
            memset(dst, 0, n);
        } else if (st & QST_COMPRESSED) {
            /* One cluster at a time: each has its own descriptor. */
            for (uint64_t at = pos; at < pos + n;) {
                uint64_t in = at & (q->cluster_size - 1);
                uint64_t k = q->cluster_size - in;
                if (k > pos + n - at) k = pos + n - at;
                if (load_compressed(l, at)) return -1;
                memcpy(buf + (at - off), l->cluster + in, k);
                at += k;
            }
            c->read_data = true;
        } else if ((st & QST_DATA) && (st & QST_OFFSET_VALID)) {
            if (reader_read(l->data, host, dst, n)) return rt_error(l->data->input, GERR_IO, host, n, 0);
            c->read_data = true;
        } else if (i + 1 < c->n) {
            /* Unallocated here (also an allocated cluster's unallocated
             * subclusters): the backing layer decides. */
            if (layer_read(c, i + 1, pos, n, dst)) return -1;
        } else {
            memset(dst, 0, n);
        }
        pos += n;
    }
    return 0;
}

int qread_read(struct qread_chain *c, uint64_t off, uint64_t len, uint8_t *buf)
{
    uint64_t end;
    c->read_data = false;
    if (__builtin_add_overflow(off, len, &end) || end > c->size) return rt_error(0, GERR_BAD_PARAMS, off, len, 0);
    return layer_read(c, 0, off, len, buf);
}
