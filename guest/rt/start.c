/*
 * C start: checks the host's parameter block, runs the operation program,
 * flushes buffered records and ends the run.
 */
#include "rt.h"

void rt_start(void);

const struct params *rt_params(void)
{
    return (const struct params *)(uintptr_t)LAYOUT_PARAMS;
}

const struct input_entry *rt_input(uint32_t i)
{
    return (const struct input_entry *)(uintptr_t)LAYOUT_INPUTS + i;
}

/* The input table must end below the stack. */
_Static_assert(LAYOUT_INPUTS + LIMIT_MAX_INPUTS * sizeof(struct input_entry) <= LAYOUT_STACK_BOTTOM, "input table");

void rt_heap_init(uint64_t end);

void rt_start(void)
{
    const struct params *p = rt_params();
    if (p->magic != PARAMS_MAGIC || p->abi_version != ABI_VERSION || p->n_inputs > LIMIT_MAX_INPUTS ||
        p->ram_size < LIMIT_RAM_MIN || p->ram_size > LIMIT_RAM_MAX) {
        rt_error(0, GERR_BAD_PARAMS, p->magic, p->abi_version, p->n_inputs);
        rt_flush();
        hc_done(GUEST_ERROR);
    }
    rt_heap_init(p->ram_size);
    int rc = op_main();
    rt_flush();
    hc_done(rc == 0 ? GUEST_OK : GUEST_ERROR);
}
