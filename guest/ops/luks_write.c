/*
 * luks_write (ops.LUKS_WRITE): LUKS1 output, create -f luks and convert -O
 * luks (lib/formats/luks/write.ts drives it; arguments in lib/abi/spec.ts
 * luksWriteFlags).
 *   BENCH: arg[6] PBKDF2 iterations of hash arg[4] (one output block) on
 *     dummy bytes; nothing is written. The host times the run: qemu's
 *     qcrypto_pbkdf2_count_iters, with the host's clock.
 *   FORMAT: a new header and key slot 0 on output 0 (guest/luks/write.c),
 *     sealed with the passphrase in secret slot n_inputs, randomness from
 *     the CPU mixed with the host's 64 bytes in slot n_inputs + 1.
 *   AT: (with FORMAT, without COPY) the header is written at byte arg[7]
 *     of output 0 instead of 0: qcow2's LUKS header clusters.
 *   COPY: then the chain over all inputs (any format instar reads, LUKS
 *     sources unlocked with their own passphrases) is read in 4 MiB chunks,
 *     encrypted with the new master key and written behind the header;
 *     zero runs are encrypted too (qemu's crypto driver has no zero-init).
 *   INTO: convert -n into an existing LUKS image (guest/ops/luks_into.c).
 * The master key exists only in this guest's memory.
 */
#include "../chain/chain.h"
#include "../luks/luks_write.h"
#include "records.h"

#define CHUNK (4ull << 20)

static struct chain chain;

/* Secret slot i of params.secret (the inputs' passphrases come first). */
static int secret_slot(uint32_t i, const uint8_t **out, uint32_t *len)
{
    const struct params *p = rt_params();
    if (i >= 16 || !(p->secret_inputs >> i & 1)) return -1;
    uint64_t off = 0;
    for (uint32_t k = 0; k < i; k++) off += p->input_secret_len[k];
    uint64_t n = p->input_secret_len[i];
    if (off > sizeof p->secret || n > sizeof p->secret - off) return -1;
    *out = p->secret + off;
    *len = (uint32_t)n;
    return 0;
}

static int bench(const struct params *p)
{
    static const uint8_t key[64] = { 1 }, salt[LUKS_SALT_LEN] = { 2 };
    uint8_t out[64];
    uint32_t hash = (uint32_t)p->arg[4];
    if (hash < 1 || hash > 7 || p->arg[6] == 0 || p->arg[6] > p->kdf_max_iters)
        return rt_error(0, GERR_BAD_PARAMS, 71, hash, p->arg[6]);
    luks_pbkdf2(hash, key, 32, salt, sizeof salt, (uint32_t)p->arg[6], out, luks_digest_len(hash));
    return 0;
}

