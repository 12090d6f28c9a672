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

static int open_layer(struct qread_chain *c, uint32_t slot, uint32_t input, uint32_t requested)
{
    struct qread_layer *l = &c->layers[slot];
    l->data = &l->r;
    if (chain_layer_open(input, requested, &l->r, &l->fmt, &l->length, &l->q, &l->m)) return -1;
    if (l->fmt == FMT_QCOW2) l->dec.type = l->q.compression_type;
    return 0;
}

int qread_open_range(struct qread_chain *c, uint32_t first, uint32_t count, uint32_t data_input)
{
    const struct params *p = rt_params();
    uint32_t end;
    if (p->n_inputs < 1 || p->n_inputs > LIMIT_MAX_INPUTS || count < 1 || __builtin_add_overflow(first, count, &end) ||
        end > p->n_inputs || (data_input && data_input >= p->n_inputs))
        return rt_error(first, GERR_BAD_PARAMS, 0, 0, 0);
    c->n = 0;
    for (uint32_t i = first; i < end; i++) {
        if (data_input && i == data_input) break;
        if (p->input_format[i] > FMT_QCOW2) return rt_error(i, GERR_BAD_PARAMS, 0, 0, 0);
        if (open_layer(c, i - first, i, p->input_format[i])) return -1;
        c->n = i - first + 1;
        struct qread_layer *l = &c->layers[i - first];
        if (l->fmt == FMT_RAW) break; /* a raw layer has no backing file */
        if (l->q.has_data_file) {
            /* Only the top layer's data file can be attached. */
            if (i != first || !data_input) return rt_error(i, GERR_DATA_FILE_REQUIRED, 0, 0, 0);
            if (p->input_format[data_input] != FMT_RAW) return rt_error(data_input, GERR_BAD_PARAMS, 2, 0, 0);
            reader_from_input(&l->data_r, data_input);
            l->data = &l->data_r;
        }
        if (!(l->q.flags & Q2F_HAS_BACKING)) break;
    }
    c->size = c->layers[0].length;
    return 0;
}

int qread_open(struct qread_chain *c, uint32_t data_input)
{
    return qread_open_range(c, 0, rt_params()->n_inputs, data_input);
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

/* Sends the queued reads (one READV). */
static int flush_reads(struct qread_chain *c)
{
    if (!c->n_segs) return 0;
    int64_t got = hc_readv(c->seg_input, c->segs, c->n_segs);
    uint32_t input = c->seg_input;
    uint64_t want = c->seg_bytes;
    c->n_segs = 0;
    c->seg_bytes = 0;
    if (got < 0 || (uint64_t)got != want) return rt_error(input, GERR_IO, 0, want, 3);
    return 0;
}

/* reader_read, queued when batching over an attached input (same
 * semantics: past-EOF bytes are zeroed now, the in-file part later). */
static int stored_read(struct qread_chain *c, const struct reader *r, uint64_t off, uint8_t *buf, uint64_t len)
{
    uint64_t end;
    if (!c->batch || !r->from_input || len > LIMIT_IO_MAX)
        return reader_read(r, off, buf, len);
    if (__builtin_add_overflow(off, len, &end) || end > READER_MAX_END) return -1;
    uint64_t in = 0;
    if (off < r->size) in = (end <= r->size ? end : r->size) - off;
    if (in < len) memset(buf + in, 0, len - in);
    if (!in) return 0;
    if (c->n_segs && (c->seg_input != r->input || c->n_segs == LIMIT_IO_SEGS_MAX ||
                      c->seg_bytes + in > LIMIT_IO_MAX)) {
        if (flush_reads(c)) return -1;
    }
    struct io_seg *last = c->n_segs ? &c->segs[c->n_segs - 1] : 0;
    if (last && last->off + last->len == off && last->addr + last->len == (uint64_t)(uintptr_t)buf) {
        last->len += in; /* contiguous in the file and in memory: one segment */
    } else {
        c->seg_input = r->input;
        c->segs[c->n_segs++] = (struct io_seg){.off = off, .len = in, .addr = (uint64_t)(uintptr_t)buf};
    }
    c->seg_bytes += in;
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
        if (stored_read(c, &l->r, off, buf, len)) return rt_error(l->r.input, GERR_IO, off, len, 0);
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
            if (stored_read(c, l->data, host, dst, n)) return rt_error(l->data->input, GERR_IO, host, n, 0);
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
    if (layer_read(c, 0, off, len, buf)) {
        c->n_segs = 0;
        c->seg_bytes = 0;
        return -1;
    }
    return c->defer ? 0 : flush_reads(c);
}

int qread_flush(struct qread_chain *c)
{
    return flush_reads(c);
}

/* Fetches the data extents of a raw layer's file from off on. */
static int raw_extents(struct qread_layer *l, uint64_t off)
{
    uint64_t fsize = l->r.size;
    /* A window of 64 GiB keeps each answer short for sparse files. */
    uint64_t to = fsize - off > (64ull << 30) ? off + (64ull << 30) : fsize;
    int64_t k = hc_extents(l->r.input, off, to - off, l->ext);
    if (k < 0 || k > LIMIT_EXTENTS_MAX) return rt_error(l->r.input, GERR_IO, off, 0, 4);
    /* The VMM's answer is checked like any other: ordered, inside the window. */
    uint64_t at = off;
    for (int64_t j = 0; j < k; j++) {
        uint64_t e;
        if (l->ext[j].off < at || l->ext[j].len == 0 ||
            __builtin_add_overflow(l->ext[j].off, l->ext[j].len, &e) || e > to)
            return rt_error(l->r.input, GERR_IO, off, 0, 5);
        at = e;
    }
    l->n_ext = (uint32_t)k;
    l->ext_from = off;
    l->ext_to = k == LIMIT_EXTENTS_MAX ? at : to;
    return 0;
}

static int raw_status(struct qread_layer *l, uint64_t off, uint64_t len, uint64_t *n)
{
    uint64_t fsize = l->r.size;
    if (off >= fsize) { /* the rounded-up tail past the file */
        *n = len;
        return QRS_ZERO | QRS_ALLOCATED | QRS_OFFSET_VALID;
    }
    if (len > fsize - off) len = fsize - off;
    if (off < l->ext_from || off >= l->ext_to) {
        if (raw_extents(l, off)) return -1;
    }
    /* First extent ending after off (binary search: they are ordered). */
    uint32_t lo = 0, hi = l->n_ext;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (l->ext[mid].off + l->ext[mid].len <= off) lo = mid + 1;
        else hi = mid;
    }
    uint64_t limit = l->ext_to - off < len ? l->ext_to - off : len;
    /* file-posix reports holes as zero and everything as allocated at a
     * valid offset; the raw format passes that through. */
    const uint32_t hole = QRS_ZERO | QRS_ALLOCATED | QRS_OFFSET_VALID;
    if (lo == l->n_ext) {
        *n = limit;
        return hole;
    }
    const struct extent *e = &l->ext[lo];
    if (e->off > off) {
        *n = e->off - off < limit ? e->off - off : limit;
        return hole;
    }
    uint64_t end = e->off + e->len - off;
    *n = end < limit ? end : limit;
    return QRS_DATA | QRS_ALLOCATED | QRS_OFFSET_VALID;
}

