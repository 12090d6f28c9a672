/*
 * qcow2 block status. qemu answers per L2 slice and per run of equally typed
 * (sub)clusters whose host offsets are contiguous; qemu-img map then merges
 * neighbours with equal flags and contiguous offsets. We return the same
 * runs but let them span L2 tables and skip runs of empty L1 entries in one
 * step, which gives the same merged result while work follows allocated
 * metadata, not the virtual size.
 */
#include "map.h"
#include "bytes.h"

enum sc_type { SC_UNALLOC_PLAIN, SC_UNALLOC_ALLOC, SC_ZERO_PLAIN, SC_ZERO_ALLOC, SC_NORMAL, SC_COMPRESSED, SC_INVALID };

static enum sc_type sc_type(const struct qcow2 *q, uint64_t e, uint64_t bm, uint32_t sc)
{
    enum qcow2_cluster_type t = qcow2_cluster_type(q, e);
    if (!q->extl2) {
        switch (t) {
        case QCT_COMPRESSED: return SC_COMPRESSED;
        case QCT_ZERO_PLAIN: return SC_ZERO_PLAIN;
        case QCT_ZERO_ALLOC: return SC_ZERO_ALLOC;
        case QCT_NORMAL: return SC_NORMAL;
        default: return SC_UNALLOC_PLAIN;
        }
    }
    if (t == QCT_COMPRESSED) return SC_COMPRESSED;
    if (t == QCT_NORMAL) {
        if ((bm >> 32) & bm) return SC_INVALID;
        if (bm & (1ull << (32 + sc))) return SC_ZERO_ALLOC;
        if (bm & (1ull << sc)) return SC_NORMAL;
        return SC_UNALLOC_ALLOC;
    }
    /* Unallocated (zero types do not exist with extended L2). */
    if (bm & QCOW2_BITMAP_ALL_ALLOC) return SC_INVALID;
    if (bm & (1ull << (32 + sc))) return SC_ZERO_PLAIN;
    return SC_UNALLOC_PLAIN;
}

static int status_of(enum sc_type t)
{
    switch (t) {
    case SC_NORMAL: return QST_DATA | QST_OFFSET_VALID;
    case SC_ZERO_ALLOC: return QST_ZERO | QST_OFFSET_VALID;
    case SC_UNALLOC_ALLOC: return QST_OFFSET_VALID;
    case SC_ZERO_PLAIN: return QST_ZERO;
    case SC_COMPRESSED: return QST_DATA | QST_COMPRESSED;
    default: return 0;
    }
}

int qcow2_mapper_init(struct qcow2_mapper *m, struct qcow2 *q)
{
    m->q = q;
    /* Up to 16 layers share guest RAM: a 256 KiB L1 window and one L2 slot
     * each (map reads every L2 table once, in order). */
    if (table_window_init_sized(&m->l1, q->r, q->l1_offset, q->l1_size, 256u << 10))
        return rt_error(q->r->input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    if (cluster_cache_init(&m->l2, q->r, q->cluster_size, 1)) return rt_error(q->r->input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    return 0;
}

static int l2_error(const struct qcow2 *q, uint32_t kind, uint64_t index, uint64_t a1, uint64_t a2)
{
    return rt_error(q->r->input, GERR_BAD_L2, (uint64_t)kind | index << 32, a1, a2);
}

int qcow2_block_status(struct qcow2_mapper *m, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    struct qcow2 *q = m->q;
    const uint32_t sc_bits = q->cluster_bits - (q->extl2 ? 5 : 0);
    const uint32_t l1_shift = q->cluster_bits + q->l2_bits;
    const uint64_t end = pos + bytes; /* caller keeps this <= virtual size */
    uint64_t at = pos;
    int first = -1;
    uint64_t first_host = 0, want_host = 0;

    while (at < end) {
        uint64_t l1i = at >> l1_shift;
        uint64_t l1e = 0;
        if (l1i < q->l1_size && table_window_get(&m->l1, l1i, &l1e)) return rt_error(q->r->input, GERR_IO, 0, 0, 0);
        uint64_t l2off = l1e & QCOW2_L1E_OFFSET_MASK;
        if (!l2off) {
            /* A whole L1 entry's range is unallocated. */
            if (first >= 0 && first != 0) break;
            first = 0;
            uint64_t next = (l1i + 1) << l1_shift;
            if (next == 0 || next > end) next = end; /* shifting past 2^64 wraps: clamp */
            at = next;
            continue;
        }
        if (l2off & (q->cluster_size - 1)) {
            if (first >= 0) break; /* report what we have; the error comes next call */
            return l2_error(q, QL2_L2_UNALIGNED, 0, l2off, l1i);
        }
        const uint8_t *l2 = cluster_cache_get(&m->l2, l2off);
        if (!l2) return rt_error(q->r->input, GERR_IO, l2off, 0, 0);
        uint64_t l2i = (at >> q->cluster_bits) & (q->l2_entries - 1);
        for (; l2i < q->l2_entries && at < end; l2i++) {
            const uint8_t *ep = l2 + l2i * q->l2_entry_bytes;
            uint64_t e = be64(ep), bm = q->extl2 ? be64(ep + 8) : 0;
            uint64_t cbase = at & ~(q->cluster_size - 1);
            uint64_t chost = e & QCOW2_L2E_OFFSET_MASK;
            for (uint32_t sc = (uint32_t)((at - cbase) >> sc_bits); sc < (q->extl2 ? 32u : 1u) && at < end; sc++) {
                enum sc_type t = sc_type(q, e, bm, sc);
                if (t == SC_INVALID && first >= 0) {
                    /* qemu evaluates the entry that ends a run inside the
                     * same call and fails that whole call: report only what
                     * earlier calls returned (calls end at L2 table ends and
                     * after INT_MAX bytes), and fail from that call on. */
                    uint64_t b = at & ~((1ull << l1_shift) - 1);
                    if (b < pos) b = pos;
                    b += (at - b) / 0x7fffffffull * 0x7fffffffull;
                    if (b == pos) {
                        first = -1;
                    } else {
                        at = b;
                        goto done;
                    }
                }
                if (t == SC_INVALID || (t == SC_COMPRESSED && q->has_data_file) ||
                    (q->version < 3 && (t == SC_ZERO_PLAIN || t == SC_ZERO_ALLOC)) ||
                    ((t == SC_NORMAL || t == SC_ZERO_ALLOC || t == SC_UNALLOC_ALLOC) && (chost & (q->cluster_size - 1)))) {
                    if (first >= 0) goto done;
                    uint32_t kind = t == SC_INVALID ? QL2_INVALID
                                    : t == SC_COMPRESSED ? QL2_COMPRESSED_DATA_FILE
                                    : (q->version < 3 && (t == SC_ZERO_PLAIN || t == SC_ZERO_ALLOC)) ? QL2_ZERO_V2
                                    : QL2_CLUSTER_UNALIGNED;
                    return l2_error(q, kind, l2i, l2off, chost);
                }
                int st = status_of(t);
                uint64_t unit_host = chost + ((uint64_t)sc << sc_bits);
                if (first < 0) {
                    first = st;
                    first_host = unit_host + (at - cbase - ((uint64_t)sc << sc_bits));
                } else if (st != first || ((st & QST_OFFSET_VALID) && unit_host != want_host)) {
                    goto done;
                }
                uint64_t unit_end = cbase + ((uint64_t)(sc + 1) << sc_bits);
                want_host = unit_host + (1ull << sc_bits);
                at = unit_end < end ? unit_end : end;
            }
        }
    }
done:
    *len = at - pos;
    *host = first_host;
    return first < 0 ? 0 : first;
}
