/*
 * qcow2 header decoding and validation, in the order qemu 7.2's
 * qcow2_do_open applies its checks, so the first error reported is the one
 * qemu-img would print. Every number comes from the image and is checked
 * before it is used in arithmetic.
 */
#include "qcow2.h"
#include "bytes.h"
#include "../ops/records.h"

int qcow2_crypto_open_header(struct qcow2 *q) __attribute__((weak));

static int fail(const struct qcow2 *q, uint32_t code, uint64_t a0, uint64_t a1, uint64_t a2)
{
    return rt_error(q->r->input, code, a0, a1, a2);
}

/* qemu's qcow2_validate_table: "<name> too large" / "<name> offset invalid".
 * which: 1 = reftable, 2 = snapshot table, 3 = active L1, 4 = a snapshot's L1 (ERROR a1). */
static int validate_table(const struct qcow2 *q, uint32_t code, uint64_t which, uint64_t offset,
                          uint64_t entries, uint64_t entry_len, uint64_t max_bytes)
{
    if (entries > max_bytes / entry_len) return fail(q, code, 1, which, entries);
    /* entries * entry_len <= max_bytes here, so it cannot overflow. */
    uint64_t bytes = entries * entry_len;
    if ((uint64_t)INT64_MAX - bytes < offset || (offset & (q->cluster_size - 1)))
        return fail(q, code, 2, which, offset);
    return 0;
}

/* Copies a C string (stops at NUL like qemu's strings do) of at most len bytes. */
static uint16_t cstr_copy(uint8_t *dst, const uint8_t *src, uint64_t len)
{
    uint16_t n = 0;
    while (n < len && src[n]) {
        dst[n] = src[n];
        n++;
    }
    return n;
}

/*
 * Walks the header extensions between start and end (qcow2_read_extensions).
 * qemu runs it twice when unknown incompatible bits are set: a first, quiet
 * pass (errors stop it silently) only to find the feature table, whose names
 * go into "Unsupported qcow2 feature(s)"; that pass is features_for, with
 * `mask` the unknown bits. Warnings qemu prints while walking (bitmaps left
 * behind by a program without bitmap support) are CHECK_MSG records.
 */
