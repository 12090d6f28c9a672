/*
 * The luks row of the format table (guest/chain/formats.c) in the programs
 * that read LUKS2 (convert_luks2, compare_luks2; guest/ops.mk): this file,
 * not guest/luks/layer.c, defines luks_layer_ops there. Open reads the
 * version: 1 goes to guest/luks (qemu's LUKS1, as luks/layer.c opens it),
 * 2 to guest/luks2: header and metadata, then this input's passphrase from
 * params.secret unlocks a key slot. The virtual disk is the data segment:
 * its fixed size, or (size "dynamic") the file after its offset in whole
 * sectors of the segment's sector size, as dm-crypt maps it. No
 * block_status of its own: every run is data, as qemu's crypto driver
 * reports (qemu_all_data); reads decrypt whole sectors.
 */
#include "../chain/layer.h"
#include "../luks/luks_crypto.h"
#include "luks2.h"

struct luks_any_layer {
    uint32_t version;
    struct luks k1;
    struct luks_cipher c1;
    struct luks2 k2;
    struct luks2_cipher c2;
    uint64_t payload;
    uint32_t sector;
};

static int luks_any_open(struct layer *l)
{
    const struct params *p = rt_params();
    uint32_t in = l->r.input;
    struct luks_any_layer *s = rt_alloc(sizeof *s);
    if (!s) return rt_error(in, GERR_OUT_OF_MEMORY, 0, 0, 0);
    memset(s, 0, sizeof *s);
    uint64_t off = 0, len = 0;
    if (in < 16) {
        for (uint32_t i = 0; i < in; i++) off += p->input_secret_len[i];
        len = p->input_secret_len[in];
    }
    uint8_t h[8];
    if (reader_read(&l->r, 0, h, sizeof h)) return rt_error(in, GERR_IO, 0, 0, 0);
    s->version = (uint32_t)h[6] << 8 | h[7];
    if (s->version == 2) {
        if (luks2_open_header(&s->k2, &l->r)) return -1;
    } else if (luks_open_header(&s->k1, &l->r)) {
        return -1;
    }
    if (in >= 16 || !(p->secret_inputs >> in & 1)) return rt_error(in, GERR_FORMAT, LUKS_E_NO_SECRET, 0, 0);
    if (off > sizeof p->secret || len > sizeof p->secret - off) return rt_error(in, GERR_BAD_PARAMS, off, len, 0);
    uint64_t bytes;
    if (s->version == 2) {
        if (luks2_unlock(&s->k2, p->secret + off, (uint32_t)len, p->kdf_max_iters, &s->c2)) return -1;
        s->payload = s->k2.seg_offset;
        s->sector = s->k2.sector_size;
        /* the header checked the segment lies inside the file */
        bytes = s->k2.seg_size ? s->k2.seg_size : (l->r.size - s->payload) / s->sector * s->sector;
        l->length = bytes;
    } else {
        if (luks_unlock(&s->k1, p->secret + off, (uint32_t)len, p->kdf_max_iters, &s->c1)) return -1;
        s->payload = (uint64_t)s->k1.payload_offset_sector * LUKS_SECTOR;
        s->sector = LUKS_SECTOR;
        if (s->payload > l->r.size) return rt_error(in, GERR_FORMAT, LUKS_E_PAYLOAD_PAST_EOF, 0, 0);
        bytes = l->r.size - s->payload;
        l->length = (bytes + LUKS_SECTOR - 1) / LUKS_SECTOR * LUKS_SECTOR;
    }
    l->state = s;
    l->fmt = FMT_LUKS;
    l->has_backing = false;
    l->data = &l->r;
    l->qemu_all_data = true;
    return 0;
}

static int luks_any_block_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    (void)l;
    (void)pos;
    *len = bytes;
    *host = 0;
    return LS_DATA | LS_COMPRESSED;
}

static void decrypt(const struct luks_any_layer *s, uint64_t pos, uint8_t *buf, uint64_t len)
{
    if (s->version == 2) luks2_decrypt(&s->c2, pos, buf, len);
    else luks_decrypt(&s->c1, pos / LUKS_SECTOR, buf, len);
}

static int luks_any_read(struct layer *l, uint64_t pos, uint64_t len, uint8_t *buf)
{
    struct luks_any_layer *s = l->state;
    uint32_t in = l->r.input, ss = s->sector;
    static uint8_t sec[LUKS2_SECTOR_MAX];
    while (len > 0) {
        uint64_t first = pos / ss * ss, skip = pos % ss;
        if (skip || len < ss) {
            /* a partial sector: decrypt the whole one and copy the part asked for */
            uint64_t n = ss - skip < len ? ss - skip : len;
            if (reader_read(&l->r, s->payload + first, sec, ss)) return rt_error(in, GERR_IO, s->payload + first, 0, 0);
            decrypt(s, first, sec, ss);
            memcpy(buf, sec + skip, n);
            buf += n, pos += n, len -= n;
            continue;
        }
        uint64_t n = len / ss * ss;
        if (n > LIMIT_IO_MAX) n = LIMIT_IO_MAX;
        if (reader_read(&l->r, s->payload + pos, buf, n)) return rt_error(in, GERR_IO, s->payload + pos, 0, 0);
        decrypt(s, pos, buf, n);
        buf += n, pos += n, len -= n;
    }
    return 0;
}

const struct layer_ops luks_layer_ops = {
    .format = FMT_LUKS,
    .open = luks_any_open,
    .block_status = luks_any_block_status,
    .read = luks_any_read,
};
