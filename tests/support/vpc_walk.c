/*
 * Test-only hosted program (tests/vpc_guest_test.ts builds it with
 * guest/host/rt_host.c): opens input 0 through vpc_layer_ops and prints
 * what `qemu-img map --output=json -f vpc` prints, to stderr, so the layer's
 * block status can be compared with qemu's. The io.c part qemu adds above
 * the driver (BDRV_BLOCK_RECURSE into the file's holes, ALLOCATED, EOF
 * zeroes, merging of equal neighbours) is emulated here, minimally: it is
 * the chain code's job in the product.
 */
#include <stdio.h>
#include "chain/layer.h"
#include "vpc/vpc.h"

extern const struct layer_ops vpc_layer_ops;

struct ent { uint64_t start, len, off; int flags; };
#define F_DATA 1
#define F_ZERO 2
#define F_PRESENT 4
#define F_OFF 8

static void put(const struct ent *e, int first)
{
    fprintf(stderr, "%s{ \"start\": %llu, \"length\": %llu, \"depth\": 0, \"present\": %s, \"zero\": %s, \"data\": %s",
            first ? "[" : ",\n", (unsigned long long)e->start, (unsigned long long)e->len,
            e->flags & F_PRESENT ? "true" : "false", e->flags & F_ZERO ? "true" : "false",
            e->flags & F_DATA ? "true" : "false");
    if (e->flags & F_OFF) fprintf(stderr, ", \"offset\": %llu", (unsigned long long)e->off);
    fprintf(stderr, "}");
}

/* file-posix's answer for [off, off+n) of the image file (n > 0, off < flen). */
static int file_status(struct layer *l, uint64_t off, uint64_t n, uint64_t flen, uint64_t *pnum, int *eof)
{
    uint64_t size = l->r.size;
    int st;
    if (n > flen - off) n = flen - off;
    int64_t d = off < size ? hc_seek(l->r.input, off, SEEK_KIND_DATA) : (int64_t)size;
    if (d < 0) return -1;
    if ((uint64_t)d >= size) { *pnum = n; st = F_ZERO; }          /* trailing hole */
    else if ((uint64_t)d > off) { *pnum = (uint64_t)d - off < n ? (uint64_t)d - off : n; st = F_ZERO; }
    else {
        int64_t h = hc_seek(l->r.input, off, SEEK_KIND_HOLE);
        if (h < 0) return -1;
        *pnum = (uint64_t)h - off < n ? (uint64_t)h - off : n;
        st = F_DATA;
    }
    *eof = off + *pnum == flen;
    return st;
}

int op_main(void)
{
    static struct layer l;
    reader_from_input(&l.r, 0);
    l.data = &l.r;
    l.ops = &vpc_layer_ops;
    if (l.ops->open(&l)) return -1;
    const struct vpc *v = l.state;
    struct ent cur = {0, 0, 0, 0};
    int first = 1;
    uint64_t pos = 0, runs = 0;
    while (pos < l.length) {
        uint64_t len, host = 0;
        int st = l.ops->block_status(&l, pos, l.length - pos, &len, &host);
        if (st < 0) return -1;
        if (len == 0 || len > l.length - pos) { fprintf(stderr, "bad run\n"); return -1; }
        runs++;
        int f = 0;
        if (st & LS_DATA) f |= F_DATA;
        if (st & LS_ZERO) f |= F_ZERO;
        if (st & LS_OFFSET_VALID) f |= F_OFF;
        /* RECURSE: vpc answers it for fixed footers (vpc.h) */
        if (v->type == VPC_TYPE_FIXED && (f & F_DATA) && (f & F_OFF) && !(f & F_ZERO)) {
            uint64_t flen = v->file_len, pnum = 0;
            int eof = 1, fst = F_ZERO;
            if (host < flen) fst = file_status(&l, host, len, flen, &pnum, &eof);
            if (fst < 0) return -1;
            if (eof && (!pnum || (fst & F_ZERO))) f |= F_ZERO;
            else { len = pnum; f |= fst & F_ZERO; }
        }
        if (f & (F_DATA | F_ZERO)) f |= F_PRESENT;
        struct ent e = {pos, len, host, f};
        if (cur.len && cur.flags == e.flags && (!(f & F_OFF) || cur.off + cur.len == e.off)) {
            cur.len += e.len;
        } else {
            if (cur.len) { put(&cur, first); first = 0; }
            cur = e;
        }
        pos += len;
    }
    if (cur.len) { put(&cur, first); first = 0; }
    fprintf(stderr, first ? "[]\n" : "]\n");
    fprintf(stderr, "runs %llu\n", (unsigned long long)runs);
    return 0;
}
