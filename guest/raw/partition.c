/*
 * Partition-table detection for raw images. A raw file is only accepted
 * without `-f raw` when it looks like a disk: an MBR (0x55AA at 510 and at
 * least one sane partition entry) or a GPT ("EFI PART" at LBA 1 behind a
 * protective MBR entry of type 0xEE).
 */
#include "../probe/probe.h"
#include "bytes.h"
#include "../ops/records.h"

int raw_partition_kind(const struct reader *r)
{
    uint8_t s[1024];
    if (r->size < 512) return PART_NONE;
    if (reader_read(r, 0, s, sizeof s)) return -1;
    if (s[510] != 0x55 || s[511] != 0xaa) return PART_NONE;
    bool protective = false, sane = false;
    for (int i = 0; i < 4; i++) {
        const uint8_t *e = s + 446 + 16 * i;
        uint8_t status = e[0], type = e[4];
        uint32_t lba = le32(e + 8), count = le32(e + 12);
        if (type == 0) continue;
        if (status != 0x00 && status != 0x80) return PART_NONE; /* not a boot record */
        if (type == 0xee && lba == 1) protective = true;
        /* A partition must start after the MBR and inside the (possibly
         * still growing) image; its length must be non-zero. */
        if (lba >= 1 && count > 0) sane = true;
    }
    if (protective && r->size >= 1024 && memcmp(s + 512, "EFI PART", 8) == 0) return PART_GPT;
    return sane && !protective ? PART_MBR : PART_NONE;
}

int raw_emit_info(const struct reader *r)
{
    int kind = raw_partition_kind(r);
    if (kind < 0) return rt_error(r->input, GERR_IO, 0, 0, 0);
    struct rec_raw_info i;
    rec_init(&i, REC_RAW_INFO, sizeof i);
    i.input = r->input;
    i.partition = (uint32_t)kind;
    return rt_emit(&i, sizeof i);
}
