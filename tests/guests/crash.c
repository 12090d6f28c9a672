/* Ways for a guest to crash, chosen by arg[0]. */
#include "hostile.h"

int op_main(void)
{
    switch (arg(0)) {
    case 0: /* jump to page 0, which is not mapped */
        ((void (*)(void))(uintptr_t)0x10)();
        break;
    case 1:
        __asm__ volatile("ud2");
        break;
    case 2: /* read above guest RAM: no page-table entry */
        (void)*(volatile uint64_t *)(uintptr_t)0x80000000ull;
        break;
    case 3: /* hlt is privileged at CPL3 */
        __asm__ volatile("hlt");
        break;
    case 4: { /* rewrite our own page tables to reach guest-physical memory
               * outside RAM: the tables are mapped read-only, so this
               * faults (were they writable, the access would be an MMIO
               * exit, still ending the run) */
        volatile uint64_t *pd = (volatile uint64_t *)(uintptr_t)LAYOUT_PD;
        pd[511] = 0x100000000ull | 0x87; /* never used before: no stale TLB entry */
        (void)*(volatile uint64_t *)(uintptr_t)(511ull << 21);
        break;
    }
    case 5: /* `out` to a port other than HC_PORT (the TSS I/O bitmap
             * refuses it on PVM; with IOPL 3 on VMX/SVM it exits) */
        __asm__ volatile("outb %%al, %%dx" : : "a"(0), "d"((uint16_t)0x80));
        break;
    case 6: /* `in` from the hypercall port */
    {
        uint8_t v;
        __asm__ volatile("inb %%dx, %%al" : "=a"(v) : "d"((uint16_t)HC_PORT));
        (void)v;
        break;
    }
    case 7: { /* smash the stack: the canary check must crash the guest */
        volatile uint8_t buf[16];
        for (volatile int i = 0; i < 64; i++)
            buf[i % 64] = 0x41;
        (void)buf;
        break;
    }
    case 8: { /* stack overflow: recurse through the guard at STACK_BOTTOM */
        volatile uint8_t *sp = (volatile uint8_t *)(uintptr_t)(LAYOUT_STACK_BOTTOM - 0x1000);
        (void)sp;
        for (uint64_t a = LAYOUT_STACK_TOP; ; a -= 4096)
            *(volatile uint8_t *)(uintptr_t)a = 0; /* walks down to page 0 */
        break;
    }
    case 9: { /* execute from the heap, which is mapped no-execute */
        uint8_t *code = rt_alloc(16);
        code[0] = 0xc3; /* ret */
        ((void (*)(void))(uintptr_t)code)();
        break;
    }
    case 10: /* execute from the stack */
    {
        volatile uint8_t code[16];
        code[0] = 0xc3;
        ((void (*)(void))(uintptr_t)code)();
        break;
    }
    }
    rt_error(0, GERR_INTERNAL, 0xbad, 0, 0);
    return 0;
}
