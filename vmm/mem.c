/*
 * The one checked guest-memory accessor. Every guest address the VMM uses
 * goes through mem_at(): hypercall blocks, READ/WRITE buffers, result and log
 * ranges, and the VMM's own setup writes.
 *
 * Guest-supplied ranges (MEM_GUEST) must lie inside [LAYOUT_SYS_END,
 * ram_size): the page tables, GDT and everything else below SYS_END belong
 * to the VMM, so a READ cannot be aimed at them. Only the VMM's own setup
 * (MEM_SETUP) may touch [0, SYS_END).
 */
#include "vmm_internal.h"

void *mem_at(struct vm *vm, uint64_t gpa, uint64_t len, enum mem_scope scope)
{
    uint64_t end;
    if (__builtin_add_overflow(gpa, len, &end))
        return NULL;
    if (end > vm->ram_size)
        return NULL;
    if (scope == MEM_GUEST && gpa < LAYOUT_SYS_END)
        return NULL;
    return vm->ram + gpa;
}
