/*
 * The LUKS1 header: qcrypto_block_luks_load_header, _check_header and
 * _parse_header of qemu 7.2 (Debian's, with the NUL-termination and stripe
 * checks), in their order and with their integer widths (the slot overlap
 * arithmetic is qemu's unsigned int), so the same headers are refused with
 * the same message. Every number kept is bounded here: key_bytes by the
 * cipher lookup (<= 64), stripes == 4000, so a slot's key material is at
 * most 256000 bytes.
 */
#include "luks.h"
#include "bytes.h"
#include "../ops/records.h"

static int fail(const struct luks *k, uint32_t code, uint64_t a1, uint64_t a2)
{
    return rt_error(k->r->input, GERR_FORMAT, code, a1, a2);
}

static int fail_text(const struct luks *k, uint32_t code, const char *s, uint64_t a1)
{
    if (emit_name(k->r->input, NAME_ERROR_TEXT, (const uint8_t *)s, (uint16_t)strlen(s))) return -1;
    return fail(k, code, a1, 0);
}

static bool streq(const char *a, const char *b)
{
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static const char *const HASH_NAMES[] = { "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160" };
static const char *const MODE_NAMES[] = { "ecb", "cbc", "xts", "ctr" };
static const char *const IVGEN_NAMES[] = { "plain", "plain64", "essiv" };

/* qapi_enum_parse: 1-based index, 0 when absent. */
static uint32_t lookup(const char *const *names, uint32_t n, const char *s)
{
    for (uint32_t i = 0; i < n; i++)
        if (streq(names[i], s)) return i + 1;
    return 0;
}

uint32_t luks_digest_len(uint32_t hash)
{
    static const uint8_t len[] = { 0, 16, 20, 28, 32, 48, 64, 20 };
    return hash < sizeof len ? len[hash] : 0;
}

uint32_t luks_cipher_key_len(uint32_t alg)
{
    switch (alg) {
    case LUKS_CIPHER_AES_128: case LUKS_CIPHER_CAST5_128: case LUKS_CIPHER_SERPENT_128: case LUKS_CIPHER_TWOFISH_128:
        return 16;
    case LUKS_CIPHER_AES_192: case LUKS_CIPHER_SERPENT_192: case LUKS_CIPHER_TWOFISH_192:
        return 24;
    case LUKS_CIPHER_AES_256: case LUKS_CIPHER_SERPENT_256: case LUKS_CIPHER_TWOFISH_256:
        return 32;
    }
    return 0;
}

/* qcrypto_block_luks_cipher_name_lookup */
static uint32_t cipher_lookup(const char *name, uint32_t mode, uint32_t key_bytes)
{
    if (mode == LUKS_MODE_XTS) key_bytes /= 2;
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

/* qcrypto_block_luks_splitkeylen_sectors: size_t arithmetic, returned as int. */
static uint32_t splitkey_sectors(const struct luks *k, uint32_t stripes)
{
    uint64_t len = (uint64_t)k->key_bytes * stripes;
    uint64_t sectors = (len + LUKS_SECTOR - 1) / LUKS_SECTOR;
    uint64_t header_sectors = 4096 / LUKS_SECTOR;
    sectors = (sectors + header_sectors - 1) / header_sectors * header_sectors;
    return (uint32_t)sectors;
}

static bool ranges_overlap(uint64_t first1, uint64_t len1, uint64_t first2, uint64_t len2)
{
    uint64_t last1 = first1 + len1 - 1, last2 = first2 + len2 - 1;
    return !(last2 < first1 || last1 < first2);
}

static int check_header(const struct luks *k, const uint8_t *h)
{
    static const uint8_t magic[6] = { 'L', 'U', 'K', 'S', 0xba, 0xbe };
    if (memcmp(h, magic, 6) != 0) return fail(k, LUKS_E_NOT_LUKS, 0, 0);
    if (k->version != 1) return fail(k, LUKS_E_VERSION, k->version, 0);
    bool nul = false;
    for (int i = 0; i < 32; i++) nul |= h[8 + i] == 0;
    if (!nul) return fail(k, LUKS_E_CIPHER_NAME_NUL, 0, 0);
    nul = false;
    for (int i = 0; i < 32; i++) nul |= h[40 + i] == 0;
    if (!nul) return fail(k, LUKS_E_CIPHER_MODE_NUL, 0, 0);
    nul = false;
    for (int i = 0; i < 32; i++) nul |= h[72 + i] == 0;
    if (!nul) return fail(k, LUKS_E_HASH_SPEC_NUL, 0, 0);
    if (k->payload_offset_sector < 4096 / LUKS_SECTOR) return fail(k, LUKS_E_PAYLOAD_OVERLAP, 0, 0);
    if (k->mk_iters == 0) return fail(k, LUKS_E_MK_ITERS_ZERO, 0, 0);
    for (uint32_t i = 0; i < LUKS_SLOTS; i++) {
        const struct luks_slot *s1 = &k->slots[i];
        uint32_t start1 = s1->key_offset_sector, len1 = splitkey_sectors(k, s1->stripes);
        if (s1->stripes != LUKS_STRIPES) return fail(k, LUKS_E_SLOT_STRIPES, i, s1->stripes);
        if (s1->active != LUKS_SLOT_DISABLED && s1->active != LUKS_SLOT_ENABLED)
            return fail(k, LUKS_E_SLOT_STATE, i, 0);
        if (s1->active == LUKS_SLOT_ENABLED && s1->iters == 0) return fail(k, LUKS_E_SLOT_ITERS_ZERO, i, 0);
        if (start1 < 4096 / LUKS_SECTOR) return fail(k, LUKS_E_SLOT_OVER_HEADER, i, 0);
        if ((uint32_t)(start1 + len1) > k->payload_offset_sector) return fail(k, LUKS_E_SLOT_OVER_PAYLOAD, i, 0);
        for (uint32_t j = i + 1; j < LUKS_SLOTS; j++) {
            const struct luks_slot *s2 = &k->slots[j];
            uint32_t start2 = s2->key_offset_sector, len2 = splitkey_sectors(k, s2->stripes);
            if (ranges_overlap(start1, len1, start2, len2)) return fail(k, LUKS_E_SLOTS_OVERLAP, i, j);
        }
    }
    return 0;
}

static int parse_header(struct luks *k)
{
    char mode[32];
    memcpy(mode, k->cipher_mode, sizeof mode); /* NUL-terminated: checked */
    char *ivgen_name = NULL, *ivhash_name = NULL;
    for (char *p = mode; *p; p++)
        if (*p == '-') {
            *p = 0;
            ivgen_name = p + 1;
            break;
        }
    if (!ivgen_name) return fail_text(k, LUKS_E_MODE_FORMAT, k->cipher_mode, 0);
    for (char *p = ivgen_name; *p; p++)
        if (*p == ':') {
            *p = 0;
            ivhash_name = p + 1;
            break;
        }
    k->ivgen_hash = 0;
    if (ivhash_name) {
        k->ivgen_hash = lookup(HASH_NAMES, 7, ivhash_name);
        if (!k->ivgen_hash) return fail_text(k, LUKS_E_HASH_NAME, ivhash_name, 0);
    }
    k->mode = lookup(MODE_NAMES, 4, mode);
    if (!k->mode) return fail_text(k, LUKS_E_MODE_NAME, mode, 0);
    k->cipher_alg = cipher_lookup(k->cipher_name, k->mode, k->key_bytes);
    if (!k->cipher_alg) {
        uint32_t kb = k->mode == LUKS_MODE_XTS ? k->key_bytes / 2 : k->key_bytes;
        return fail_text(k, LUKS_E_ALG_KEYSIZE, k->cipher_name, kb);
    }
    k->hash = lookup(HASH_NAMES, 7, k->hash_spec);
    if (!k->hash) return fail_text(k, LUKS_E_HASH_NAME, k->hash_spec, 0);
    k->ivgen = lookup(IVGEN_NAMES, 3, ivgen_name);
    if (!k->ivgen) return fail_text(k, LUKS_E_IVGEN_NAME, ivgen_name, 0);
    k->ivgen_cipher = k->cipher_alg;
    if (k->ivgen == LUKS_IVGEN_ESSIV) {
        if (!ivhash_name) return fail(k, LUKS_E_IVHASH_MISSING, 0, 0);
        /* qcrypto_block_luks_essiv_cipher: the ESSIV key is the hash digest */
        uint32_t dl = luks_digest_len(k->ivgen_hash), a = k->cipher_alg;
        if (dl != luks_cipher_key_len(a)) {
            uint32_t base, family;
            if (a >= LUKS_CIPHER_AES_128 && a <= LUKS_CIPHER_AES_256) base = LUKS_CIPHER_AES_128, family = 1;
            else if (a >= LUKS_CIPHER_SERPENT_128 && a <= LUKS_CIPHER_SERPENT_256)
                base = LUKS_CIPHER_SERPENT_128, family = 2;
            else if (a >= LUKS_CIPHER_TWOFISH_128 && a <= LUKS_CIPHER_TWOFISH_256)
                base = LUKS_CIPHER_TWOFISH_128, family = 3;
            else return fail(k, LUKS_E_ESSIV_CIPHER, a, 0);
            if (dl == 16) k->ivgen_cipher = base;
            else if (dl == 24) k->ivgen_cipher = base + 1;
            else if (dl == 32) k->ivgen_cipher = base + 2;
            else return fail(k, LUKS_E_ESSIV_KEYSIZE, dl, family);
        }
    }
    return 0;
}

int luks_open_header(struct luks *k, const struct reader *r)
{
    uint8_t h[LUKS_HEADER_SIZE];
    memset(k, 0, sizeof *k);
    k->r = r;
    if (reader_read(r, 0, h, sizeof h)) return rt_error(r->input, GERR_IO, 0, 0, 0);
    k->version = be16(h + 6);
    memcpy(k->cipher_name, h + 8, 32);
    memcpy(k->cipher_mode, h + 40, 32);
    memcpy(k->hash_spec, h + 72, 32);
    k->payload_offset_sector = be32(h + 104);
    k->key_bytes = be32(h + 108);
    memcpy(k->mk_digest, h + 112, LUKS_DIGEST_LEN);
    memcpy(k->mk_salt, h + 132, LUKS_SALT_LEN);
    k->mk_iters = be32(h + 164);
    memcpy(k->uuid, h + 168, 40);
    for (int i = 0; i < LUKS_SLOTS; i++) {
        const uint8_t *s = h + 208 + 48 * i;
        k->slots[i].active = be32(s);
        k->slots[i].iters = be32(s + 4);
        memcpy(k->slots[i].salt, s + 8, LUKS_SALT_LEN);
        k->slots[i].key_offset_sector = be32(s + 40);
        k->slots[i].stripes = be32(s + 44);
    }
    if (check_header(k, h) || parse_header(k)) return -1;
    return 0;
}

int luks_emit_info(const struct luks *k)
{
    struct rec_luks_info rec;
    rec_init(&rec, REC_LUKS_INFO, sizeof rec);
    rec.input = k->r->input;
    rec.cipher_alg = k->cipher_alg;
    rec.cipher_mode = k->mode;
    rec.ivgen_alg = k->ivgen;
    rec.ivgen_hash = k->ivgen_hash;
    rec.hash_alg = k->hash;
    rec.payload_offset = (uint64_t)k->payload_offset_sector * LUKS_SECTOR;
    rec.master_key_iters = k->mk_iters;
    rec.key_bytes = k->key_bytes;
    for (int i = 0; i < LUKS_SLOTS; i++) {
        rec.slot_active[i] = k->slots[i].active == LUKS_SLOT_ENABLED;
        rec.slot_iters[i] = k->slots[i].iters;
        rec.slot_stripes[i] = k->slots[i].stripes;
        rec.slot_key_offset[i] = (uint64_t)k->slots[i].key_offset_sector * LUKS_SECTOR;
    }
    memcpy(rec.uuid, k->uuid, sizeof rec.uuid);
    return rt_emit(&rec, sizeof rec);
}
