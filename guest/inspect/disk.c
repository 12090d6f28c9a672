/*
 * inspect's checks of raw contents format_inspector names: a partitioned
 * disk (its GPT inspector: the MBR's partition entries; instar adds the GPT
 * header behind a protective MBR and its backup at the last sector), an ISO
 * (no check of its own; the polyglot rule is in core.c) and LUKS (version 1
 * only, as format_inspector; always reported as encrypted).
 */
#include "inspect.h"

static uint32_t crc32_ieee(const uint8_t *p, uint64_t n)
{
    uint32_t c = 0xffffffffu;
    for (uint64_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

/* A GPT header sector: signature, CRC over its header_size bytes, and where it says it is. */
static uint32_t gpt_header_bad(const uint8_t *s, uint64_t lba)
{
    static uint8_t copy[512];
    if (memcmp(s, "EFI PART", 8) != 0) return GPT_H_SIGNATURE;
    uint32_t hsize = le32(s + 12);
    if (hsize < 92 || hsize > 512) return GPT_H_CHECKSUM;
    memcpy(copy, s, 512);
    memset(copy + 16, 0, 4);
    if (crc32_ieee(copy, hsize) != le32(s + 16)) return GPT_H_CHECKSUM;
    if (le64(s + 24) != lba) return GPT_H_LBA;
    return 0;
}

int inspect_mbr(struct inspect *in)
{
    const uint8_t *b = in->head;
    in->virtual_size = in->size;
    in->flags |= INSPF_SIZE_KNOWN;
    uint32_t valid = 0, nvalid = 0;
    bool gpt = false;
    for (uint32_t i = 0; i < 4; i++) {
        const uint8_t *e = b + 446 + 16 * i;
        if (e[0] != 0x00 && e[0] != 0x80) return inspect_finding(in, INSP_MBR_BOOT_FLAG, i, e[0], 0, NULL, 0);
        if (e[4] != 0) {
            valid |= 1u << i;
            nvalid++;
        }
        if (e[4] == 0xee) {
            gpt = true;
            if (e[1] != 0 || e[2] != 2 || e[3] != 0) return inspect_finding(in, INSP_GPT_START_CHS, i, 0, 0, NULL, 0);
            if (le32(e + 8) != 1) return inspect_finding(in, INSP_GPT_START_LBA, i, le32(e + 8), 0, NULL, 0);
        }
    }
    if (gpt && valid != 1) return inspect_finding(in, INSP_GPT_EXTRA_PARTITIONS, valid, 0, 0, NULL, 0);
    if (!nvalid) return inspect_finding(in, INSP_MBR_NO_PARTITIONS, 0, 0, 0, NULL, 0);
    if (!gpt) return 0;
    /* instar: the primary header at LBA 1 and the backup at the last sector */
    uint32_t bad = in->size >= 1024 ? gpt_header_bad(b + 512, 1) : GPT_H_SIGNATURE;
    if (bad) return inspect_finding(in, INSP_GPT_HEADER, bad, 0, 0, NULL, 0);
    uint64_t last = in->size / 512 - 1;
    if (le64(b + 512 + 32) != last) return inspect_finding(in, INSP_GPT_HEADER, GPT_H_BACKUP, le64(b + 512 + 32), last, NULL, 0);
    if (in->size % 512 == 0) {
        bad = gpt_header_bad(in->tail + INSPECT_TAIL - 512, last);
        if (bad) return inspect_finding(in, INSP_GPT_HEADER, GPT_H_BACKUP, bad, last, NULL, 0);
    }
    return 0;
}

int inspect_luks(struct inspect *in)
{
    const uint8_t *b = in->head;
    uint16_t version = be16(b + 6);
    in->flags |= INSPF_ENCRYPTED;
    if (version == 1) {
        uint64_t payload = (uint64_t)be32(b + 104) * 512;
        in->virtual_size = payload < in->size ? in->size - payload : 0;
        in->flags |= INSPF_SIZE_KNOWN;
        return 0;
    }
    return inspect_finding(in, INSP_LUKS_VERSION, version, 0, 0, NULL, 0);
}

int inspect_iso(struct inspect *in)
{
    /* qemu reads an ISO as raw: the file is the disk */
    in->virtual_size = in->size;
    in->flags |= INSPF_SIZE_KNOWN;
    return 0;
}
