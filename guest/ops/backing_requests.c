/*
 * The write requests of qemu-img convert over a target backing file
 * (convert -B), shared by guest/ops/convert.c (CONV_BACKING: plain qcow2
 * clusters) and guest/ops/qcow2_encrypt_backing.c (encrypted clusters): the
 * walk over the source top layer's block status that decides, per target
 * cluster (or subcluster), which bytes are written with data, write-zeroed
 * or left to the backing file, with qemu's request rules (runs cut at the
 * backing file's size, 2 MiB buffers, -S pieces by is_allocated_sectors_min).
 * Each program keeps its own output step over the marks left in cstate.
 *
 * #included (its functions are static, so a program links only what it
 * uses; the guests are built without --gc-sections), not compiled alone.
 * Before including: BREQ_CHUNK (the chunk the caller classifies at once,
 * bytes) unless BREQ_ZRUN_ONLY (only the ZERO_RUN builder, for convert's
 * -B -c programs); BREQ_FILL to record, for the copy-on-write step
 * (breq_partial: the backing file's bytes into partly written clusters), the
 * sectors left alone (skipsec) and each unit's first write-zeroes piece
 * (zf_lo, zf_hi).
 */
#include "../chain/chain.h"
#include "records.h"
#include "zero.h"

static struct rec_data_run zrun; /* the ZERO_RUN being built (count 0 = none) */

static int emit_zrun(void)
{
    if (!zrun.count) return 0;
    rec_set_header(&zrun, REC_ZERO_RUN, sizeof zrun);
    if (rt_emit(&zrun, sizeof zrun)) return -1;
    zrun.count = 0;
    return 0;
}

/* Guest cluster gc is write-zeroed (partial 0) or needs the backing file (partial 1). */
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

/* The requests' setting. */
struct breq {
    struct chain *chain; /* the source */
    uint64_t bsize;      /* the target backing file's size */
    uint64_t min_sparse; /* -S in bytes; 0: zeroes are written as data */
    uint32_t ubits;      /* the unit marked in cstate: a cluster, or a subcluster with extended L2 */
    bool whole_chain;    /* no target backing file (qcow2_encrypt's CLASSIFY): the whole chain's status */
    struct chain *tchain; /* BREQ_FILL: the target's backing chain, opened (NULL: none given) */
};

/* What qemu-img convert -B does with the run at `at`: 0 leave it to the
 * backing file, 1 write zeroes, 2 copy data. -1 on error. */
static int breq_kind(const struct breq *r, uint64_t at, uint64_t len, uint64_t *k)
{
    if (at < r->bsize && len > r->bsize - at) len = r->bsize - at; /* qemu splits there */
    int st = r->whole_chain ? chain_status(r->chain, at, len, k) : chain_top_status(r->chain, at, len, k);
    if (st < 0) return -1;
    if (r->whole_chain) return (st & CS_ZERO) || !(st & CS_DATA) ? 1 : 2;
    if (st & CS_ZERO) return at >= r->bsize ? 0 : 1;
    return (st & CS_DATA) ? 2 : 0;
}

#ifndef BREQ_ZRUN_ONLY
#define CB_SKIP 1u  /* part of the unit is left to the backing file */
#define CB_ZERO 2u  /* part of the unit is write-zeroed */
#define CB_DATA 4u  /* part of the unit is written with data */
#define CB_SPLIT 8u /* a write-zeroes request starts or ends inside the unit */
#define MAX_DRUNS 512u

static uint8_t cstate[BREQ_CHUNK >> 9]; /* per unit of the chunk: CB_* */
static uint64_t druns[2 * MAX_DRUNS];   /* data runs of the chunk read so far {offset, length} */
#ifdef BREQ_FILL
/* The chunk's sectors left to the backing file, and per unit the first
 * write-zeroes piece [zf_lo, zf_hi) (chunk offsets; zf_hi 0 = none). */
static uint8_t skipsec[BREQ_CHUNK >> 9];
static uint32_t zf_lo[BREQ_CHUNK >> 9], zf_hi[BREQ_CHUNK >> 9];
#endif

/*
 * A long run at off left alone or write-zeroed is taken in whole clusters
 * at once (a zero run becomes ZERO_RUN clusters): the bytes it covers, or 0
 * when the chunk at off is to be classified request by request. -1 on error.
 */
