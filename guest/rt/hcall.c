/*
 * Hypercall stubs: fill `struct hcall` at LAYOUT_HCALL, then `out` to
 * HC_PORT (allowed at CPL3 because the VMM sets IOPL 3). The VMM serves the
 * call while the vCPU is stopped and writes hcall.ret.
 */
#include "rt.h"

static int64_t hcall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3)
{
    volatile struct hcall *h = (volatile struct hcall *)(uintptr_t)LAYOUT_HCALL;
    h->nr = nr;
    h->a0 = a0;
    h->a1 = a1;
    h->a2 = a2;
    h->a3 = a3;
    h->ret = 0;
    __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"((uint16_t)HC_PORT) : "memory");
    return h->ret;
}

int64_t hc_read(uint32_t input, uint64_t off, uint64_t len, void *buf)
{
    uint8_t *p = buf;
    uint64_t done = 0;
    while (done < len) {
        uint64_t n = len - done;
        if (n > LIMIT_IO_MAX)
            n = LIMIT_IO_MAX;
        int64_t r = hcall(HC_READ, input, off + done, n, (uint64_t)(uintptr_t)(p + done));
        if (r < 0)
            return r;
        done += n;
    }
    return (int64_t)len;
}

int64_t hc_write(uint64_t off, uint64_t len, const void *buf)
{
    const uint8_t *p = buf;
    uint64_t done = 0;
    while (done < len) {
        uint64_t n = len - done;
        if (n > LIMIT_IO_MAX)
            n = LIMIT_IO_MAX;
        int64_t r = hcall(HC_WRITE, 0, off + done, n, (uint64_t)(uintptr_t)(p + done));
        if (r < 0)
            return r;
        done += n;
    }
    return (int64_t)len;
}

int64_t hc_seek(uint32_t input, uint64_t off, uint32_t kind)
{
    return hcall(HC_SEEK, input, off, kind, 0);
}

void hc_progress(uint64_t done, uint64_t total)
{
    hcall(HC_PROGRESS, done, total, 0, 0);
}

void hc_log(const char *s)
{
    hcall(HC_LOG, (uint64_t)(uintptr_t)s, strlen(s), 0, 0);
}

/* Used by rt_flush. */
int64_t rt_hc_result(const void *buf, uint64_t len)
{
    return hcall(HC_RESULT, (uint64_t)(uintptr_t)buf, len, 0, 0);
}

_Noreturn void hc_done(uint64_t status)
{
    for (;;) {
        hcall(HC_DONE, status, 0, 0, 0);
        /* The VMM never resumes a finished guest; crash if it somehow does. */
        __asm__ volatile("ud2");
    }
}

int64_t hc_readv(uint32_t input, const struct io_seg *segs, uint32_t n)
{
    return hcall(HC_READV, input, (uint64_t)(uintptr_t)segs, n, 0);
}

int64_t hc_writev(const struct io_seg *segs, uint32_t n)
{
    return hcall(HC_WRITEV, 0, (uint64_t)(uintptr_t)segs, n, 0);
}

int64_t hc_extents(uint32_t input, uint64_t off, uint64_t len, struct extent *out)
{
    return hcall(HC_EXTENTS, input, off, len, (uint64_t)(uintptr_t)out);
}
