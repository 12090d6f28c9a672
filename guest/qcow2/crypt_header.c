/*
 * The LUKS header of an encrypted qcow2 (crypt_method 2), opened where
 * qemu 7.2's qcow2_read_extensions opens it: qcrypto_block_open over
 * qcow2_crypto_hdr_read_func, which reads [offset, offset + length) of the
 * qcow2 file and fails any read reaching past `length` ("Request for data
 * outside of extension header"); bytes past the end of the file read as
 * zeroes, as qemu's file driver pads them. The header itself is checked and
 * parsed by guest/luks/header.c, so the same headers fail with the same
 * messages as a raw LUKS volume's.
 */
#include "crypt.h"

/* The window's read callback: every read of the LUKS code comes here (the
 * window's size is the reader maximum, so reader_read never pads). A read
 * outside the extension emits qemu's error first; the LUKS code's own I/O
 * error record follows it and the host reports the first. */
static int window_read(void *ctx, uint64_t off, void *buf, uint64_t len)
{
    struct qcow2_crypto_header *h = ctx;
    uint32_t in = h->file->input;
    uint64_t end, at;
    if (__builtin_add_overflow(off, len, &end) || end > h->length)
        return rt_error(in, GERR_BAD_EXTENSION, QCOW2_EXT_CRYPTO_HEADER, QEXT_CRYPTO_OUTSIDE, 0);
    if (__builtin_add_overflow(h->offset, off, &at) || reader_read(h->file, at, buf, len))
        return rt_error(in, GERR_BAD_EXTENSION, QCOW2_EXT_CRYPTO_HEADER, QEXT_CRYPTO_READ, 0);
    return 0;
}

int qcow2_crypto_open_header(struct qcow2 *q)
{
    uint32_t in = q->r->input;
    struct qcow2_crypto_header *h = rt_calloc(1, sizeof *h);
    if (!h) return rt_error(in, GERR_OUT_OF_MEMORY, sizeof *h, 0, 0);
    h->file = q->r;
    h->offset = q->crypto_offset;
    h->length = q->crypto_length;
    h->win.ctx = h;
    h->win.size = READER_MAX_END;
    h->win.input = in;
    h->win.from_input = false;
    h->win.read = window_read;
    if (luks_open_header(&h->k, &h->win)) return -1;
    q->crypto = h;
    return 0;
}

int qcow2_crypto_emit_info(const struct qcow2 *q)
{
    const struct qcow2_crypto_header *h = q->crypto;
    return h ? luks_emit_info(&h->k) : 0;
}
