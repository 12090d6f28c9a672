/*
 * The LUKS2 JSON metadata (cryptsetup's luks2_json_metadata.c validation,
 * the parts a reader needs): "keyslots" (type luks2, af luks1 with 4000
 * stripes, a raw area, kdf pbkdf2 / argon2i / argon2id), exactly one
 * "segments" entry of type crypt (offset, size "dynamic" or bytes,
 * iv_tweak, encryption, sector_size 512..4096), the pbkdf2 "digests" entry
 * naming that segment, and "config" (json_size, keyslots_size,
 * requirements). Every number is range-checked here; key slot areas must
 * lie in the keyslots area, after both header copies and before the data.
 * What instar does not read (integrity, reencryption, other KDFs or
 * ciphers) is LUKS2_E_UNSUPPORTED; what is malformed, LUKS2_E_META, each
 * with a short text naming the field.
 */
#include "luks2.h"
#include "json.h"
#include "../ops/records.h"

static const struct luks2 *cur;

static int fail_text(uint32_t code, const char *what, int id, const char *tail)
{
    char msg[160];
    uint32_t n = 0;
    if (id >= 0) {
        const char *pre = "keyslot ";
        if (id >= 1000) pre = "segment ", id -= 1000;
        for (; *pre; pre++) msg[n++] = *pre;
        if (id >= 10) msg[n++] = (char)('0' + id / 10);
        msg[n++] = (char)('0' + id % 10);
        msg[n++] = ':', msg[n++] = ' ';
    }
    for (; *what && n < 100; what++) msg[n++] = *what;
    if (tail) {
        msg[n++] = ' ', msg[n++] = '\'';
        for (; *tail && n < 150; tail++) msg[n++] = *tail;
        msg[n++] = '\'';
    }
    msg[n] = 0;
    if (emit_name(cur->r->input, NAME_ERROR_TEXT, (const uint8_t *)msg, (uint16_t)n)) return -1;
    return rt_error(cur->r->input, GERR_FORMAT, code, 0, 0);
}

#define BAD(what, id) fail_text(LUKS2_E_META, what, id, NULL)
#define UNSUP(what, id, s) fail_text(LUKS2_E_UNSUPPORTED, what, id, s)

