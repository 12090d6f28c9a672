/*
 * LUKS1 unlock and sector decryption with Debian's nettle (libnettle.a,
 * linked into the freestanding guest; guest/luks/nettle_shim.c has the few
 * libc names it wants). What qemu 7.2's crypto layer does, step for step:
 *   qcrypto_block_luks_load_key: PBKDF2(passphrase, slot salt, slot iters)
 *     -> slot key; decrypt the key material (key_bytes * 4000 bytes at the
 *     slot's offset) sector by sector from sector 0 with the volume's
 *     cipher, mode and IV generator; AF-merge (qcrypto_afsplit_decode) ->
 *     candidate master key; PBKDF2(candidate, mk salt, mk iters, 20) must
 *     equal the header's digest;
 *   qcrypto_block_decrypt: payload sector n decrypted with IV(n).
 * Every PBKDF2 is bounded by params.kdf_max_iters (a hostile header's 2^32
 * iterations would take hours): over it the open fails with LUKS_E_KDF_LIMIT.
 * The passphrase is read from params.secret; keys live in this guest only.
 */
#include "luks_crypto.h"
#include "../ops/records.h"
#include <nettle/nettle-meta.h>
#include <nettle/hmac.h>
#include <nettle/pbkdf2.h>
#include <nettle/cbc.h>
#include <nettle/ctr.h>
#include <nettle/xts.h>
#include <nettle/md5.h>
#include <nettle/sha1.h>
#include <nettle/sha2.h>
#include <nettle/ripemd160.h>

static const struct nettle_hash *hash_of(uint32_t h)
{
    switch (h) {
    case LUKS_HASH_MD5: return &nettle_md5;
    case LUKS_HASH_SHA1: return &nettle_sha1;
    case LUKS_HASH_SHA224: return &nettle_sha224;
    case LUKS_HASH_SHA256: return &nettle_sha256;
    case LUKS_HASH_SHA384: return &nettle_sha384;
    case LUKS_HASH_SHA512: return &nettle_sha512;
    case LUKS_HASH_RIPEMD160: return &nettle_ripemd160;
    }
    return NULL;
}

static const struct nettle_cipher *cipher_of(uint32_t a)
{
    switch (a) {
    case LUKS_CIPHER_AES_128: return &nettle_aes128;
    case LUKS_CIPHER_AES_192: return &nettle_aes192;
    case LUKS_CIPHER_AES_256: return &nettle_aes256;
    case LUKS_CIPHER_CAST5_128: return &nettle_cast128;
    case LUKS_CIPHER_SERPENT_128: return &nettle_serpent128;
    case LUKS_CIPHER_SERPENT_192: return &nettle_serpent192;
    case LUKS_CIPHER_SERPENT_256: return &nettle_serpent256;
    case LUKS_CIPHER_TWOFISH_128: return &nettle_twofish128;
    case LUKS_CIPHER_TWOFISH_192: return &nettle_twofish192;
    case LUKS_CIPHER_TWOFISH_256: return &nettle_twofish256;
    }
    return NULL;
}

/* qcrypto_ivgen_essiv_init: the ESSIV cipher e is keyed with hash h of the
 * whole volume key. The context is allocated once and kept (re-keying reuses
 * it). 0, -1 (no such hash or cipher), -2 (out of memory). */
int luks_essiv_key(const struct nettle_hash *h, const struct nettle_cipher *e, const uint8_t *key, uint32_t klen,
                   const struct nettle_cipher **essiv, void **essiv_ctx)
{
    if (!h || !e) return -1;
    _Alignas(16) uint8_t ctx[512];
    uint8_t salt[64];
    h->init(ctx);
    h->update(ctx, klen, key);
    h->digest(ctx, h->digest_size, salt);
    if (!*essiv_ctx) *essiv_ctx = rt_alloc(e->context_size);
    if (!*essiv_ctx) return -2;
    e->set_encrypt_key(*essiv_ctx, salt);
    *essiv = e;
    memset(salt, 0, sizeof salt);
    memset(ctx, 0, sizeof ctx);
    return 0;
}

