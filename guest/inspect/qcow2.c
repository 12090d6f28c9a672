/*
 * inspect's qcow2 checks. format_inspector's (backing_file, data_file,
 * unknown_features with its version test) read the raw header fields;
 * instar's own (compression type, L1 and refcount tables past the end,
 * encryption, the corrupt bit) follow, and then the header goes through
 * qcow2_open as qemu-img would open it: a refusal is a finding too.
 */
#include "inspect.h"
#include "../qcow2/qcow2.h"

int inspect_qcow2(struct inspect *in)
{
    const uint8_t *h = in->head;
    uint32_t version = be32(h + 4);
    uint64_t backing = be64(h + 8);
    uint32_t backing_len = be32(h + 16);
    uint32_t cluster_bits = be32(h + 20);
    in->virtual_size = be64(h + 24);
    in->flags |= INSPF_SIZE_KNOWN;
    uint32_t crypt = be32(h + 32);
    uint32_t l1_size = be32(h + 36);
    uint64_t l1_offset = be64(h + 40);
    uint64_t reftable = be64(h + 48);
    uint32_t reftable_clusters = be32(h + 56);
    uint64_t incompat = version >= 3 ? be64(h + 72) : 0;
    uint32_t header_length = version >= 3 ? be32(h + 100) : 72;

    static struct qcow2 q;
    bool opened = false;
    if (version == 2 || version == 3) opened = qcow2_open(&q, in->r, QCOW2_OPEN_NO_IO) == 0;

    if (backing != 0) {
        const void *name = NULL;
        uint64_t len = 0;
        if (opened && q.backing_len) {
            name = q.backing;
            len = q.backing_len;
        }
        if (inspect_finding(in, INSP_QCOW2_BACKING_FILE, backing, backing_len, 0, name, len)) return -1;
    }
    if (version >= 3 && (incompat & QCOW2_INCOMPAT_DATA_FILE)) {
        const void *name = opened && q.data_file_len ? q.data_file : NULL;
        if (inspect_finding(in, INSP_QCOW2_DATA_FILE, 0, 0, 0, name, name ? q.data_file_len : 0)) return -1;
    }
    if (version != 2 && version != 3) {
        if (inspect_finding(in, INSP_QCOW2_VERSION, version, 0, 0, NULL, 0)) return -1;
    } else if (incompat & ~0xfull) {
        /* format_inspector knows bits 0-3; extended L2 (bit 4) counts as unknown there too */
        if (inspect_finding(in, INSP_QCOW2_UNKNOWN_FEATURES, incompat, 0, 0, NULL, 0)) return -1;
    }
    if (version == 3 && header_length > 104) {
        uint32_t type = h[104];
        bool bit = (incompat & QCOW2_INCOMPAT_COMPRESSION) != 0;
        if (type > 1 || (type != 0 && !bit))
            if (inspect_finding(in, INSP_QCOW2_COMPRESSION_TYPE, type, !bit, 0, NULL, 0)) return -1;
    } else if (version == 3 && (incompat & QCOW2_INCOMPAT_COMPRESSION)) {
        if (inspect_finding(in, INSP_QCOW2_COMPRESSION_TYPE, 0, 0, 1, NULL, 0)) return -1;
    }
    if (version == 2 || version == 3) {
        uint64_t l1_bytes = (uint64_t)l1_size * 8, end;
        if (l1_size && (__builtin_add_overflow(l1_offset, l1_bytes, &end) || end > in->size))
            if (inspect_finding(in, INSP_QCOW2_L1_PAST_END, l1_offset, l1_bytes, in->size, NULL, 0)) return -1;
        if (cluster_bits >= QCOW2_MIN_CLUSTER_BITS && cluster_bits <= QCOW2_MAX_CLUSTER_BITS) {
            uint64_t rt_bytes = (uint64_t)reftable_clusters << cluster_bits;
            if (__builtin_add_overflow(reftable, rt_bytes, &end) || end > in->size || rt_bytes == 0)
                if (inspect_finding(in, INSP_QCOW2_REFTABLE_PAST_END, reftable, rt_bytes, in->size, NULL, 0))
                    return -1;
        }
        if (crypt) {
            in->flags |= INSPF_ENCRYPTED;
            if (inspect_finding(in, INSP_QCOW2_ENCRYPTED, crypt, 0, 0, NULL, 0)) return -1;
        }
        if (incompat & QCOW2_INCOMPAT_CORRUPT)
            if (inspect_finding(in, INSP_QCOW2_CORRUPT, 0, 0, 0, NULL, 0)) return -1;
        if (!opened && inspect_open_failed(in)) return -1;
    }
    return 0;
}
