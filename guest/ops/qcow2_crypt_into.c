/*
 * qcow2_encrypt with QCOW2_ENC_F_INTO: the data of `convert -n` into an
 * existing encrypted qcow2 (lib/cli/convert_into_qcrypt.ts drives it), as
 * qemu-img writes through qcow2's encryption (qcow2_co_encrypt). The host
 * planned the in-place writes as for a plain qcow2 target
 * (lib/formats/qcow2/write_plan.ts) and hands the data moves here, as
 * copy_runs takes them: inputs [0, t) are the source chain, input t = n-2
 * is the target (qcow2, its passphrase its input secret; also output 0),
 * input n-1 the move list: arg[0] entries of three u64 LE {from, to, at}
 * (the chain's guest bytes [from, to) go to output offset `at`; whole
 * clusters of the target, ascending and disjoint), arg[1] their total
 * length (progress), arg[2] the target's cluster bits, arg[3] min_sparse
 * (0: off). An entry whose `at` has bit 63 set rewrites clusters the target
 * already maps, with --target-is-zero: its blocks of min_sparse bytes
 * (aligned in guest offsets) that read as zeroes are not written, as qemu
 * skips them there (in new clusters its copy-on-write encrypts them).
 *
 * The target's header is opened here (its LUKS header through the crypto
 * header clusters, guest/qcow2/crypt_header.c) and a key slot unlocked with
 * the passphrase (LUKS, method 2), or the legacy AES key taken from it
 * (method 1, qcrypto_block_qcow_init). Each moved cluster is encrypted
 * whole in 512-byte sectors, the IV's sector number its host offset / 512
 * (LUKS) or its guest offset / 512 (AES), the bytes past the source's end
 * encrypted zeroes (qemu's copy-on-write). The key never leaves the guest.
 * With QCOW2_ENC_F_PLAIN the target is an unencrypted qcow2 (convert -n from
 * an encrypted source, whose passphrase alone the guest holds): no key slot
 * is unlocked and the clusters are written as they read (the bytes past the
 * source's end zeroes); a target with an encryption method is refused.
 */
#include "../chain/chain.h"
#include "../luks/luks_write.h"
#include "../qcow2/crypt.h"
#include "records.h"
#include "zero.h"

#define CHUNK (4ull << 20)
#define BATCH 2048u

static struct chain src;
static uint64_t list[3 * BATCH];

int qcow2_crypt_into(const struct params *p);

/* The unlocked target's encrypting cipher in enc; 0, or -1 after an ERROR. */
static int target_key(const struct params *p, uint32_t ti, const struct qcow2 *q, struct luks_enc *enc)
{
    uint64_t off = 0, len = p->input_secret_len[ti];
    for (uint32_t i = 0; i < ti; i++) off += p->input_secret_len[i];
    if (!(p->secret_inputs >> ti & 1) || off > sizeof p->secret || len > sizeof p->secret - off)
        return rt_error(ti, GERR_BAD_PARAMS, 131, off, len);
    const uint8_t *pw = p->secret + off;
    if (q->crypt_method == QCOW2_CRYPT_LUKS) {
        const struct qcow2_crypto_header *h = q->crypto;
        if (!h) return rt_error(ti, GERR_ENCRYPTED, q->crypt_method, 2, 0);
        uint8_t mk[LUKS_KEY_MAX];
        int found = 0;
        for (uint32_t i = 0; i < LUKS_SLOTS && !found; i++) {
            found = luks_load_key(&h->k, i, pw, (uint32_t)len, p->kdf_max_iters, mk);
            if (found < 0) return -1;
        }
        if (!found) return rt_error(ti, GERR_FORMAT, LUKS_E_BAD_PASSWORD, 0, 0);
        int rc = luks_enc_from_key(&h->k, mk, enc);
        memset(mk, 0, sizeof mk);
        if (rc) return rc == -2 ? rt_error(ti, GERR_OUT_OF_MEMORY, 0, 0, 0)
                                : rt_error(ti, GERR_FORMAT, LUKS_E_CIPHER_UNSUPPORTED, h->k.cipher_alg, h->k.mode);
        return 0;
    }
    if (q->crypt_method == QCOW2_CRYPT_AES) {
        struct luks_new n = { .cipher_alg = LUKS_CIPHER_AES_128, .mode = LUKS_MODE_CBC, .ivgen = LUKS_IVGEN_PLAIN64 };
        uint8_t key[16] = { 0 };
        for (uint64_t i = 0; i < len && i < 16 && pw[i]; i++) key[i] = pw[i];
        int rc = luks_enc_init(enc, &n, key, sizeof key);
        memset(key, 0, sizeof key);
        return rc ? rt_error(ti, rc == -2 ? GERR_OUT_OF_MEMORY : GERR_BAD_PARAMS, 132, 0, 0) : 0;
    }
    return rt_error(ti, GERR_ENCRYPTED, q->crypt_method, 1, 0);
}

