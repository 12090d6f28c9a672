/*
 * LUKS1 creation, step for step as qemu 7.2's qcrypto_block_luks_create and
 * qcrypto_block_luks_store_key (crypto/block-luks.c) do it:
 *   random master key (key_bytes; xts: both halves) and master-key salt;
 *   digest = PBKDF2(master key, salt, mk_iters, 20);
 *   slots at 8 + i * splitkey_sectors, all disabled, stripes 4000;
 *   payload at 8 + 8 * splitkey_sectors;
 *   slot 0: random salt, slot key = PBKDF2(passphrase, salt, slot_iters,
 *   key_bytes); the master key AF-split over 4000 stripes (random stripes,
 *   qcrypto_afsplit_encode), encrypted from sector 0 with the slot key under
 *   the volume's cipher, mode and IV generator, written at its offset; the
 *   slot enabled; the 592-byte header written big-endian at 0.
 * The iteration counts come from the host (its calibration times this
 * guest's PBKDF2: luks_write's BENCH mode). Randomness: an AES-256-CTR
 * generator keyed with SHA-256 of the host's bytes (crypto.getRandomValues)
 * and up to 64 bytes from RDSEED/RDRAND when CPUID has them. Every key
 * buffer is zeroed before it is released; nothing but the header, the
 * encrypted key material and the encrypted payload is written.
 */
#include "luks_write.h"
#include "../ops/records.h"
#include <nettle/nettle-meta.h>
#include <nettle/aes.h>
#include <nettle/sha2.h>
#include <nettle/cbc.h>
#include <nettle/ctr.h>
#include <nettle/xts.h>

/* ---- random bytes ---- */

static struct aes256_ctx rng_ctx;
static uint8_t rng_ctr[16];

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static int rdseed64(uint64_t *v)
{
    for (int i = 0; i < 64; i++) {
        uint8_t ok;
        __asm__ volatile("rdseed %0; setc %1" : "=r"(*v), "=qm"(ok));
        if (ok) return 1;
    }
    return 0;
}

static int rdrand64(uint64_t *v)
{
    for (int i = 0; i < 16; i++) {
        uint8_t ok;
        __asm__ volatile("rdrand %0; setc %1" : "=r"(*v), "=qm"(ok));
        if (ok) return 1;
    }
    return 0;
}

uint32_t luks_rng_init(const uint8_t *host, uint32_t len)
{
    uint32_t r[4], src = 0;
    uint64_t cpu[8] = { 0 };
    cpuid(0, 0, r);
    uint32_t max = r[0];
    bool has_rdrand = false, has_rdseed = false;
    if (max >= 1) {
        cpuid(1, 0, r);
        has_rdrand = (r[2] >> 30) & 1;
    }
    if (max >= 7) {
        cpuid(7, 0, r);
        has_rdseed = (r[1] >> 18) & 1;
    }
    for (int i = 0; i < 8; i++) {
        if (has_rdseed && rdseed64(&cpu[i])) src |= LUKS_ENTROPY_RDSEED;
        else if (has_rdrand && rdrand64(&cpu[i])) src |= LUKS_ENTROPY_RDRAND;
    }
    struct sha256_ctx h;
    uint8_t key[SHA256_DIGEST_SIZE];
    static const char tag[] = "instar luks1 rng";
    sha256_init(&h);
    sha256_update(&h, sizeof tag - 1, (const uint8_t *)tag);
    sha256_update(&h, len, host);
    sha256_update(&h, sizeof cpu, (const uint8_t *)cpu);
    sha256_digest(&h, sizeof key, key);
    aes256_set_encrypt_key(&rng_ctx, key);
    memset(rng_ctr, 0, sizeof rng_ctr);
    memset(key, 0, sizeof key);
    memset(cpu, 0, sizeof cpu);
    memset(&h, 0, sizeof h);
    return src;
}

void luks_rng(uint8_t *out, uint64_t len)
{
    memset(out, 0, len);
    ctr_crypt(&rng_ctx, (nettle_cipher_func *)aes256_encrypt, 16, rng_ctr, len, out, out);
}

void luks_rng_wipe(void)
{
    memset(&rng_ctx, 0, sizeof rng_ctx);
    memset(rng_ctr, 0, sizeof rng_ctr);
}

/* ---- names and sizes ---- */

static const char *const HASH_NAMES[] = { "", "md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160" };
static const char *const MODE_NAMES[] = { "", "ecb", "cbc", "xts", "ctr" };
static const char *const IVGEN_NAMES[] = { "", "plain", "plain64", "essiv" };