#define EXT_FAIL(...) do { if (features_for) goto stop; return fail(q, __VA_ARGS__); } while (0)
static int read_extensions(struct qcow2 *q, uint64_t start, uint64_t end, bool features_for, uint64_t mask)
{
    uint64_t off = start;
    uint8_t *table = NULL;
    uint64_t table_len = 0;
    uint64_t mark = rt_heap_mark();
    while (off < end) {
        uint8_t eh[8];
        if (reader_read(q->r, off, eh, 8)) EXT_FAIL(GERR_IO, off, 0, 0);
        uint32_t magic = be32(eh), len = be32(eh + 4);
        off += 8;
        if (off > end || len > end - off) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_TOO_LARGE, len);
        switch (magic) {
        case QCOW2_EXT_END:
            goto stop;
        case QCOW2_EXT_BACKING_FORMAT: {
            if (len >= 16) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_BACKING_FORMAT_TOO_LONG, len);
            uint8_t b[16];
            if (reader_read(q->r, off, b, len)) EXT_FAIL(GERR_IO, off, 0, 0);
            q->backing_format_len = cstr_copy(q->backing_format, b, len);
            q->flags |= Q2F_HAS_BACKING_FORMAT;
            break;
        }
        case QCOW2_EXT_FEATURE_TABLE:
            q->flags |= Q2F_HAS_FEATURE_TABLE;
            if (features_for) {
                /* Later tables replace earlier ones, as in qemu. len <= cluster size. */
                table = rt_alloc((uint64_t)len + 96);
                if (!table) return fail(q, GERR_OUT_OF_MEMORY, 0, 0, 0);
                memset(table, 0, (uint64_t)len + 96);
                if (reader_read(q->r, off, table, len)) return fail(q, GERR_IO, off, 0, 0);
                table_len = len;
            }
            break;
        case QCOW2_EXT_CRYPTO_HEADER:
            if (q->crypt_method != QCOW2_CRYPT_LUKS) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_CRYPTO_NOT_LUKS, 0);
            if (len != 16) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_CRYPTO_SIZE, len);
            /* The quiet pass has no encryption options: qemu's open fails
             * there and the walk stops. */
            if (features_for) goto stop;
            {
                uint8_t b[16];
                if (reader_read(q->r, off, b, 16)) return fail(q, GERR_BAD_EXTENSION, magic, QEXT_CRYPTO_READ, 0);
                q->crypto_offset = be64(b);
                q->crypto_length = be64(b + 8);
            }
            if (q->crypto_offset & (q->cluster_size - 1))
                return fail(q, GERR_BAD_EXTENSION, q->cluster_size, QEXT_CRYPTO_OFFSET, q->crypto_offset);
            q->flags |= Q2F_HAS_CRYPTO_HEADER;
            /* qcrypto_block_open on the header clusters, in the walk as qemu
             * does it; linked only where the LUKS header is needed
             * (guest/qcow2/crypt_header.c: info and the decrypting readers). */
            if (qcow2_crypto_open_header && qcow2_crypto_open_header(q)) return -1;
            break;
        case QCOW2_EXT_BITMAPS: {
            if (len != 24) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_BITMAPS_LENGTH, len);
            if (!(q->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
                /* qemu warns and ignores the extension */
                emit_check_msg(q->r->input, q->version < 3 ? CMSG_BITMAPS_V2_WARNING : CMSG_BITMAPS_WARNING, 0, 0, 0, 0);
                emit_check_msg(q->r->input, CMSG_BITMAPS_LEAK_HINT, 0, 0, 0, 0);
                break;
            }
            uint8_t b[24];
            if (reader_read(q->r, off, b, 24)) EXT_FAIL(GERR_IO, off, 0, 0);
            uint32_t nb = be32(b), reserved = be32(b + 4);
            uint64_t dsize = be64(b + 8), doff = be64(b + 16);
            if (reserved) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_BITMAPS_RESERVED, 0);
            if (nb > QCOW2_MAX_BITMAPS) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_BITMAPS_TOO_MANY, nb);
            if (nb == 0) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_BITMAPS_ZERO, 0);
            if (doff & (q->cluster_size - 1)) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_BITMAPS_DIR_OFFSET, doff);
            if (dsize > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) EXT_FAIL(GERR_BAD_EXTENSION, magic, QEXT_BITMAPS_DIR_SIZE, dsize);
            q->flags |= Q2F_HAS_BITMAPS_EXT;
            q->nb_bitmaps = nb;
            q->bitmap_dir_offset = doff;
            q->bitmap_dir_size = dsize;
            break;
        }
        case QCOW2_EXT_DATA_FILE: {
            if (features_for) break;
            /* qemu keeps the name up to its first NUL; we cap it at NAME_MAX. */
            uint64_t dmark = rt_heap_mark();
            uint8_t *b = rt_alloc((uint64_t)len + 1);
            if (!b) return fail(q, GERR_OUT_OF_MEMORY, 0, 0, 0);
            if (reader_read(q->r, off, b, len)) return fail(q, GERR_IO, off, 0, 0);
            b[len] = 0;
            uint64_t n = 0;
            while (n < len && b[n]) n++;
            if (n > LIMIT_NAME_MAX) return fail(q, GERR_NAME_TOO_LONG, NAME_DATA_FILE, n, 0);
            q->data_file_len = cstr_copy(q->data_file, b, n);
            q->flags |= Q2F_HAS_DATA_FILE;
            rt_heap_release(dmark);
            break;
        }
        default:
            q->flags |= Q2F_UNKNOWN_EXT;
            break;
        }
        off += ((uint64_t)len + 7) & ~7ull;
    }
stop:
    if (!features_for) return 0;
    /* Report names of unsupported incompatible bits in table order (qemu's
     * report_unsupported_feature: each matching entry, name cut at 46). */
    uint64_t left = mask;
    for (uint64_t e = 0; table && e * 48 < table_len + 48; e++) {
        const uint8_t *t = table + e * 48;
        if (t[2] == 0) break; /* empty name ends the table */
        if (t[0] != 0) continue; /* not an incompatible-feature entry */
        uint64_t bit = 1ull << (t[1] & 63); /* x86 shifts mod 64, as qemu's 1ULL << bit does */
        if (!(left & bit)) continue;
        uint8_t name[46];
        uint16_t n = cstr_copy(name, t + 2, 46);
        emit_name(q->r->input, NAME_INCOMPAT_FEATURE, name, n);
        left &= ~bit;
    }
    rt_heap_release(mark);
    return fail(q, GERR_UNKNOWN_INCOMPAT, left, mask, 0);
}
#undef EXT_FAIL

/* Emits the bitmap's name (C string, at most 1023 bytes) and the error. */
static int bitmap_fail(struct qcow2 *q, uint32_t kind, uint64_t name_at, uint32_t name_len)
{
    uint8_t b[1024];
    if (name_len > 1023) name_len = 1023;
    if (reader_read(q->r, name_at, b, name_len)) return fail(q, GERR_IO, name_at, 0, 0);
    emit_name(q->r->input, NAME_BITMAP_NAME, b, cstr_copy(b, b, name_len));
    return fail(q, GERR_BAD_BITMAP, kind, 0, 0);
}

/*
 * qcow2_load_dirty_bitmaps at open: bitmap_list_load's directory checks, then
 * for each bitmap not in use its table entries and table size (load_bitmap).
 * The directory is walked from the file in place (it may be 64 MiB).
 */
