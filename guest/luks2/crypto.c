/*
 * LUKS2 key slot unlock and data decryption (cryptsetup's
 * luks2_keyslot_luks2.c and dm-crypt's sector IVs), with Debian's nettle
 * and libargon2 linked into the guest:
 *   for each key slot holding the data segment's key (priority "prefer"
 *   first, "ignore" never): the KDF (PBKDF2 with the slot's hash, or
 *   Argon2i/Argon2id with one thread over the slot's lanes) of the
 *   passphrase -> the area key; the key material (key_size x 4000 bytes at
 *   the area offset) decrypted in 512-byte sectors from IV 0 with the
 *   area's cipher; the AF merge with the af hash -> a candidate volume key;
 *   PBKDF2 of it with the digest's salt, hash and iterations must equal the
 *   digest.
 *   Data: sector_size bytes per IV; the IV counts 512-byte units from the
 *   segment's start plus iv_tweak (dm-crypt without iv_large_sectors, as
 *   cryptsetup activates LUKS2).
 * Bounds: PBKDF2 iterations <= params.kdf_max_iters (slots and digest);
 * Argon2 memory must fit the guest's heap (the host sizes the guest RAM
 * under its own limit, INSTAR_MAX_KDF_MEMORY) and passes x memory <=
 * LUKS2_ARGON2_WORK_MAX. Keys never leave the guest.
 */
#include "luks2.h"
#include "../luks/luks_crypto.h"
#include "../ops/records.h"
#include <argon2.h>
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

/* 0, -1 (unsupported), -2 (out of memory) */
static int cipher_setup(struct luks2_cipher *c, const struct luks2_spec *sp, const uint8_t *key)
{
    const struct nettle_cipher *n = luks_nettle_cipher(sp->alg);
    uint32_t klen = sp->key_bytes;
    if (!n) return -1;
    if (sp->mode == LUKS_MODE_XTS && n->block_size != 16) return -1;
    c->n = n;
    c->mode = sp->mode;
    c->ivgen = sp->ivgen;
    c->niv = sp->mode == LUKS_MODE_ECB ? 0 : n->block_size;
    if (!c->dec) c->dec = rt_alloc(n->context_size);
    if (!c->twk) c->twk = rt_alloc(n->context_size);
    if (!c->dec || !c->twk) return -2;
    if (sp->mode == LUKS_MODE_XTS) {
        n->set_decrypt_key(c->dec, key);
        n->set_encrypt_key(c->twk, key + klen / 2);
    } else if (sp->mode == LUKS_MODE_CTR) {
        n->set_encrypt_key(c->dec, key);
    } else {
        n->set_decrypt_key(c->dec, key);
    }
    c->essiv = NULL;
    if (sp->ivgen == LUKS_IVGEN_ESSIV)
        return luks_essiv_key(luks_nettle_hash(sp->ivgen_hash), luks_nettle_cipher(sp->ivgen_alg), key, klen,
                              &c->essiv, &c->essiv_ctx);
    return 0;
}

static void make_iv(const struct luks2_cipher *c, uint64_t sector, uint8_t *iv)
{
    memset(iv, 0, c->niv);
    if (c->ivgen == LUKS_IVGEN_ESSIV) {
        uint8_t data[16] = { 0 };
        uint32_t bl = c->essiv->block_size;
        for (uint32_t i = 0; i < 8 && i < bl; i++) data[i] = (uint8_t)(sector >> (8 * i));
        c->essiv->encrypt(c->essiv_ctx, bl, data, data);
        memcpy(iv, data, bl < c->niv ? bl : c->niv);
        return;
    }
    uint32_t n = c->ivgen == LUKS_IVGEN_PLAIN ? 4 : 8;
    for (uint32_t i = 0; i < n && i < c->niv; i++) iv[i] = (uint8_t)(sector >> (8 * i));
}

void luks2_decrypt(const struct luks2_cipher *c, uint64_t pos, uint8_t *buf, uint64_t len)
{
    uint8_t iv[16];
    uint32_t ss = c->sector_size;
    while (len > 0) {
        uint64_t n = len > ss ? ss : len;
        if (c->niv) make_iv(c, pos / 512 + c->iv_tweak, iv);
        switch (c->mode) {
        case LUKS_MODE_ECB: c->n->decrypt(c->dec, n, buf, buf); break;
        case LUKS_MODE_CBC: cbc_decrypt(c->dec, c->n->decrypt, c->niv, iv, n, buf, buf); break;
        case LUKS_MODE_CTR: ctr_crypt(c->dec, c->n->encrypt, c->niv, iv, n, buf, buf); break;
        case LUKS_MODE_XTS: xts_decrypt_message(c->dec, c->twk, c->n->decrypt, c->n->encrypt, iv, n, buf, buf); break;
        }
        pos += n;
        buf += n;
        len -= n;
    }
}

/* libargon2's memory from the guest heap (released with the mark after the KDF). */
static int argon2_alloc(uint8_t **memory, size_t bytes)
{
    *memory = rt_alloc(bytes);
    return *memory ? 0 : -1;
}

static void argon2_free(uint8_t *memory, size_t bytes)
{
    memset(memory, 0, bytes);
}

