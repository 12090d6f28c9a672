/*
 * qcow2_encrypt with QCOW2_ENC_F_BACKING: the data of `convert -O qcow2 -o
 * encrypt.format=... -B BASE` (lib/convert/qcow2_encrypt_target.ts). What
 * qemu-img convert does with a target backing file, as guest/ops/convert.c's
 * CONV_BACKING mode does it for plain targets (the same classification,
 * kept in step with it): block status is the source top layer's own
 * (chain_top_status); what the top leaves unallocated stays unallocated (the
 * target's backing file shows through), what it reads as zeroes becomes a
 * zero cluster (qemu's write-zeroes; zero clusters need no key) reported as
 * ZERO_RUN with host_offset 0, except from the backing file's size on, where
 * zeroes stay unallocated too. Data clusters are encrypted whole for their
 * host offset (LUKS) or guest offset (AES) by the caller's `store`. A target
 * cluster mixing left-alone bytes with written ones, or an all-zero cluster
 * split between requests, would need the backing file's bytes: ZERO_RUN with
 * host_offset 1, which the host refuses. zero_data (compat=0.10): zeroes are
 * written as (encrypted) data clusters, as qemu's write-zeroes fallback does.
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
#include "../chain/chain.h"
#include "records.h"
#include "zero.h"
#include "qcow2_encrypt.h"

#define CB_SKIP 1u  /* part of the cluster is left to the backing file */
#define CB_ZERO 2u  /* part of the cluster is write-zeroed */
#define CB_DATA 4u  /* part of the cluster is written with data */
#define CB_SPLIT 8u /* a write-zeroes request starts or ends inside the cluster */
#define MAX_DRUNS 512u

static uint8_t cstate[QE_CHUNK >> 9];
static struct rec_data_run zrun;
static uint64_t druns[2 * MAX_DRUNS];
static uint64_t disk_size;
static bool classify_only; /* QCOW2_ENC_F_CLASSIFY: the whole chain's status, nothing written */

static int emit_zrun(void)
{
    if (!zrun.count) return 0;
    rec_set_header(&zrun, REC_ZERO_RUN, sizeof zrun);
    if (rt_emit(&zrun, sizeof zrun)) return -1;
    zrun.count = 0;
    return 0;
}

static int zero_cluster(uint64_t gc, uint64_t partial)
{
    if (zrun.count && zrun.guest_cluster + zrun.count == gc && zrun.host_offset == partial) {
        zrun.count++;
        return 0;
    }
    if (emit_zrun()) return -1;
    zrun.guest_cluster = gc;
    zrun.count = 1;
    zrun.host_offset = partial;
    return 0;
}

/* 0 leave the run to the backing file, 1 write zeroes, 2 copy data; -1 error. */
static int backing_kind(struct chain *chain, uint64_t at, uint64_t len, uint64_t bsize, uint64_t *k)
{
    if (at < bsize && len > bsize - at) len = bsize - at; /* qemu splits there */
    int st = classify_only ? chain_status(chain, at, len, k) : chain_top_status(chain, at, len, k);
    if (st < 0) return -1;
    if (classify_only) return (st & CS_ZERO) || !(st & CS_DATA) ? 1 : 2; /* no target backing file */
    if (st & CS_ZERO) return at >= bsize ? 0 : 1;
    return (st & CS_DATA) ? 2 : 0;
}

static void mark(uint64_t off, uint64_t at, uint64_t len, uint8_t bit, uint32_t cbits)
{
    uint64_t csize = 1ull << cbits;
    uint64_t first = (at - off) >> cbits, last = (at + len - 1 - off) >> cbits;
    for (uint64_t c = first; c <= last; c++) cstate[c] |= bit;
    if (bit == CB_ZERO) {
        if (at & (csize - 1)) cstate[first] |= CB_SPLIT;
        if (((at + len) & (csize - 1)) && at + len != disk_size) cstate[last] |= CB_SPLIT;
    }
}

/* qemu-img's is_allocated_sectors (1 data, 0 zeroes). */
static int alloc_sectors(const uint8_t *buf, uint64_t n, uint64_t *pnum, uint64_t sector, uint64_t align)
{
    bool zero = buf_is_zero(buf, 512);
    uint64_t i = 1;
    while (i < n && buf_is_zero(buf + i * 512, 512) == zero) i++;
    if (i == n) {
        *pnum = n;
        return !zero;
    }
    uint64_t tail = (sector + i) & (align - 1);
    if (tail) {
        if (zero && i <= tail) zero = false;
        if (!zero) {
            i += align - tail;
            if (i > n) i = n;
        } else {
            i -= tail;
        }
    }
    *pnum = i;
    return !zero;
}

