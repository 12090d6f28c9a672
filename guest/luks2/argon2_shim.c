/*
 * What Debian's libargon2.a asks of a C library, for the freestanding
 * guest: threads (never started: guest/luks2/crypto.c runs Argon2 with one
 * thread, so these only report failure), strncmp and __sprintf_chk (the
 * encoded-hash helpers, never called). Memory comes through the
 * allocate/free callbacks crypto.c passes, not malloc.
 */
#include "rt.h"

int pthread_create(void *t, const void *attr, void *(*fn)(void *), void *arg);
int pthread_join(unsigned long t, void **ret);
_Noreturn void pthread_exit(void *ret);
int strncmp(const char *a, const char *b, unsigned long n);
int __sprintf_chk(char *s, int flag, unsigned long len, const char *fmt, ...);

int pthread_create(void *t, const void *attr, void *(*fn)(void *), void *arg)
{
    (void)t, (void)attr, (void)fn, (void)arg;
    return 1;
}

int pthread_join(unsigned long t, void **ret)
{
    (void)t, (void)ret;
    return 1;
}

_Noreturn void pthread_exit(void *ret)
{
    (void)ret;
    for (;;)
        __asm__ volatile("ud2");
}

int strncmp(const char *a, const char *b, unsigned long n)
{
    for (unsigned long i = 0; i < n; i++) {
        if (a[i] != b[i]) return (unsigned char)a[i] < (unsigned char)b[i] ? -1 : 1;
        if (!a[i]) return 0;
    }
    return 0;
}

int __sprintf_chk(char *s, int flag, unsigned long len, const char *fmt, ...)
{
    (void)flag, (void)fmt;
    if (len) s[0] = 0;
    return 0;
}