static const char *cipher_family(uint32_t alg)
{
    if (alg >= LUKS_CIPHER_AES_128 && alg <= LUKS_CIPHER_AES_256) return "aes";
    if (alg == LUKS_CIPHER_CAST5_128) return "cast5";
    if (alg >= LUKS_CIPHER_SERPENT_128 && alg <= LUKS_CIPHER_SERPENT_256) return "serpent";
    if (alg >= LUKS_CIPHER_TWOFISH_128 && alg <= LUKS_CIPHER_TWOFISH_256) return "twofish";
    return NULL;
}

/* qcrypto_block_luks_essiv_cipher: the family member keyed by the whole digest (0: none). */
static uint32_t essiv_cipher(uint32_t alg, uint32_t hash)
{
    uint32_t dl = luks_digest_len(hash), base;
    if (dl == luks_cipher_key_len(alg)) return alg;
    if (alg >= LUKS_CIPHER_AES_128 && alg <= LUKS_CIPHER_AES_256) base = LUKS_CIPHER_AES_128;
    else if (alg >= LUKS_CIPHER_SERPENT_128 && alg <= LUKS_CIPHER_SERPENT_256) base = LUKS_CIPHER_SERPENT_128;
    else if (alg >= LUKS_CIPHER_TWOFISH_128 && alg <= LUKS_CIPHER_TWOFISH_256) base = LUKS_CIPHER_TWOFISH_128;
    else return 0;
    return dl == 16 ? base : dl == 24 ? base + 1 : dl == 32 ? base + 2 : 0;
}

uint32_t luks_new_key_bytes(const struct luks_new *n)
{
    uint32_t k = luks_cipher_key_len(n->cipher_alg);
    return n->mode == LUKS_MODE_XTS ? 2 * k : k;
}

static uint32_t splitkey_sectors(uint32_t key_bytes)
{
    uint32_t sectors = (key_bytes * LUKS_STRIPES + LUKS_SECTOR - 1) / LUKS_SECTOR;
    return (sectors + 7) / 8 * 8;
}

uint64_t luks_new_payload_offset(const struct luks_new *n)
{
    return (uint64_t)(8 + LUKS_SLOTS * splitkey_sectors(luks_new_key_bytes(n))) * LUKS_SECTOR;
}

/* ---- ciphers ---- */

/* Keys a cipher to encrypt (or, for the key material of an existing slot, to decrypt with luks_decrypt). */
static int cipher_keyed(struct luks_cipher *c, const struct luks_new *n, const uint8_t *key, uint32_t klen, bool dec)
{
    const struct nettle_cipher *ci = luks_nettle_cipher(n->cipher_alg);
    if (!ci || (n->mode == LUKS_MODE_XTS && ci->block_size != 16)) return -1;
    c->n = ci;
    c->mode = n->mode;
    c->ivgen = n->ivgen;
    c->niv = n->mode == LUKS_MODE_ECB ? 0 : ci->block_size;
    if (!c->dec) c->dec = rt_alloc(ci->context_size);
    if (!c->twk) c->twk = rt_alloc(ci->context_size);
    if (!c->dec || !c->twk) return -2;
    if (dec && n->mode != LUKS_MODE_CTR) ci->set_decrypt_key(c->dec, key);
    else ci->set_encrypt_key(c->dec, key);
    if (n->mode == LUKS_MODE_XTS) ci->set_encrypt_key(c->twk, key + klen / 2);
    c->essiv = NULL;
    if (n->ivgen == LUKS_IVGEN_ESSIV)
        return luks_essiv_key(luks_nettle_hash(n->ivgen_hash),
                              luks_nettle_cipher(essiv_cipher(n->cipher_alg, n->ivgen_hash)), key, klen, &c->essiv,
                              &c->essiv_ctx);
    return 0;
}

static int enc_setup(struct luks_cipher *c, const struct luks_new *n, const uint8_t *key, uint32_t klen)
{
    return cipher_keyed(c, n, key, klen, false);
}

static void enc_wipe(struct luks_cipher *c)
{
    if (c->dec) memset(c->dec, 0, c->n->context_size);
    if (c->twk) memset(c->twk, 0, c->n->context_size);
    if (c->essiv_ctx) memset(c->essiv_ctx, 0, c->essiv->context_size);
}

int luks_enc_init(struct luks_enc *e, const struct luks_new *n, const uint8_t *key, uint32_t klen)
{
    memset(e, 0, sizeof *e);
    return enc_setup(&e->c, n, key, klen);
}

void luks_enc_wipe(struct luks_enc *e)
{
    enc_wipe(&e->c);
}

