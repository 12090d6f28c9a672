/*
 * The LUKS2 binary header (cryptsetup's luks2_hdr_disk, 4096 bytes, big
 * endian) and its two copies: the primary at 0 ("LUKS\xba\xbe"), the
 * secondary at the primary's hdr_size ("SKUL\xba\xbe"; when the primary is
 * unusable, at each size cryptsetup knows). A copy is used only if its
 * version is 2, hdr_size one of cryptsetup's sizes and inside the file, its
 * own offset recorded, checksum_alg "sha256" and the SHA-256 over the whole
 * copy (binary header with the checksum field zeroed, then the JSON area)
 * matches. Of the usable copies the highest seqid wins; its JSON goes to
 * meta.c. Reading is bounded: hdr_size <= 4 MiB, two copies at most.
 */
#include "luks2.h"
#include "bytes.h"
#include "../ops/records.h"
#include <nettle/sha2.h>

static const uint64_t SIZES[] = { 0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000 };

static bool known_size(uint64_t s)
{
    for (uint32_t i = 0; i < sizeof SIZES / sizeof SIZES[0]; i++)
        if (SIZES[i] == s) return true;
    return false;
}

struct copy {
    uint8_t *buf; /* hdr_size bytes: binary header, then the JSON area */
    uint64_t size, seqid;
};

/* Reads and checks the copy at `off`: 0, a LUKS2_HF_* fault, -1 (I/O) or -2 (out of memory, reported). */
static int read_copy(const struct reader *r, uint64_t off, bool primary, struct copy *c)
{
    uint8_t h[LUKS2_BIN_SIZE];
    if (off > r->size || r->size - off < LUKS2_BIN_SIZE) return LUKS2_HF_NOT_FOUND;
    if (reader_read(r, off, h, sizeof h)) return -1;
    static const uint8_t m1[6] = { 'L', 'U', 'K', 'S', 0xba, 0xbe }, m2[6] = { 'S', 'K', 'U', 'L', 0xba, 0xbe };
    if (memcmp(h, primary ? m1 : m2, 6) != 0) return LUKS2_HF_MAGIC;
    if (be16(h + 6) != 2) return LUKS2_HF_VERSION;
    uint64_t size = be64(h + 8);
    if (!known_size(size)) return LUKS2_HF_SIZE;
    if (be64(h + 256) != off) return LUKS2_HF_OFFSET;
    if (size > r->size - off) return LUKS2_HF_PAST_EOF;
    char alg[33];
    memcpy(alg, h + 72, 32);
    alg[32] = 0;
    if (strlen(alg) != 6 || memcmp(alg, "sha256", 6) != 0) return LUKS2_HF_CSUM_ALG;
    uint64_t mark = rt_heap_mark();
    uint8_t *buf = rt_alloc(size);
    if (!buf) return rt_error(r->input, GERR_OUT_OF_MEMORY, size, 0, 0), -2;
    if (reader_read(r, off, buf, size)) return -1;
    uint8_t want[32], got[SHA256_DIGEST_SIZE];
    memcpy(want, buf + 448, 32);
    memset(buf + 448, 0, 64);
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, size, buf);
    sha256_digest(&ctx, sizeof got, got);
    if (memcmp(want, got, 32) != 0) {
        rt_heap_release(mark);
        return LUKS2_HF_CSUM;
    }
    c->buf = buf, c->size = size, c->seqid = be64(h + 16);
    return 0;
}

static int meta_of(struct luks2 *k, const struct copy *c)
{
    k->hdr_size = c->size;
    k->seqid = c->seqid;
    memcpy(k->uuid, c->buf + 168, sizeof k->uuid);
    const char *json = (const char *)c->buf + LUKS2_BIN_SIZE;
    uint32_t area = (uint32_t)(c->size - LUKS2_BIN_SIZE), len = 0;
    while (len < area && json[len]) len++;
    return luks2_parse_meta(k, json, len);
}

/* The copies' buffers are dropped before returning: k keeps no pointer into them. */
static int open_header(struct luks2 *k, const struct reader *r);

int luks2_open_header(struct luks2 *k, const struct reader *r)
{
    uint64_t mark = rt_heap_mark();
    int rc = open_header(k, r);
    rt_heap_release(mark);
    return rc;
}