/* qemu-img's is_allocated_sectors_min. */
static int alloc_sectors_min(const uint8_t *buf, uint64_t n, uint64_t *pnum, uint64_t min, uint64_t sector,
                             uint64_t align)
{
    if (n < min) min = n;
    if (!alloc_sectors(buf, n, pnum, sector, align)) return 0;
    uint64_t used = *pnum, checked = used;
    buf += 512 * *pnum, n -= *pnum, sector += *pnum;
    while (n > 0) {
        int ret = alloc_sectors(buf, n, pnum, sector, align);
        buf += 512 * *pnum, n -= *pnum, sector += *pnum, checked += *pnum;
        if (ret) {
            used = checked;
        } else if (*pnum >= min) {
            break;
        }
    }
    *pnum = used;
    return 1;
}

/* qemu's write requests of the data runs read so far (2 MiB buffers, then -S pieces). */
static void mark_data_runs(uint32_t nr, uint64_t off, uint64_t min_sparse, uint32_t cbits, const uint8_t *buf)
{
    uint64_t min = min_sparse >> 9, align = 1;
    while (align * 2 <= min) align *= 2;
    for (uint32_t r = 0; r < nr; r++) {
        uint64_t x = druns[2 * r], end = x + druns[2 * r + 1];
        for (uint64_t b = x; b < end;) {
            uint64_t blen = end - b < (2ull << 20) ? end - b : (2ull << 20);
            uint64_t sectors = (blen + 511) >> 9;
            for (uint64_t s = 0; s < sectors;) {
                uint64_t n = sectors - s;
                int data = !min_sparse ? 1
                                       : alloc_sectors_min(buf + (b - off) + s * 512, n, &n, min, (b >> 9) + s, align);
                uint64_t at = b + s * 512, len = n * 512;
                if (at + len > b + blen) len = b + blen - at;
                mark(off, at, len, data ? CB_DATA : CB_ZERO, cbits);
                s += n;
            }
            b += blen;
        }
    }
}

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

int qe_backing(struct chain *chain, uint64_t min_sparse, uint32_t cbits, uint64_t bsize, bool zero_data, uint8_t *buf,
               struct qe_store *st)
{
    uint64_t csize = 1ull << cbits, end = chain->size;
    disk_size = end;
    classify_only = st == NULL;
    for (uint64_t off = 0; off < end;) {
        uint64_t k = 0;
        int kind = backing_kind(chain, off, end - off, bsize, &k);
        if (kind < 0) return -1;
        if (kind != 2 && (kind == 0 || (min_sparse && !zero_data)) && k >= QE_CHUNK) {
            uint64_t whole = k & ~(csize - 1);
            if (kind == 1) {
                if (zero_cluster(off >> cbits, 0)) return -1;
                zrun.count += (whole >> cbits) - 1;
            }
            off += whole;
            hc_progress(off, end);
            continue;
        }
        uint64_t n = end - off < QE_CHUNK ? end - off : QE_CHUNK;
        uint64_t padded = (n + csize - 1) & ~(csize - 1);
        memset(cstate, 0, padded >> cbits);
        if (padded > n) memset(buf + n, 0, padded - n);
        uint32_t nr = 0;
        for (uint64_t at = off; at < off + n;) {
            kind = backing_kind(chain, at, off + n - at, bsize, &k);
            if (kind < 0) return -1;
            if (kind == 2) {
                if (nr == MAX_DRUNS) {
                    if (chain_flush(chain)) return -1;
                    mark_data_runs(nr, off, min_sparse, cbits, buf);
                    nr = 0;
                }
                if (chain_read(chain, at, k, buf + (at - off))) return -1;
                druns[2 * nr] = at;
                druns[2 * nr + 1] = k;
                nr++;
            } else {
                memset(buf + (at - off), 0, k);
                mark(off, at, k, kind == 0 ? CB_SKIP : min_sparse ? CB_ZERO : CB_DATA, cbits);
            }
            at += k;
        }
        if (chain_flush(chain)) return -1;
        mark_data_runs(nr, off, min_sparse, cbits, buf);
        /* Stored clusters are packed to the front of buf (dst <= c), then encrypted and written at once. */
        uint64_t dst = 0;
        for (uint64_t c = 0; c < padded >> cbits; c++) {
            uint8_t s = cstate[c];
            uint64_t gc = (off >> cbits) + c;
            if (!(s & (CB_ZERO | CB_DATA))) continue;
            if (s & CB_SKIP) {
                if (zero_cluster(gc, 1)) return -1;
            } else if (classify_only && (s & CB_DATA)) {
                if (data_cluster(gc)) return -1;
            } else if ((s & CB_DATA) || zero_data) {
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
