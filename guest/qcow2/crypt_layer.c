/*
 * Reading an encrypted qcow2 as qemu 7.2 does (qcow2_co_preadv_encrypted,
 * qcow2_co_encdec): data clusters are decrypted in 512-byte sectors, the
 * sector number of the IV being the host offset / 512 for LUKS
 * (crypt_physical_offset) and the guest offset / 512 for the legacy AES
 * method (AES-128-CBC, plain64 IVs, the key the passphrase's first 16 bytes
 * zero-padded: qcrypto_block_qcow_init). Compressed clusters are read as
 * qemu reads them, not decrypted; zero and unallocated clusters as usual.
 * qemu reports no host offset for an encrypted image's clusters, so the
 * block status here carries none: data runs are read through this read op.
 */
#include "crypt.h"
#include "../luks/luks_crypto.h"
#include <nettle/aes.h>
#include <nettle/cbc.h>

struct qcow2_crypt {
    uint32_t method;
    struct luks_cipher luks; /* method 2 */
    struct aes128_ctx aes;   /* method 1 */
};

static int crypt_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    struct qcow2_layer *s = l->state;
    int st = qcow2_block_status(&s->m, pos, bytes, len, host);
    if (st <= 0) return st;
    if ((st & LS_DATA) && !(st & LS_ZERO)) st |= LS_COMPRESSED; /* through crypt_read */
    *host = 0;
    return st & ~LS_OFFSET_VALID;
}

/* Decrypts whole sectors in place: guest offset `pos`, host offset `host`. */
static void decrypt(const struct qcow2_crypt *c, uint64_t pos, uint64_t host, uint8_t *buf, uint64_t len)
{
    if (c->method == QCOW2_CRYPT_LUKS) {
        luks_decrypt(&c->luks, host / 512, buf, len);
        return;
    }
    for (uint64_t sector = pos / 512; len >= 512; sector++, buf += 512, len -= 512) {
        uint8_t iv[AES_BLOCK_SIZE] = { 0 };
        for (int i = 0; i < 8; i++) iv[i] = (uint8_t)(sector >> (8 * i));
        cbc_decrypt((void *)&c->aes, (nettle_cipher_func *)aes128_decrypt, AES_BLOCK_SIZE, iv, 512, buf, buf);
    }
}

/* [pos, pos+len) of one data run stored at host (whole sectors are read and decrypted). */
static int read_stored(struct layer *l, const struct qcow2_crypt *c, uint64_t pos, uint64_t host, uint64_t len,
                       uint8_t *buf)
{
    uint32_t in = l->r.input;
    uint8_t sec[512];
    while (len > 0) {
        uint64_t skip = pos & 511;
        if (skip || len < 512) {
            /* A partial sector (qemu's requests are whole sectors: the same bytes). */
            uint64_t n = 512 - skip < len ? 512 - skip : len;
            if (host < skip || reader_read(l->data, host - skip, sec, 512)) return rt_error(in, GERR_IO, host, 512, 0);
            decrypt(c, pos - skip, host - skip, sec, 512);
            memcpy(buf, sec + skip, n);
            buf += n, pos += n, host += n, len -= n;
            continue;
        }
        uint64_t n = len & ~511ull;
        if (n > LIMIT_IO_MAX) n = LIMIT_IO_MAX;
        if (reader_read(l->data, host, buf, n)) return rt_error(in, GERR_IO, host, n, 0);
        decrypt(c, pos, host, buf, n);
        buf += n, pos += n, host += n, len -= n;
    }
    return 0;
}

static int crypt_read(struct layer *l, uint64_t pos, uint64_t len, uint8_t *buf)
{
    struct qcow2_layer *s = l->state;
    const struct qcow2_crypt *c = s->crypt;
    while (len > 0) {
        uint64_t n = 0, host = 0;
        int st = qcow2_block_status(&s->m, pos, len, &n, &host);
        if (st < 0) return -1;
        if (n == 0 || n > len) return rt_error(l->r.input, GERR_INTERNAL, pos, n, 4);
        if (st & LS_COMPRESSED) {
            if (qcow2_layer_read(l, pos, n, buf)) return -1;
        } else if ((st & LS_DATA) && (st & LS_OFFSET_VALID) && !(st & LS_ZERO)) {
            if (read_stored(l, c, pos, host, n, buf)) return -1;
        } else {
            return rt_error(l->r.input, GERR_INTERNAL, pos, (uint64_t)st, 5); /* not a run crypt_status sent here */
        }
        buf += n, pos += n, len -= n;
    }
    return 0;
}

static const struct layer_ops qcow2_crypt_ops = {
    .format = FMT_QCOW2,
    .block_status = crypt_status,
    .read = crypt_read,
};

int qcow2_crypt_attach(struct layer *l, struct qcow2_layer *s)
{
    const struct params *p = rt_params();
    uint32_t in = l->r.input;
    /* This input's passphrase: input_secret_len[i] bytes after those of the inputs before it. */
    if (in >= 16 || !(p->secret_inputs >> in & 1)) return rt_error(in, GERR_FORMAT, LUKS_E_NO_SECRET, 0, 0);
    uint64_t off = 0, len = p->input_secret_len[in];
    for (uint32_t i = 0; i < in; i++) off += p->input_secret_len[i];
    if (off > sizeof p->secret || len > sizeof p->secret - off) return rt_error(in, GERR_BAD_PARAMS, off, len, 0);
    const uint8_t *pw = p->secret + off;
    struct qcow2_crypt *c = rt_calloc(1, sizeof *c);
    if (!c) return rt_error(in, GERR_OUT_OF_MEMORY, sizeof *c, 0, 0);
    c->method = s->q.crypt_method;
    if (c->method == QCOW2_CRYPT_LUKS) {
        const struct qcow2_crypto_header *h = s->q.crypto;
        if (!h) return rt_error(in, GERR_ENCRYPTED, s->q.crypt_method, 2, 0); /* checked at open */
        if (luks_unlock(&h->k, pw, (uint32_t)len, p->kdf_max_iters, &c->luks)) return -1;
    } else if (c->method == QCOW2_CRYPT_AES) {
        /* qcrypto_block_qcow_init: strlen(passphrase) bytes, at most 16, zero-padded */
        uint8_t key[16] = { 0 };
        for (uint64_t i = 0; i < len && i < 16 && pw[i]; i++) key[i] = pw[i];
        aes128_set_decrypt_key(&c->aes, key);
        memset(key, 0, sizeof key);
    } else {
        return rt_error(in, GERR_ENCRYPTED, s->q.crypt_method, 1, 0);
    }
    s->crypt = c;
    l->ops = &qcow2_crypt_ops;
    return 0;
}