static int layer_status(struct qread_chain *c, uint32_t i, uint64_t off, uint64_t len, uint64_t *n)
{
    struct qread_layer *l = &c->layers[i];
    if (off >= l->length) {
        /* Past a backing layer's end: qemu synthesizes zeroes "as if
         * allocated at this layer". */
        *n = len;
        return QRS_ZERO | QRS_ALLOCATED;
    }
    if (len > l->length - off) len = l->length - off;
    int r;
    if (l->fmt == FMT_RAW) {
        r = raw_status(l, off, len, n);
        if (r >= 0 && off + *n == l->length) r |= QRS_EOF;
        return r;
    }
    uint64_t k = 0, host = 0;
    int st = qcow2_block_status(&l->m, off, len, &k, &host);
    if (st < 0) return -1;
    if (k == 0 || k > len) return rt_error(l->r.input, GERR_INTERNAL, off, k, 0);
    uint32_t ov = (st & QST_OFFSET_VALID) ? QRS_OFFSET_VALID : 0;
    /* Each layer's own answer carries EOF when its run reaches that
     * layer's end (bdrv_co_block_status). */
    uint32_t eof = off + k == l->length ? QRS_EOF : 0;
    *n = k;
    if (st & QST_ZERO) return QRS_ZERO | QRS_ALLOCATED | ov | eof;
    if (st & (QST_DATA | QST_COMPRESSED)) return QRS_DATA | QRS_ALLOCATED | ov | eof;
    /* Unallocated here: the layer below decides; without one, qemu calls
     * it zero (not allocated). An allocated answer from below loses its
     * EOF (qemu re-derives it for the top); an unallocated one keeps it. */
    if (i + 1 < c->n) {
        r = layer_status(c, i + 1, off, k, n);
        if (r > 0 && (r & QRS_ALLOCATED)) r &= ~QRS_EOF;
        return r;
    }
    return QRS_ZERO | eof;
}

int qread_status(struct qread_chain *c, uint64_t off, uint64_t len, uint64_t *n)
{
    uint64_t end;
    if (len == 0 || __builtin_add_overflow(off, len, &end) || end > c->size)
        return rt_error(0, GERR_BAD_PARAMS, off, len, 1);
    int r = layer_status(c, 0, off, len, n);
    if (r >= 0 && (*n == 0 || *n > len)) return rt_error(0, GERR_INTERNAL, off, *n, 1);
    if (r >= 0 && off + *n == c->size) r |= QRS_EOF;
    return r;
}
