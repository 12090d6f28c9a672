/*
 * The LUKS1 layer for the chain code (guest/chain/layer.h): qemu 7.2's
 * block/crypto.c over guest/luks. Open reads and checks the header, takes
 * this input's passphrase from params.secret and unlocks a key slot
 * (guest/luks/crypto.c); the payload is [payload_offset, EOF) of the file,
 * its length rounded up to whole sectors as qemu's total_sectors. qemu's
 * crypto driver has no block_status: every run is data (qemu_all_data),
 * read through ops->read, which decrypts whole sectors.
 */
#include "../chain/layer.h"
#include "luks_crypto.h"

struct luks_layer {
    struct luks k;
    struct luks_cipher c;
    uint64_t payload;
};

static int luks_layer_open(struct layer *l)
{
    const struct params *p = rt_params();
    uint32_t in = l->r.input;
    struct luks_layer *s = rt_alloc(sizeof *s);
    if (!s) return rt_error(in, GERR_OUT_OF_MEMORY, 0, 0, 0);
    memset(s, 0, sizeof *s);
    /* This input's passphrase: input_secret_len[i] bytes after those of the inputs before it. */
    uint64_t off = 0, len = 0;
    if (in < 16) {
        for (uint32_t i = 0; i < in; i++) off += p->input_secret_len[i];
        len = p->input_secret_len[in];
    }
    /* params carries passphrases for the first 16 inputs only */
    if (in >= 16 || !(p->secret_inputs >> in & 1)) return rt_error(in, GERR_FORMAT, LUKS_E_NO_SECRET, 0, 0);
    if (off > sizeof p->secret || len > sizeof p->secret - off) return rt_error(in, GERR_BAD_PARAMS, off, len, 0);
    if (luks_open_header(&s->k, &l->r)) return -1;
    if (luks_unlock(&s->k, p->secret + off, (uint32_t)len, p->kdf_max_iters, &s->c)) return -1;
    s->payload = (uint64_t)s->k.payload_offset_sector * LUKS_SECTOR;
    /* block_crypto_co_getlength: -EIO when the payload starts past the end of the file */
    if (s->payload > l->r.size) return rt_error(in, GERR_FORMAT, LUKS_E_PAYLOAD_PAST_EOF, 0, 0);
    uint64_t bytes = l->r.size - s->payload;
    l->state = s;
    l->fmt = FMT_LUKS;
    l->length = (bytes + LUKS_SECTOR - 1) / LUKS_SECTOR * LUKS_SECTOR;
    l->has_backing = false;
    l->data = &l->r;
    l->qemu_all_data = true;
    return 0;
}

static int luks_layer_block_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    (void)l;
    (void)pos;
    *len = bytes;
    *host = 0;
    return LS_DATA | LS_COMPRESSED;
}

static int luks_layer_read(struct layer *l, uint64_t pos, uint64_t len, uint8_t *buf)
{
    struct luks_layer *s = l->state;
    uint32_t in = l->r.input;
    uint8_t sec[LUKS_SECTOR];
    while (len > 0) {
        uint64_t first = pos / LUKS_SECTOR, skip = pos % LUKS_SECTOR;
        if (skip || len < LUKS_SECTOR) {
            /* a partial sector: decrypt the whole one and copy the part asked for */
            uint64_t n = LUKS_SECTOR - skip < len ? LUKS_SECTOR - skip : len;
            if (reader_read(&l->r, s->payload + first * LUKS_SECTOR, sec, LUKS_SECTOR))
                return rt_error(in, GERR_IO, s->payload + first * LUKS_SECTOR, 0, 0);
            luks_decrypt(&s->c, first, sec, LUKS_SECTOR);
            memcpy(buf, sec + skip, n);
            buf += n, pos += n, len -= n;
            continue;
        }
        uint64_t n = len / LUKS_SECTOR * LUKS_SECTOR;
        if (n > LIMIT_IO_MAX) n = LIMIT_IO_MAX;
        if (reader_read(&l->r, s->payload + pos, buf, n)) return rt_error(in, GERR_IO, s->payload + pos, 0, 0);
        luks_decrypt(&s->c, first, buf, n);
        buf += n, pos += n, len -= n;
    }
    return 0;
}

const struct layer_ops luks_layer_ops = {
    .format = FMT_LUKS,
    .open = luks_layer_open,
    .block_status = luks_layer_block_status,
    .read = luks_layer_read,
};
