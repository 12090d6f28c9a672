/* Writes and verifies every byte of the heap, up to the end of guest RAM,
 * and reports how much it touched. */
#include "hostile.h"

int op_main(void)
{
    uint64_t end = rt_params()->ram_size;
    for (uint64_t a = LAYOUT_HEAP; a < end; a += 8)
        *(volatile uint64_t *)(uintptr_t)a = a ^ 0x5a5a5a5a5a5a5a5aull;
    for (uint64_t a = LAYOUT_HEAP; a < end; a += 8)
        if (*(volatile uint64_t *)(uintptr_t)a != (a ^ 0x5a5a5a5a5a5a5a5aull))
            return rt_error(0, GERR_INTERNAL, a, 0, 0);
    /* The heap allocator must refuse what does not fit. */
    if (rt_alloc(end) != 0 || rt_calloc(~0ull, 16) != 0)
        return rt_error(0, GERR_INTERNAL, 1, 0, 0);
    rt_error(0, GERR_OUT_OF_MEMORY, end - LAYOUT_HEAP, 0, 0);
    return 0;
}
