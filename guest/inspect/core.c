/*
 * inspect's shared pieces: the stream window reader, finding records, format
 * detection (format_inspector's format_match rules, plus the signatures
 * instar's probe knows) and the run that ties the per-format checks together.
 */
#include "inspect.h"
#include "../probe/probe.h"

struct inspect_window *inspect_current_window;

static int window_read(void *ctx, uint64_t off, void *buf, uint64_t len)
{
    struct inspect_window *w = ctx;
    uint64_t end = off + len; /* reader_read checked the overflow and the size */
    /* a hole only when the tail does not follow the prefix right away */
    if (w->tail_start > w->prefix && !(end <= w->prefix || off >= w->tail_start)) {
        uint64_t at = off < w->prefix ? w->prefix : off;
        if (at < w->missing) w->missing = at;
        return -1;
    }
    if (w->inner.read(w->inner.ctx, off, buf, len)) return -1;
    w->bytes_read += len;
    return 0;
}

void inspect_window_init(struct inspect_window *w, struct reader *out, const struct reader *inner, bool stream,
                         uint64_t prefix, uint64_t tail_start)
{
    w->inner = *inner;
    w->prefix = stream ? prefix : UINT64_MAX;
    w->tail_start = stream ? tail_start : UINT64_MAX;
    if (stream && w->tail_start < w->prefix) w->tail_start = w->prefix;
    w->missing = UINT64_MAX;
    w->bytes_read = 0;
    out->ctx = w;
    out->size = inner->size;
    out->input = inner->input;
    out->from_input = false;
    out->read = window_read;
    inspect_current_window = w;
}

int inspect_finding(struct inspect *in, uint32_t code, uint64_t a0, uint64_t a1, uint64_t a2, const void *text,
                    uint64_t text_len)
{
    static struct rec_inspect_finding f;
    rec_init(&f, REC_INSPECT_FINDING, sizeof f);
    f.code = code;
    f.a[0] = a0;
    f.a[1] = a1;
    f.a[2] = a2;
    if (text) {
        if (text_len > sizeof f.text) text_len = sizeof f.text;
        memcpy(f.text, text, text_len);
        f.text_len = (uint32_t)text_len;
    }
    in->findings++;
    return rt_emit(&f, sizeof f);
}

int inspect_open_failed(struct inspect *in)
{
    struct inspect_window *w = inspect_current_window;
    if (w && w->missing != UINT64_MAX) return inspect_finding(in, INSP_INCOMPLETE, w->missing, 0, 0, NULL, 0);
    return inspect_finding(in, INSP_OPEN_FAILED, 0, 0, 0, NULL, 0);
}

static bool starts(const uint8_t *b, const char *m, uint32_t n) { return memcmp(b, m, n) == 0; }

/* format_inspector's text-descriptor test: the first 512 bytes (or the
 * whole file) are printable ASCII or white space, and the text up to the
 * first NUL holds createType="..." (closed within 64 bytes). */
