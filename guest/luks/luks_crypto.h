/* LUKS1 unlock and payload decryption (guest/luks/crypto.c, nettle). */
#ifndef INSTAR_LUKS_CRYPTO_H
#define INSTAR_LUKS_CRYPTO_H
#include "luks.h"

struct nettle_cipher;

/* A volume (or key slot) cipher: mode, IV generator and keyed contexts. */
struct luks_cipher {
    const struct nettle_cipher *n;     /* the block cipher */
    const struct nettle_cipher *essiv; /* ESSIV's cipher, or NULL */
    void *dec, *twk, *essiv_ctx;       /* rt_alloc'd contexts */
    uint32_t mode, ivgen, niv;
};

/* Tries every active key slot with the passphrase; on success `out` decrypts
 * the payload. Emits an ERROR (LUKS_E_BAD_PASSWORD, LUKS_E_KDF_LIMIT, ...) on
 * failure. */
int luks_unlock(const struct luks *k, const uint8_t *pw, uint32_t pwlen, uint64_t max_iters, struct luks_cipher *out);

/* Decrypts len bytes in place: 512-byte sectors from `sector` (the last may be short). */
void luks_decrypt(const struct luks_cipher *c, uint64_t sector, uint8_t *buf, uint64_t len);

/* What guest/luks/write.c shares with the reader: nettle's hash and cipher
 * of a LUKS_HASH_* / LUKS_CIPHER_* (NULL if none), PBKDF2 with any of them,
 * and the IV of a sector under c's IV generator. */
struct nettle_hash;
const struct nettle_hash *luks_nettle_hash(uint32_t h);
const struct nettle_cipher *luks_nettle_cipher(uint32_t a);
void luks_pbkdf2(uint32_t hash, const uint8_t *key, uint32_t klen, const uint8_t *salt, uint32_t slen,
                 uint32_t iters, uint8_t *out, uint32_t olen);
void luks_iv(const struct luks_cipher *c, uint64_t sector, uint8_t *iv);
/* Keys ESSIV's cipher e with hash h of the volume key (LUKS1, LUKS2 and the
 * writer): 0, -1 no such hash or cipher, -2 out of memory. */
int luks_essiv_key(const struct nettle_hash *h, const struct nettle_cipher *e, const uint8_t *key, uint32_t klen,
                   const struct nettle_cipher **essiv, void **essiv_ctx);
/* The anti-forensic merge of `stripes` blocks of `blocklen` bytes with the af hash (LUKS1 and LUKS2). */
void luks_af_merge(uint32_t hash, uint32_t blocklen, uint32_t stripes, const uint8_t *in, uint8_t *out);

#endif
