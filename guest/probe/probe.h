/* Format probing (qemu's find_image_format for raw/qcow2) and detection of
 * other formats' signatures, so the host can refuse polyglots and format
 * confusion. */
#ifndef INSTAR_PROBE_H
#define INSTAR_PROBE_H
#include "reader.h"

/* Resolves `requested` (FMT_AUTO/RAW/QCOW2) for reader r, emits a PROBE
 * record and returns the format (FMT_RAW or FMT_QCOW2), or -1 on I/O error. */
int probe_input(const struct reader *r, uint32_t requested);

/* The signature the last probe_input found (SIG_*), for inspect. */
extern uint32_t probe_last_signature;

/* Partition table kind of a raw image (PART_*), or -1 on I/O error. */
int raw_partition_kind(const struct reader *r);

/* Emits RAW_INFO for reader r. */
int raw_emit_info(const struct reader *r);
#endif
