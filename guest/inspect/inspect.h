/*
 * instar inspect: an upload gate's checks, in the guest. The op
 * (guest/ops/inspect.c) detects every format header the bytes carry, runs
 * the checks of the format they are, and sends one INSPECT_FINDING record
 * per reason the image is unsafe, then the INSPECT summary. The rules are
 * OpenStack format_inspector's plus instar's own (docs/inspect.md); the host
 * only words them.
 */
#ifndef INSTAR_INSPECT_H
#define INSTAR_INSPECT_H
#include <stdint.h>
#include <stdbool.h>
#include "reader.h"
#include "bytes.h"
#include "../ops/records.h"

/* Bytes of the start every check may look at (ISO's volume descriptor at 32 KiB included). */
#define INSPECT_HEAD 36864u
/* Bytes of the end: a streamOptimized vmdk's footer, a VHD footer, a GPT backup header. */
#define INSPECT_TAIL 1536u
/* A vmdk descriptor longer than this is refused (instar's bound; real ones are < 2 KiB). */
#define INSPECT_DESC_MAX 65536u

/* VMDK_FOOTER a0 (format_inspector's footer check, in its order) */
enum { VMDK_FOOT_SIGNATURE = 1, VMDK_FOOT_VERSION, VMDK_FOOT_DESCRIPTOR, VMDK_FOOT_ANOTHER, VMDK_FOOT_MARKER,
       VMDK_FOOT_EOS };
/* VHDX_REGION_TABLE a0 */
enum { VHDX_RT_SIGNATURE = 1, VHDX_RT_CHECKSUM, VHDX_RT_COUNT, VHDX_RT_COPIES_DIFFER, VHDX_RT_ALIGNMENT,
       VHDX_RT_PAST_END, VHDX_RT_OVERLAP, VHDX_RT_UNKNOWN_REQUIRED, VHDX_RT_DUPLICATE };
/* GPT_HEADER a0 */
enum { GPT_H_SIGNATURE = 1, GPT_H_CHECKSUM, GPT_H_LBA, GPT_H_BACKUP };

/* What every check shares. */
struct inspect {
    const struct reader *r;
    uint64_t size;                 /* the input's size (the whole stream's) */
    uint8_t head[INSPECT_HEAD];    /* zero past the end */
    uint8_t tail[INSPECT_TAIL];    /* the last bytes, right-aligned; zero when the input is shorter */
    uint32_t matches;              /* 1 << INSPFMT_* */
    uint32_t format;               /* INSPFMT_* */
    uint32_t driver;               /* FMT_*: qemu's probe */
    uint32_t signature;            /* SIG_*: the probe's foreign signature */
    uint32_t flags;                /* INSPF_* */
    uint64_t virtual_size;
    uint32_t findings;
};

/* Sends one finding; text (may be NULL) is cut at 256 bytes. -1 if the record could not be sent. */
int inspect_finding(struct inspect *in, uint32_t code, uint64_t a0, uint64_t a1, uint64_t a2, const void *text,
                    uint64_t text_len);

/* Every header format_inspector (and instar) knows, as INSPFMT_ bits, from head and tail. */
uint32_t inspect_detect(const struct inspect *in);

/* Per-format checks: 0, or -1 when a record could not be sent. */
int inspect_qcow2(struct inspect *in);
int inspect_vmdk(struct inspect *in);
int inspect_vpc(struct inspect *in);
int inspect_vhdx(struct inspect *in);
int inspect_mbr(struct inspect *in);   /* gpt and mbr: format_inspector's MBR checks, GPT header */
int inspect_luks(struct inspect *in);
int inspect_iso(struct inspect *in);

/* A finding for an open the parser refused (its ERROR record is already sent),
 * or INCOMPLETE when the read it needed lay outside a stream's window. */
int inspect_open_failed(struct inspect *in);

/* The window reader of a stream (params flag INSPOP_F_STREAM): reads outside
 * [0, prefix) and [tail_start, size) fail and remember the first offset. */
struct inspect_window {
    struct reader inner;
    uint64_t prefix, tail_start;
    uint64_t missing;     /* first offset a failed read wanted; UINT64_MAX none */
    uint64_t bytes_read;
};
void inspect_window_init(struct inspect_window *w, struct reader *out, const struct reader *inner, bool stream,
                         uint64_t prefix, uint64_t tail_start);
/* Runs every check over r (the whole op, fuzz targets included): findings, then the summary. */
int inspect_run(const struct reader *r);
/* The window the op reads through (inspect_open_failed asks it). */
extern struct inspect_window *inspect_current_window;
#endif
