/*
 * Guest memory and vCPU setup (see architecture.md §3). The guest starts
 * directly in 64-bit user mode (CPL3): on this host's PVM hypervisor CPL0
 * code is emulated thousands of times slower, while CPL3 runs natively.
 * There is no IDT: any fault ends the VM as a shutdown, which the run loop
 * reports as a guest crash.
 */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>

#include "vmm_internal.h"

#define PTE_P 0x1ull
#define PTE_RW 0x2ull
#define PTE_US 0x4ull
#define PTE_PS 0x80ull
#define PTE_NX (1ull << 63)
#define PAGE_2M 0x200000ull

#define SEL_CODE3 0x1b /* GDT entry 3, RPL 3 */
#define SEL_DATA3 0x23 /* GDT entry 4, RPL 3 */
#define SEL_TSS 0x28   /* GDT entries 5-6 (a 16-byte system descriptor) */
#define TSS_BASE ((uint64_t)LAYOUT_GDT + 0x800)
#define TSS_SIZE (0x68ull + 8192 + 1)

static int put_u64(struct vm *vm, uint64_t gpa, uint64_t v)
{
    uint8_t *p = mem_at(vm, gpa, 8, MEM_SETUP);
    if (!p)
        return -1;
    memcpy(p, &v, 8);
    return 0;
}

/* Identity map [0, ram_size): 4 KiB pages for the first 2 MiB (page 0 left
 * out, so a NULL dereference faults) and 2 MiB pages above. Every entry has
 * U/S set because the guest runs at CPL3. */
int setup_memory(struct vm *vm)
{
    const uint64_t flags = PTE_P | PTE_RW | PTE_US;
    uint64_t n_pd = (vm->ram_size + (1ull << 30) - 1) >> 30;
    if (n_pd > 4)
        return -1;
    if (put_u64(vm, LAYOUT_PML4, LAYOUT_PDPT | flags))
        return -1;
    for (uint64_t i = 0; i < n_pd; i++)
        if (put_u64(vm, LAYOUT_PDPT + 8 * i, (LAYOUT_PD + 0x1000 * i) | flags))
            return -1;
    if (put_u64(vm, LAYOUT_PD, LAYOUT_PT0 | flags))
        return -1;
    /* Only the code region is executable (EFER.NXE is set): stack, heap,
     * result staging and everything the guest reads from its inputs are
     * not. */
    for (uint64_t a = PAGE_2M; a < vm->ram_size; a += PAGE_2M) {
        uint64_t nx = (a >= LAYOUT_CODE && a < LAYOUT_CODE_END) ? 0 : PTE_NX;
        if (put_u64(vm, LAYOUT_PD + 8 * (a / PAGE_2M), a | flags | PTE_PS | nx))
            return -1;
    }
    /* Below SYS_END (page tables, GDT, TSS) the guest may read but not
     * write: it cannot remap itself or reopen I/O ports. */
    for (uint64_t pg = 1; pg < 512; pg++) {
        uint64_t f = (pg << 12) < LAYOUT_SYS_END ? (PTE_P | PTE_US) : flags;
        if (put_u64(vm, LAYOUT_PT0 + 8 * pg, (pg << 12) | f | PTE_NX))
            return -1;
    }

    /* GDT: null, ring-0 code/data (unused but conventional), ring-3 code
     * (L=1) and data, then a 64-bit TSS descriptor so TR is valid. */
    const uint64_t gdt[5] = {
        0,
        0x00af9b000000ffffull, /* 0x08: code, DPL0, L */
        0x00cf93000000ffffull, /* 0x10: data, DPL0 */
        0x00affb000000ffffull, /* 0x18: code, DPL3, L */
        0x00cff3000000ffffull, /* 0x20: data, DPL3 */
    };
    for (int i = 0; i < 5; i++)
        if (put_u64(vm, LAYOUT_GDT + 8 * (uint64_t)i, gdt[i]))
            return -1;
    /* 64-bit TSS with an I/O permission bitmap that opens only HC_PORT:
     * some hypervisors (PVM) do not honour RFLAGS.IOPL for a CPL3 guest
     * and check the bitmap instead. */
    uint8_t *tss = mem_at(vm, TSS_BASE, TSS_SIZE, MEM_SETUP);
    if (!tss)
        return -1;
    memset(tss, 0, 0x68);
    tss[0x66] = 0x68;
    tss[0x67] = 0;
    memset(tss + 0x68, 0xff, 8192 + 1);
    tss[0x68 + HC_PORT / 8] &= (uint8_t)~(1u << (HC_PORT % 8));
    uint64_t tss_lo = (TSS_SIZE - 1) | ((TSS_BASE & 0xffffffull) << 16) | (0x8bull << 40) |
                      (((TSS_BASE >> 24) & 0xffull) << 56);
    if (put_u64(vm, LAYOUT_GDT + 0x28, tss_lo) || put_u64(vm, LAYOUT_GDT + 0x30, TSS_BASE >> 32))
        return -1;

    /* Stack-protector canary at %fs:0x28 for code such as Debian's static
     * zlib/zstd that was compiled with -fstack-protector. */
    uint64_t canary = 0;
    if (getrandom(&canary, sizeof canary, 0) != (ssize_t)sizeof canary)
        canary = now_ns() * 0x9e3779b97f4a7c15ull;
    canary &= ~0xffull; /* a zero low byte stops string overreads, as glibc does */
    return put_u64(vm, LAYOUT_TLS + 0x28, canary);
}

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, uint8_t l, uint8_t db)
{
    memset(s, 0, sizeof *s);
    s->base = 0;
    s->limit = 0xffffffff;
    s->selector = sel;
    s->type = type;
    s->present = 1;
    s->dpl = 3;
    s->db = db;
    s->s = 1;
    s->l = l;
    s->g = 1;
}

