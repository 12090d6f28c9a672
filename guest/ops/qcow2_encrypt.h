/*
 * Shared by guest/ops/qcow2_encrypt.c and qcow2_encrypt_backing.c: the
 * encrypting cluster store (clusters packed from data_end on, each encrypted
 * for its host offset (LUKS) or guest offset (AES), reported as DATA_RUN).
 */
#ifndef QCOW2_ENCRYPT_H
#define QCOW2_ENCRYPT_H
#include "../chain/chain.h"
#include "../luks/luks_write.h"

#define QE_CHUNK (4ull << 20)

struct qe_store {
    struct luks_enc *enc;
    bool luks;          /* IVs from host offsets (LUKS) or guest offsets (AES) */
    uint32_t cbits;
    uint64_t cap;       /* the output cap */
    uint64_t data_end;  /* where the next flush writes */
    uint64_t pending;   /* bytes stored since the last flush */
    uint64_t clusters;  /* clusters stored */
    uint64_t written;   /* bytes written */
};

/* Encrypts the cluster at `cl` (guest cluster gc), the next one packed at data_end + pending. */
int qe_store_cluster(struct qe_store *st, uint64_t gc, uint8_t *cl);
/* Writes the `len` bytes stored since the last flush from `buf`. */
int qe_store_flush(struct qe_store *st, const uint8_t *buf, uint64_t len);
/* convert -B (QCOW2_ENC_F_BACKING): qcow2_encrypt_backing.c; tchain the target's backing chain or NULL. */
int qe_backing(struct chain *chain, struct chain *tchain, uint64_t min_sparse, uint32_t cbits, uint64_t bsize,
               bool zero_data, uint8_t *buf, struct qe_store *st);
#endif