/* amend of the key slots of input 0 (also output 0); secret slot 0 is its passphrase. */
static int amend(const struct params *p)
{
    static struct reader r;
    static struct luks k;
    if (p->n_inputs != 1 || rt_input(0)->format != FMT_LUKS) return rt_error(0, GERR_BAD_PARAMS, 77, p->n_inputs, 0);
    reader_from_input(&r, 0);
    if (luks_open_header(&k, &r)) return -1;
    uint8_t h[LUKS_HEADER_SIZE], mk[LUKS_KEY_MAX];
    if (reader_read(&r, 0, h, sizeof h)) return rt_error(0, GERR_IO, 0, 0, 0);
    const uint8_t *pw0, *pw1, *host;
    uint32_t len0, len1, hostlen;
    if (secret_slot(0, &pw0, &len0) || secret_slot(1, &pw1, &len1)) return rt_error(0, GERR_BAD_PARAMS, 78, 0, 0);
    int rc = 0;
    switch (p->arg[0]) {
    case LUKS_AMEND_MATCH: {
        struct rec_luks_slots rec;
        rec_init(&rec, REC_LUKS_SLOTS, sizeof rec);
        for (uint32_t i = 0; i < LUKS_SLOTS && rc >= 0; i++) {
            rc = luks_load_key(&k, i, pw1, len1, p->kdf_max_iters, mk);
            if (rc == 1) rec.opens |= 1u << i;
        }
        memset(mk, 0, sizeof mk);
        return rc < 0 ? -1 : rt_emit(&rec, sizeof rec);
    }
    case LUKS_AMEND_ADD: {
        if (p->arg[1] >= LUKS_SLOTS || p->arg[2] == 0 || p->arg[2] > 0xffffffffull ||
            secret_slot(2, &host, &hostlen) || hostlen < 32)
            return rt_error(0, GERR_BAD_PARAMS, 79, p->arg[1], p->arg[2]);
        /* qcrypto_block_luks_find_key with the image's own passphrase */
        int found = 0;
        for (uint32_t i = 0; i < LUKS_SLOTS && !found; i++) {
            found = luks_load_key(&k, i, pw0, len0, p->kdf_max_iters, mk);
            if (found < 0) return -1;
        }
        if (!found) return rt_error(0, GERR_FORMAT, LUKS_E_BAD_PASSWORD, 0, 0);
        luks_rng_init(host, hostlen);
        rc = luks_add_slot(&k, h, (uint32_t)p->arg[1], (uint32_t)p->arg[2], pw1, len1, mk);
        memset(mk, 0, sizeof mk);
        luks_rng_wipe();
        return rc;
    }
    case LUKS_AMEND_ERASE: {
        /* secret slot 1 holds the entropy here */
        if (p->arg[1] == 0 || p->arg[1] > 0xff || len1 < 32) return rt_error(0, GERR_BAD_PARAMS, 80, p->arg[1], 0);
        luks_rng_init(pw1, len1);
        for (uint32_t i = 0; i < LUKS_SLOTS && rc == 0; i++)
            if (p->arg[1] >> i & 1) rc = luks_erase_slot(&k, h, i);
        luks_rng_wipe();
        return rc;
    }
    }
    return rt_error(0, GERR_BAD_PARAMS, 81, p->arg[0], 0);
}

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->flags & LUKS_WRITE_F_BENCH) return bench(p);
    if (p->flags & LUKS_WRITE_F_AMEND) return amend(p);
    if (p->flags & LUKS_WRITE_F_INTO) return luks_into(p);
    if (!(p->flags & LUKS_WRITE_F_FORMAT)) return rt_error(0, GERR_BAD_PARAMS, 72, p->flags, 0);
    struct luks_new n = {
        .cipher_alg = (uint32_t)p->arg[0],
        .mode = (uint32_t)p->arg[1],
        .ivgen = (uint32_t)p->arg[2],
        .ivgen_hash = (uint32_t)p->arg[3],
        .hash = (uint32_t)p->arg[4],
    };
    if (p->arg[5] > 0xffffffffull || p->arg[6] > 0xffffffffull || p->arg[0] > 10 || p->arg[1] > 4 ||
        p->arg[2] > 3 || p->arg[3] > 7 || p->arg[4] > 7)
        return rt_error(0, GERR_BAD_PARAMS, 73, p->arg[5], p->arg[6]);
    n.mk_iters = (uint32_t)p->arg[5];
    n.slot_iters = (uint32_t)p->arg[6];
    uint32_t ni = p->n_inputs;
    const uint8_t *pw, *host;
    uint32_t pwlen, hostlen;
    if (secret_slot(ni, &pw, &pwlen) || secret_slot(ni + 1, &host, &hostlen) || hostlen < 32)
        return rt_error(0, GERR_BAD_PARAMS, 74, ni, 0);
    uint64_t payload = luks_new_payload_offset(&n), size = p->arg[7];
    uint64_t end;
    /* AT: a header only, written at offset arg[7] (qcow2's crypto header clusters). */
    if (p->flags & LUKS_WRITE_F_AT) {
        if (p->flags & LUKS_WRITE_F_COPY || p->arg[7] % LUKS_SECTOR || __builtin_add_overflow(p->arg[7], payload, &end) ||
            end > p->output_cap)
            return rt_error(0, GERR_BAD_PARAMS, 82, p->arg[7], p->output_cap);
        luks_out_base = p->arg[7];
        size = 0;
    }
    if (__builtin_add_overflow(payload, (size + LUKS_SECTOR - 1) / LUKS_SECTOR * LUKS_SECTOR, &end) ||
        end > p->output_cap || size > (1ull << 62))
        return rt_error(0, GERR_BAD_PARAMS, 75, size, p->output_cap);
    /* Open the source first: a bad source fails before anything is written. */
    if (p->flags & LUKS_WRITE_F_COPY) {
        chain.batch = chain.defer = true;
        if (chain_open(&chain, 0)) return -1;
        if (chain.size < size) return rt_error(0, GERR_BAD_PARAMS, 76, size, chain.size);
    }
    struct rec_luks_written rec;
    rec_init(&rec, REC_LUKS_WRITTEN, sizeof rec);
    rec.entropy = luks_rng_init(host, hostlen);
    struct luks_enc enc;
    int rc = luks_format(&n, pw, pwlen, &enc);
    luks_rng_wipe();
    if (rc) return -1;
    rec.master_key_iters = n.mk_iters;
    rec.slot_iters = n.slot_iters;
    rec.payload_offset = payload;
    if (p->flags & LUKS_WRITE_F_COPY && size > 0) {
        uint8_t *buf = rt_alloc(CHUNK);
        if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
        for (uint64_t off = 0; off < size;) {
            uint64_t len = size - off < CHUNK ? size - off : CHUNK;
            for (uint64_t x = off; x < off + len;) {
                uint64_t k = 0;
                int st = chain_status(&chain, x, off + len - x, &k);
                if (st < 0) return -1;
                if ((st & CS_DATA) && !(st & CS_ZERO)) {
                    if (chain_read(&chain, x, k, buf + (x - off))) return -1;
                } else {
                    memset(buf + (x - off), 0, k);
                }
                x += k;
            }
            if (chain_flush(&chain)) return -1;
            /* the last sector is padded with zeroes to a whole one */
            uint64_t whole = (len + LUKS_SECTOR - 1) / LUKS_SECTOR * LUKS_SECTOR;
            memset(buf + len, 0, whole - len);
            luks_encrypt(&enc, off / LUKS_SECTOR, buf, whole);
            if (hc_write(payload + off, whole, buf) != (int64_t)whole) return rt_error(0, GERR_IO, 2, off, 0);
            off += len;
            hc_progress(off, size);
        }
        memset(buf, 0, CHUNK);
    }
    luks_enc_wipe(&enc);
    return rt_emit(&rec, sizeof rec);
}