/* The slot's KDF into key[area key_bytes]; 0, or an ERROR reported. */
static int slot_kdf(const struct luks2 *k, uint32_t id, const uint8_t *pw, uint32_t pwlen, uint64_t max_iters,
                    uint8_t *key)
{
    const struct luks2_slot *s = &k->slots[id];
    uint32_t in = k->r->input;
    if (s->kdf == LUKS2_KDF_PBKDF2) {
        if (s->iters > max_iters) return rt_error(in, GERR_FORMAT, LUKS2_E_KDF_ITERS, id, s->iters);
        luks_pbkdf2(s->kdf_hash, pw, pwlen, s->salt, s->salt_len, s->iters, key, s->area.key_bytes);
        return 0;
    }
    if ((uint64_t)s->iters * s->memory_kib > LUKS2_ARGON2_WORK_MAX)
        return rt_error(in, GERR_FORMAT, LUKS2_E_KDF_WORK, id, s->iters);
    uint64_t mark = rt_heap_mark();
    /* argon2 rounds memory down to 4 x lanes blocks of 1 KiB; ask the heap first for a clear error */
    void *probe = rt_alloc((uint64_t)s->memory_kib * 1024 + (1u << 20));
    rt_heap_release(mark);
    if (!probe) return rt_error(in, GERR_FORMAT, LUKS2_E_KDF_MEMORY, id, s->memory_kib);
    argon2_context ctx = {
        .out = key,
        .outlen = s->area.key_bytes,
        .pwd = (uint8_t *)pw,
        .pwdlen = pwlen,
        .salt = (uint8_t *)s->salt,
        .saltlen = s->salt_len,
        .t_cost = s->iters,
        .m_cost = s->memory_kib,
        .lanes = s->parallel,
        .threads = 1,
        .version = ARGON2_VERSION_13,
        .allocate_cbk = argon2_alloc,
        .free_cbk = argon2_free,
        .flags = ARGON2_DEFAULT_FLAGS,
    };
    int rc = argon2_ctx(&ctx, s->kdf == LUKS2_KDF_ARGON2I ? Argon2_i : Argon2_id);
    rt_heap_release(mark);
    if (rc == ARGON2_MEMORY_ALLOCATION_ERROR) return rt_error(in, GERR_FORMAT, LUKS2_E_KDF_MEMORY, id, s->memory_kib);
    if (rc != ARGON2_OK) return rt_error(in, GERR_FORMAT, LUKS2_E_KDF_WORK, id, s->iters);
    return 0;
}

int luks2_unlock(const struct luks2 *k, const uint8_t *pw, uint32_t pwlen, uint64_t max_iters,
                 struct luks2_cipher *out)
{
    uint32_t in = k->r->input;
    if (k->dg_iters > max_iters) return rt_error(in, GERR_FORMAT, LUKS2_E_KDF_ITERS, LUKS2_MAX_SLOTS, k->dg_iters);
    uint8_t areakey[LUKS_KEY_MAX], vk[LUKS_KEY_MAX], digest[LUKS2_DIGEST_MAX];
    bool found = false, tried = false;
    /* cryptsetup's order: "prefer" (2) slots, then "normal" (1); "ignore" (0) only by number, never here */
    for (uint32_t prio = 2; prio >= 1 && !found; prio--) {
        for (uint32_t i = 0; i < k->n_slots && !found; i++) {
            const struct luks2_slot *s = &k->slots[i];
            if (!s->present || s->priority != prio || !(k->dg_slots >> i & 1)) continue;
            tried = true;
            if (slot_kdf(k, i, pw, pwlen, max_iters, areakey)) return -1;
            uint64_t mark = rt_heap_mark();
            uint64_t splitlen = (uint64_t)s->key_bytes * s->stripes; /* <= 64 x 4000 */
            uint8_t *split = rt_alloc(splitlen);
            struct luks2_cipher sc = { 0 };
            sc.sector_size = 512;
            if (!split) return rt_error(in, GERR_OUT_OF_MEMORY, splitlen, 0, 0);
            if (reader_read(k->r, s->area_offset, split, splitlen)) {
                rt_heap_release(mark);
                return rt_error(in, GERR_IO, s->area_offset, 0, 0);
            }
            int rc = cipher_setup(&sc, &s->area, areakey);
            if (rc) {
                rt_heap_release(mark);
                if (rc == -2) return rt_error(in, GERR_OUT_OF_MEMORY, 0, 0, 0);
                return rt_error(in, GERR_FORMAT, LUKS_E_CIPHER_UNSUPPORTED, s->area.alg, s->area.mode);
            }
            luks2_decrypt(&sc, 0, split, splitlen);
            luks_af_merge(s->af_hash, s->key_bytes, s->stripes, split, vk);
            memset(split, 0, splitlen);
            rt_heap_release(mark);
            luks_pbkdf2(k->dg_hash, vk, s->key_bytes, k->dg_salt, k->dg_salt_len, k->dg_iters, digest, k->dg_len);
            found = memcmp(digest, k->dg, k->dg_len) == 0;
        }
    }
    memset(areakey, 0, sizeof areakey);
    if (!found) {
        memset(vk, 0, sizeof vk);
        if (!tried) return rt_error(in, GERR_FORMAT, LUKS2_E_NO_KEYSLOT, 0, 0);
        return rt_error(in, GERR_FORMAT, LUKS_E_BAD_PASSWORD, 0, 0);
    }
    memset(out, 0, sizeof *out);
    out->sector_size = k->sector_size;
    out->iv_tweak = k->iv_tweak;
    int rc = cipher_setup(out, &k->seg, vk);
    memset(vk, 0, sizeof vk);
    if (rc == -2) return rt_error(in, GERR_OUT_OF_MEMORY, 0, 0, 0);
    if (rc) return rt_error(in, GERR_FORMAT, LUKS_E_CIPHER_UNSUPPORTED, k->seg.alg, k->seg.mode);
    return 0;
}
