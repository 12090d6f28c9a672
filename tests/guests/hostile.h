/* Raw hypercall for the test-only guests: lets them send arguments the real
 * runtime (guest/rt) would never produce. */
#ifndef INSTAR_TEST_HOSTILE_H
#define INSTAR_TEST_HOSTILE_H
#include "rt.h"

static inline int64_t raw_hcall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3)
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

static inline uint64_t arg(int i)
{
    return rt_params()->arg[i];
}
#endif
