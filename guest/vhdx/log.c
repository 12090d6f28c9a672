/*
 * The VHDX log, read-only: qemu 7.2 block/vhdx-log.c vhdx_parse_log,
 * vhdx_log_search, vhdx_validate_log_entry, vhdx_log_read_desc. qemu refuses
 * a read-only open when the search finds an active sequence of entries; we
 * only ever open read-only, so finding one is the answer.
 *
 * qemu holds a whole entry's descriptor sectors in memory (up to 4 GiB for a
 * hostile descriptor count); we stream them through one sector buffer and a
 * small window cache. qemu's search can loop forever (an entry exactly as
 * long as the log brings the read index back to where it started) or run
 * quadratically; a budget of sector visits turns both into VHDX_E_LOG_LOOP.
 */
#include "vhdx_int.h"
#include "bytes.h"

#define LOG_SECTOR 4096u
#define LOG_MIN_SIZE (1024u * 1024u)
#define LOG_WINDOW (64u * 1024u)

struct logr {
    struct vhdx *v;
    uint64_t offset;
    uint64_t length;
    uint32_t read, write;
    uint8_t *cache;
    uint64_t cache_base;
    uint64_t cache_len;
    uint64_t visits, budget;
};

struct loghdr {
    uint32_t signature, checksum, entry_length;
    uint64_t seq;
    uint32_t desc_count;
    uint8_t guid[16];
};

static const uint8_t zero_sector[LOG_SECTOR];

/* The log sector at index idx (a multiple of 4096 below length). NULL after
 * an ERROR record. */
static const uint8_t *sector_at(struct logr *L, uint32_t idx)
{
    if (++L->visits > L->budget) {
        vhdx_fail(L->v, VHDX_E_LOG_LOOP, L->visits, 0);
        return NULL;
    }
    uint64_t off = L->offset + idx; /* offset < 2^64 - 2^32: checked by the caller */
    if (off >= L->v->r->size && off + LOG_SECTOR <= READER_MAX_END) return zero_sector;
    if (idx >= L->cache_base && idx - L->cache_base < L->cache_len) return L->cache + (idx - L->cache_base);
    uint64_t base = idx & ~(uint64_t)(LOG_WINDOW - 1);
    uint64_t len = L->length - base < LOG_WINDOW ? L->length - base : LOG_WINDOW;
    if (reader_read(L->v->r, L->offset + base, L->cache, len) == 0) {
        L->cache_base = base;
        L->cache_len = len;
        return L->cache + (idx - base);
    }
    /* qemu reads one sector (or a 64-byte header) at a time: fail as it would */
    L->cache_len = 0;
    if (vhdx_pread(L->v, off, L->cache, LOG_SECTOR)) return NULL;
    return L->cache;
}

static uint32_t inc_idx(uint32_t idx, uint64_t length)
{
    idx += LOG_SECTOR; /* length <= 0xfff00000: no wrap */
    return idx >= length ? 0 : idx;
}

static void decode_hdr(const uint8_t *p, struct loghdr *h)
{
    h->signature = le32(p);
    h->checksum = le32(p + 4);
    h->entry_length = le32(p + 8);
    h->seq = le64(p + 16);
    h->desc_count = le32(p + 24);
    memcpy(h->guid, p + 32, 16);
}

/* vhdx_log_hdr_is_valid */
static bool hdr_valid(const struct logr *L, const struct loghdr *h)
{
    if (h->signature != 0x65676f6cu /* "loge" */) return false;
    if (L->length < h->entry_length) return false;
    if (h->entry_length % LOG_SECTOR) return false;
    if (h->seq == 0) return false;
    if (memcmp(h->guid, L->v->log_guid, 16)) return false;
    if ((uint64_t)h->desc_count * 32 > h->entry_length) return false;
    return true;
}

/* vhdx_log_desc_is_valid */
static bool desc_valid(const uint8_t *d, uint64_t seq)
{
    if (le64(d + 24) != seq) return false;
    if (le64(d + 16) % LOG_SECTOR) return false;
    if (!memcmp(d, "zero", 4)) return le64(d + 8) % LOG_SECTOR == 0;
    return !memcmp(d, "desc", 4);
}

