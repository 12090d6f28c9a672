/*
 * The guest runtime's interface: what an operation program may call.
 *
 * Two implementations exist:
 *   guest/rt/   the real one: freestanding, CPL3 inside the KVM guest, every
 *               call below is at most one hypercall (an `out` to HC_PORT);
 *   guest/host/ a hosted one (INSTAR_HOSTED) over plain files, used by unit
 *               tests and by the fuzz targets, so parsers run the same code
 *               in both places.
 *
 * An operation program defines `int op_main(void)`; the runtime calls it,
 * flushes buffered records and ends the run with hc_done(GUEST_OK) when it
 * returns 0 and hc_done(GUEST_ERROR) otherwise.
 */
#ifndef INSTAR_RT_H
#define INSTAR_RT_H
#include "abi.h"

/* The parameter block the host wrote (read-only by convention). */
const struct params *rt_params(void);
/* Attached input i's entry (size, alloc, format, snapshot); i < n_inputs. */
const struct input_entry *rt_input(uint32_t i);

/* Reads [off, off+len) of input `input` into buf. The VMM ends the run if the
 * range leaves the input, so callers check against rt_params()->input_size
 * first (reader.h does; it zero-fills past EOF like qemu's file driver).
 * Large reads are split into hypercalls of at most LIMIT_IO_MAX bytes.
 * Returns len on success or a negative hcErrors value. */
int64_t hc_read(uint32_t input, uint64_t off, uint64_t len, void *buf);

/* Writes to output 0. Returns len or a negative value. */
int64_t hc_write(uint64_t off, uint64_t len, const void *buf);

/* Next data (SEEK_KIND_DATA) or hole (SEEK_KIND_HOLE) offset >= off in the
 * input's host file; input size if none. Used where qemu reports host-file
 * holes as zeroes (raw map, preallocated qcow2 clusters). */
int64_t hc_seek(uint32_t input, uint64_t off, uint32_t kind);

/* Many reads of one input / writes to output 0 in one exit: n <= LIMIT_IO_SEGS_MAX
 * segments, summed length <= LIMIT_IO_MAX, each checked like hc_read/hc_write.
 * Returns the total length or a negative value. */
int64_t hc_readv(uint32_t input, const struct io_seg *segs, uint32_t n);
int64_t hc_writev(const struct io_seg *segs, uint32_t n);

/* The data extents of the input's host file inside [off, off+len) (which must
 * lie inside the input), up to LIMIT_EXTENTS_MAX into out; returns how many.
 * LIMIT_EXTENTS_MAX means there may be more after the last one. */
int64_t hc_extents(uint32_t input, uint64_t off, uint64_t len, struct extent *out);

void hc_progress(uint64_t done, uint64_t total);

/* Debug text; the host shows it only with INSTAR_DEBUG set. */
void hc_log(const char *s);

_Noreturn void hc_done(uint64_t status);

/* Appends one record (header included, size a multiple of 8, <= LIMIT_RECORD_MAX)
 * to the staging buffer; flushes with HC_RESULT when it is full.
 * Returns 0, or -1 if the record is malformed. */
int rt_emit(const void *rec, uint32_t size);
void rt_flush(void);

/* Convenience: emit an ERROR record for input `input`. Always returns -1 so
 * callers can `return rt_error(...)`. */
int rt_error(uint32_t input, uint32_t code, uint64_t a0, uint64_t a1, uint64_t a2);

/* Bump allocator over the heap (16-byte aligned). NULL when exhausted or on
 * size overflow; never aborts. rt_free is a no-op except for the most recent
 * allocation. mark/release drop everything allocated after the mark. */
void *rt_alloc(uint64_t size);
void *rt_calloc(uint64_t n, uint64_t size);
void rt_free(void *p);
uint64_t rt_heap_mark(void);
void rt_heap_release(uint64_t mark);

/* Minimal libc for the parsers and Debian's static zlib/zstd. */
void *memcpy(void *d, const void *s, unsigned long n);
void *memmove(void *d, const void *s, unsigned long n);
void *memset(void *d, int c, unsigned long n);
int memcmp(const void *a, const void *b, unsigned long n);
unsigned long strlen(const char *s);

/* The operation program's entry point. */
int op_main(void);

#endif
