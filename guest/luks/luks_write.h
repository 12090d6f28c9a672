/*
 * Writing LUKS1 as qemu 7.2's qcrypto_block_luks_create does (guest/luks/
 * write.c): a new master key, salts, uuid and anti-forensic stripes from
 * the guest's random generator (RDSEED/RDRAND where the CPU has them, mixed
 * with bytes the host supplied), key slot 0 sealed with the passphrase, the
 * header written big-endian; then payload sectors encrypted with the master
 * key. No key byte leaves the guest.
 */
#ifndef INSTAR_LUKS_WRITE_H
#define INSTAR_LUKS_WRITE_H
#include "luks_crypto.h"

/* What the host chose (validated as qemu validates it, then re-checked here). */
struct luks_new {
    uint32_t cipher_alg, mode, ivgen, ivgen_hash, hash; /* ivgen_hash 0: none named */
    uint32_t mk_iters, slot_iters;
};

/* An encrypting cipher: same shape as the reader's, contexts keyed to encrypt. */
struct luks_enc {
    struct luks_cipher c; /* c.dec holds the encrypt key (xts: data key), c.twk the tweak key */
};

/* Seeds the generator from the host's bytes and the CPU's; returns LUKS_ENTROPY_* bits. */
uint32_t luks_rng_init(const uint8_t *host, uint32_t len);
void luks_rng(uint8_t *out, uint64_t len);
void luks_rng_wipe(void);

/* Key bytes (xts: both halves) and payload offset (bytes) of a new header. */
uint32_t luks_new_key_bytes(const struct luks_new *n);
uint64_t luks_new_payload_offset(const struct luks_new *n);

/* The offset in output 0 at which luks_format writes the header (default 0). */
extern uint64_t luks_out_base;

/* Writes header and key slot 0 to output 0; on success `enc` encrypts payload
 * sectors with the new master key. Emits an ERROR on failure. */
int luks_format(const struct luks_new *n, const uint8_t *pw, uint32_t pwlen, struct luks_enc *enc);

/* Encrypts len bytes (whole 512-byte sectors) in place from `sector`. */
void luks_encrypt(const struct luks_enc *e, uint64_t sector, uint8_t *buf, uint64_t len);

/* amend: 1 if pw opens active slot i (mk then holds the master key), 0 if not, -1 after an ERROR. */
int luks_load_key(const struct luks *k, uint32_t i, const uint8_t *pw, uint32_t pwlen, uint64_t max, uint8_t *mk);
/* Seals mk into slot idx of the raw header h (as read) and writes material and header. */
int luks_add_slot(const struct luks *k, uint8_t *h, uint32_t idx, uint32_t iters, const uint8_t *pw, uint32_t pwlen,
                  const uint8_t *mk);
/* Disables slot idx in h, writes h, then overwrites its key material 16 times with random bytes. */
int luks_erase_slot(const struct luks *k, uint8_t *h, uint32_t idx);

/* Keys `e` to encrypt with n's cipher, mode and IV generator (qcow2's legacy AES): 0, -1 cipher, -2 memory. */
int luks_enc_init(struct luks_enc *e, const struct luks_new *n, const uint8_t *key, uint32_t klen);

/* Zeroes an encrypting cipher's keyed contexts. */
void luks_enc_wipe(struct luks_enc *e);

#endif