static int open_header(struct luks2 *k, const struct reader *r)
{
    memset(k, 0, sizeof *k);
    k->r = r;
    struct copy p = { 0 }, s = { 0 };
    int fp = read_copy(r, 0, true, &p);
    if (fp == -2) return -1;
    if (fp < 0) return rt_error(r->input, GERR_IO, 0, 0, 0);
    int fs = LUKS2_HF_NOT_FOUND;
    if (fp == 0) {
        fs = read_copy(r, p.size, false, &s);
    } else {
        for (uint32_t i = 0; i < sizeof SIZES / sizeof SIZES[0] && fs != 0; i++) {
            int f = read_copy(r, SIZES[i], false, &s);
            if (f == -2) return -1;
            if (f < 0) return rt_error(r->input, GERR_IO, SIZES[i], 0, 0);
            if (f != LUKS2_HF_NOT_FOUND && f != LUKS2_HF_MAGIC) fs = f; /* a copy was there */
            if (f == 0) fs = 0;
        }
    }
    if (fs == -2) return -1;
    if (fs < 0) return rt_error(r->input, GERR_IO, p.size, 0, 0);
    if (fp && fs) return rt_error(r->input, GERR_FORMAT, LUKS2_E_HEADER, (uint64_t)fp, (uint64_t)fs);
    /* the newer usable copy first; its metadata must parse, else the other's is tried */
    const struct copy *first = fp ? &s : &p, *second = NULL;
    if (!fp && !fs) {
        if (s.seqid > p.seqid) first = &s, second = &p;
        else second = &s;
    }
    uint64_t mark = rt_heap_mark();
    if (meta_of(k, first) == 0) return 0;
    if (!second) return -1;
    rt_heap_release(mark);
    const struct reader *keep = k->r;
    memset(k, 0, sizeof *k);
    k->r = keep;
    return meta_of(k, second);
}

int luks2_emit_info(const struct luks2 *k)
{
    struct rec_luks2_info rec;
    rec_init(&rec, REC_LUKS2_INFO, sizeof rec);
    rec.input = k->r->input;
    rec.cipher_alg = k->seg.alg;
    rec.cipher_mode = k->seg.mode;
    rec.ivgen_alg = k->seg.ivgen;
    rec.ivgen_hash = k->seg.ivgen_hash;
    rec.hash_alg = k->dg_hash;
    rec.payload_offset = k->seg_offset;
    rec.payload_size = k->seg_size;
    rec.digest_iters = k->dg_iters;
    rec.key_bytes = k->seg.key_bytes;
    rec.sector_size = k->sector_size;
    rec.hdr_size = k->hdr_size;
    rec.seqid = k->seqid;
    memcpy(rec.uuid, k->uuid, sizeof rec.uuid);
    uint32_t n = 0, maxkib = 0;
    for (uint32_t i = 0; i < k->n_slots; i++) {
        const struct luks2_slot *s = &k->slots[i];
        if (!s->present) continue;
        n++;
        if (s->kdf != LUKS2_KDF_PBKDF2 && (k->dg_slots >> i & 1) && s->priority && s->memory_kib > maxkib)
            maxkib = s->memory_kib;
    }
    rec.n_slots = n;
    rec.max_argon2_kib = maxkib;
    if (rt_emit(&rec, sizeof rec)) return -1;
    for (uint32_t i = 0; i < k->n_slots; i++) {
        const struct luks2_slot *s = &k->slots[i];
        if (!s->present) continue;
        struct rec_luks2_slot sr;
        rec_init(&sr, REC_LUKS2_SLOT, sizeof sr);
        sr.input = k->r->input;
        sr.id = i;
        sr.kdf = s->kdf;
        sr.iters = s->iters;
        sr.memory_kib = s->memory_kib;
        sr.parallel = s->parallel;
        sr.stripes = s->stripes;
        sr.key_bytes = s->key_bytes;
        sr.area_offset = s->area_offset;
        sr.area_size = s->area_size;
        if (rt_emit(&sr, sizeof sr)) return -1;
    }
    return 0;
}
