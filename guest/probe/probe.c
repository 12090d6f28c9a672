/*
 * Format probing the way qemu 7.2 does it for the formats instar opens:
 * qemu reads 2048 bytes (zero-padded past EOF) and picks qcow2 when the
 * magic is QFI\xfb and the version is at least 2, vpc for "conectix",
 * vhdx for "vhdxfile" at offset 0, vmdk for "KDMV"/"COWD" or a text
 * descriptor vmdk_probe accepts (each driver scores 100); everything else
 * is raw (a fixed VHD, whose footer is only at the end, included).
 * On top, we look for every other format's signature at the start (and the
 * footer-based ones in the last 512 bytes) so that the host can refuse a
 * file that another program would read as a different format.
 */
#include "probe.h"
#include "bytes.h"
#include "../ops/records.h"


#define PROBE_BYTES 2048

static bool starts(const uint8_t *b, const char *magic, uint32_t n)
{
    return memcmp(b, magic, n) == 0;
}

/* qemu's vmdk_probe for a text descriptor: comment lines and blank lines
 * of spaces, then "version=1|2|3" and a line end. */
static bool vmdk_probe_text(const uint8_t *b, uint32_t size)
{
    const char *p = (const char *)b, *end = p + size;
    while (p < end) {
        if (*p == '#') {
            while (p < end && *p != '\n') p++;
            p++;
            continue;
        }
        if (*p == ' ') {
            while (p < end && *p == ' ') p++;
            if (p < end && *p == '\r') p++;
            if (p == end || *p != '\n') return false;
            p++;
            continue;
        }
        if (end - p >= 10 && memcmp(p, "version=", 8) == 0 && p[8] >= '1' && p[8] <= '3' && p[9] == '\n')
            return true;
        if (end - p >= 11 && memcmp(p, "version=", 8) == 0 && p[8] >= '1' && p[8] <= '3' && p[9] == '\r' &&
            p[10] == '\n')
            return true;
        return false;
    }
    return false;
}

static uint32_t head_signature(const uint8_t *b, uint32_t format)
{
    if (be32(b) == 0x514649fbu) {
        if (be32(b + 4) < 2) return SIG_QCOW1;
        if (format != FMT_QCOW2) return SIG_QCOW2;
    }
    if (format != FMT_VMDK && (starts(b, "KDMV", 4) || starts(b, "COWD", 4) || starts(b, "# Disk DescriptorFile", 21)))
        return SIG_VMDK;
    if (starts(b, "conectix", 8)) return SIG_VPC;
    if (starts(b, "vhdxfile", 8)) return SIG_VHDX;
    if (starts(b, "LUKS\xba\xbe", 6)) return SIG_LUKS;
    if (le32(b + 0x40) == 0xbeda107fu || starts(b, "<<< Oracle VM VirtualBox Disk Image >>>", 39)) return SIG_VDI;
    if (starts(b, "QED\0", 4)) return SIG_QED;
    if (starts(b, "WithoutFreeSpace", 16) || starts(b, "WithouFreSpacExt", 16)) return SIG_PARALLELS;
    if (starts(b, "Bochs Virtual HD Image", 22)) return SIG_BOCHS;
    if (starts(b, "#!/bin/sh\n#V2.0 Format\n", 23)) return SIG_CLOOP;
    if (starts(b, "\x7f" "ELF", 4)) return SIG_ELF;
    return SIG_NONE;
}

static int tail_signature(const struct reader *r, uint32_t *sig)
{
    uint8_t t[512];
    *sig = SIG_NONE;
    if (r->size < 1024) return 0; /* a footer needs something in front of it */
    /* A tail in a hole reads as zeroes: don't read it. Reading it would pull
     * the page into the host's page cache, and ext4 then reports an
     * unwritten (fallocated) tail as data to SEEK_DATA, so a later `map`
     * (ours in this very run, or qemu-img's) would print a data extent there
     * that qemu-img, which never reads the tail, does not. */
    int64_t d = hc_seek(r->input, r->size - 512, SEEK_KIND_DATA);
    if (d >= 0 && (uint64_t)d >= r->size) return 0;
    if (reader_read(r, r->size - 512, t, 512)) return -1;
    /* A fixed VHD keeps its footer in the last 512 bytes (or 511: old images). */
    if (starts(t, "conectix", 8) || starts(t + 1, "conectix", 8)) *sig = SIG_VPC;
    else if (starts(t, "koly", 4)) *sig = SIG_DMG;
    return 0;
}

uint32_t probe_last_signature;

int probe_input(const struct reader *r, uint32_t requested)
{
    static uint8_t b[PROBE_BYTES];
    if (reader_read(r, 0, b, sizeof b)) return rt_error(r->input, GERR_IO, 0, 0, 0);
    uint32_t format = requested;
    if (format == FMT_AUTO) {
        /* qemu treats an empty file as raw without probing; zeros give raw too. */
        format = FMT_RAW;
        if (r->size && be32(b) == 0x514649fbu && be32(b + 4) >= 2) format = FMT_QCOW2;
        else if (r->size && starts(b, "conectix", 8)) format = FMT_VPC;
        else if (r->size && starts(b, "vhdxfile", 8)) format = FMT_VHDX;
        else if (r->size && (starts(b, "KDMV", 4) || starts(b, "COWD", 4) || vmdk_probe_text(b, sizeof b)))
            format = FMT_VMDK;
    }
    uint32_t sig = r->size ? head_signature(b, format) : SIG_NONE;
    /* Only the raw gate uses the signature (lib/cli/image.ts). */
    if (sig == SIG_NONE && format == FMT_RAW && tail_signature(r, &sig)) return rt_error(r->input, GERR_IO, r->size - 512, 0, 0);
    struct rec_probe p;
    rec_init(&p, REC_PROBE, sizeof p);
    p.input = r->input;
    p.format = format;
    p.signature = sig;
    probe_last_signature = sig;
    if (rt_emit(&p, sizeof p)) return -1;
    return (int)format;
}
