/*
 * qcow2_encrypt with QCOW2_ENC_F_BACKING: the data of `convert -O qcow2 -o
 * encrypt.format=... -B BASE` (lib/convert/qcow2_encrypt_target.ts). What
 * qemu-img convert does with a target backing file, as guest/ops/convert.c's
 * CONV_BACKING mode does it for plain targets (the same requests:
 * guest/ops/backing_requests.c): block status is the source top layer's own
 * (chain_top_status); what the top leaves unallocated stays unallocated (the
 * target's backing file shows through), what it reads as zeroes becomes a
 * zero cluster (qemu's write-zeroes; zero clusters need no key) reported as
 * ZERO_RUN with host_offset 0, except from the backing file's size on, where
 * zeroes stay unallocated too. Data clusters are encrypted whole for their
 * host offset (LUKS) or guest offset (AES) by the caller's `store`. A target
 * cluster mixing left-alone bytes with written ones, or an all-zero cluster
 * split between requests, needs the backing file's bytes: with the target's
 * backing chain `tchain` open, as convert's plain clusters (breq_partial:
 * a zero cluster, or the backing file's bytes copied into the cluster, which
 * is then encrypted whole like any other); without it (a backing chain the
 * guest cannot be given), ZERO_RUN with host_offset 1, which the host
 * refuses. zero_data (compat=0.10): zeroes are written as (encrypted) data
 * clusters, as qemu's write-zeroes fallback does.
 *
 * With st NULL (QCOW2_ENC_F_CLASSIFY, convert -n into an encrypted qcow2 or
 * a preallocated encrypted target): the same requests over the whole
 * chain's status (no target backing file), nothing read past what -S needs
 * and nothing written: DATA_RUN (host_offset 0) for clusters a data request
 * touches, ZERO_RUN 0 for clusters one write-zeroes request covers whole,
 * ZERO_RUN 1 for all-zero clusters split between requests (qemu's
 * write-zeroes then asks whether the target cluster reads as zeroes; the
 * host knows).
 */
#include "qcow2_encrypt.h"
#define BREQ_CHUNK QE_CHUNK
#define BREQ_FILL 1
#include "backing_requests.c"

static struct rec_data_run drun; /* CLASSIFY: the data clusters' run being built */

static int data_cluster(uint64_t gc)
{
    if (drun.count && drun.guest_cluster + drun.count == gc) {
        drun.count++;
        return 0;
    }
    if (drun.count) {
        rec_set_header(&drun, REC_DATA_RUN, sizeof drun);
        if (rt_emit(&drun, sizeof drun)) return -1;
    }
    drun.guest_cluster = gc;
    drun.count = 1;
    drun.host_offset = 0;
    return 0;
}

int qe_backing(struct chain *chain, struct chain *tchain, uint64_t min_sparse, uint32_t cbits, uint64_t bsize,
               bool zero_data, uint8_t *buf, struct qe_store *st)
{
    uint64_t csize = 1ull << cbits, end = chain->size;
    bool classify_only = st == NULL; /* QCOW2_ENC_F_CLASSIFY: the whole chain's status, nothing written */
    struct breq r = {chain, bsize, min_sparse, cbits, classify_only, classify_only ? NULL : tchain};
    for (uint64_t off = 0; off < end;) {
        int64_t whole = breq_long_run(&r, off, end, cbits, zero_data);
        if (whole < 0) return -1;
        if (whole) {
            off += (uint64_t)whole;
            hc_progress(off, end);
            continue;
        }
        uint64_t n = end - off < QE_CHUNK ? end - off : QE_CHUNK;
        uint64_t padded = (n + csize - 1) & ~(csize - 1);
        if (breq_chunk(&r, off, n, padded, buf)) return -1;
        /* Stored clusters are packed to the front of buf (dst <= c), then encrypted and written at once. */
        uint64_t dst = 0;
        for (uint64_t c = 0; c < padded >> cbits; c++) {
            uint8_t s = cstate[c];
            uint64_t gc = (off >> cbits) + c;
            if (!(s & (CB_ZERO | CB_DATA))) continue;
            /* Copy-on-write of a partly written cluster: 1 a zero cluster, 0 the backing
             * file's bytes filled in, 2 none (no target backing chain: refused by the host). */
            int fill = 2;
            if (r.tchain && ((s & CB_SKIP) || (!(s & CB_DATA) && !zero_data && (s & CB_SPLIT)))) {
                fill = breq_partial(&r, off, c, cbits, zero_data, buf + (c << cbits));
                if (fill < 0) return -1;
            }
            if (fill == 1) {
                if (zero_cluster(gc, 0)) return -1;
            } else if ((s & CB_SKIP) && fill) {
                if (zero_cluster(gc, 1)) return -1;
            } else if (classify_only && (s & CB_DATA)) {
                if (data_cluster(gc)) return -1;
            } else if ((s & CB_DATA) || zero_data || !fill) {
                if (dst != c << cbits) memmove(buf + dst, buf + (c << cbits), csize);
                if (qe_store_cluster(st, gc, buf + dst)) return -1;
                dst += csize;
            } else if (zero_cluster(gc, (s & CB_SPLIT) ? 1 : 0)) {
                return -1;
            }
        }
        if (!classify_only && qe_store_flush(st, buf, dst)) return -1;
        off += n;
        hc_progress(off, end);
    }
    if (classify_only && data_cluster(UINT64_MAX)) return -1; /* emits the last run */
    return emit_zrun();
}
