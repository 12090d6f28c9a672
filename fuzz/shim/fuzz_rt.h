/*
 * The fuzz runtime: guest/include/rt.h implemented over one memory buffer
 * (input 0), so the real guest parsers and operation programs run inside a
 * fuzz target unchanged. Each rt_alloc is its own malloc, so
 * AddressSanitizer puts redzones around every parser allocation (the guest's
 * bump allocator would let an overflow run silently into the neighbour).
 */
#ifndef INSTAR_FUZZ_RT_H
#define INSTAR_FUZZ_RT_H
#include <stddef.h>
#include <stdint.h>

/* Attaches data[0, size) as input 0 with the given FMT_* and resets the
 * heap; op programs then see it through rt_params()/hc_read. */
void fuzz_rt_begin(const uint8_t *data, size_t size, uint32_t format);
/* The same with input 0 read through r (size r->size): a target that
 * expands a compact input into a sparse virtual file (fuzz/shim/vhdx_sparse.h)
 * lets op code and the chain opener read it with hc_read. r must stay valid
 * until the next fuzz_rt_begin*. */
struct reader;
void fuzz_rt_begin_reader(const struct reader *r, uint32_t format);
/* Attaches an output of `cap` bytes until the next fuzz_rt_begin*: writes
 * inside it succeed (the bytes are dropped), any past it abort. */
void fuzz_rt_allow_writes(uint64_t cap);
/* Frees every allocation made since fuzz_rt_begin. */
void fuzz_rt_end(void);
/* Records emitted since fuzz_rt_begin (checked for shape, then dropped). */
uint64_t fuzz_rt_records(void);

/* A bug the VMM would stop the run for (a read outside the input, a
 * malformed record): report it and abort so the engine saves the input. */
_Noreturn void fuzz_rt_fail(const char *what, uint64_t a, uint64_t b);
#endif
