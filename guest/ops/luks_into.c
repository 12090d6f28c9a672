/*
 * luks_write with LUKS_WRITE_F_INTO: convert -n into an existing LUKS1
 * image (nova's and cinder's `qemu-img convert -n --target-image-opts
 * driver=luks,key-secret=...`), as qemu-img writes through its crypto
 * driver. Input 0 is the target (format LUKS, its passphrase as its input
 * secret), also output 0; inputs 1.. are the source chain. The target's
 * header is read and a key slot unlocked with the passphrase, as qemu's
 * open does (qcrypto_block_luks_find_key); the master key it seals then
 * encrypts the source's bytes into the payload, from sector 0 on. The header
 * and key material are never written.
 *   arg[0] bytes to write (the source's size, a multiple of 512, no more
 *          than the target's payload holds; the host checked both)
 *   arg[1] min_sparse in bytes (-S), with LUKS_WRITE_F_INTO_SKIP_ZERO
 * Without SKIP_ZERO every sector is written, zeroes encrypted too (qemu's
 * crypto driver has no write-zeroes: its fallback writes a zero buffer).
 * With it (--target-is-zero and -S > 0) what the source reads as zeroes is
 * left alone, as qemu skips it: blocks of min_sparse bytes (aligned in
 * guest offsets) that read as zeroes, by block status or by content.
 * A wrong passphrase is LUKS_E_BAD_PASSWORD about input 0 (qemu's open
 * error). The master key exists only in this guest's memory.
 */
#include "../chain/chain.h"
#include "../luks/luks_write.h"
#include "records.h"
#include "zero.h"

#define CHUNK (4ull << 20)

static struct chain src;

/* Encrypts buf (guest bytes [off, off+n), whole sectors) and writes it into the payload at `payload`. */
static int put(const struct luks_enc *enc, uint64_t payload, uint64_t off, uint8_t *buf, uint64_t n)
{
    luks_encrypt(enc, off / LUKS_SECTOR, buf, n);
    if (hc_write(payload + off, n, buf) != (int64_t)n) return rt_error(0, GERR_IO, 2, off, 0);
    return 0;
}

/* Writes the non-zero min_sparse blocks of buf (guest offset off; all of it when min_sparse is 0). */
static int put_sparse(const struct luks_enc *enc, uint64_t payload, uint64_t off, uint8_t *buf, uint64_t n,
                      uint64_t min_sparse)
{
    if (!min_sparse) return put(enc, payload, off, buf, n);
    for (uint64_t b = 0; b < n;) {
        uint64_t k = min_sparse - ((off + b) % min_sparse);
        if (k > n - b) k = n - b;
        if (!buf_is_zero(buf + b, k) && put(enc, payload, off + b, buf + b, k)) return -1;
        b += k;
    }
    return 0;
}

int luks_into(const struct params *p)
{
    static struct reader r;
    static struct luks k;
    uint64_t size = p->arg[0], min_sparse = p->arg[1];
    bool skip = (p->flags & LUKS_WRITE_F_INTO_SKIP_ZERO) != 0;
    if (p->n_inputs < 2 || rt_input(0)->format != FMT_LUKS || !(p->secret_inputs & 1) || size % LUKS_SECTOR ||
        size > (1ull << 62) || min_sparse % LUKS_SECTOR || min_sparse > (16ull << 20) || (skip && !min_sparse))
        return rt_error(0, GERR_BAD_PARAMS, 83, size, min_sparse);
    reader_from_input(&r, 0);
    if (luks_open_header(&k, &r)) return -1;
    uint64_t payload = (uint64_t)k.payload_offset_sector * LUKS_SECTOR, end;
    if (__builtin_add_overflow(payload, size, &end) || end > p->output_cap)
        return rt_error(0, GERR_BAD_PARAMS, 84, size, p->output_cap);
    /* The source first: a bad source fails before the PBKDF2 runs and anything is written. */
    src.batch = src.defer = true;
    if (chain_open_range(&src, 1, p->n_inputs - 1, 0, 0)) return -1;
    if (src.size < size) return rt_error(1, GERR_BAD_PARAMS, 85, size, src.size);
    uint8_t mk[LUKS_KEY_MAX];
    int found = 0;
    for (uint32_t i = 0; i < LUKS_SLOTS && !found; i++) {
        found = luks_load_key(&k, i, p->secret, p->input_secret_len[0], p->kdf_max_iters, mk);
        if (found < 0) return -1;
    }
    if (!found) return rt_error(0, GERR_FORMAT, LUKS_E_BAD_PASSWORD, 0, 0);
    struct luks_enc enc = { 0 };
    int rc = luks_enc_from_key(&k, mk, &enc);
    memset(mk, 0, sizeof mk);
    if (rc) return rc == -2 ? rt_error(0, GERR_OUT_OF_MEMORY, 0, 0, 0)
                            : rt_error(0, GERR_FORMAT, LUKS_E_CIPHER_UNSUPPORTED, k.cipher_alg, k.mode);
    uint8_t *buf = rt_alloc(CHUNK);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    for (uint64_t off = 0; off < size && rc == 0;) {
        uint64_t len = size - off < CHUNK ? size - off : CHUNK;
        /* Read the chunk's data runs (one batch), then encrypt and write its pieces in order. */
        for (uint64_t x = off; x < off + len;) {
            uint64_t n = 0;
            int st = chain_status(&src, x, off + len - x, &n);
            if (st < 0) return -1;
            if ((st & CS_DATA) && !(st & CS_ZERO)) {
                if (chain_read(&src, x, n, buf + (x - off))) return -1;
            } else {
                memset(buf + (x - off), 0, n);
            }
            x += n;
        }
        if (chain_flush(&src)) return -1;
        /* Zero-status runs were zeroed above: with SKIP_ZERO they are skipped as zero blocks. */
        rc = put_sparse(&enc, payload, off, buf, len, skip ? min_sparse : 0);
        off += len;
        hc_progress(off, size);
    }
    memset(buf, 0, CHUNK);
    luks_enc_wipe(&enc);
    return rc;
}
