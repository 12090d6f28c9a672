/*
 * Holes of a host file for the read path's block status: the VMM answers
 * EXTENTS with the file's data extents in a window (lseek SEEK_DATA/HOLE
 * on its side); everything between them is a hole that reads as zeroes.
 * file-posix reports holes as zero and everything as allocated at a valid
 * offset, and formats that defer to the file (LS_RAW) pass that through.
 */
#include "extents.h"
#include "chain.h"

/* Fetches the data extents of the file from off on (once per window: cold,
 * compiled for size). */
static __attribute__((cold)) int fetch(struct file_extents *x, const struct reader *r, uint64_t off)
{
    uint64_t fsize = r->size;
    /* A window of 64 GiB keeps each answer short for sparse files. */
    uint64_t to = fsize - off > (64ull << 30) ? off + (64ull << 30) : fsize;
    int64_t k = hc_extents(r->input, off, to - off, x->ext);
    if (k < 0 || k > LIMIT_EXTENTS_MAX) return rt_error(r->input, GERR_IO, off, 0, 4);
    /* The VMM's answer is checked like any other: ordered, inside the window. */
    uint64_t at = off;
    for (int64_t j = 0; j < k; j++) {
        uint64_t e;
        if (x->ext[j].off < at || x->ext[j].len == 0 ||
            __builtin_add_overflow(x->ext[j].off, x->ext[j].len, &e) || e > to)
            return rt_error(r->input, GERR_IO, off, 0, 5);
        at = e;
    }
    x->n = (uint32_t)k;
    x->input = r->input;
    x->from = off;
    x->to = k == LIMIT_EXTENTS_MAX ? at : to;
    return 0;
}

int file_extents_status(struct file_extents *x, const struct reader *r, uint64_t off, uint64_t len, uint64_t *n)
{
    uint64_t fsize = r->size;
    if (off >= fsize) { /* the rounded-up tail past the file */
        *n = len;
        return CS_ZERO | CS_ALLOCATED | CS_OFFSET_VALID;
    }
    if (len > fsize - off) len = fsize - off;
    if (off < x->from || off >= x->to || x->input != r->input) {
        if (fetch(x, r, off)) return -1;
    }
    /* First extent ending after off (binary search: they are ordered). */
    uint32_t lo = 0, hi = x->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (x->ext[mid].off + x->ext[mid].len <= off) lo = mid + 1;
        else hi = mid;
    }
    uint64_t limit = x->to - off < len ? x->to - off : len;
    const uint32_t hole = CS_ZERO | CS_ALLOCATED | CS_OFFSET_VALID;
    if (lo == x->n) {
        *n = limit;
        return hole;
    }
    const struct extent *e = &x->ext[lo];
    if (e->off > off) {
        *n = e->off - off < limit ? e->off - off : limit;
        return hole;
    }
    uint64_t end = e->off + e->len - off;
    *n = end < limit ? end : limit;
    return CS_DATA | CS_ALLOCATED | CS_OFFSET_VALID;
}
