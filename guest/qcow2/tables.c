/*
 * Table access for qcow2: a window over a big-endian u64 table (L1), a small
 * whole-cluster cache (L2 tables, refcount blocks) and refcount decoding for
 * every entry width. Reads are as large as the structure allows (1 MiB
 * windows, whole clusters) because each read is a VM exit in the guest.
 */
#include "qcow2.h"
#include "bytes.h"

#define WINDOW_BYTES (1ull << 20)

int table_window_init_sized(struct table_window *w, const struct reader *r, uint64_t offset, uint64_t entries,
                            uint64_t bytes)
{
    w->r = r;
    w->offset = offset;
    w->entries = entries;
    w->first = 0;
    w->count = 0;
    w->cap = bytes / 8;
    w->buf = rt_alloc(bytes);
    return w->buf ? 0 : -1;
}

int table_window_init(struct table_window *w, const struct reader *r, uint64_t offset, uint64_t entries)
{
    return table_window_init_sized(w, r, offset, entries, WINDOW_BYTES);
}

int table_window_get(struct table_window *w, uint64_t i, uint64_t *v)
{
    if (i >= w->entries) return -1;
    if (i < w->first || i >= w->first + w->count) {
        uint64_t n = w->entries - i;
        if (n > w->cap) n = w->cap;
        /* offset + entries*8 <= INT64_MAX was validated by the caller. */
        if (reader_read(w->r, w->offset + i * 8, w->buf, n * 8)) return -1;
        w->first = i;
        w->count = n;
    }
    *v = be64(w->buf + (i - w->first) * 8);
    return 0;
}

int byte_window_init(struct byte_window *w, const struct reader *r)
{
    w->r = r;
    w->start = w->len = 0;
    w->cap = WINDOW_BYTES;
    w->buf = rt_alloc(WINDOW_BYTES);
    return w->buf ? 0 : -1;
}

int byte_window_read(struct byte_window *w, uint64_t off, void *dst, uint64_t n)
{
    uint64_t end;
    if (__builtin_add_overflow(off, n, &end) || end > READER_MAX_END) return -1;
    if (!w->buf || n > w->cap) return reader_read(w->r, off, dst, n);
    if (off < w->start || end > w->start + w->len) {
        /* Refill from off; never ask past qemu's maximum request end. */
        uint64_t len = READER_MAX_END - off < w->cap ? READER_MAX_END - off : w->cap;
        if (reader_read(w->r, off, w->buf, len)) return -1;
        w->start = off;
        w->len = len;
    }
    memcpy(dst, w->buf + (off - w->start), n);
    return 0;
}

int cluster_cache_init(struct cluster_cache *c, const struct reader *r, uint64_t cluster_size, uint32_t slots)
{
    c->r = r;
    c->cluster_size = cluster_size;
    c->slots = slots;
    c->tick = 0;
    c->offsets = rt_alloc(8ull * slots);
    c->used = rt_calloc(slots, 8);
    c->data = rt_alloc(cluster_size * slots);
    if (!c->offsets || !c->used || !c->data) return -1;
    /* 16 clusters, at least 256 KiB and at most 1 MiB; none for clusters
     * of 1 MiB and more, whose own reads are big enough. */
    c->win_cap = cluster_size >= (1u << 20) ? 0 : cluster_size * 16;
    if (c->win_cap && c->win_cap < (256u << 10)) c->win_cap = 256u << 10;
    if (c->win_cap > (1u << 20)) c->win_cap = 1u << 20;
    c->win_off = c->win_len = 0;
    c->win = c->win_cap ? rt_alloc(c->win_cap) : NULL;
    if (c->win_cap && !c->win) c->win_cap = 0; /* run without read-ahead */
    for (uint32_t i = 0; i < slots; i++) c->offsets[i] = UINT64_MAX;
    return 0;
}

const uint8_t *cluster_cache_get(struct cluster_cache *c, uint64_t offset)
{
    uint32_t victim = 0;
    for (uint32_t i = 0; i < c->slots; i++) {
        if (c->offsets[i] == offset) {
            c->used[i] = ++c->tick;
            return c->data + (uint64_t)i * c->cluster_size;
        }
        if (c->used[i] < c->used[victim]) victim = i;
    }
    uint8_t *slot = c->data + (uint64_t)victim * c->cluster_size;
    c->offsets[victim] = UINT64_MAX;
    uint64_t end;
    if (__builtin_add_overflow(offset, c->cluster_size, &end)) return NULL;
    if (c->win_cap && offset < c->r->size && !(offset >= c->win_off && end <= c->win_off + c->win_len)) {
        /* Refill the window from here, as far as the file goes. Offsets
         * past READER_MAX_END fail in reader_read like a direct read. */
        uint64_t len = c->r->size - offset;
        if (len > c->win_cap) len = c->win_cap;
        if (len < c->cluster_size) len = c->cluster_size;
        c->win_len = 0;
        if (reader_read(c->r, offset, c->win, len) == 0) {
            c->win_off = offset;
            c->win_len = len;
        }
    }
    if (c->win_len && offset >= c->win_off && end <= c->win_off + c->win_len)
        memcpy(slot, c->win + (offset - c->win_off), c->cluster_size);
    else if (reader_read(c->r, offset, slot, c->cluster_size))
        return NULL;
    c->offsets[victim] = offset;
    c->used[victim] = ++c->tick;
    return slot;
}

uint64_t qcow2_refblock_entry(const uint8_t *b, uint32_t order, uint64_t i)
{
    switch (order) {
    case 0: return (b[i >> 3] >> (i & 7)) & 1; /* sub-byte widths pack LSB first */
    case 1: return (b[i >> 2] >> (2 * (i & 3))) & 3;
    case 2: return (b[i >> 1] >> (4 * (i & 1))) & 15;
    case 3: return b[i];
    case 4: return be16(b + 2 * i);
    case 5: return be32(b + 4 * i);
    default: return be64(b + 8 * i);
    }
}

int qcow2_get_refcount(const struct qcow2 *q, struct cluster_cache *c, uint64_t cluster, uint64_t *out)
{
    uint64_t idx = cluster >> q->refblock_bits;
    *out = 0;
    if (idx >= q->reftable_entries) return 0;
    uint64_t block = q->reftable[idx] & QCOW2_REFT_OFFSET_MASK;
    if (!block) return 0;
    if (block & (q->cluster_size - 1)) return -1;
    const uint8_t *b = cluster_cache_get(c, block);
    if (!b) return -2;
    *out = qcow2_refblock_entry(b, q->refcount_order, cluster & ((1ull << q->refblock_bits) - 1));
    return 0;
}
