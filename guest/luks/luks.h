/*
 * LUKS1 (cryptsetup's on-disk format 1.2.1) as qemu 7.2's crypto/block-luks.c
 * opens it: the 592-byte big-endian header, qemu's header checks and its
 * parse of the cipher/mode/hash strings, each failure with qemu's message
 * (a LUKS_E_* number in an ERROR record of kind GERR_FORMAT; texts in
 * lib/formats/luks/errors.ts). header.c needs no crypto (info opens with
 * QCRYPTO_BLOCK_OPEN_NO_IO); crypto.c unlocks a key slot with the passphrase
 * the host put in params.secret and decrypts payload sectors (Debian's
 * nettle, linked statically). The master key never leaves the guest.
 */
#ifndef INSTAR_LUKS_H
#define INSTAR_LUKS_H
#include <stdint.h>
#include <stdbool.h>
#include "reader.h"

#define LUKS_HEADER_SIZE 592
#define LUKS_SLOTS 8
#define LUKS_STRIPES 4000
#define LUKS_SECTOR 512
#define LUKS_SALT_LEN 32
#define LUKS_DIGEST_LEN 20
#define LUKS_KEY_MAX 64 /* xts with a 256-bit cipher */
#define LUKS_SLOT_ENABLED 0x00AC71F3u
#define LUKS_SLOT_DISABLED 0x0000DEADu

/* Message numbers (ERROR a0); a1/a2 as each says. Texts quoting a header
 * string send it first as a NAME record of kind NAME_ERROR_TEXT. */
enum {
    LUKS_E_NOT_LUKS = 1,          /* Volume is not in LUKS format */
    LUKS_E_VERSION = 2,           /* a1 = version */
    LUKS_E_CIPHER_NAME_NUL = 3,
    LUKS_E_CIPHER_MODE_NUL = 4,
    LUKS_E_HASH_SPEC_NUL = 5,
    LUKS_E_PAYLOAD_OVERLAP = 6,
    LUKS_E_MK_ITERS_ZERO = 7,
    LUKS_E_SLOT_STRIPES = 8,      /* a1 = slot, a2 = stripes */
    LUKS_E_SLOT_STATE = 9,        /* a1 = slot */
    LUKS_E_SLOT_ITERS_ZERO = 10,  /* a1 = slot */
    LUKS_E_SLOT_OVER_HEADER = 11, /* a1 = slot */
    LUKS_E_SLOT_OVER_PAYLOAD = 12,/* a1 = slot */
    LUKS_E_SLOTS_OVERLAP = 13,    /* a1, a2 = slots */
    LUKS_E_MODE_FORMAT = 14,      /* text: the cipher mode string */
    LUKS_E_HASH_NAME = 15,        /* text: the name */
    LUKS_E_MODE_NAME = 16,        /* text */
    LUKS_E_ALG_KEYSIZE = 17,      /* text: cipher name, a1 = key bytes */
    LUKS_E_IVGEN_NAME = 18,       /* text */
    LUKS_E_IVHASH_MISSING = 19,
    LUKS_E_ESSIV_KEYSIZE = 20,    /* a1 = digest length, a2 = cipher family (1 AES, 2 Serpent, 3 Twofish) */
    LUKS_E_ESSIV_CIPHER = 21,     /* a1 = cipher (LUKS_CIPHER_*) */
    LUKS_E_BAD_PASSWORD = 22,
    LUKS_E_KDF_LIMIT = 23,        /* a1 = slot (8: the master key digest), a2 = iterations */
    LUKS_E_NO_SECRET = 24,
    LUKS_E_CIPHER_UNSUPPORTED = 25, /* a1 = cipher, a2 = mode */
    LUKS_E_PAYLOAD_PAST_EOF = 26,
};

struct luks_slot {
    uint32_t active, iters, key_offset_sector, stripes;
    uint8_t salt[LUKS_SALT_LEN];
};

struct luks {
    const struct reader *r;
    uint32_t version, payload_offset_sector, key_bytes, mk_iters;
    uint8_t mk_digest[LUKS_DIGEST_LEN];
    uint8_t mk_salt[LUKS_SALT_LEN];
    uint8_t uuid[40];
    char cipher_name[32], cipher_mode[32], hash_spec[32];
    struct luks_slot slots[LUKS_SLOTS];
    /* parsed */
    uint32_t cipher_alg, mode, ivgen, ivgen_hash, hash, ivgen_cipher;
};

/* Reads, checks and parses the header over r; emits an ERROR on failure. */
int luks_open_header(struct luks *k, const struct reader *r);
/* The LUKS_INFO record of an opened header. */
int luks_emit_info(const struct luks *k);
/* qemu's digest length of a LUKS_HASH_*, key length of a LUKS_CIPHER_*. */
uint32_t luks_digest_len(uint32_t hash);
uint32_t luks_cipher_key_len(uint32_t alg);

#endif
