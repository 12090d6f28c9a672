/*
 * Encrypted qcow2 (crypt_method 1, legacy AES-CBC; 2, LUKS in the clusters
 * the full-disk-encryption header extension names), read as qemu 7.2's
 * block/qcow2.c reads it. crypt_header.c opens the LUKS header through a
 * window over the header clusters (qcow2_crypto_hdr_read_func: a read past
 * the extension's length fails); crypt_layer.c unlocks it (or keys AES with
 * the passphrase) in the programs that decrypt and answers the layer's block
 * status and reads. The key never leaves the guest.
 */
#ifndef INSTAR_QCOW2_CRYPT_H
#define INSTAR_QCOW2_CRYPT_H
#include "layer.h"
#include "../luks/luks.h"

#define QCOW2_CRYPT_AES 1u

/* The opened LUKS header of one qcow2 input (q->crypto). */
struct qcow2_crypto_header {
    struct reader win;         /* [0, length) of the header clusters */
    const struct reader *file; /* the qcow2 file */
    uint64_t offset, length;   /* the extension's fields */
    struct luks k;
};

/* The LUKS_INFO record of q's opened header (info). */
int qcow2_crypto_emit_info(const struct qcow2 *q);

/* Called by qcow2's layer open for an encrypted image in a program that
 * links crypt_layer.c: takes this input's passphrase from params.secret,
 * unlocks (LUKS) or keys AES, and switches l->ops to the decrypting ops. */
int qcow2_crypt_attach(struct layer *l, struct qcow2_layer *s);

#endif
