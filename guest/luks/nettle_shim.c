/*
 * What Debian's libnettle.a (a "fat" build: it picks AES-NI / SHA-NI code
 * at the first call, from CPUID) asks of a C library, for the freestanding
 * guest: no environment (NETTLE_FAT_OVERRIDE and NETTLE_FAT_VERBOSE are
 * never set, so the CPU decides), no stdio (verbose output is never asked
 * for), and an assertion failure is a guest crash.
 */
#include "rt.h"

char *getenv(const char *name);
char *secure_getenv(const char *name);
char *strchr(const char *s, int c);
unsigned long fwrite(const void *p, unsigned long size, unsigned long n, void *f);
int __fprintf_chk(void *f, int flag, const char *fmt, ...);
_Noreturn void __assert_fail(const char *expr, const char *file, unsigned line, const char *fn);

void *stderr;

char *getenv(const char *name)
{
    (void)name;
    return NULL;
}

char *secure_getenv(const char *name)
{
    (void)name;
    return NULL;
}

char *strchr(const char *s, int c)
{
    for (;; s++) {
        if (*s == (char)c) return (char *)s;
        if (!*s) return NULL;
    }
}

unsigned long fwrite(const void *p, unsigned long size, unsigned long n, void *f)
{
    (void)p, (void)size, (void)f;
    return n;
}

int __fprintf_chk(void *f, int flag, const char *fmt, ...)
{
    (void)f, (void)flag, (void)fmt;
    return 0;
}

_Noreturn void __assert_fail(const char *expr, const char *file, unsigned line, const char *fn)
{
    (void)expr, (void)file, (void)line, (void)fn;
    for (;;)
        __asm__ volatile("ud2");
}