/* PBKDF2-HMAC with any of qemu's hashes (RFC 2898; nettle's PBKDF2 macro). */
#define PBKDF2_WITH(type, prefix, size)                                                           \
    do {                                                                                          \
        struct type c;                                                                            \
        prefix##_set_key(&c, klen, key);                                                          \
        PBKDF2(&c, prefix##_update, prefix##_digest, size, iters, slen, salt, olen, out);         \
        memset(&c, 0, sizeof c);                                                                  \
    } while (0)

static void pbkdf2_any(uint32_t hash, const uint8_t *key, uint32_t klen, const uint8_t *salt, uint32_t slen,
                       uint32_t iters, uint8_t *out, uint32_t olen)
{
    switch (hash) {
    case LUKS_HASH_MD5: PBKDF2_WITH(hmac_md5_ctx, hmac_md5, MD5_DIGEST_SIZE); break;
    case LUKS_HASH_SHA1: PBKDF2_WITH(hmac_sha1_ctx, hmac_sha1, SHA1_DIGEST_SIZE); break;
    case LUKS_HASH_SHA224: PBKDF2_WITH(hmac_sha224_ctx, hmac_sha224, SHA224_DIGEST_SIZE); break;
    case LUKS_HASH_SHA256: PBKDF2_WITH(hmac_sha256_ctx, hmac_sha256, SHA256_DIGEST_SIZE); break;
    case LUKS_HASH_SHA384: PBKDF2_WITH(hmac_sha384_ctx, hmac_sha384, SHA384_DIGEST_SIZE); break;
    case LUKS_HASH_SHA512: PBKDF2_WITH(hmac_sha512_ctx, hmac_sha512, SHA512_DIGEST_SIZE); break;
    case LUKS_HASH_RIPEMD160: PBKDF2_WITH(hmac_ripemd160_ctx, hmac_ripemd160, RIPEMD160_DIGEST_SIZE); break;
    }
}

/* One hash of the concatenation of two buffers. */
static void hash2(const struct nettle_hash *h, void *ctx, const uint8_t *a, uint32_t alen, const uint8_t *b,
                  uint32_t blen, uint8_t *out)
{
    h->init(ctx);
    h->update(ctx, alen, a);
    h->update(ctx, blen, b);
    h->digest(ctx, h->digest_size, out);
}

/* qcrypto_afsplit_decode (the anti-forensic merge); cryptsetup's AF_merge for LUKS2 too. */
void luks_af_merge(uint32_t hash, uint32_t blocklen, uint32_t stripes, const uint8_t *in, uint8_t *out)
{
    const struct nettle_hash *h = hash_of(hash);
    _Alignas(16) uint8_t ctx[512]; /* larger than any nettle hash context (sha512: 216) */
    uint8_t block[LUKS_KEY_MAX], digest[64];
    uint32_t dl = h->digest_size;
    memset(block, 0, blocklen);
    for (uint32_t s = 0; s + 1 < stripes; s++) {
        for (uint32_t j = 0; j < blocklen; j++) block[j] ^= in[(uint64_t)s * blocklen + j];
        /* diffuse: each digest-sized piece i replaced by H(be32(i) || piece) */
        for (uint32_t i = 0; i * dl < blocklen; i++) {
            uint8_t be[4] = { (uint8_t)(i >> 24), (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i };
            uint32_t n = blocklen - i * dl < dl ? blocklen - i * dl : dl;
            hash2(h, ctx, be, 4, block + i * dl, n, digest);
            memcpy(block + i * dl, digest, n);
        }
    }
    for (uint32_t j = 0; j < blocklen; j++) out[j] = block[j] ^ in[(uint64_t)(stripes - 1) * blocklen + j];
    memset(block, 0, sizeof block);
    memset(ctx, 0, sizeof ctx);
}

static int cipher_setup(struct luks_cipher *c, uint32_t alg, uint32_t mode, uint32_t ivgen, uint32_t ivgen_alg,
                        uint32_t ivgen_hash, const uint8_t *key, uint32_t klen)
{
    const struct nettle_cipher *n = cipher_of(alg);
    if (!n) return -1;
    if (mode == LUKS_MODE_XTS && n->block_size != 16) return -1;
    c->n = n;
    c->mode = mode;
    c->ivgen = ivgen;
    c->niv = mode == LUKS_MODE_ECB ? 0 : n->block_size;
    if (!c->dec) c->dec = rt_alloc(n->context_size);
    if (!c->twk) c->twk = rt_alloc(n->context_size);
    if (!c->dec || !c->twk) return -2;
    if (mode == LUKS_MODE_XTS) {
        n->set_decrypt_key(c->dec, key);
        n->set_encrypt_key(c->twk, key + klen / 2);
    } else if (mode == LUKS_MODE_CTR) {
        n->set_encrypt_key(c->dec, key);
    } else {
        n->set_decrypt_key(c->dec, key);
    }
    c->essiv = NULL;
    if (ivgen == LUKS_IVGEN_ESSIV)
        return luks_essiv_key(hash_of(ivgen_hash), cipher_of(ivgen_alg), key, klen, &c->essiv, &c->essiv_ctx);
    return 0;
}

static void make_iv(const struct luks_cipher *c, uint64_t sector, uint8_t *iv)
{
    memset(iv, 0, c->niv);
    uint32_t n = c->ivgen == LUKS_IVGEN_PLAIN ? 4 : 8;
    if (c->ivgen == LUKS_IVGEN_PLAIN) sector &= 0xffffffffu;
    if (c->ivgen == LUKS_IVGEN_ESSIV) {
        uint8_t data[16] = { 0 };
        uint32_t bl = c->essiv->block_size;
        for (uint32_t i = 0; i < 8 && i < bl; i++) data[i] = (uint8_t)(sector >> (8 * i));
        c->essiv->encrypt(c->essiv_ctx, bl, data, data);
        memcpy(iv, data, bl < c->niv ? bl : c->niv);
        return;
    }
    for (uint32_t i = 0; i < n && i < c->niv; i++) iv[i] = (uint8_t)(sector >> (8 * i));
}

void luks_decrypt(const struct luks_cipher *c, uint64_t sector, uint8_t *buf, uint64_t len)
{
    uint8_t iv[16];
    while (len > 0) {
        uint64_t n = len > LUKS_SECTOR ? LUKS_SECTOR : len;
        if (c->niv) make_iv(c, sector, iv);
        switch (c->mode) {
        case LUKS_MODE_ECB: c->n->decrypt(c->dec, n, buf, buf); break;
        case LUKS_MODE_CBC: cbc_decrypt(c->dec, c->n->decrypt, c->niv, iv, n, buf, buf); break;
        case LUKS_MODE_CTR: ctr_crypt(c->dec, c->n->encrypt, c->niv, iv, n, buf, buf); break;
        case LUKS_MODE_XTS: xts_decrypt_message(c->dec, c->twk, c->n->decrypt, c->n->encrypt, iv, n, buf, buf); break;
        }
        sector++;
        buf += n;
        len -= n;
    }
}

int luks_unlock(const struct luks *k, const uint8_t *pw, uint32_t pwlen, uint64_t max_iters, struct luks_cipher *out)
{
    uint32_t in = k->r->input, kb = k->key_bytes;
    uint64_t splitlen = (uint64_t)kb * LUKS_STRIPES; /* <= 256000: key_bytes <= 64, stripes checked */
    if (kb > LUKS_KEY_MAX) return rt_error(in, GERR_INTERNAL, kb, 0, 0);
    uint64_t mark = rt_heap_mark();
    uint8_t *split = rt_alloc(splitlen);
    if (!split) return rt_error(in, GERR_OUT_OF_MEMORY, splitlen, 0, 0);
    uint8_t slotkey[LUKS_KEY_MAX], mk[LUKS_KEY_MAX], digest[LUKS_DIGEST_LEN];
    struct luks_cipher sc = { 0 };
    int found = 0;
    if (k->mk_iters > max_iters) {
        rt_heap_release(mark);
        return rt_error(in, GERR_FORMAT, LUKS_E_KDF_LIMIT, LUKS_SLOTS, k->mk_iters);
    }
    for (uint32_t i = 0; i < LUKS_SLOTS && !found; i++) {
        const struct luks_slot *s = &k->slots[i];
        if (s->active != LUKS_SLOT_ENABLED) continue;
        if (s->iters > max_iters) {
            rt_heap_release(mark);
            return rt_error(in, GERR_FORMAT, LUKS_E_KDF_LIMIT, i, s->iters);
        }
        pbkdf2_any(k->hash, pw, pwlen, s->salt, LUKS_SALT_LEN, s->iters, slotkey, kb);
        /* the key material may lie past the end of the file: it reads as zeroes, as in qemu */
        if (reader_read(k->r, (uint64_t)s->key_offset_sector * LUKS_SECTOR, split, splitlen)) {
            rt_heap_release(mark);
            return rt_error(in, GERR_IO, (uint64_t)s->key_offset_sector * LUKS_SECTOR, 0, 0);
        }
        int rc = cipher_setup(&sc, k->cipher_alg, k->mode, k->ivgen, k->ivgen_cipher, k->ivgen_hash, slotkey, kb);
        if (rc) {
            rt_heap_release(mark);
            if (rc == -2) return rt_error(in, GERR_OUT_OF_MEMORY, 0, 0, 0);
            return rt_error(in, GERR_FORMAT, LUKS_E_CIPHER_UNSUPPORTED, k->cipher_alg, k->mode);
        }
        luks_decrypt(&sc, 0, split, splitlen);
        luks_af_merge(k->hash, kb, LUKS_STRIPES, split, mk);
        pbkdf2_any(k->hash, mk, kb, k->mk_salt, LUKS_SALT_LEN, k->mk_iters, digest, LUKS_DIGEST_LEN);
        found = memcmp(digest, k->mk_digest, LUKS_DIGEST_LEN) == 0;
    }
    memset(split, 0, splitlen);
    memset(slotkey, 0, sizeof slotkey);
    rt_heap_release(mark);
    if (!found) {
        memset(mk, 0, sizeof mk);
        return rt_error(in, GERR_FORMAT, LUKS_E_BAD_PASSWORD, 0, 0);
    }
    memset(out, 0, sizeof *out);
    int rc = cipher_setup(out, k->cipher_alg, k->mode, k->ivgen, k->ivgen_cipher, k->ivgen_hash, mk, kb);
    memset(mk, 0, sizeof mk);
    if (rc == -2) return rt_error(in, GERR_OUT_OF_MEMORY, 0, 0, 0);
    if (rc) return rt_error(in, GERR_FORMAT, LUKS_E_CIPHER_UNSUPPORTED, k->cipher_alg, k->mode);
    return 0;
}

/* For the LUKS writer (guest/luks/write.c): the same nettle tables and PBKDF2. */
const struct nettle_hash *luks_nettle_hash(uint32_t h)
{
    return hash_of(h);
}

const struct nettle_cipher *luks_nettle_cipher(uint32_t a)
{
    return cipher_of(a);
}

void luks_pbkdf2(uint32_t hash, const uint8_t *key, uint32_t klen, const uint8_t *salt, uint32_t slen,
                 uint32_t iters, uint8_t *out, uint32_t olen)
{
    pbkdf2_any(hash, key, klen, salt, slen, iters, out, olen);
}

void luks_iv(const struct luks_cipher *c, uint64_t sector, uint8_t *iv)
{
    make_iv(c, sector, iv);
}