static int64_t breq_long_run(const struct breq *r, uint64_t off, uint64_t end, uint32_t cbits, bool zero_data)
{
    uint64_t k = 0;
    int kind = breq_kind(r, off, end - off, &k);
    if (kind < 0) return -1;
    if (kind == 2 || (kind == 1 && (!r->min_sparse || zero_data)) || k < BREQ_CHUNK) return 0;
    uint64_t whole = k & ~((1ull << cbits) - 1);
    if (kind == 1) {
        if (zero_cluster(off >> cbits, 0)) return -1;
        zrun.count += (whole >> cbits) - 1;
    }
    return (int64_t)whole;
}

/* Marks the chunk's units a request [at, at+len) of kind `bit` touches
 * (chunk offset `off`); a write-zeroes request ending inside a unit
 * splits it (the disk's end does not). */
static void mark(const struct breq *r, uint64_t off, uint64_t at, uint64_t len, uint8_t bit)
{
    uint32_t ubits = r->ubits;
    uint64_t usize = 1ull << ubits;
    uint64_t first = (at - off) >> ubits, last = (at + len - 1 - off) >> ubits;
    for (uint64_t c = first; c <= last; c++) cstate[c] |= bit;
#ifdef BREQ_FILL
    if (bit == CB_ZERO) {
        /* qemu's block layer cuts the request at cluster boundaries; the
         * first piece (lowest offset) in a unit decides (convert_qcow2_backing). */
        for (uint64_t c = first; c <= last; c++) {
            uint64_t lo = c << ubits, hi = lo + usize;
            if (at - off > lo) lo = at - off;
            if (at + len - off < hi) hi = at + len - off;
            if (!zf_hi[c] || lo < zf_lo[c]) zf_lo[c] = (uint32_t)lo, zf_hi[c] = (uint32_t)hi;
        }
    } else if (bit == CB_SKIP) {
        memset(skipsec + ((at - off) >> 9), 1, ((at - off + len + 511) >> 9) - ((at - off) >> 9));
    }
#endif
    if (bit == CB_ZERO) {
        if (at & (usize - 1)) cstate[first] |= CB_SPLIT;
        if (((at + len) & (usize - 1)) && at + len != r->chain->size) cstate[last] |= CB_SPLIT;
    }
}

/* qemu-img's is_allocated_sectors: the leading run of sectors that are all
 * zero or all not, its end moved to an `align`-sector boundary (data up,
 * zeroes down; short zeroes before data count as data). 1 data, 0 zeroes. */
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

/* qemu-img's is_allocated_sectors_min: a data piece takes in the zero runs
 * shorter than `min` sectors that follow it; a leading zero run stays zero. */
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

/* Cuts the data runs read so far into qemu's write requests (2 MiB buffers
 * from each run's start, then is_allocated_sectors_min pieces with -S) and
 * marks the units they touch. */
static void mark_data_runs(const struct breq *r, uint32_t nr, uint64_t off, const uint8_t *buf)
{
    uint64_t min = r->min_sparse >> 9, align = 1;
    while (align * 2 <= min) align *= 2; /* pow2floor(min_sparse in sectors) */
    for (uint32_t i = 0; i < nr; i++) {
        uint64_t x = druns[2 * i], end = x + druns[2 * i + 1];
        for (uint64_t b = x; b < end;) {
            uint64_t blen = end - b < (2ull << 20) ? end - b : (2ull << 20);
            /* Whole sectors: a run ends on a sector or at the disk's end. */
            uint64_t sectors = (blen + 511) >> 9;
            for (uint64_t s = 0; s < sectors;) {
                uint64_t n = sectors - s;
                int data = !r->min_sparse ? 1
                                          : alloc_sectors_min(buf + (b - off) + s * 512, n, &n, min, (b >> 9) + s,
                                                              align);
                uint64_t at = b + s * 512, len = n * 512;
                if (at + len > b + blen) len = b + blen - at;
                mark(r, off, at, len, data ? CB_DATA : CB_ZERO);
                s += n;
            }
            b += blen;
        }
    }
}

#ifdef BREQ_FILL
/* qcow2's is_zero over the target's backing file: [from, to) reads as
 * zeroes by block status (past its end too). 1 yes, 0 no, -1 on error. */
static int backing_is_zero(const struct breq *r, uint64_t from, uint64_t to)
{
    if (to > r->tchain->size) to = r->tchain->size;
    for (uint64_t at = from; at < to;) {
        uint64_t k = 0;
        int st = chain_status(r->tchain, at, to - at, &k);
        if (st < 0) return -1;
        if (!(st & CS_ZERO)) return 0;
        at += k;
    }
    return 1;
}