void luks_encrypt(const struct luks_enc *e, uint64_t sector, uint8_t *buf, uint64_t len)
{
    const struct luks_cipher *c = &e->c;
    uint8_t iv[16];
    while (len > 0) {
        uint64_t n = len > LUKS_SECTOR ? LUKS_SECTOR : len;
        if (c->niv) luks_iv(c, sector, iv);
        switch (c->mode) {
        case LUKS_MODE_ECB: c->n->encrypt(c->dec, n, buf, buf); break;
        case LUKS_MODE_CBC: cbc_encrypt(c->dec, c->n->encrypt, c->niv, iv, n, buf, buf); break;
        case LUKS_MODE_CTR: ctr_crypt(c->dec, c->n->encrypt, c->niv, iv, n, buf, buf); break;
        case LUKS_MODE_XTS: xts_encrypt_message(c->dec, c->twk, c->n->encrypt, iv, n, buf, buf); break;
        }
        sector++;
        buf += n;
        len -= n;
    }
}

/* ---- AF split (qcrypto_afsplit_encode) ---- */

static void diffuse(const struct nettle_hash *h, uint8_t *block, uint32_t blocklen)
{
    _Alignas(16) uint8_t ctx[512];
    uint8_t digest[64];
    uint32_t dl = h->digest_size;
    for (uint32_t i = 0; i * dl < blocklen; i++) {
        uint8_t be[4] = { (uint8_t)(i >> 24), (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i };
        uint32_t n = blocklen - i * dl < dl ? blocklen - i * dl : dl;
        h->init(ctx);
        h->update(ctx, 4, be);
        h->update(ctx, n, block + i * dl);
        h->digest(ctx, dl, digest);
        memcpy(block + i * dl, digest, n);
    }
    memset(digest, 0, sizeof digest);
    memset(ctx, 0, sizeof ctx);
}

static void af_split(uint32_t hash, uint32_t blocklen, const uint8_t *in, uint8_t *out)
{
    const struct nettle_hash *h = luks_nettle_hash(hash);
    uint8_t block[LUKS_KEY_MAX];
    memset(block, 0, blocklen);
    uint32_t s;
    for (s = 0; s + 1 < LUKS_STRIPES; s++) {
        uint8_t *o = out + (uint64_t)s * blocklen;
        luks_rng(o, blocklen);
        for (uint32_t j = 0; j < blocklen; j++) block[j] ^= o[j];
        diffuse(h, block, blocklen);
    }
    for (uint32_t j = 0; j < blocklen; j++) out[(uint64_t)s * blocklen + j] = in[j] ^ block[j];
    memset(block, 0, sizeof block);
}

/* ---- the header ---- */

/* Where the header starts in output 0 (0; a qcow2 file: its crypto header clusters). */
uint64_t luks_out_base;

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static void put_str(uint8_t *p, const char *s)
{
    for (uint32_t i = 0; s[i] && i < 31; i++) p[i] = (uint8_t)s[i];
}

/* qemu_uuid_generate + qemu_uuid_unparse: a version 4 uuid, lower-case. */
static void make_uuid(uint8_t *out)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    luks_rng(b, sizeof b);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    uint32_t o = 0;
    for (uint32_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = (uint8_t)hex[b[i] >> 4];
        out[o++] = (uint8_t)hex[b[i] & 15];
    }
}

/* qcrypto_block_luks_store_key: seals mk into slot idx of header h with the passphrase, writes the
 * key material and then the header. 0, or -1 (cipher), -2 (memory), -3 (write). */
static int store_slot(uint8_t *h, const struct luks_new *n, uint32_t idx, const uint8_t *pw, uint32_t pwlen,
                      const uint8_t *mk, uint32_t kb)
{
    uint64_t splitlen = (uint64_t)kb * LUKS_STRIPES;
    uint64_t mark = rt_heap_mark();
    uint8_t *split = rt_alloc(splitlen);
    if (!split) return -2;
    uint8_t slotkey[LUKS_KEY_MAX];
    struct luks_cipher sc = { 0 };
    uint8_t *s = h + 208 + 48 * idx;
    uint32_t key_offset = (uint32_t)s[40] << 24 | (uint32_t)s[41] << 16 | (uint32_t)s[42] << 8 | s[43];
    luks_rng(s + 8, LUKS_SALT_LEN);
    luks_pbkdf2(n->hash, pw, pwlen, s + 8, LUKS_SALT_LEN, n->slot_iters, slotkey, kb);
    af_split(n->hash, kb, mk, split);
    int rc = enc_setup(&sc, n, slotkey, kb);
    if (rc == 0) {
        struct luks_enc se = { sc };
        luks_encrypt(&se, 0, split, splitlen);
        if (hc_write(luks_out_base + (uint64_t)key_offset * LUKS_SECTOR, splitlen, split) != (int64_t)splitlen) rc = -3;
        enc_wipe(&sc);
    }
    memset(split, 0, splitlen);
    memset(slotkey, 0, sizeof slotkey);
    rt_heap_release(mark);
    if (rc == 0) {
        put32(s, LUKS_SLOT_ENABLED);
        put32(s + 4, n->slot_iters);
        if (hc_write(luks_out_base, LUKS_HEADER_SIZE, h) != (int64_t)LUKS_HEADER_SIZE) rc = -3;
    }
    return rc;
}

