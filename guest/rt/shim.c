/*
 * The minimal C library the parsers and Debian's static zlib/zstd need.
 * memcpy/memset use `rep movsb` / `rep stosb` (fast on current CPUs, and a
 * plain C loop could be turned back into a call to itself by the compiler).
 */
#include "rt.h"

void *memcpy(void *d, const void *s, unsigned long n)
{
    void *ret = d;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return ret;
}

void *memmove(void *d, const void *s, unsigned long n)
{
    uint8_t *dp = d;
    const uint8_t *sp = s;
    if (dp <= sp || dp >= sp + n)
        return memcpy(d, s, n);
    /* Overlapping with d after s: copy backwards. */
    dp += n - 1;
    sp += n - 1;
    __asm__ volatile("std\n\trep movsb\n\tcld" : "+D"(dp), "+S"(sp), "+c"(n) : : "memory");
    return d;
}

void *memset(void *d, int c, unsigned long n)
{
    void *ret = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return ret;
}

int memcmp(const void *a, const void *b, unsigned long n)
{
    const uint8_t *x = a, *y = b;
    for (unsigned long i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

unsigned long strlen(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

/* A smashed stack or an abort in a library: crash, so the host sees a
 * guest fault rather than a result. */
_Noreturn void __stack_chk_fail(void)
{
    for (;;)
        __asm__ volatile("ud2");
}

_Noreturn void abort(void)
{
    for (;;)
        __asm__ volatile("ud2");
}
