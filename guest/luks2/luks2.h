/*
 * LUKS2 (cryptsetup's on-disk format 2; no qemu release reads it) for the
 * guest: the binary header and its two copies (header.c), the JSON
 * metadata (meta.c over the bounded tokenizer in json.c), key slot unlock
 * with PBKDF2 or Argon2 and data segment decryption (crypto.c, Debian's
 * nettle and libargon2 linked statically), and the chain layer (layer.c).
 * Failures are ERROR records of kind GERR_FORMAT with a LUKS2_E_* number
 * (texts in lib/formats/luks/luks2_errors.ts); the algorithm numbers are
 * LUKS1's (luks.h), so the host names them as it names LUKS1's.
 */
#ifndef INSTAR_LUKS2_H
#define INSTAR_LUKS2_H
#include <stdint.h>
#include <stdbool.h>
#include "reader.h"
#include "../luks/luks.h"

#define LUKS2_BIN_SIZE 4096
#define LUKS2_HDR_MAX (4u << 20)   /* the largest hdr_size cryptsetup knows */
#define LUKS2_MAX_SLOTS 32
#define LUKS2_SALT_MAX 64
#define LUKS2_DIGEST_MAX 64
#define LUKS2_JSON_DEPTH 16        /* cryptsetup's metadata nests 4 deep; tokens may add a few */
#define LUKS2_JSON_TOKENS 16384
#define LUKS2_SECTOR_MAX 4096
#define LUKS2_ARGON2_LANES_MAX 16
/* Argon2 passes x memory a key slot may ask for: 64 passes over 1 GiB. */
#define LUKS2_ARGON2_WORK_MAX (64ull << 20)

/* ERROR a0 numbers (GERR_FORMAT), above LUKS1's. */
enum {
    LUKS2_E_HEADER = 100,      /* a1 = primary copy's fault, a2 = secondary's (LUKS2_HF_*) */
    LUKS2_E_JSON_SYNTAX = 101, /* a1 = byte offset in the JSON area */
    LUKS2_E_JSON_DEPTH = 102,  /* a1 = the bound */
    LUKS2_E_JSON_TOKENS = 103, /* a1 = the bound */
    LUKS2_E_META = 104,        /* text: what is wrong */
    LUKS2_E_UNSUPPORTED = 105, /* text: what */
    LUKS2_E_KDF_MEMORY = 106,  /* a1 = slot, a2 = KiB */
    LUKS2_E_KDF_WORK = 107,    /* a1 = slot, a2 = passes */
    LUKS2_E_KDF_ITERS = 108,   /* a1 = slot (32: the volume key digest), a2 = iterations */
    LUKS2_E_AREA_PAST_EOF = 109, /* a1 = slot */
    LUKS2_E_SEGMENT_PAST_EOF = 110,
    LUKS2_E_NO_KEYSLOT = 111,  /* no key slot can unlock the data segment */
};

/* Why a header copy was not used. */
enum {
    LUKS2_HF_MAGIC = 1,
    LUKS2_HF_VERSION = 2,
    LUKS2_HF_SIZE = 3,
    LUKS2_HF_CSUM_ALG = 4,
    LUKS2_HF_CSUM = 5,
    LUKS2_HF_OFFSET = 6,
    LUKS2_HF_PAST_EOF = 7,
    LUKS2_HF_NOT_FOUND = 8,
};

/* A cipher spec ("aes-xts-plain64") with its key size, as LUKS_* numbers. */
struct luks2_spec {
    uint32_t alg, mode, ivgen, ivgen_hash, ivgen_alg, key_bytes;
};

struct luks2_slot {
    bool present;
    uint32_t kdf;                 /* LUKS2_KDF_* */
    uint32_t kdf_hash;            /* PBKDF2's hash (LUKS_HASH_*) */
    uint32_t iters;               /* PBKDF2 iterations / Argon2 passes */
    uint32_t memory_kib, parallel;
    uint8_t salt[LUKS2_SALT_MAX];
    uint32_t salt_len;
    uint32_t key_bytes;           /* the volume key's */
    uint32_t af_hash, stripes;
    uint64_t area_offset, area_size;
    struct luks2_spec area;       /* the key material's cipher, key = the KDF's output */
    uint32_t priority;            /* 0 ignore, 1 normal, 2 prefer */
};

struct luks2 {
    const struct reader *r;
    uint64_t hdr_size, seqid;
    uint8_t uuid[40];
    struct luks2_slot slots[LUKS2_MAX_SLOTS];
    uint32_t n_slots;             /* highest id + 1 */
    /* the data segment */
    uint64_t seg_offset, seg_size; /* seg_size 0: dynamic */
    uint64_t iv_tweak;
    uint32_t sector_size;
    struct luks2_spec seg;
    char seg_enc[64];             /* its encryption spec, parsed once the key size is known */
    /* the digest over the segment's volume key */
    uint32_t dg_hash, dg_iters, dg_salt_len, dg_len;
    uint8_t dg_salt[LUKS2_SALT_MAX], dg[LUKS2_DIGEST_MAX];
    uint32_t dg_slots;            /* bit i: key slot i holds this volume key */
};

/* Reads both header copies, picks the valid one with the highest seqid,
 * parses and checks its metadata; an ERROR record on failure. */
int luks2_open_header(struct luks2 *k, const struct reader *r);
/* LUKS2_INFO and the LUKS2_SLOT records. */
int luks2_emit_info(const struct luks2 *k);

/* meta.c: the JSON metadata of one header copy (json, len bytes) into k. */
int luks2_parse_meta(struct luks2 *k, const char *json, uint32_t len);
/* A cipher spec string into s (key_bytes set by the caller first); 0 or -1. */
int luks2_parse_spec(const char *spec, struct luks2_spec *s);

/* crypto.c */
struct nettle_cipher;
struct luks2_cipher {
    const struct nettle_cipher *n, *essiv;
    void *dec, *twk, *essiv_ctx;
    uint32_t mode, ivgen, niv, sector_size;
    uint64_t iv_tweak;
};
/* Tries the key slots (cryptsetup's order) with the passphrase; on success
 * `out` decrypts the data segment. max_iters bounds PBKDF2, max_kib Argon2. */
int luks2_unlock(const struct luks2 *k, const uint8_t *pw, uint32_t pwlen, uint64_t max_iters,
                 struct luks2_cipher *out);
/* Decrypts len bytes (whole sectors of c->sector_size) at segment byte offset pos, in place. */
void luks2_decrypt(const struct luks2_cipher *c, uint64_t pos, uint8_t *buf, uint64_t len);

#endif