int luks_format(const struct luks_new *n, const uint8_t *pw, uint32_t pwlen, struct luks_enc *enc)
{
    const char *family = cipher_family(n->cipher_alg);
    uint32_t kb = luks_new_key_bytes(n);
    if (!family || !kb || kb > LUKS_KEY_MAX || n->mode < 1 || n->mode > 4 || n->ivgen < 1 || n->ivgen > 3 ||
        n->hash < 1 || n->hash > 7 || n->ivgen_hash > 7 || (n->ivgen == LUKS_IVGEN_ESSIV && !n->ivgen_hash) ||
        !n->mk_iters || !n->slot_iters)
        return rt_error(0, GERR_BAD_PARAMS, 70, n->cipher_alg, n->mode);
    uint8_t h[LUKS_HEADER_SIZE], mk[LUKS_KEY_MAX];
    memset(h, 0, sizeof h);
    int rc = 0;

    static const uint8_t magic[6] = { 'L', 'U', 'K', 'S', 0xba, 0xbe };
    memcpy(h, magic, 6);
    h[7] = 1; /* version */
    put_str(h + 8, family);
    char mode[32];
    uint32_t m = 0;
    for (const char *s = MODE_NAMES[n->mode]; *s; s++) mode[m++] = *s;
    mode[m++] = '-';
    for (const char *s = IVGEN_NAMES[n->ivgen]; *s; s++) mode[m++] = *s;
    if (n->ivgen_hash) {
        mode[m++] = ':';
        for (const char *s = HASH_NAMES[n->ivgen_hash]; *s; s++) mode[m++] = *s;
    }
    mode[m] = 0;
    put_str(h + 40, mode);
    put_str(h + 72, HASH_NAMES[n->hash]);
    make_uuid(h + 168);

    luks_rng(h + 132, LUKS_SALT_LEN); /* master key salt, then the master key */
    luks_rng(mk, kb);
    luks_pbkdf2(n->hash, mk, kb, h + 132, LUKS_SALT_LEN, n->mk_iters, h + 112, LUKS_DIGEST_LEN);
    put32(h + 164, n->mk_iters);
    put32(h + 108, kb);
    uint32_t sks = splitkey_sectors(kb);
    put32(h + 104, 8 + LUKS_SLOTS * sks);
    for (uint32_t i = 0; i < LUKS_SLOTS; i++) {
        uint8_t *s = h + 208 + 48 * i;
        put32(s, LUKS_SLOT_DISABLED);
        put32(s + 40, 8 + i * sks);
        put32(s + 44, LUKS_STRIPES);
    }

    rc = store_slot(h, n, 0, pw, pwlen, mk, kb);
    if (rc == 0) {
        memset(enc, 0, sizeof *enc);
        rc = enc_setup(&enc->c, n, mk, kb);
    }
    memset(mk, 0, sizeof mk);
    if (rc == -1) return rt_error(0, GERR_FORMAT, LUKS_E_CIPHER_UNSUPPORTED, n->cipher_alg, n->mode);
    if (rc == -2) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    if (rc == -3) return rt_error(0, GERR_IO, 0, 0, 0);
    return 0;
}

/* ---- amend (qcrypto_block_luks_amend_add_keyslot, _erase_keyslots) ---- */

static void new_of(const struct luks *k, struct luks_new *n)
{
    memset(n, 0, sizeof *n);
    n->cipher_alg = k->cipher_alg;
    n->mode = k->mode;
    n->ivgen = k->ivgen;
    n->ivgen_hash = k->ivgen_hash;
    n->hash = k->hash;
}