int setup_vcpu(struct vm *vm)
{
    const struct kvm_cpuid2 *cpuid = kvm_cpuid_get();
    if (!cpuid)
        return -1;
    if (ioctl(vm->vcpu_fd, KVM_SET_CPUID2, cpuid) < 0)
        return -1;

    struct kvm_sregs sr;
    if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &sr) < 0)
        return -1;
    seg(&sr.cs, SEL_CODE3, 0xb, 1, 0);
    seg(&sr.ds, SEL_DATA3, 0x3, 0, 1);
    sr.es = sr.ds;
    sr.ss = sr.ds;
    sr.fs = sr.ds;
    sr.gs = sr.ds;
    sr.fs.base = LAYOUT_TLS;
    memset(&sr.tr, 0, sizeof sr.tr);
    sr.tr.base = TSS_BASE;
    sr.tr.limit = (uint32_t)(TSS_SIZE - 1);
    sr.tr.selector = SEL_TSS;
    sr.tr.type = 0xb; /* busy 64-bit TSS */
    sr.tr.present = 1;
    memset(&sr.ldt, 0, sizeof sr.ldt);
    sr.ldt.unusable = 1;
    sr.ldt.type = 2;
    sr.gdt.base = LAYOUT_GDT;
    sr.gdt.limit = 7 * 8 - 1;
    sr.idt.base = 0;
    sr.idt.limit = 0;
    sr.cr0 = 0x80010023ull; /* PG WP NE MP PE */
    sr.cr3 = LAYOUT_PML4;
    sr.cr4 = 0x40620ull; /* OSXSAVE OSXMMEXCPT OSFXSR PAE */
    sr.efer = 0xd00ull;  /* NXE LMA LME */
    if (ioctl(vm->vcpu_fd, KVM_SET_SREGS, &sr) < 0)
        return -1;

    struct kvm_xcrs xcrs;
    memset(&xcrs, 0, sizeof xcrs);
    xcrs.nr_xcrs = 1;
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = 7; /* x87 SSE AVX */
    if (ioctl(vm->vcpu_fd, KVM_SET_XCRS, &xcrs) < 0)
        return -1;

    struct kvm_regs r;
    memset(&r, 0, sizeof r);
    r.rip = LAYOUT_CODE;
    r.rsp = LAYOUT_STACK_TOP;
    /* IOPL 3 lets CPL3 use `out` on VMX/SVM; PVM ignores IOPL for the guest
     * and consults the TSS I/O bitmap, which opens HC_PORT only. */
    r.rflags = 0x3002;
    if (ioctl(vm->vcpu_fd, KVM_SET_REGS, &r) < 0)
        return -1;
    return 0;
}
