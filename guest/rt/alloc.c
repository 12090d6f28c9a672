/*
 * Bump allocator over [LAYOUT_HEAP, ram_size), plus the malloc family that
 * Debian's static zlib/zstd call. Never aborts: NULL on exhaustion or size
 * overflow, and callers report GERR_OUT_OF_MEMORY.
 */
#include "rt.h"

static uint64_t heap_top = LAYOUT_HEAP;
static uint64_t heap_end = LAYOUT_HEAP;
static uint64_t last_block; /* start of the most recent allocation, 0 if none */
static uint64_t last_prev;  /* heap_top before it */

void rt_heap_init(uint64_t end)
{
    heap_top = LAYOUT_HEAP;
    heap_end = end > LAYOUT_HEAP ? end : LAYOUT_HEAP;
    last_block = 0;
}

void *rt_alloc(uint64_t size)
{
    uint64_t start = (heap_top + 15) & ~15ull;
    uint64_t end;
    if (size == 0)
        size = 1;
    if (start < heap_top || __builtin_add_overflow(start, size, &end) || end > heap_end)
        return 0;
    last_prev = heap_top;
    last_block = start;
    heap_top = end;
    return (void *)(uintptr_t)start;
}

void rt_free(void *p)
{
    if (p && (uint64_t)(uintptr_t)p == last_block) {
        heap_top = last_prev;
        last_block = 0;
    }
}

uint64_t rt_heap_mark(void)
{
    return heap_top;
}

void rt_heap_release(uint64_t mark)
{
    if (mark >= LAYOUT_HEAP && mark <= heap_top) {
        heap_top = mark;
        last_block = 0;
    }
}

/* C library names for the static libraries. */
void *malloc(unsigned long size)
{
    return rt_alloc(size);
}

void *calloc(unsigned long n, unsigned long size)
{
    return rt_calloc(n, size);
}

void free(void *p)
{
    rt_free(p);
}