int luks_load_key(const struct luks *k, uint32_t i, const uint8_t *pw, uint32_t pwlen, uint64_t max, uint8_t *mk)
{
    const struct luks_slot *s = &k->slots[i];
    uint32_t in = k->r->input, kb = k->key_bytes;
    if (s->active != LUKS_SLOT_ENABLED) return 0;
    if (kb > LUKS_KEY_MAX) return rt_error(in, GERR_INTERNAL, kb, 0, 0);
    if (s->iters > max) return rt_error(in, GERR_FORMAT, LUKS_E_KDF_LIMIT, i, s->iters);
    if (k->mk_iters > max) return rt_error(in, GERR_FORMAT, LUKS_E_KDF_LIMIT, LUKS_SLOTS, k->mk_iters);
    uint64_t splitlen = (uint64_t)kb * LUKS_STRIPES, mark = rt_heap_mark();
    uint8_t *split = rt_alloc(splitlen);
    if (!split) return rt_error(in, GERR_OUT_OF_MEMORY, splitlen, 0, 0);
    uint8_t slotkey[LUKS_KEY_MAX], digest[LUKS_DIGEST_LEN];
    luks_pbkdf2(k->hash, pw, pwlen, s->salt, LUKS_SALT_LEN, s->iters, slotkey, kb);
    int rc = 0;
    if (reader_read(k->r, (uint64_t)s->key_offset_sector * LUKS_SECTOR, split, splitlen)) {
        rc = rt_error(in, GERR_IO, (uint64_t)s->key_offset_sector * LUKS_SECTOR, 0, 0);
    } else {
        struct luks_new n;
        struct luks_cipher c = { 0 };
        new_of(k, &n);
        int e = cipher_keyed(&c, &n, slotkey, kb, true);
        if (e) {
            rc = e == -2 ? rt_error(in, GERR_OUT_OF_MEMORY, 0, 0, 0)
                         : rt_error(in, GERR_FORMAT, LUKS_E_CIPHER_UNSUPPORTED, k->cipher_alg, k->mode);
        } else {
            luks_decrypt(&c, 0, split, splitlen);
            enc_wipe(&c);
            luks_af_merge(k->hash, kb, LUKS_STRIPES, split, mk);
            luks_pbkdf2(k->hash, mk, kb, k->mk_salt, LUKS_SALT_LEN, k->mk_iters, digest, LUKS_DIGEST_LEN);
            rc = memcmp(digest, k->mk_digest, LUKS_DIGEST_LEN) == 0;
        }
    }
    memset(split, 0, splitlen);
    memset(slotkey, 0, sizeof slotkey);
    rt_heap_release(mark);
    if (rc != 1) memset(mk, 0, kb);
    return rc;
}

int luks_add_slot(const struct luks *k, uint8_t *h, uint32_t idx, uint32_t iters, const uint8_t *pw, uint32_t pwlen,
                  const uint8_t *mk)
{
    struct luks_new n;
    new_of(k, &n);
    n.slot_iters = iters;
    int rc = store_slot(h, &n, idx, pw, pwlen, mk, k->key_bytes);
    if (rc == -1) return rt_error(0, GERR_FORMAT, LUKS_E_CIPHER_UNSUPPORTED, k->cipher_alg, k->mode);
    if (rc == -2) return rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0);
    if (rc == -3) return rt_error(0, GERR_IO, 0, 0, 0);
    return 0;
}

int luks_erase_slot(const struct luks *k, uint8_t *h, uint32_t idx)
{
    uint8_t *s = h + 208 + 48 * idx;
    uint64_t splitlen = (uint64_t)k->key_bytes * LUKS_STRIPES, mark = rt_heap_mark();
    memset(s + 8, 0, LUKS_SALT_LEN);
    put32(s + 4, 0);
    put32(s, LUKS_SLOT_DISABLED);
    if (hc_write(0, LUKS_HEADER_SIZE, h) != (int64_t)LUKS_HEADER_SIZE) return rt_error(0, GERR_IO, 0, 0, 0);
    uint8_t *garbage = rt_alloc(splitlen);
    if (!garbage) return rt_error(0, GERR_OUT_OF_MEMORY, splitlen, 0, 0);
    uint64_t at = (uint64_t)k->slots[idx].key_offset_sector * LUKS_SECTOR;
    for (int i = 0; i < 16; i++) { /* QCRYPTO_BLOCK_LUKS_ERASE_ITERATIONS */
        luks_rng(garbage, splitlen);
        if (hc_write(at, splitlen, garbage) != (int64_t)splitlen) return rt_error(0, GERR_IO, at, 0, 0);
    }
    rt_heap_release(mark);
    return 0;
}

/* convert -n into a LUKS image (guest/ops/luks_into.c): an encrypting cipher keyed with an unlocked master key. */
int luks_enc_from_key(const struct luks *k, const uint8_t *mk, struct luks_enc *enc)
{
    struct luks_new n;
    new_of(k, &n);
    return enc_setup(&enc->c, &n, mk, k->key_bytes);
}
