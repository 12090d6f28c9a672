/*
 * qcow2's layer_ops: open (header, bdrv_getlength in whole sectors, the
 * mapper, and for map the metadata-preallocation verdict), block_status
 * (qcow2_block_status, plus LS_RECURSE on preallocated images' data runs
 * as qcow2_co_block_status adds BDRV_BLOCK_RECURSE), read (compressed
 * clusters).
 *
 * The read op and the preallocation detection are weak references: a
 * program links compressed.c and prealloc.c only if it reads (convert,
 * compare) or maps (map), which keeps zlib/zstd out of map and the
 * detection out of convert.
 */
#include "layer.h"

int qcow2_layer_read(struct layer *l, uint64_t pos, uint64_t len, uint8_t *buf) __attribute__((weak));
int qcow2_detect_prealloc(struct qcow2_layer *s, const struct reader *r) __attribute__((weak));
int qcow2_crypt_attach(struct layer *l, struct qcow2_layer *s) __attribute__((weak));


static __attribute__((cold)) int qcow2_layer_open(struct layer *l)
{
    uint32_t i = l->r.input;
    if (i >= LIMIT_MAX_INPUTS) return rt_error(i, GERR_BAD_PARAMS, 0, 0, 0);
    /* One state per layer (layers are opened once per run). */
    struct qcow2_layer *s = rt_calloc(1, sizeof *s);
    if (!s) return rt_error(i, GERR_OUT_OF_MEMORY, 0, 0, 0);
    l->state = s;
    if (qcow2_open(&s->q, &l->r, 0)) return -1;
    /* convert/measure -l: the host picked a snapshot by id or name. */
    uint32_t sn = rt_input(i)->snapshot;
    if (sn && qcow2_use_snapshot(&s->q, sn - 1ull)) return -1;
    /* bdrv_getlength: whole sectors (total_sectors = size / 512). */
    l->length = s->q.size & ~511ull;
    if (qcow2_mapper_init(&s->m, &s->q)) return -1;
    l->has_backing = (s->q.flags & Q2F_HAS_BACKING) != 0;
    l->data_file = s->q.has_data_file;
    s->dec.type = s->q.compression_type;
    /* With an external data file the recursion would look at that file,
     * which map does not attach: leave it out. Programs that do not link
     * the detection (convert, compare) do not recurse into qcow2 files:
     * their reads and zero skipping do not depend on it. */
    if (l->want_recurse && !s->q.has_data_file && !s->q.crypt_method && qcow2_detect_prealloc) {
        int pr = qcow2_detect_prealloc(s, &l->r);
        if (pr < 0) return -1;
        s->prealloc = pr == 1;
    }
    /* Encrypted: programs that decrypt link crypt_layer.c; others that read
     * data refuse; map (no read op) reports the runs without offsets. */
    if (s->q.crypt_method) {
        if (qcow2_crypt_attach) return qcow2_crypt_attach(l, s);
        if (qcow2_layer_read) return rt_error(i, GERR_ENCRYPTED, s->q.crypt_method, 0, 0);
    }
    return 0;
}

static int qcow2_layer_status(struct layer *l, uint64_t pos, uint64_t bytes, uint64_t *len, uint64_t *host)
{
    struct qcow2_layer *s = l->state;
    int st = qcow2_block_status(&s->m, pos, bytes, len, host);
    /* qcow2_co_block_status gives no offset when the image is encrypted
     * (but map's CRYPT_OFFSETS: convert -n into it plans with them). */
    if (st > 0 && s->q.crypt_method &&
        !(rt_params()->op == OP_MAP && (rt_params()->flags & MAPOP_F_CRYPT_OFFSETS)))
        st &= ~LS_OFFSET_VALID;
    if (st > 0 && s->prealloc && (st & QST_DATA) && !(st & QST_ZERO)) st |= LS_RECURSE;
    return st;
}

/* qcow2_block_status answers in LS_* bits. */
_Static_assert(QST_DATA == LS_DATA && QST_ZERO == LS_ZERO && QST_OFFSET_VALID == LS_OFFSET_VALID &&
                   QST_COMPRESSED == LS_COMPRESSED,
               "QST_* and LS_* bits");

const struct layer_ops qcow2_layer_ops = {
    .format = FMT_QCOW2,
    .open = qcow2_layer_open,
    .block_status = qcow2_layer_status,
    .read = qcow2_layer_read,
};