/* qcow2's is_zero for a write-zeroes piece: whether the rest of unit u
 * (a cluster, or a subcluster with extended L2 entries; 2^ubits bytes, its
 * index in the chunk at off) reads as zeroes through the backing file
 * besides the first piece [zf_lo, zf_hi). 1 yes, 0 no, -1 on error. */
static int unit_rest_is_zero(const struct breq *r, uint64_t off, uint64_t u, uint32_t ubits)
{
    uint64_t base = off + (u << ubits), end = base + (1ull << ubits);
    if (end > r->chain->size) end = r->chain->size;
    if (!zf_hi[u]) return rt_error(0, GERR_INTERNAL, 14, base, 0);
    int z = backing_is_zero(r, base, off + zf_lo[u]);
    if (z > 0) z = backing_is_zero(r, off + zf_hi[u], end);
    return z;
}

/* The backing file's bytes into the sectors of unit u the requests left alone (dst: the unit's bytes). */
static int fill_skipped(const struct breq *r, uint64_t off, uint64_t u, uint32_t ubits, uint8_t *dst)
{
    uint64_t base = off + (u << ubits), first = (u << ubits) >> 9, n = (1ull << ubits) >> 9;
    for (uint64_t i = 0; i < n;) {
        if (!skipsec[first + i]) {
            i++;
            continue;
        }
        uint64_t j = i;
        while (j < n && skipsec[first + j]) j++;
        uint64_t from = base + (i << 9), to = base + (j << 9);
        if (to > r->tchain->size) to = r->tchain->size;
        if (from < to && chain_read(r->tchain, from, to - from, dst + (i << 9))) return -1;
        i = j;
    }
    return 0;
}

/*
 * A target cluster only partly written (c: its index in the chunk at off,
 * cl its bytes as the requests left them), as qemu's qcow2 driver does it
 * in a new overlay: a data write allocates the cluster and copies the
 * backing file's bytes into the rest (COW); a write-zeroes piece makes the
 * whole cluster a zero cluster when the rest of it reads as zeroes (is_zero
 * through the backing file; the first piece decides, later ones then find
 * a zero cluster), else it falls back to writing zeroes, which allocates
 * and copies as a data write. compat=0.10 (zero_data) always writes.
 * Either way the bytes the requests leave alone are the backing file's.
 * 1: a zero cluster; 0: store cl (the backing file's bytes filled in); -1 on error.
 */
static int breq_partial(const struct breq *r, uint64_t off, uint64_t c, uint32_t cbits, bool zero_data, uint8_t *cl)
{
    if (!(cstate[c] & CB_DATA) && !zero_data) {
        int z = unit_rest_is_zero(r, off, c, cbits);
        if (z) return z;
    }
    return fill_skipped(r, off, c, cbits, cl);
}
#endif

/*
 * Classifies the chunk [off, off+n) (n <= BREQ_CHUNK; `padded` its length
 * in whole clusters): the data the requests write is read into buf (at
 * chunk offsets), everything else there and past the disk's end is zeroed,
 * and cstate marks each unit with the kinds of requests touching it.
 */
static int breq_chunk(const struct breq *r, uint64_t off, uint64_t n, uint64_t padded, uint8_t *buf)
{
    memset(cstate, 0, padded >> r->ubits);
#ifdef BREQ_FILL
    memset(skipsec, 0, padded >> 9);
    memset(zf_hi, 0, (padded >> r->ubits) * sizeof zf_hi[0]);
#endif
    /* Past the disk's end the last cluster (and sector) reads as zeroes. */
    if (padded > n) memset(buf + n, 0, padded - n);
    uint32_t nr = 0;
    for (uint64_t at = off; at < off + n;) {
        uint64_t k = 0;
        int kind = breq_kind(r, at, off + n - at, &k);
        if (kind < 0) return -1;
        if (kind == 2) {
            if (nr == MAX_DRUNS) {
                if (chain_flush(r->chain)) return -1;
                mark_data_runs(r, nr, off, buf);
                nr = 0;
            }
            if (chain_read(r->chain, at, k, buf + (at - off))) return -1;
            druns[2 * nr] = at;
            druns[2 * nr + 1] = k;
            nr++;
        } else {
            memset(buf + (at - off), 0, k);
            /* -S 0: qemu writes zeroes as data. */
            mark(r, off, at, k, kind == 0 ? CB_SKIP : r->min_sparse ? CB_ZERO : CB_DATA);
        }
        at += k;
    }
    if (chain_flush(r->chain)) return -1;
    mark_data_runs(r, nr, off, buf);
    return 0;
}
#endif
