/*
 * Runtime functions built only on each runtime's primitives (rt_emit,
 * rt_alloc), so one definition serves the VM guest (rt/records.c,
 * rt/alloc.c), the hosted test build (guest/host/rt_host.c) and the fuzz
 * shim (fuzz/shim/rt_fuzz.c).
 */
#include "rt.h"

int rt_error(uint32_t input, uint32_t code, uint64_t a0, uint64_t a1, uint64_t a2)
{
    struct rec_error r;
    memset(&r, 0, sizeof r);
    struct rec_header h = { .type = REC_ERROR, .size = sizeof r };
    memcpy(r.hdr, &h, sizeof h);
    r.code = code;
    r.input = input;
    r.a0 = a0;
    r.a1 = a1;
    r.a2 = a2;
    rt_emit(&r, sizeof r);
    return -1;
}

void *rt_calloc(uint64_t n, uint64_t size)
{
    uint64_t total;
    if (__builtin_mul_overflow(n, size, &total))
        return 0;
    void *p = rt_alloc(total);
    /* Fresh heap memory may have been used and released before. */
    if (p)
        memset(p, 0, total);
    return p;
}