static int validate_bitmaps(struct qcow2 *q)
{
    if (!q->nb_bitmaps) return 0;
    if (q->bitmap_dir_size == 0) return fail(q, GERR_BAD_BITMAP, QBM_DIR_SIZE_ZERO, 0, 0);
    uint64_t start = q->bitmap_dir_offset, end, at, count = 0;
    /* offset is cluster aligned and size <= 64 MiB, but offset is any u64 */
    if (__builtin_add_overflow(start, q->bitmap_dir_size, &end)) return fail(q, GERR_BAD_BITMAP, QBM_BROKEN_DIR, 0, 0);
    uint64_t len = q->size & ~511ull;
    if (end > READER_MAX_END) return fail(q, GERR_BAD_BITMAP, QBM_DIR_EIO, 0, 0);
    for (at = start; at < end;) {
        uint8_t e[24];
        if (end - at < 24) return fail(q, GERR_BAD_BITMAP, QBM_BROKEN_DIR, 0, 0);
        if (++count > q->nb_bitmaps) return fail(q, GERR_BAD_BITMAP, QBM_TOO_MANY, 0, 0);
        if (reader_read(q->r, at, e, 24)) return fail(q, GERR_IO, at, 0, 0);
        uint64_t toff = be64(e);
        uint32_t tsize = be32(e + 8), flags = be32(e + 12), nlen = be16(e + 18), extra = be32(e + 20);
        uint8_t type = e[16], gran = e[17];
        uint64_t esize = (24ull + nlen + extra + 7) & ~7ull;
        if (esize > end - at) return fail(q, GERR_BAD_BITMAP, QBM_BROKEN_DIR, 0, 0);
        if (extra) return fail(q, GERR_BAD_BITMAP, QBM_EXTRA_DATA, 0, 0);
        bool bad = tsize == 0 || toff == 0 || (toff & (q->cluster_size - 1)) || tsize > 0x8000000u || gran > 31 ||
                   gran < 9 || (flags & 0xfffffffcu) || nlen > 1023 || type != 1;
        uint64_t phys = (uint64_t)tsize * q->cluster_size;
        if (!bad && phys > 0x20000000ull) bad = true;
        if (!bad && !(flags & 1) && len > ((phys * 8) << gran)) bad = true;
        if (bad) return bitmap_fail(q, QBM_CONSTRAINTS, at + 24, nlen);
        at += esize;
    }
    if (count != q->nb_bitmaps) return fail(q, GERR_BAD_BITMAP, QBM_TOO_FEW, 0, 0);
    uint64_t mark = rt_heap_mark();
    struct table_window w;
    if (table_window_init(&w, q->r, 0, 0)) return fail(q, GERR_OUT_OF_MEMORY, 0, 0, 0);
    for (at = start; at < end;) {
        uint8_t e[24];
        if (reader_read(q->r, at, e, 24)) return fail(q, GERR_IO, at, 0, 0);
        uint64_t toff = be64(e), tsize = be32(e + 8);
        uint32_t flags = be32(e + 12), nlen = be16(e + 18), gran = e[17];
        uint64_t name_at = at + 24;
        at += (24ull + nlen + 7) & ~7ull;
        if (flags & 1) continue; /* in use: qemu skips loading its data */
        uint64_t tend;
        if (__builtin_add_overflow(toff, tsize * 8, &tend) || tend > READER_MAX_END)
            return bitmap_fail(q, QBM_TABLE_EIO, name_at, nlen);
        w.offset = toff;
        w.entries = tsize;
        w.count = 0;
        for (uint64_t i = 0; i < tsize; i++) {
            uint64_t v;
            if (table_window_get(&w, i, &v)) return fail(q, GERR_IO, toff, 0, 0);
            uint64_t o = v & 0x00fffffffffffe00ull;
            if ((v & 0xff000000000001feull) || (o && ((v & 1) || (o & (q->cluster_size - 1)))))
                return bitmap_fail(q, QBM_TABLE, name_at, nlen);
        }
        /* The table must hold exactly the serialized bitmap: one bit per
         * granule, in 64-bit words, in whole clusters. */
        uint64_t bits = len ? ((len - 1) >> gran) + 1 : 0;
        uint64_t bytes = ((bits + 63) / 64) * 8;
        uint64_t need = (bytes + q->cluster_size - 1) >> q->cluster_bits;
        if (need != tsize) return bitmap_fail(q, QBM_DATA, name_at, nlen);
    }
    rt_heap_release(mark);
    return 0;
}