/* Reads guest bytes [off, off + len) of the source into buf (zeroes where it reads as zeroes). */
static int read_source(uint64_t off, uint64_t len, uint8_t *buf)
{
    for (uint64_t x = off; x < off + len;) {
        uint64_t k = 0;
        int st = chain_status(&src, x, off + len - x, &k);
        if (st < 0) return -1;
        if ((st & CS_DATA) && !(st & CS_ZERO)) {
            if (chain_read(&src, x, k, buf + (x - off))) return -1;
        } else {
            memset(buf + (x - off), 0, k);
        }
        x += k;
    }
    return chain_flush(&src);
}

int qcow2_crypt_into(const struct params *p)
{
    static struct reader tr;
    static struct qcow2 q;
    if (p->n_inputs < 3) return rt_error(0, GERR_BAD_PARAMS, 130, p->n_inputs, 0);
    uint32_t ti = p->n_inputs - 2, li = p->n_inputs - 1;
    uint64_t count = p->arg[0], total = p->arg[1], cbits = p->arg[2], sparse = p->arg[3], bytes;
    if (sparse % 512 || sparse > (16ull << 20)) return rt_error(0, GERR_BAD_PARAMS, 137, sparse, 0);
    if (cbits < 9 || cbits > 21 || rt_input(ti)->format != FMT_QCOW2) return rt_error(ti, GERR_BAD_PARAMS, 133, cbits, 0);
    if (__builtin_mul_overflow(count, 24ull, &bytes) || bytes > p->input_size[li])
        return rt_error(li, GERR_BAD_PARAMS, 134, count, p->input_size[li]);
    uint64_t csize = 1ull << cbits;
    reader_from_input(&tr, ti);
    if (qcow2_open(&q, &tr, 0)) return -1;
    if (q.cluster_bits != cbits) return rt_error(ti, GERR_BAD_PARAMS, 135, q.cluster_bits, cbits);
    /* The source first: a bad source fails before the PBKDF2 runs and anything is written. */
    src.batch = src.defer = true;
    if (chain_open_range(&src, 0, ti, 0, 0)) return -1;
    struct luks_enc enc = { 0 };
    bool plain = (p->flags & QCOW2_ENC_F_PLAIN) != 0;
    if (plain ? q.crypt_method != 0 : target_key(p, ti, &q, &enc))
        return plain ? rt_error(ti, GERR_BAD_PARAMS, 138, q.crypt_method, 0) : -1;
    bool luks = q.crypt_method == QCOW2_CRYPT_LUKS;
    uint8_t *buf = rt_alloc(CHUNK);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    uint64_t done = 0, prev_end = 0;
    int rc = 0;
    for (uint64_t i = 0; i < count && !rc; i += BATCH) {
        uint64_t n = count - i < BATCH ? count - i : BATCH;
        if (hc_read(li, i * 24, n * 24, list) != (int64_t)(n * 24)) return rt_error(li, GERR_IO, 0, i, 0);
        for (uint64_t e = 0; e < n && !rc; e++) {
            uint64_t from = list[3 * e], to = list[3 * e + 1], at = list[3 * e + 2], end_at;
            bool in_place = (at >> 63) != 0 && sparse;
            at &= ~(1ull << 63);
            /* The clusters written, the last one whole (to <= the disk's size, far below 2^63). */
            uint64_t span = to > from ? ((to - from) + csize - 1) & ~(csize - 1) : 0;
            if (from >= to || to > src.size || from < prev_end || from % csize || at % csize ||
                __builtin_add_overflow(at, span, &end_at) || end_at > p->output_cap)
                return rt_error(li, GERR_BAD_PARAMS, 136, i + e, from);
            prev_end = to;
            for (uint64_t off = from; off < to;) {
                uint64_t len = to - off < CHUNK ? to - off : CHUNK;
                /* Whole clusters: the bytes past the source's end are encrypted zeroes. */
                uint64_t padded = (len + csize - 1) & ~(csize - 1);
                if (read_source(off, len, buf)) {
                    rc = -1;
                    break;
                }
                if (padded > len) memset(buf + len, 0, padded - len);
                uint64_t host = at + (off - from);
                for (uint64_t b = 0; b < padded;) {
                    /* Whole, or (in place) each min_sparse block that holds data. */
                    uint64_t k = in_place ? sparse - ((off + b) % sparse) : padded - b;
                    if (k > padded - b) k = padded - b;
                    if (!in_place || !buf_is_zero(buf + b, k)) {
                        if (!plain) luks_encrypt(&enc, (luks ? host + b : off + b) / 512, buf + b, k);
                        if (hc_write(host + b, k, buf + b) != (int64_t)k) {
                            rc = rt_error(0, GERR_IO, 1, off + b, 0);
                            break;
                        }
                    }
                    b += k;
                }
                if (rc) break;
                off += len;
                done += len;
                hc_progress(done, total);
            }
        }
    }
    memset(buf, 0, CHUNK);
    if (!plain) luks_enc_wipe(&enc);
    return rc;
}
