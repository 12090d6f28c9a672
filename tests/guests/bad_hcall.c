/* Hypercalls with hostile arguments, chosen by arg[0]. Each must end the
 * run with a typed status; none may touch host memory or other files. */
#include "hostile.h"

static struct io_seg segs[LIMIT_IO_SEGS_MAX + 1];

int op_main(void)
{
    const struct params *p = rt_params();
    uint64_t ram = p->ram_size;
    uint64_t size = p->n_inputs ? p->input_size[0] : 0;
    switch (arg(0)) {
    case 0: /* READ into a buffer just past guest RAM */
        raw_hcall(HC_READ, 0, 0, 8, ram - 4);
        break;
    case 1: /* RESULT with a range that wraps around the address space */
        raw_hcall(HC_RESULT, 0xfffffffffffff000ull, 0x2000, 0, 0);
        break;
    case 2: /* READ past the end of the input */
        raw_hcall(HC_READ, 0, size - 4, 8, LAYOUT_HEAP);
        break;
    case 3: /* READ into the page tables (below LAYOUT_SYS_END) */
        raw_hcall(HC_READ, 0, 0, 8, LAYOUT_PML4);
        break;
    case 4: /* WRITE past the output cap */
        raw_hcall(HC_WRITE, 0, p->output_cap - 4, 8, LAYOUT_HEAP);
        break;
    case 5: /* unknown hypercall number */
        raw_hcall(0x1234, 0, 0, 0, 0);
        break;
    case 6: /* READ from an input that was never attached */
        raw_hcall(HC_READ, 7, 0, 8, LAYOUT_HEAP);
        break;
    case 7: /* READ longer than LIMIT_IO_MAX */
        raw_hcall(HC_READ, 0, 0, LIMIT_IO_MAX + 1, LAYOUT_HEAP);
        break;
    case 8: /* LOG from a wrapping address */
        raw_hcall(HC_LOG, ~0ull, 2, 0, 0);
        break;
    case 9: /* SEEK past the end of the input */
        raw_hcall(HC_SEEK, 0, size, SEEK_KIND_DATA, 0);
        break;
    case 10: /* READ whose offset+len wraps */
        raw_hcall(HC_READ, 0, ~0ull - 2, 8, LAYOUT_HEAP);
        break;
    case 11: /* WRITE with no output attached, or a wrapping file offset */
        raw_hcall(HC_WRITE, 0, ~0ull - 2, 8, LAYOUT_HEAP);
        break;
    case 12: /* READV whose segment list lies in the page tables */
        raw_hcall(HC_READV, 0, LAYOUT_PML4, 1, 0);
        break;
    case 13: /* READV of zero segments */
        raw_hcall(HC_READV, 0, (uint64_t)(uintptr_t)segs, 0, 0);
        break;
    case 14: /* READV with one good segment, then one past the input's end */
        segs[0] = (struct io_seg){.off = 0, .len = 8, .addr = LAYOUT_HEAP};
        segs[1] = (struct io_seg){.off = size - 4, .len = 8, .addr = LAYOUT_HEAP + 64};
        raw_hcall(HC_READV, 0, (uint64_t)(uintptr_t)segs, 2, 0);
        break;
    case 15: /* READV whose lengths add up past LIMIT_IO_MAX (and wrap) */
        segs[0] = (struct io_seg){.off = 0, .len = LIMIT_IO_MAX, .addr = LAYOUT_HEAP};
        segs[1] = (struct io_seg){.off = 0, .len = ~0ull - LIMIT_IO_MAX + 2, .addr = LAYOUT_HEAP};
        raw_hcall(HC_READV, 0, (uint64_t)(uintptr_t)segs, 2, 0);
        break;
    case 16: /* WRITEV with a segment past the output cap */
        segs[0] = (struct io_seg){.off = p->output_cap - 4, .len = 8, .addr = LAYOUT_HEAP};
        raw_hcall(HC_WRITEV, 0, (uint64_t)(uintptr_t)segs, 1, 0);
        break;
    case 17: /* READV into the page tables */
        segs[0] = (struct io_seg){.off = 0, .len = 8, .addr = LAYOUT_PML4};
        raw_hcall(HC_READV, 0, (uint64_t)(uintptr_t)segs, 1, 0);
        break;
    case 18: /* EXTENTS into a buffer past guest RAM */
        raw_hcall(HC_EXTENTS, 0, 0, size, ram - 16);
        break;
    case 19: /* EXTENTS of a range past the input's end */
        raw_hcall(HC_EXTENTS, 0, 0, size + 1, LAYOUT_HEAP);
        break;
    case 20: /* READV of more segments than LIMIT_IO_SEGS_MAX */
        for (uint32_t i = 0; i <= LIMIT_IO_SEGS_MAX; i++)
            segs[i] = (struct io_seg){.off = 0, .len = 1, .addr = LAYOUT_HEAP};
        raw_hcall(HC_READV, 0, (uint64_t)(uintptr_t)segs, LIMIT_IO_SEGS_MAX + 1, 0);
        break;
    }
    /* Only reached if the VMM served the call: say so loudly. */
    rt_error(0, GERR_INTERNAL, 0xbad, 0, 0);
    return 0;
}