/* vhdx_validate_log_entry: 0 with *valid set, or -1 after an ERROR record. */
static int validate_entry(struct logr *L, uint64_t seq, bool *valid, struct loghdr *out)
{
    *valid = false;
    /* vhdx_log_peek_hdr: read + 64 never passes length (a multiple of 1 MiB),
     * and read != write while searching (write == length) */
    const uint8_t *p = sector_at(L, L->read);
    if (!p) return -1;
    struct loghdr h;
    decode_hdr(p, &h);
    if (!hdr_valid(L, &h) || (seq > 0 && h.seq != seq + 1)) {
        L->read = inc_idx(L->read, L->length);
        return 0;
    }
    uint32_t dc = h.desc_count + 2; /* desc_count <= 2^27 */
    uint32_t desc_sectors = dc / 128 + (dc % 128 ? 1 : 0);
    uint32_t total_sectors = h.entry_length / LOG_SECTOR;
    /* vhdx_log_read_desc: all descriptor sectors are read, then each
     * descriptor is validated; the CRC covers them with the checksum field
     * zeroed, then the data sectors. */
    uint32_t crc = 0xffffffffu;
    bool bad_desc = false;
    uint64_t d = 0; /* descriptor index */
    for (uint32_t s = 0; s < desc_sectors; s++) {
        const uint8_t *sec = sector_at(L, L->read);
        if (!sec) return -1;
        L->read = inc_idx(L->read, L->length);
        uint32_t from = s == 0 ? 64 : 0;
        for (uint32_t o = from; o < LOG_SECTOR && d < h.desc_count; o += 32, d++)
            if (!bad_desc && !desc_valid(sec + o, h.seq)) bad_desc = true;
        if (s == 0) {
            static uint8_t first[LOG_SECTOR];
            memcpy(first, sec, LOG_SECTOR);
            memset(first + 4, 0, 4);
            crc = ~vhdx_crc32c(crc, first, LOG_SECTOR);
        } else {
            crc = ~vhdx_crc32c(crc, sec, LOG_SECTOR);
        }
    }
    if (bad_desc) return vhdx_fail(L->v, VHDX_E_INVAL, VHDX_INVAL_LOG_DESCRIPTOR, h.seq);
    for (uint32_t s = desc_sectors; s < total_sectors; s++) {
        const uint8_t *sec = sector_at(L, L->read);
        if (!sec) return -1;
        L->read = inc_idx(L->read, L->length);
        crc = ~vhdx_crc32c(crc, sec, LOG_SECTOR);
    }
    if (~crc != h.checksum) return 0;
    *valid = true;
    *out = h;
    return 0;
}

/* vhdx_log_search */
static int log_search(struct logr *L, bool *found, uint32_t *count, uint64_t *seq)
{
    bool cand_valid = false;
    uint32_t cand_count = 0;
    uint64_t cand_seq = 0;
    L->write = (uint32_t)L->length;
    L->read = 0;
    for (;;) {
        uint64_t curr_seq = 0;
        bool cur_valid = false, ok;
        uint32_t cur_count = 0;
        struct loghdr h, first;
        uint32_t tail = L->read;
        if (validate_entry(L, curr_seq, &ok, &h)) return -1;
        if (ok) {
            cur_valid = true;
            cur_count = 1;
            first = h;
            for (;;) {
                if (validate_entry(L, curr_seq, &ok, &h)) return -1;
                if (!ok) break;
                cur_count++;
                curr_seq = h.seq;
            }
        }
        if (cur_valid && (!cand_valid || first.seq > cand_seq)) {
            cand_valid = true;
            cand_count = cur_count;
            cand_seq = first.seq;
        }
        if (L->read < tail) break;
    }
    *found = cand_valid;
    *count = cand_count;
    *seq = cand_seq;
    return 0;
}

int vhdx_parse_log(struct vhdx *v)
{
    if (v->log_offset < LOG_MIN_SIZE || v->log_offset % LOG_MIN_SIZE)
        return vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_LOG_OFFSET, v->log_offset);
    if (v->log_version != 0) return vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_LOG_VERSION, v->log_version);
    static const uint8_t zero_guid[16];
    if (!memcmp(v->log_guid, zero_guid, 16)) return 0;
    if (v->log_length == 0) return 0;
    if (v->log_length % LOG_MIN_SIZE) return vhdx_fail(v, VHDX_E_INVAL, VHDX_INVAL_LOG_LENGTH, v->log_length);

    static struct logr L;
    memset(&L, 0, sizeof L);
    L.v = v;
    L.offset = v->log_offset;
    L.length = v->log_length;
    /* offsets past qemu's BDRV_MAX_LENGTH fail each read with -EIO */
    if (L.offset > READER_MAX_END) return vhdx_fail(v, VHDX_E_IO, L.offset, 64);
    /* one lap plus an entry crossing the end, each sector read at most twice
     * (peek, then as part of the entry), with slack for headers */
    L.budget = 6 * (L.length / LOG_SECTOR) + 64;
    uint64_t mark = rt_heap_mark();
    L.cache = rt_alloc(LOG_WINDOW);
    if (!L.cache) return rt_error(v->input, GERR_OUT_OF_MEMORY, LOG_WINDOW, 0, 0);
    bool found;
    uint32_t count;
    uint64_t seq;
    int st = log_search(&L, &found, &count, &seq);
    rt_heap_release(mark);
    if (st) return -1;
    if (found) return vhdx_fail(v, VHDX_E_LOG_REPLAY, count, seq);
    return 0;
}