int qcow2_open(struct qcow2 *q, const struct reader *r, uint32_t mode)
{
    uint8_t h[QCOW2_HEADER_READ];
    memset(q, 0, sizeof *q);
    q->r = r;
    if (reader_read(r, 0, h, sizeof h)) return fail(q, GERR_IO, 0, 0, 0);
    if (be32(h) != QCOW2_MAGIC) return fail(q, GERR_NOT_FORMAT, 0, 0, 0);
    q->version = be32(h + 4);
    if (q->version < 2 || q->version > 3) return fail(q, GERR_UNSUPPORTED_VERSION, q->version, 0, 0);
    q->backing_offset = be64(h + 8);
    q->backing_size = be32(h + 16);
    q->cluster_bits = be32(h + 20);
    if (q->cluster_bits < QCOW2_MIN_CLUSTER_BITS || q->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return fail(q, GERR_BAD_CLUSTER_BITS, q->cluster_bits, 0, 0);
    q->cluster_size = 1ull << q->cluster_bits;
    q->size = be64(h + 24);
    q->crypt_method = be32(h + 32);
    q->l1_size = be32(h + 36);
    q->l1_offset = be64(h + 40);
    q->reftable_offset = be64(h + 48);
    q->reftable_clusters = be32(h + 56);
    q->nb_snapshots = be32(h + 60);
    q->snapshots_offset = be64(h + 64);
    if (q->version == 2) {
        q->refcount_order = 4;
        q->header_length = 72;
    } else {
        q->incompat = be64(h + 72);
        q->compat = be64(h + 80);
        q->autoclear = be64(h + 88);
        q->refcount_order = be32(h + 96);
        q->header_length = be32(h + 100);
        if (q->header_length < 104) return fail(q, GERR_BAD_HEADER_LENGTH, q->header_length, 1, 0);
    }
    if (q->header_length > q->cluster_size) return fail(q, GERR_BAD_HEADER_LENGTH, q->header_length, 2, 0);
    if (q->backing_offset > q->cluster_size) return fail(q, GERR_BAD_BACKING_OFFSET, q->backing_offset, 0, 0);
    uint64_t ext_end = q->backing_offset ? q->backing_offset : q->cluster_size;

    /* Compression type: byte 104, present when the header is longer than 104. */
    q->compression_type = q->header_length > 104 ? h[104] : 0;
    if (q->compression_type > 1) return fail(q, GERR_BAD_COMPRESSION_TYPE, q->compression_type, 0, 0);
    if (q->compression_type == 0 && (q->incompat & QCOW2_INCOMPAT_COMPRESSION))
        return fail(q, GERR_BAD_COMPRESSION_TYPE, 0, 1, 0);
    if (q->compression_type != 0 && !(q->incompat & QCOW2_INCOMPAT_COMPRESSION))
        return fail(q, GERR_BAD_COMPRESSION_TYPE, q->compression_type, 2, 0);

    if (q->incompat & ~QCOW2_INCOMPAT_MASK)
        return read_extensions(q, q->header_length, ext_end, true, q->incompat & ~QCOW2_INCOMPAT_MASK);

    q->extl2 = (q->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
    q->has_data_file = (q->incompat & QCOW2_INCOMPAT_DATA_FILE) != 0;
    /* 32 subclusters per cluster must each be at least 512 bytes. */
    if (q->extl2 && q->cluster_bits < 14) return fail(q, GERR_BAD_CLUSTER_BITS, q->cluster_bits, 1, 0);
    if (q->refcount_order > 6) return fail(q, GERR_BAD_REFCOUNT_ORDER, q->refcount_order, 0, 0);

    q->l2_entry_bytes = q->extl2 ? 16 : 8;
    q->l2_bits = q->cluster_bits - (q->extl2 ? 4 : 3);
    q->l2_entries = 1ull << q->l2_bits;
    q->refblock_bits = q->cluster_bits + 3 - q->refcount_order;
    q->refcount_max = q->refcount_order == 6 ? UINT64_MAX : (1ull << (1u << q->refcount_order)) - 1;
    q->csize_shift = 62 - (q->cluster_bits - 8);
    q->csize_mask = (1ull << (q->cluster_bits - 8)) - 1;
    q->cluster_offset_mask = (1ull << q->csize_shift) - 1;
    q->reftable_entries = (uint64_t)q->reftable_clusters << (q->cluster_bits - 3);

    if (q->reftable_clusters == 0 && !(mode & QCOW2_OPEN_CHECK))
        return fail(q, GERR_BAD_REFTABLE, 3, 0, 0);
    if (validate_table(q, GERR_BAD_REFTABLE, 1, q->reftable_offset, q->reftable_clusters, q->cluster_size,
                       QCOW2_MAX_REFTABLE_SIZE))
        return -1;
    if (!(mode & QCOW2_OPEN_CHECK) &&
        validate_table(q, GERR_BAD_SNAPSHOT_TABLE, 2, q->snapshots_offset, q->nb_snapshots,
                       QCOW2_SNAPSHOT_HEADER_SIZE, (uint64_t)QCOW2_SNAPSHOT_HEADER_SIZE * QCOW2_MAX_SNAPSHOTS))
        return -1;
    if (validate_table(q, GERR_BAD_L1_SIZE, 3, q->l1_offset, q->l1_size, 8, QCOW2_MAX_L1_SIZE)) return -1;

    /* size_to_l1 in qemu's 64-bit unsigned arithmetic (it may wrap; so do we). */
    uint32_t shift = q->cluster_bits + q->l2_bits;
    uint64_t l1_needed = (q->size + (1ull << shift) - 1) >> shift;
    if (l1_needed > 0x7fffffffull) return fail(q, GERR_VIRTUAL_SIZE_TOO_LARGE, q->size, 0, 0);
    if (q->l1_size < l1_needed) return fail(q, GERR_BAD_L1_SIZE, 3, 3, q->l1_size);

    /* Reading the L1 table fails past qemu's maximum request end. */
    if (q->l1_size && q->l1_offset + (uint64_t)q->l1_size * 8 > READER_MAX_END)
        return fail(q, GERR_BAD_L1_OFFSET, 1, 0, 0);
    /* qcow2_update_options: only AES (1) and LUKS (2) are known methods. */
    if (q->crypt_method > QCOW2_CRYPT_LUKS) return fail(q, GERR_ENCRYPTED, q->crypt_method, 1, 0);
    /* qcow2_refcount_init reads the whole refcount table. */
    if (q->reftable_entries && q->reftable_offset + q->reftable_entries * 8 > READER_MAX_END)
        return fail(q, GERR_BAD_REFTABLE, 4, 0, 0);

    if (read_extensions(q, q->header_length, ext_end, false, 0)) return -1;

    /* qemu-img 7.2.x (the CVE-2024-4467 fix) does not open the data file,
     * nor check for one, when the open does no I/O (qemu-img info). */
    if (!(mode & QCOW2_OPEN_NO_IO)) {
        if (q->has_data_file && !(q->flags & Q2F_HAS_DATA_FILE)) return fail(q, GERR_DATA_FILE_REQUIRED, 1, 0, 0);
        if (!q->has_data_file && (q->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
            return fail(q, GERR_DATA_FILE_REQUIRED, 2, 0, 0);
    }
    if (q->has_data_file && (q->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW)) q->flags |= Q2F_DATA_FILE_RAW;
    /* LUKS needs its header extension. qemu checks it only when the open
     * does I/O; info (BDRV_O_NO_IO) then crashes in qcow2_refresh_limits on
     * the missing crypto block (qemu-img 7.2 exits with SIGSEGV): instar
     * gives qemu's message there too. */
    if (q->crypt_method == QCOW2_CRYPT_LUKS && !(q->flags & Q2F_HAS_CRYPTO_HEADER))
        return fail(q, GERR_ENCRYPTED, q->crypt_method, 2, 0);

    if (q->backing_offset) {
        uint64_t room = q->cluster_size - q->backing_offset;
        if (q->backing_size > (room < 1023 ? room : 1023)) return fail(q, GERR_NAME_TOO_LONG, NAME_BACKING_FILE, q->backing_size, 0);
        uint8_t b[1024];
        if (reader_read(r, q->backing_offset, b, q->backing_size)) return fail(q, GERR_IO, q->backing_offset, 0, 0);
        q->backing_len = cstr_copy(q->backing, b, q->backing_size);
        /* An empty name (size 0 or a leading NUL) means no backing file to qemu. */
        if (q->backing_len) q->flags |= Q2F_HAS_BACKING;
    }

    if (!(mode & QCOW2_OPEN_CHECK)) {
        uint64_t size, a1, a2;
        int k = qcow2_read_snapshots(q, NULL, &size, &a1, &a2);
        if (k < 0) return fail(q, GERR_IO, q->snapshots_offset, 0, 0);
        if (k > 0) return fail(q, GERR_BAD_SNAPSHOT_TABLE, (uint64_t)k, a1, a2);
    }

    if (validate_bitmaps(q)) return -1;

    /* After the driver's open, qemu refreshes the sector count and refuses
     * lengths past BDRV_MAX_LENGTH ("Could not refresh total sector count"). */
    if ((q->size & ~511ull) > READER_MAX_END) return fail(q, GERR_VIRTUAL_SIZE_TOO_LARGE, q->size, 1, 0);
    /* Encrypted images open: a program that reads data refuses them unless
     * it links the decryption (guest/qcow2/layer.c, crypt_layer.c). */
    return 0;
}

int qcow2_snapshots_drop_extra;

/* Receives each snapshot of a walk with its id and name (cut at 127/255 bytes, not NUL-cut). */
typedef int (*snapshot_visit)(void *ctx, uint64_t i, const struct qcow2_snapshot *s, const uint8_t *id,
                              const uint8_t *name);

/*
 * One sequential pass over the snapshot table through a 1 MiB window (each
 * read in the VM is an exit: 65,536 snapshots must not cost 65,536 reads).
 * Fills list[i] when list is set, calls visit when it is set.
 */
static int walk_snapshots(const struct qcow2 *q, struct qcow2_snapshot *list, snapshot_visit visit, void *ctx,
                          uint64_t *table_size, uint64_t *arg1, uint64_t *arg2)
{
    uint64_t n = q->nb_snapshots, start = q->snapshots_offset, at = start, pre = start;
    /* qemu's table_length: as `at - start`, but with the extra data of an
     * entry walked past (qcow2_snapshots_drop_extra) counted as the 1024
     * bytes qemu keeps of it */
    uint64_t length = 0;
    *table_size = 0;
    uint64_t mark = rt_heap_mark();
    struct byte_window w;
    if (byte_window_init(&w, q->r)) w.buf = NULL; /* no memory: read entry by entry */
    int ret = 0;
    /* The caller validated n <= 65536 and start + 40 * n <= INT64_MAX, and
     * each entry adds at most 40 + 1024 + 2 * 65535 + 7 bytes before the size
     * check below stops the walk, so `at` cannot overflow (with
     * qcow2_snapshots_drop_extra an entry adds at most 40 + 2^32 - 1 +
     * 2 * 65535 + 7 bytes past an `at` <= READER_MAX_END, still far below
     * 2^64). */
    for (uint64_t i = 0; i < n; i++) {
        uint8_t h[QCOW2_SNAPSHOT_HEADER_SIZE];
        pre = at;
        at = (at + 7) & ~7ull;
        length = (length + 7) & ~7ull;
        if (at + sizeof h > READER_MAX_END) { ret = QSNAP_READ_FAILED; break; }
        if (byte_window_read(&w, at, h, sizeof h)) { ret = -1; break; }
        uint32_t id_len = be16(h + 12), name_len = be16(h + 14), extra = be32(h + 36);
        if (extra > QCOW2_MAX_SNAPSHOT_EXTRA_DATA && !qcow2_snapshots_drop_extra) {
            *arg1 = i;
            *arg2 = extra;
            ret = QSNAP_EXTRA_TOO_LARGE;
            break;
        }
        uint64_t id_at = at + QCOW2_SNAPSHOT_HEADER_SIZE + extra;
        at = id_at + id_len + name_len;
        if (at > READER_MAX_END) { ret = QSNAP_READ_FAILED; break; } /* one of qemu's reads fails */
        uint32_t kept = extra > QCOW2_MAX_SNAPSHOT_EXTRA_DATA ? QCOW2_MAX_SNAPSHOT_EXTRA_DATA : extra;
        length += QCOW2_SNAPSHOT_HEADER_SIZE + kept + id_len + name_len;
        if (length > 1024ull * QCOW2_MAX_SNAPSHOTS || at - start > 0x7fffffffull) {
            *arg1 = n - i;
            *arg2 = extra;
            /* check -r all keeps the entries before this one */
            *table_size = pre - start;
            ret = QSNAP_TOO_BIG;
            break;
        }
        if (!list && !visit) continue;
        struct qcow2_snapshot s;
        s.l1_offset = be64(h);
        s.l1_size = be32(h + 8);
        s.extra_size = extra;
        s.id_offset = id_at;
        s.id_len = (uint16_t)id_len;
        s.name_offset = id_at + id_len;
        s.name_len = (uint16_t)name_len;
        s.date_sec = be32(h + 16);
        s.date_nsec = be32(h + 20);
        s.vm_clock_nsec = be64(h + 24);
        s.vm_state_size = be32(h + 32);
        /* Known extra data: vm_state_size_large, disk_size, icount. */
        uint8_t x[24];
        uint32_t xn = extra < 24 ? extra : 24;
        if (byte_window_read(&w, id_at - extra, x, xn)) { ret = -1; break; }
        if (extra >= 8) s.vm_state_size = be64(x);
        s.icount = extra >= 24 ? be64(x + 16) : UINT64_MAX;
        s.disk_size = extra >= 16 ? be64(x + 8) : UINT64_MAX;
        if (list) list[i] = s;
        if (visit) {
            /* qemu copies id and name into 128- and 256-byte buffers (pstrcpy). */
            uint8_t id[127], name[255];
            uint32_t n1 = id_len < 127 ? id_len : 127, n2 = name_len < 255 ? name_len : 255;
            if (byte_window_read(&w, s.id_offset, id, n1) || byte_window_read(&w, s.name_offset, name, n2)) {
                ret = -1;
                break;
            }
            s.id_len = (uint16_t)n1;
            s.name_len = (uint16_t)n2;
            if (visit(ctx, i, &s, id, name)) { ret = -2; break; }
        }
    }
    rt_heap_release(mark);
    if (ret == 0) *table_size = at - start;
    return ret;
}

int qcow2_read_snapshots(const struct qcow2 *q, struct qcow2_snapshot *list, uint64_t *table_size,
                         uint64_t *arg1, uint64_t *arg2)
{
    return walk_snapshots(q, list, NULL, NULL, table_size, arg1, arg2);
}

struct snapshot_pick {
    uint64_t index;
    uint64_t l1_offset;
    uint32_t l1_size;
};

static int pick_visit(void *ctx, uint64_t i, const struct qcow2_snapshot *s, const uint8_t *id, const uint8_t *name)
{
    (void)id;
    (void)name;
    struct snapshot_pick *p = ctx;
    if (i == p->index) {
        p->l1_offset = s->l1_offset;
        p->l1_size = s->l1_size;
    }
    return 0;
}

int qcow2_use_snapshot(struct qcow2 *q, uint64_t index)
{
    if (index >= q->nb_snapshots) return fail(q, GERR_BAD_PARAMS, 3, index, 0);
    struct snapshot_pick p = {.index = index};
    uint64_t size, a1, a2;
    int k = walk_snapshots(q, NULL, pick_visit, &p, &size, &a1, &a2);
    if (k) return k < 0 ? fail(q, GERR_IO, q->snapshots_offset, 0, 0) : fail(q, GERR_BAD_SNAPSHOT_TABLE, (uint64_t)k, a1, a2);
    /* qcow2_snapshot_load_tmp: qcow2_validate_table(..., "Snapshot L1 table"). */
    if (validate_table(q, GERR_BAD_L1_SIZE, 4, p.l1_offset, p.l1_size, 8, QCOW2_MAX_L1_SIZE)) return -1;
    if (p.l1_size && p.l1_offset + (uint64_t)p.l1_size * 8 > READER_MAX_END) return fail(q, GERR_BAD_L1_OFFSET, 2, 0, 0);
    q->l1_offset = p.l1_offset;
    q->l1_size = p.l1_size;
    return 0;
}

int qcow2_validate_snapshot_l1(const struct qcow2 *q, uint64_t offset, uint64_t entries)
{
    if (validate_table(q, GERR_BAD_L1_SIZE, 4, offset, entries, 8, QCOW2_MAX_L1_SIZE)) return -1;
    if (entries && offset + entries * 8 > READER_MAX_END) return fail(q, GERR_BAD_L1_OFFSET, 2, 0, 0);
    return 0;
}

/* Packs snapshots into SNAPSHOT records, flushing each when the next entry does not fit. */
struct snapshot_batch {
    struct rec_snapshot rec;
    uint32_t input;
};

static int batch_flush(struct snapshot_batch *b)
{
    if (!b->rec.count) return 0;
    int r = rt_emit(&b->rec, sizeof b->rec);
    b->rec.count = 0;
    b->rec.used = 0;
    return r;
}

static uint16_t cut_at_nul(const uint8_t *s, uint16_t n)
{
    uint16_t k = 0;
    while (k < n && s[k]) k++;
    return k;
}

static int batch_add(void *ctx, uint64_t i, const struct qcow2_snapshot *s, const uint8_t *id, const uint8_t *name)
{
    struct snapshot_batch *b = ctx;
    uint16_t n1 = cut_at_nul(id, s->id_len), n2 = cut_at_nul(name, s->name_len);
    uint32_t need = (uint32_t)((sizeof(struct snapshot_entry) + n1 + n2 + 7) & ~7ull); /* <= 424 */
    if (b->rec.used + need > sizeof b->rec.data && batch_flush(b)) return -1;
    if (!b->rec.count) {
        rec_init(&b->rec, REC_SNAPSHOT, sizeof b->rec);
        b->rec.input = b->input;
        b->rec.first = (uint32_t)i;
    }
    uint8_t *p = b->rec.data + b->rec.used;
    memset(p, 0, need);
    struct snapshot_entry e = {
        .date_sec = s->date_sec,
        .date_nsec = s->date_nsec,
        .vm_clock_nsec = s->vm_clock_nsec,
        .vm_state_size = s->vm_state_size,
        .icount = s->icount,
        .id_len = n1,
        .name_len = n2,
    };
    memcpy(p, &e, sizeof e);
    memcpy(p + sizeof e, id, n1);
    memcpy(p + sizeof e + n1, name, n2);
    b->rec.used += need;
    b->rec.count++;
    return 0;
}

int qcow2_emit_snapshots(const struct qcow2 *q)
{
    if (!q->nb_snapshots) return 0;
    static struct snapshot_batch b;
    b.input = q->r->input;
    b.rec.count = 0;
    b.rec.used = 0;
    uint64_t size, a1, a2;
    int k = walk_snapshots(q, NULL, batch_add, &b, &size, &a1, &a2);
    if (k == -2) return -1; /* rt_emit failed */
    if (k) return k < 0 ? fail(q, GERR_IO, q->snapshots_offset, 0, 0) : fail(q, GERR_BAD_SNAPSHOT_TABLE, (uint64_t)k, a1, a2);
    return batch_flush(&b);
}

int qcow2_emit_bitmaps(const struct qcow2 *q)
{
    if (!q->nb_bitmaps) return 0;
    uint64_t at = q->bitmap_dir_offset, end = at + q->bitmap_dir_size; /* checked at open */
    static struct rec_bitmap rb;
    while (at < end) {
        uint8_t e[24];
        if (reader_read(q->r, at, e, 24)) return fail(q, GERR_IO, at, 0, 0);
        uint32_t nlen = be16(e + 18); /* <= 1023, extra data 0: checked at open */
        rec_init(&rb, REC_BITMAP, sizeof rb);
        rb.input = q->r->input;
        rb.flags = be32(e + 12);
        rb.granularity_bits = e[17];
        uint8_t b[1024];
        if (reader_read(q->r, at + 24, b, nlen)) return fail(q, GERR_IO, at, 0, 0);
        rb.name_len = cstr_copy(rb.name, b, nlen);
        if (rt_emit(&rb, sizeof rb)) return -1;
        at += (24ull + nlen + 7) & ~7ull;
    }
    return 0;
}

int qcow2_emit_info(const struct qcow2 *q)
{
    struct rec_qcow2_info i;
    rec_init(&i, REC_QCOW2_INFO, sizeof i);
    i.input = q->r->input;
    i.version = q->version;
    i.virtual_size = q->size;
    i.cluster_bits = q->cluster_bits;
    i.refcount_order = q->refcount_order;
    i.compression_type = q->compression_type;
    i.flags = q->flags & ~Q2F_HAS_CRYPTO_HEADER;
    i.incompatible_features = q->incompat;
    i.compatible_features = q->compat;
    i.autoclear_features = q->autoclear;
    i.l1_table_offset = q->l1_offset;
    i.refcount_table_offset = q->reftable_offset;
    i.l1_size = q->l1_size;
    i.refcount_table_clusters = q->reftable_clusters;
    i.nb_snapshots = q->nb_snapshots;
    i.header_length = q->header_length;
    i.snapshots_offset = q->snapshots_offset;
    i.crypt_method = q->crypt_method;
    i.nb_bitmaps = q->nb_bitmaps;
    if (rt_emit(&i, sizeof i)) return -1;
    uint32_t in = q->r->input;
    if (q->flags & Q2F_HAS_CRYPTO_HEADER) {
        /* The values as read (validated at open): a header rewrite writes them back. */
        struct rec_qcow2_crypt_hdr c;
        rec_init(&c, REC_QCOW2_CRYPT_HDR, sizeof c);
        c.input = in;
        c.offset = q->crypto_offset;
        c.length = q->crypto_length;
        if (rt_emit(&c, sizeof c)) return -1;
    }
    if ((q->flags & Q2F_HAS_BACKING) && emit_name(in, NAME_BACKING_FILE, q->backing, q->backing_len)) return -1;
    if ((q->flags & Q2F_HAS_BACKING_FORMAT) &&
        emit_name(in, NAME_BACKING_FORMAT, q->backing_format, q->backing_format_len))
        return -1;
    if ((q->flags & Q2F_HAS_DATA_FILE) && emit_name(in, NAME_DATA_FILE, q->data_file, q->data_file_len)) return -1;
    return 0;
}

int qcow2_load_reftable(struct qcow2 *q)
{
    uint64_t n = q->reftable_entries; /* <= 1 Mi entries (8 MiB), validated at open */
    q->reftable = rt_alloc(n ? n * 8 : 8);
    if (!q->reftable) return fail(q, GERR_OUT_OF_MEMORY, n * 8, 0, 0);
    uint8_t *raw = (uint8_t *)q->reftable;
    if (reader_read(q->r, q->reftable_offset, raw, n * 8)) return fail(q, GERR_IO, q->reftable_offset, 0, 0);
    /* Decode in place: each BE entry is read before its slot is rewritten. */
    for (uint64_t i = 0; i < n; i++) q->reftable[i] = be64(raw + i * 8);
    return 0;
}

enum qcow2_cluster_type qcow2_cluster_type(const struct qcow2 *q, uint64_t l2e)
{
    if (l2e & QCOW2_OFLAG_COMPRESSED) return QCT_COMPRESSED;
    if ((l2e & QCOW2_OFLAG_ZERO) && !q->extl2)
        return (l2e & QCOW2_L2E_OFFSET_MASK) ? QCT_ZERO_ALLOC : QCT_ZERO_PLAIN;
    if (!(l2e & QCOW2_L2E_OFFSET_MASK))
        return (q->has_data_file && (l2e & QCOW2_OFLAG_COPIED)) ? QCT_NORMAL : QCT_UNALLOCATED;
    return QCT_NORMAL;
}

void qcow2_compressed_range(const struct qcow2 *q, uint64_t l2e, uint64_t *off, uint64_t *len)
{
    *off = l2e & q->cluster_offset_mask;
    uint64_t sectors = ((l2e >> q->csize_shift) & q->csize_mask) + 1;
    /* sectors <= 2^13, so this cannot overflow. */
    *len = sectors * 512 - (*off & 511);
}
