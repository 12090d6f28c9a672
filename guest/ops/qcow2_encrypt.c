/*
 * qcow2_encrypt (ops.QCOW2_ENCRYPT): the data of `convert -O qcow2 -o
 * encrypt.format=luks|aes` (lib/convert/qcow2_encrypt_target.ts drives it;
 * flags and arguments in lib/abi/spec.ts qcow2EncryptFlags).
 *
 * The source chain (inputs 0.., any format instar reads, encrypted ones
 * unlocked with their own passphrases) is opened first, so a bad source
 * fails before anything is written. Then:
 *   LUKS: a new LUKS header, master key and key slot 0 (guest/luks/write.c,
 *     as create -f qcow2 -o encrypt.format=luks makes them) at byte arg[3]
 *     of output 0, the clusters the host's plan reserved for it;
 *   AES: the legacy method's key, the passphrase's first 16 bytes up to a
 *     NUL (qcrypto_block_qcow_init), AES-128-CBC with plain64 IVs.
 * Data clusters are then packed from arg[4] on in guest order, as convert's
 * qcow2 output packs them (a cluster that reads as zeroes is skipped when
 * min_sparse arg[6] is non-zero), each encrypted in 512-byte sectors as
 * qcow2_co_encrypt does: the IV's sector number is the cluster's host
 * offset / 512 for LUKS (crypt_physical_offset), its guest offset / 512 for
 * AES. A cluster with some data is encrypted whole (qemu's copy-on-write
 * encrypts the zeroes around a partial write too). DATA_RUN and
 * CONVERT_DONE tell the host where the clusters went; its planner
 * (lib/formats/qcow2/output_plan.ts) writes every table. No plaintext byte
 * and no key reaches the output or the host.
 * With QCOW2_ENC_F_BACKING (convert -B) the clusters are chosen as convert's
 * CONV_BACKING mode chooses them (guest/ops/qcow2_encrypt_backing.c, zero
 * clusters as ZERO_RUN; the target's backing chain, inputs arg[5] >> 32 on,
 * fills the clusters the source writes only in part); QCOW2_ENC_F_CLASSIFY alone writes nothing and
 * reports qemu's requests per cluster (convert -n into an existing qcow2, encrypted or,
 * from an encrypted source, plain). INTO (| PLAIN): guest/ops/qcow2_crypt_into.c.
 * Built also as qcow2_encrypt_luks2 (LUKS2 sources; guest/ops/qcow2_encrypt_luks2.c).
 */
#include "../chain/chain.h"
#include "../luks/luks_write.h"
#include "records.h"
#include "zero.h"
#include "qcow2_encrypt.h"

#define CHUNK QE_CHUNK

static struct chain chain;
static struct chain tchain; /* convert -B: the target's backing chain (copy-on-write of partly written clusters) */
static struct rec_data_run run;

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

static int emit_run(void)
{
    if (!run.count) return 0;
    rec_set_header(&run, REC_DATA_RUN, sizeof run);
    if (rt_emit(&run, sizeof run)) return -1;
    run.count = 0;
    return 0;
}

static int add_cluster(uint64_t gc, uint64_t host, uint64_t csize)
{
    if (run.count && run.guest_cluster + run.count == gc && run.host_offset + run.count * csize == host) {
        run.count++;
        return 0;
    }
    if (emit_run()) return -1;
    run.guest_cluster = gc;
    run.count = 1;
    run.host_offset = host;
    return 0;
}

int qe_store_cluster(struct qe_store *st, uint64_t gc, uint8_t *cl)
{
    uint64_t csize = 1ull << st->cbits, host = st->data_end + st->pending;
    if (host + csize > st->cap) return rt_error(0, GERR_BAD_PARAMS, 97, host, st->cap);
    luks_encrypt(st->enc, (st->luks ? host : gc << st->cbits) / 512, cl, csize);
    if (add_cluster(gc, host, csize)) return -1;
    st->pending += csize;
    st->clusters++;
    return 0;
}

int qe_store_flush(struct qe_store *st, const uint8_t *buf, uint64_t len)
{
    if (len != st->pending) return rt_error(0, GERR_BAD_PARAMS, 98, len, st->pending);
    if (len && hc_write(st->data_end, len, buf) != (int64_t)len) return rt_error(0, GERR_IO, st->data_end, len, 2);
    st->data_end += len;
    st->written += len;
    st->pending = 0;
    return 0;
}

