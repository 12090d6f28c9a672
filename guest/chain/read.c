/*
 * Reading guest-virtual byte ranges of a chain the way qemu's drivers read
 * (qcow2_co_preadv_part and friends): each layer's runs come from its
 * block_status, then are filled per run: stored bytes with one read (queued
 * into READV batches), zero runs with memset, unallocated runs from the
 * layer below (zeroes past its end or without one), compressed runs through
 * the format's read.
 */
#include "chain.h"

/* Sends the queued reads (one READV). */
static int flush_reads(struct chain *c)
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
static int stored_read(struct chain *c, const struct reader *r, uint64_t off, uint8_t *buf, uint64_t len)
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

static int layer_read(struct chain *c, uint32_t i, uint64_t off, uint64_t len, uint8_t *buf)
{
    struct layer *l = &c->layers[i].l;
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
    uint64_t pos = off, end = off + len;
    while (pos < end) {
        uint64_t n = 0, host = 0;
        int st = l->ops->block_status(l, pos, end - pos, &n, &host);
        if (st < 0) return -1;
        if (n == 0 || n > end - pos) return rt_error(l->r.input, GERR_INTERNAL, pos, n, 0);
        uint8_t *dst = buf + (pos - off);
        if (st & LS_ZERO) {
            memset(dst, 0, n);
        } else if (st & LS_COMPRESSED) {
            if (!l->ops->read) return rt_error(l->r.input, GERR_INTERNAL, pos, n, 1);
            if (l->ops->read(l, pos, n, dst)) return -1;
            c->read_data = true;
        } else if ((st & (LS_DATA | LS_RAW)) && (st & LS_OFFSET_VALID)) {
            /* Stored bytes; an LS_RAW run's holes read as zeroes anyway. */
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

int chain_read(struct chain *c, uint64_t off, uint64_t len, uint8_t *buf)
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

int chain_flush(struct chain *c)
{
    return flush_reads(c);
}