static bool vmdk_text(const struct inspect *in)
{
    uint64_t n = in->size < 512 ? in->size : 512;
    if (n < 4) return false;
    for (uint64_t i = 0; i < n; i++) {
        uint8_t c = in->head[i];
        if (c == 0 && i >= 64) break; /* NUL padding after the text */
        if (!((c >= 0x20 && c < 0x7f) || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f')) return false;
    }
    static const char key[] = "createtype=\"";
    uint64_t lim = in->size < INSPECT_HEAD ? in->size : INSPECT_HEAD;
    for (uint64_t i = 0; i + 12 <= lim && in->head[i]; i++) {
        uint32_t k = 0;
        while (k < 12 && (in->head[i + k] | 0x20) == (uint8_t)key[k]) k++;
        if (k < 12) continue;
        for (uint64_t j = i + 12; j < lim && j < i + 12 + 64 && in->head[j]; j++)
            if (in->head[j] == '"') return true;
        return false;
    }
    return false;
}

uint32_t inspect_detect(const struct inspect *in)
{
    const uint8_t *b = in->head;
    uint32_t m = 0;
    if (in->size == 0) return 0;
    if (be32(b) == 0x514649fbu) m |= 1u << (be32(b + 4) < 2 ? INSPFMT_QCOW1 : INSPFMT_QCOW2);
    if (starts(b, "conectix", 8)) m |= 1u << INSPFMT_VPC;
    if (starts(b, "vhdxfile", 8)) m |= 1u << INSPFMT_VHDX;
    if (starts(b, "KDMV", 4) || starts(b, "COWD", 4) || vmdk_text(in)) m |= 1u << INSPFMT_VMDK;
    if (le32(b + 0x40) == 0xbeda107fu) m |= 1u << INSPFMT_VDI;
    if (starts(b, "QED\0", 4)) m |= 1u << INSPFMT_QED;
    if (starts(b, "LUKS\xba\xbe", 6)) m |= 1u << INSPFMT_LUKS;
    if (in->size >= 32768 + 2048 &&
        (starts(b + 32769, "CD001", 5) || starts(b + 32769, "NSR02", 5) || starts(b + 32769, "NSR03", 5)))
        m |= 1u << INSPFMT_ISO;
    /* format_inspector's GPT inspector: the MBR signature, unless the sector
     * is a FAT volume boot record (two FATs, fixed-disk media byte). */
    if (in->size >= 512 && b[510] == 0x55 && b[511] == 0xaa && !(b[0x10] == 2 && b[0x15] == 0xf8)) {
        bool gpt = false;
        for (int i = 0; i < 4; i++)
            if (b[446 + 16 * i + 4] == 0xee) gpt = true;
        m |= 1u << (gpt ? INSPFMT_GPT : INSPFMT_MBR);
    }
    if (starts(b, "WithoutFreeSpace", 16) || starts(b, "WithouFreSpacExt", 16)) m |= 1u << INSPFMT_PARALLELS;
    if (starts(b, "Bochs Virtual HD Image", 22)) m |= 1u << INSPFMT_BOCHS;
    if (starts(b, "#!/bin/sh\n#V2.0 Format\n", 23)) m |= 1u << INSPFMT_CLOOP;
    if (in->size >= 1024 && starts(in->tail + INSPECT_TAIL - 512, "koly", 4)) m |= 1u << INSPFMT_DMG;
    return m;
}

/* The format the image is, in this order: what qemu probes (qcow2, vpc,
 * vhdx, vmdk), then the formats qemu has drivers for that instar does not
 * read, then the raw contents format_inspector names (iso before gpt/mbr,
 * its one allowed pair). */
static uint32_t primary(uint32_t driver, uint32_t m)
{
    static const uint32_t order[] = {INSPFMT_QCOW1, INSPFMT_LUKS, INSPFMT_QED, INSPFMT_VDI, INSPFMT_PARALLELS,
                                     INSPFMT_BOCHS, INSPFMT_CLOOP, INSPFMT_DMG, INSPFMT_ISO, INSPFMT_GPT, INSPFMT_MBR};
    if (driver == FMT_QCOW2) return INSPFMT_QCOW2;
    if (driver == FMT_VPC) return INSPFMT_VPC;
    if (driver == FMT_VHDX) return INSPFMT_VHDX;
    if (driver == FMT_VMDK) return INSPFMT_VMDK;
    for (uint32_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (m & (1u << order[i])) return order[i];
    return INSPFMT_RAW;
}

/* format_inspector's polyglot rule: more than one format's header is
 * refused, except an ISO with an MBR/GPT in front (a bootable ISO, taken as
 * the ISO). instar counts the headers of the formats its probe knows beyond
 * format_inspector's too (parallels, bochs, cloop, dmg). */
static int multiple(struct inspect *in)
{
    uint32_t all = in->matches;
    uint32_t disk = (1u << INSPFMT_GPT) | (1u << INSPFMT_MBR);
    if ((all & (all - 1)) == 0) return 0;
    if ((all & ~disk) == (1u << INSPFMT_ISO)) return 0;
    return inspect_finding(in, INSP_MULTIPLE_FORMATS, all, 0, 0, NULL, 0);
}

int inspect_run(const struct reader *r)
{
    static struct inspect in;
    memset(&in, 0, sizeof in);
    in.r = r;
    in.size = r->size;
    /* The head and the tail; a stream's window always holds them (the host
     * sends at least INSPECT_HEAD bytes first and INSPECT_TAIL bytes last). */
    if (reader_read(r, 0, in.head, in.size < INSPECT_HEAD ? in.size : INSPECT_HEAD)) {
        if (inspect_open_failed(&in)) return -1;
        goto summary;
    }
    if (in.size >= INSPECT_TAIL) {
        if (reader_read(r, in.size - INSPECT_TAIL, in.tail, INSPECT_TAIL)) {
            if (inspect_open_failed(&in)) return -1;
            goto summary;
        }
    } else {
        memcpy(in.tail + INSPECT_TAIL - in.size, in.head, in.size);
    }
    in.matches = inspect_detect(&in);
    int drv = probe_input(r, FMT_AUTO);
    if (drv < 0) {
        if (inspect_open_failed(&in)) return -1;
        goto summary;
    }
    in.driver = (uint32_t)drv;
    in.format = primary(in.driver, in.matches);
    if (multiple(&in)) return -1;
    int rc = 0;
    switch (in.format) {
    case INSPFMT_QCOW2:
    case INSPFMT_QCOW1:
        rc = inspect_qcow2(&in);
        break;
    case INSPFMT_VMDK:
        rc = inspect_vmdk(&in);
        break;
    case INSPFMT_VPC:
        rc = inspect_vpc(&in);
        break;
    case INSPFMT_VHDX:
        rc = inspect_vhdx(&in);
        break;
    case INSPFMT_GPT:
    case INSPFMT_MBR:
        rc = inspect_mbr(&in);
        break;
    case INSPFMT_LUKS:
        rc = inspect_luks(&in);
        break;
    case INSPFMT_ISO:
        rc = inspect_iso(&in);
        break;
    case INSPFMT_RAW:
        in.virtual_size = in.size;
        in.flags |= INSPF_SIZE_KNOWN;
        break;
    default:
        /* qed (format_inspector bans it), and the formats instar does not read */
        rc = inspect_finding(&in, INSP_UNSUPPORTED_FORMAT, in.format, 0, 0, NULL, 0);
        break;
    }
    if (rc) return -1;
    /* raw contents with another format's signature (a fixed VHD's footer, an
     * ELF binary, ...): what qemu reads as raw, another reader may not */
    uint32_t sig = probe_last_signature;
    if (in.driver == FMT_RAW &&
        (sig == SIG_VMDK || sig == SIG_VPC || sig == SIG_ELF || sig == SIG_QCOW2 || sig == SIG_VHDX)) {
        if (inspect_finding(&in, INSP_RAW_SIGNATURE, sig, 0, 0, NULL, 0)) return -1;
    }
summary:;
    struct inspect_window *w = inspect_current_window;
    struct rec_inspect s;
    rec_init(&s, REC_INSPECT, sizeof s);
    s.format = in.format;
    s.driver = in.driver;
    s.matches = in.matches;
    s.flags = in.flags;
    s.virtual_size = in.virtual_size;
    s.bytes_read = w ? w->bytes_read : 0;
    s.findings = in.findings;
    return rt_emit(&s, sizeof s);
}