#ifndef QE_NO_INTO
/* convert -n into an existing encrypted qcow2 (guest/ops/qcow2_crypt_into.c). */
int qcow2_crypt_into(const struct params *p);
#endif

/* QCOW2_ENC_F_CLASSIFY: arg[5] the target's cluster bits, arg[6] min_sparse (qcow2_encrypt_backing.c). */
static int classify(const struct params *p)
{
    uint64_t cbits = p->arg[5], min_sparse = p->arg[6];
    if (cbits < 9 || cbits > 21 || min_sparse % 512 || min_sparse > (16ull << 20))
        return rt_error(0, GERR_BAD_PARAMS, 91, cbits, min_sparse);
    chain.batch = chain.defer = true;
    if (chain_open(&chain, 0)) return -1;
    chain.precise = true;
    uint8_t *buf = rt_alloc(CHUNK);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    if (qe_backing(&chain, NULL, min_sparse, (uint32_t)cbits, UINT64_MAX, false, buf, NULL)) return -1;
    memset(buf, 0, CHUNK);
    struct rec_convert_done d;
    rec_init(&d, REC_CONVERT_DONE, sizeof d);
    return rt_emit(&d, sizeof d);
}

int op_main(void)
{
    const struct params *p = rt_params();
    uint32_t flags = p->flags;
#ifndef QE_NO_INTO
    if ((flags & ~(uint32_t)QCOW2_ENC_F_PLAIN) == QCOW2_ENC_F_INTO) return qcow2_crypt_into(p);
#endif
    if (flags == QCOW2_ENC_F_CLASSIFY) return classify(p);
    bool backing = flags & QCOW2_ENC_F_BACKING, zero_data = flags & QCOW2_ENC_F_ZERO_DATA;
    flags &= ~(uint32_t)(QCOW2_ENC_F_BACKING | QCOW2_ENC_F_ZERO_DATA);
    bool luks = flags == QCOW2_ENC_F_LUKS;
    if ((flags != QCOW2_ENC_F_LUKS && flags != QCOW2_ENC_F_AES) || (zero_data && !backing))
        return rt_error(0, GERR_BAD_PARAMS, 90, p->flags, 0);
    /* arg[5]: the cluster bits; with BACKING, bits 32..47 the first input of the target's backing chain (0: none). */
    uint64_t cbits = p->arg[5] & 0xffffffffull, tfirst = p->arg[5] >> 32, data_start = p->arg[4],
             min_sparse = p->arg[6];
    if (cbits < 9 || cbits > 21 || min_sparse % 512 || min_sparse > (16ull << 20))
        return rt_error(0, GERR_BAD_PARAMS, 91, cbits, min_sparse);
    if (tfirst && (!backing || tfirst >= p->n_inputs)) return rt_error(0, GERR_BAD_PARAMS, 91, tfirst, 1);
    uint64_t csize = 1ull << cbits;
    if (data_start % csize || data_start > p->output_cap) return rt_error(0, GERR_BAD_PARAMS, 92, data_start, 0);
    uint32_t ni = p->n_inputs;
    const uint8_t *pw, *host;
    uint32_t pwlen, hostlen = 0;
    if (secret_slot(ni, &pw, &pwlen)) return rt_error(0, GERR_BAD_PARAMS, 93, ni, 0);
    if (luks && (secret_slot(ni + 1, &host, &hostlen) || hostlen < 32)) return rt_error(0, GERR_BAD_PARAMS, 93, ni, 1);

    /* Open the source first: a bad source fails before anything is written. */
    chain.batch = chain.defer = true;
    if (tfirst ? chain_open_range(&chain, 0, (uint32_t)tfirst, 0, 0) : chain_open(&chain, 0)) return -1;
    chain.precise = true;
    uint64_t size = chain.size;
    if (tfirst && chain_open_range(&tchain, (uint32_t)tfirst, ni - (uint32_t)tfirst, 0, 0)) return -1;

    struct luks_enc enc;
    struct rec_luks_written rec;
    rec_init(&rec, REC_LUKS_WRITTEN, sizeof rec);
    if (luks) {
        uint64_t a = p->arg[0];
        struct luks_new n = {
            .cipher_alg = (uint32_t)(a & 0xff),
            .mode = (uint32_t)(a >> 8 & 0xff),
            .ivgen = (uint32_t)(a >> 16 & 0xff),
            .ivgen_hash = (uint32_t)(a >> 24 & 0xff),
            .hash = (uint32_t)(a >> 32 & 0xff),
        };
        if (a >> 40 || n.cipher_alg > 10 || n.mode > 4 || n.ivgen > 3 || n.ivgen_hash > 7 || n.hash > 7 ||
            p->arg[1] > 0xffffffffull || p->arg[2] > 0xffffffffull)
            return rt_error(0, GERR_BAD_PARAMS, 94, a, 0);
        n.mk_iters = (uint32_t)p->arg[1];
        n.slot_iters = (uint32_t)p->arg[2];
        uint64_t at = p->arg[3], payload = luks_new_payload_offset(&n), end;
        /* the header's clusters lie before the data */
        if (at % csize || at == 0 || __builtin_add_overflow(at, payload, &end) || end > data_start)
            return rt_error(0, GERR_BAD_PARAMS, 95, at, data_start);
        luks_out_base = at;
        rec.entropy = luks_rng_init(host, hostlen);
        int rc = luks_format(&n, pw, pwlen, &enc);
        luks_rng_wipe();
        if (rc) return -1;
        rec.master_key_iters = n.mk_iters;
        rec.slot_iters = n.slot_iters;
        rec.payload_offset = payload;
    } else {
        struct luks_new n = { .cipher_alg = LUKS_CIPHER_AES_128, .mode = LUKS_MODE_CBC, .ivgen = LUKS_IVGEN_PLAIN64 };
        uint8_t key[16] = { 0 };
        for (uint32_t i = 0; i < pwlen && i < 16 && pw[i]; i++) key[i] = pw[i];
        int rc = luks_enc_init(&enc, &n, key, sizeof key);
        memset(key, 0, sizeof key);
        if (rc) return rt_error(0, rc == -2 ? GERR_OUT_OF_MEMORY : GERR_BAD_PARAMS, 96, 0, 0);
    }

    uint8_t *buf = rt_alloc(CHUNK);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    struct qe_store st = { .enc = &enc, .luks = luks, .cbits = (uint32_t)cbits, .cap = p->output_cap,
                           .data_end = data_start };
    if (backing) {
        if (qe_backing(&chain, tfirst ? &tchain : NULL, min_sparse, (uint32_t)cbits, p->arg[7], zero_data, buf, &st))
            return -1;
        size = 0; /* done */
    }
    for (uint64_t off = 0; off < size;) {
        /* A long stretch that reads as zeroes: skip its whole clusters without reading them. */
        if (min_sparse) {
            uint64_t k = 0;
            int st = chain_status(&chain, off, size - off, &k);
            if (st < 0) return -1;
            uint64_t next = (off + k) & ~(csize - 1);
            if ((!(st & CS_DATA) || (st & CS_ZERO)) && next > off) {
                off = next;
                hc_progress(off, size);
                continue;
            }
        }
        uint64_t n = size - off < CHUNK ? size - off : CHUNK;
        uint64_t padded = (n + csize - 1) & ~(csize - 1);
        bool any = false;
        for (uint64_t x = off; x < off + n;) {
            uint64_t k = 0;
            int st = chain_status(&chain, x, off + n - x, &k);
            if (st < 0) return -1;
            if ((st & CS_DATA) && !(st & CS_ZERO)) {
                if (chain_read(&chain, x, k, buf + (x - off))) return -1;
                any = true;
            } else {
                memset(buf + (x - off), 0, k);
            }
            x += k;
        }
        if (chain_flush(&chain)) return -1;
        if (padded > n) memset(buf + n, 0, padded - n);
        /* Keep the clusters to store, packed to the front, each encrypted for its host offset. */
        uint64_t dst = 0;
        for (uint64_t c = 0; c < padded; c += csize) {
            if (min_sparse && (!any || buf_is_zero(buf + c, csize))) continue;
            if (dst != c) memmove(buf + dst, buf + c, csize);
            if (qe_store_cluster(&st, (off + c) >> cbits, buf + dst)) return -1;
            dst += csize;
        }
        if (qe_store_flush(&st, buf, dst)) return -1;
        off += n;
        hc_progress(off, size);
    }
    memset(buf, 0, CHUNK);
    luks_enc_wipe(&enc);
    if (emit_run()) return -1;
    if (luks && rt_emit(&rec, sizeof rec)) return -1;
    struct rec_convert_done d;
    rec_init(&d, REC_CONVERT_DONE, sizeof d);
    d.data_end = st.data_end;
    d.clusters = st.clusters;
    d.bytes_written = st.written;
    return rt_emit(&d, sizeof d);
}