static bool streq(const char *a, const char *b)
{
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static const char *const HASH_NAMES[] = { "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160" };

static uint32_t hash_lookup(const char *s)
{
    for (uint32_t i = 0; i < 7; i++)
        if (streq(HASH_NAMES[i], s)) return i + 1;
    return 0;
}

static uint32_t cipher_lookup(const char *name, uint32_t key_bytes)
{
    if (streq(name, "aes")) {
        if (key_bytes == 16) return LUKS_CIPHER_AES_128;
        if (key_bytes == 24) return LUKS_CIPHER_AES_192;
        if (key_bytes == 32) return LUKS_CIPHER_AES_256;
    } else if (streq(name, "cast5")) {
        if (key_bytes == 16) return LUKS_CIPHER_CAST5_128;
    } else if (streq(name, "serpent")) {
        if (key_bytes == 16) return LUKS_CIPHER_SERPENT_128;
        if (key_bytes == 24) return LUKS_CIPHER_SERPENT_192;
        if (key_bytes == 32) return LUKS_CIPHER_SERPENT_256;
    } else if (streq(name, "twofish")) {
        if (key_bytes == 16) return LUKS_CIPHER_TWOFISH_128;
        if (key_bytes == 24) return LUKS_CIPHER_TWOFISH_192;
        if (key_bytes == 32) return LUKS_CIPHER_TWOFISH_256;
    }
    return 0;
}

int luks2_parse_spec(const char *spec, struct luks2_spec *s)
{
    char buf[64];
    uint32_t n = (uint32_t)strlen(spec);
    if (n >= sizeof buf) return -1;
    memcpy(buf, spec, n + 1);
    char *mode = NULL, *iv = NULL, *ivh = NULL;
    for (char *p = buf; *p; p++)
        if (*p == '-') {
            *p = 0, mode = p + 1;
            break;
        }
    if (!mode) return -1;
    for (char *p = mode; *p; p++)
        if (*p == '-') {
            *p = 0, iv = p + 1;
            break;
        }
    if (iv)
        for (char *p = iv; *p; p++)
            if (*p == ':') {
                *p = 0, ivh = p + 1;
                break;
            }
    if (streq(mode, "ecb")) s->mode = LUKS_MODE_ECB;
    else if (streq(mode, "cbc")) s->mode = LUKS_MODE_CBC;
    else if (streq(mode, "xts")) s->mode = LUKS_MODE_XTS;
    else if (streq(mode, "ctr")) s->mode = LUKS_MODE_CTR;
    else return -1;
    if (!iv) {
        if (s->mode != LUKS_MODE_ECB) return -1;
        s->ivgen = LUKS_IVGEN_PLAIN; /* ECB takes no IV */
    } else if (streq(iv, "plain")) s->ivgen = LUKS_IVGEN_PLAIN;
    else if (streq(iv, "plain64")) s->ivgen = LUKS_IVGEN_PLAIN64;
    else if (streq(iv, "essiv")) s->ivgen = LUKS_IVGEN_ESSIV;
    else return -1;
    s->ivgen_hash = 0;
    if (ivh) {
        if (s->ivgen != LUKS_IVGEN_ESSIV) return -1;
        s->ivgen_hash = hash_lookup(ivh);
        if (!s->ivgen_hash) return -1;
    } else if (s->ivgen == LUKS_IVGEN_ESSIV) return -1;
    uint32_t kb = s->key_bytes;
    if (s->mode == LUKS_MODE_XTS) {
        if (kb % 2) return -1;
        kb /= 2;
    }
    s->alg = cipher_lookup(buf, kb);
    if (!s->alg) return -1;
    if (s->mode == LUKS_MODE_XTS && s->alg == LUKS_CIPHER_CAST5_128) return -1; /* XTS needs 16-byte blocks */
    s->ivgen_alg = s->alg;
    if (s->ivgen == LUKS_IVGEN_ESSIV) {
        /* ESSIV's cipher is the volume cipher keyed with the hash digest */
        uint32_t dl = luks_digest_len(s->ivgen_hash), a = s->alg, base;
        if (dl != luks_cipher_key_len(a)) {
            if (a >= LUKS_CIPHER_AES_128 && a <= LUKS_CIPHER_AES_256) base = LUKS_CIPHER_AES_128;
            else if (a >= LUKS_CIPHER_SERPENT_128 && a <= LUKS_CIPHER_SERPENT_256) base = LUKS_CIPHER_SERPENT_128;
            else if (a >= LUKS_CIPHER_TWOFISH_128 && a <= LUKS_CIPHER_TWOFISH_256) base = LUKS_CIPHER_TWOFISH_128;
            else return -1;
            if (dl == 16) s->ivgen_alg = base;
            else if (dl == 24) s->ivgen_alg = base + 1;
            else if (dl == 32) s->ivgen_alg = base + 2;
            else return -1;
        }
    }
    return 0;
}

static int b64v(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard base64 (with padding) of a string token into out[cap]; the length, or -1. */
static int base64(const struct json *j, int tok, uint8_t *out, uint32_t cap)
{
    char s[128];
    int n = json_str(j, tok, s, sizeof s);
    if (n < 0 || n % 4) return -1;
    uint32_t o = 0;
    for (int i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == n && k >= 2) {
                v[k] = 0, pad++;
                continue;
            }
            if (pad) return -1;
            v[k] = b64v(s[i + k]);
            if (v[k] < 0) return -1;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        for (int k = 0; k < 3 - pad; k++) {
            if (o >= cap) return -1;
            out[o++] = (uint8_t)(w >> (16 - 8 * k));
        }
    }
    return (int)o;
}

/* An object key that is a decimal id below `limit`; -1 otherwise. */
static int id_of(const struct json *j, int key, uint32_t limit)
{
    uint64_t v;
    if (json_u64(j, key, &v) || v >= limit) return -1;
    if (j->t[key].end - j->t[key].start > 1 && j->s[j->t[key].start] == '0') return -1; /* no leading zeros */
    return (int)v;
}

static int get_u32(const struct json *j, int obj, const char *key, uint32_t *v)
{
    uint64_t x;
    int t = json_get(j, obj, key);
    if (t < 0 || j->t[t].type != JT_PRIM || json_u64(j, t, &x) || x > 0xffffffffu) return -1;
    *v = (uint32_t)x;
    return 0;
}

/* A u64 the format keeps as a JSON string. */
static int get_u64s(const struct json *j, int obj, const char *key, uint64_t *v)
{
    int t = json_get(j, obj, key);
    if (t < 0 || j->t[t].type != JT_STRING) return -1;
    return json_u64(j, t, v);
}

static int get_str(const struct json *j, int obj, const char *key, char *out, uint32_t cap)
{
    return json_str(j, json_get(j, obj, key), out, cap) < 0 ? -1 : 0;
}

static int parse_kdf(struct luks2_slot *s, const struct json *j, int kdf, int id)
{
    char type[16], h[16];
    if (kdf < 0 || j->t[kdf].type != JT_OBJECT || get_str(j, kdf, "type", type, sizeof type)) return BAD("invalid kdf", id);
    if (streq(type, "pbkdf2")) {
        s->kdf = LUKS2_KDF_PBKDF2;
        if (get_str(j, kdf, "hash", h, sizeof h)) return BAD("invalid kdf hash", id);
        s->kdf_hash = hash_lookup(h);
        if (!s->kdf_hash) return UNSUP("kdf hash", id, h);
        if (get_u32(j, kdf, "iterations", &s->iters) || s->iters == 0) return BAD("invalid kdf iterations", id);
    } else if (streq(type, "argon2i") || streq(type, "argon2id")) {
        s->kdf = streq(type, "argon2i") ? LUKS2_KDF_ARGON2I : LUKS2_KDF_ARGON2ID;
        if (get_u32(j, kdf, "time", &s->iters) || s->iters == 0) return BAD("invalid kdf time", id);
        if (get_u32(j, kdf, "memory", &s->memory_kib)) return BAD("invalid kdf memory", id);
        if (get_u32(j, kdf, "cpus", &s->parallel) || s->parallel == 0 || s->parallel > LUKS2_ARGON2_LANES_MAX)
            return BAD("invalid kdf cpus", id);
        if (s->memory_kib < 8 * s->parallel) return BAD("invalid kdf memory", id);
    } else {
        return UNSUP("kdf", id, type);
    }
    int n = base64(j, json_get(j, kdf, "salt"), s->salt, sizeof s->salt);
    if (n <= 0) return BAD("invalid kdf salt", id);
    s->salt_len = (uint32_t)n;
    return 0;
}

static int parse_slot(struct luks2 *k, const struct json *j, int obj, int id)
{
    struct luks2_slot *s = &k->slots[id];
    char type[16], enc[64], h[16];
    if (j->t[obj].type != JT_OBJECT || get_str(j, obj, "type", type, sizeof type)) return BAD("invalid type", id);
    if (!streq(type, "luks2")) return UNSUP("type", id, type);
    if (get_u32(j, obj, "key_size", &s->key_bytes) || s->key_bytes == 0 || s->key_bytes > LUKS_KEY_MAX)
        return BAD("invalid key_size", id);
    s->priority = 1;
    if (json_get(j, obj, "priority") >= 0 && (get_u32(j, obj, "priority", &s->priority) || s->priority > 2))
        return BAD("invalid priority", id);
    int af = json_get(j, obj, "af");
    if (af < 0 || j->t[af].type != JT_OBJECT || get_str(j, af, "type", type, sizeof type)) return BAD("invalid af", id);
    if (!streq(type, "luks1")) return UNSUP("af type", id, type);
    if (get_u32(j, af, "stripes", &s->stripes)) return BAD("invalid af stripes", id);
    if (s->stripes != LUKS_STRIPES) return BAD("af stripes is not 4000", id);
    if (get_str(j, af, "hash", h, sizeof h)) return BAD("invalid af hash", id);
    s->af_hash = hash_lookup(h);
    if (!s->af_hash) return UNSUP("af hash", id, h);
    int area = json_get(j, obj, "area");
    if (area < 0 || j->t[area].type != JT_OBJECT || get_str(j, area, "type", type, sizeof type))
        return BAD("invalid area", id);
    if (!streq(type, "raw")) return UNSUP("area type", id, type);
    if (get_u64s(j, area, "offset", &s->area_offset) || get_u64s(j, area, "size", &s->area_size))
        return BAD("invalid area offset or size", id);
    if (get_str(j, area, "encryption", enc, sizeof enc)) return BAD("invalid area encryption", id);
    if (get_u32(j, area, "key_size", &s->area.key_bytes) || s->area.key_bytes == 0 || s->area.key_bytes > LUKS_KEY_MAX)
        return BAD("invalid area key_size", id);
    if (luks2_parse_spec(enc, &s->area)) return UNSUP("area encryption", id, enc);
    /* the key material: key_bytes x 4000 stripes in whole 512-byte sectors */
    uint64_t need = ((uint64_t)s->key_bytes * s->stripes + 511) / 512 * 512;
    if (s->area_size < need) return BAD("area is smaller than its key material", id);
    if (s->area_offset % 512) return BAD("area offset is not sector aligned", id);
    if (parse_kdf(s, j, json_get(j, obj, "kdf"), id)) return -1;
    s->present = true;
    return 0;
}

static int parse_segment(struct luks2 *k, const struct json *j, int obj, int id)
{
    char type[16], enc[64], sz[24];
    int sid = 1000 + id;
    if (j->t[obj].type != JT_OBJECT || get_str(j, obj, "type", type, sizeof type)) return BAD("invalid type", sid);
    if (!streq(type, "crypt")) return UNSUP("type", sid, type);
    if (json_get(j, obj, "integrity") >= 0) return UNSUP("integrity protection", sid, NULL);
    int fl = json_get(j, obj, "flags");
    if (fl >= 0 && (j->t[fl].type != JT_ARRAY || j->t[fl].size)) return UNSUP("segment flags", sid, NULL);
    if (get_u64s(j, obj, "offset", &k->seg_offset)) return BAD("invalid offset", sid);
    if (get_str(j, obj, "size", sz, sizeof sz)) return BAD("invalid size", sid);
    if (streq(sz, "dynamic")) k->seg_size = 0;
    else if (get_u64s(j, obj, "size", &k->seg_size) || k->seg_size == 0) return BAD("invalid size", sid);
    if (get_u64s(j, obj, "iv_tweak", &k->iv_tweak)) return BAD("invalid iv_tweak", sid);
    if (get_u32(j, obj, "sector_size", &k->sector_size)) return BAD("invalid sector_size", sid);
    uint32_t ss = k->sector_size;
    if (ss != 512 && ss != 1024 && ss != 2048 && ss != 4096) return BAD("invalid sector_size", sid);
    if (k->seg_offset % ss || k->seg_size % ss) return BAD("offset or size is not a multiple of the sector size", sid);
    if (get_str(j, obj, "encryption", enc, sizeof enc)) return BAD("invalid encryption", sid);
    /* the key size comes with the digest's key slots; parse after them */
    memcpy(k->seg_enc, enc, sizeof enc);
    return 0;
}

static int parse_digest(struct luks2 *k, const struct json *j, int obj, int seg_id)
{
    char type[16], h[16];
    if (j->t[obj].type != JT_OBJECT || get_str(j, obj, "type", type, sizeof type)) return BAD("invalid digest", -1);
    int segs = json_get(j, obj, "segments"), slots = json_get(j, obj, "keyslots");
    if (segs < 0 || j->t[segs].type != JT_ARRAY || slots < 0 || j->t[slots].type != JT_ARRAY)
        return BAD("invalid digest", -1);
    bool mine = false;
    for (uint32_t i = 0; i < j->t[segs].size; i++) {
        int e = json_child(j, segs, i);
        if (j->t[e].type != JT_STRING || id_of(j, e, 1000) < 0) return BAD("invalid digest segments", -1);
        if (id_of(j, e, 1000) == seg_id) mine = true;
    }
    if (!mine) return 0; /* a digest of another segment's key (none in a normal image) */
    if (k->dg_len) return BAD("two digests for the data segment", -1);
    if (!streq(type, "pbkdf2")) return UNSUP("digest type", -1, type);
    for (uint32_t i = 0; i < j->t[slots].size; i++) {
        int e = json_child(j, slots, i), id = j->t[e].type == JT_STRING ? id_of(j, e, LUKS2_MAX_SLOTS) : -1;
        if (id < 0 || !k->slots[id].present) return BAD("digest names a missing keyslot", -1);
        k->dg_slots |= 1u << id;
    }
    if (get_str(j, obj, "hash", h, sizeof h)) return BAD("invalid digest hash", -1);
    k->dg_hash = hash_lookup(h);
    if (!k->dg_hash) return UNSUP("digest hash", -1, h);
    if (get_u32(j, obj, "iterations", &k->dg_iters) || k->dg_iters == 0) return BAD("invalid digest iterations", -1);
    int n = base64(j, json_get(j, obj, "salt"), k->dg_salt, sizeof k->dg_salt);
    if (n <= 0) return BAD("invalid digest salt", -1);
    k->dg_salt_len = (uint32_t)n;
    n = base64(j, json_get(j, obj, "digest"), k->dg, sizeof k->dg);
    if (n < 16) return BAD("invalid digest", -1);
    k->dg_len = (uint32_t)n;
    return 0;
}

static int parse_root(struct luks2 *k, const struct json *j)
{
    int root = 0;
    int ks = json_get(j, root, "keyslots"), sg = json_get(j, root, "segments"), dg = json_get(j, root, "digests"),
        cf = json_get(j, root, "config");
    if (ks < 0 || j->t[ks].type != JT_OBJECT) return BAD("no keyslots object", -1);
    if (sg < 0 || j->t[sg].type != JT_OBJECT) return BAD("no segments object", -1);
    if (dg < 0 || j->t[dg].type != JT_OBJECT) return BAD("no digests object", -1);
    if (cf < 0 || j->t[cf].type != JT_OBJECT) return BAD("no config object", -1);
    uint64_t json_size, ks_size;
    if (get_u64s(j, cf, "json_size", &json_size) || json_size != k->hdr_size - LUKS2_BIN_SIZE)
        return BAD("config json_size does not match the header size", -1);
    if (get_u64s(j, cf, "keyslots_size", &ks_size)) return BAD("invalid config keyslots_size", -1);
    int req = json_get(j, cf, "requirements");
    if (req >= 0) {
        int m = json_get(j, req, "mandatory");
        if (m >= 0 && (j->t[m].type != JT_ARRAY || j->t[m].size)) {
            char name[32] = "?";
            (void)json_str(j, json_child(j, m, 0), name, sizeof name);
            return UNSUP("mandatory requirement", -1, name);
        }
    }
    for (uint32_t i = 0; i < j->t[ks].size; i++) {
        int id = id_of(j, json_key(j, ks, i), LUKS2_MAX_SLOTS);
        if (id < 0 || k->slots[id].present) return BAD("invalid keyslot id", -1);
        if (parse_slot(k, j, json_child(j, ks, i), id)) return -1;
        if ((uint32_t)id + 1 > k->n_slots) k->n_slots = (uint32_t)id + 1;
    }
    if (j->t[sg].size == 0) return BAD("no data segment", -1);
    if (j->t[sg].size > 1) return UNSUP("more than one data segment (a reencryption)", -1, NULL);
    int seg_id = id_of(j, json_key(j, sg, 0), 1000);
    if (seg_id < 0) return BAD("invalid segment id", -1);
    if (parse_segment(k, j, json_child(j, sg, 0), seg_id)) return -1;
    for (uint32_t i = 0; i < j->t[dg].size; i++)
        if (parse_digest(k, j, json_child(j, dg, i), seg_id)) return -1;
    if (!k->dg_len) return BAD("no digest for the data segment", -1);
    /* the volume key's size: that of the key slots holding it */
    for (uint32_t i = 0; i < LUKS2_MAX_SLOTS; i++) {
        if (!(k->dg_slots >> i & 1)) continue;
        if (k->seg.key_bytes && k->seg.key_bytes != k->slots[i].key_bytes)
            return BAD("key slots of one digest differ in key_size", (int)i);
        k->seg.key_bytes = k->slots[i].key_bytes;
    }
    if (!k->seg.key_bytes) return rt_error(k->r->input, GERR_FORMAT, LUKS2_E_NO_KEYSLOT, 0, 0);
    if (luks2_parse_spec(k->seg_enc, &k->seg)) return UNSUP("encryption", 1000 + seg_id, k->seg_enc);
    /* placement: key slot areas in the keyslots area, after both copies, before the data */
    uint64_t lo = 2 * k->hdr_size, hi;
    if (__builtin_add_overflow(lo, ks_size, &hi)) return BAD("invalid config keyslots_size", -1);
    uint64_t fsize = k->r->size;
    for (uint32_t i = 0; i < k->n_slots; i++) {
        const struct luks2_slot *s = &k->slots[i];
        uint64_t end;
        if (!s->present) continue;
        if (__builtin_add_overflow(s->area_offset, s->area_size, &end) || s->area_offset < lo || end > hi ||
            (k->seg_offset && end > k->seg_offset))
            return BAD("area lies outside the keyslots area", (int)i);
        if (end > fsize) return rt_error(k->r->input, GERR_FORMAT, LUKS2_E_AREA_PAST_EOF, i, 0);
    }
    uint64_t seg_end;
    if (k->seg_offset < lo) return BAD("data segment overlaps the header", 1000 + seg_id);
    if (__builtin_add_overflow(k->seg_offset, k->seg_size, &seg_end) || k->seg_offset > fsize || seg_end > fsize)
        return rt_error(k->r->input, GERR_FORMAT, LUKS2_E_SEGMENT_PAST_EOF, 0, 0);
    return 0;
}

int luks2_parse_meta(struct luks2 *k, const char *text, uint32_t len)
{
    cur = k;
    uint64_t mark = rt_heap_mark();
    struct jtok *toks = rt_alloc((uint64_t)LUKS2_JSON_TOKENS * sizeof *toks);
    if (!toks) return rt_error(k->r->input, GERR_OUT_OF_MEMORY, 0, 0, 0);
    struct json j;
    int rc = json_parse(&j, text, len, toks, LUKS2_JSON_TOKENS, LUKS2_JSON_DEPTH);
    if (rc == JSON_E_SYNTAX) rc = rt_error(k->r->input, GERR_FORMAT, LUKS2_E_JSON_SYNTAX, j.err_at, 0);
    else if (rc == JSON_E_DEPTH) rc = rt_error(k->r->input, GERR_FORMAT, LUKS2_E_JSON_DEPTH, LUKS2_JSON_DEPTH, 0);
    else if (rc == JSON_E_TOKENS) rc = rt_error(k->r->input, GERR_FORMAT, LUKS2_E_JSON_TOKENS, LUKS2_JSON_TOKENS, 0);
    else rc = parse_root(k, &j);
    rt_heap_release(mark);
    return rc;
}
