/*
 * Internal state of one VM. A VM is single-use: create, load, params,
 * attach, run, destroy. Nothing in vmm/ interprets image bytes; it moves
 * them between attached files and guest memory under fixed bounds.
 */
#ifndef INSTAR_VMM_INTERNAL_H
#define INSTAR_VMM_INTERNAL_H
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <linux/kvm.h>

#include "../guest/include/abi.h"

#define VMM_EXPORT __attribute__((visibility("default")))

struct vmm_input {
    int fd;
    uint64_t size;
};

struct vm {
    int vm_fd;
    int vcpu_fd;
    uint8_t *ram;
    uint64_t ram_size;
    struct kvm_run *run;
    size_t run_size;
    struct vmm_config cfg;

    struct vmm_input inputs[LIMIT_MAX_INPUTS];
    uint32_t n_inputs;
    int out_fd;

    /* Result and log buffers are reserved up front at their caps with
     * MAP_NORESERVE: pages are committed only when written, so the buffer
     * grows with use without any allocation syscall inside the seccomp
     * filter. */
    uint8_t *result;
    uint64_t result_cap;
    uint64_t result_len;
    uint8_t *log;
    uint64_t log_cap;
    uint64_t log_len;

    /* READV/WRITEV copy the guest's segment list here before checking it. */
    struct io_seg segs[LIMIT_IO_SEGS_MAX];

    struct vmm_progress progress;
    struct vmm_report report;

    int loaded;
    int ran;
    uint64_t create_ns;

    /* Watchdog <-> vCPU thread. */
    volatile pid_t vcpu_tid;
    volatile int kicked;
    volatile int started_run;
};

/* Process-wide KVM state (vmm.c). */
int kvm_fd_get(void);
const struct kvm_cpuid2 *kvm_cpuid_get(void);
uint64_t now_ns(void);

/* mem.c: the one checked guest-memory accessor. */
enum mem_scope { MEM_GUEST, MEM_SETUP };
void *mem_at(struct vm *vm, uint64_t gpa, uint64_t len, enum mem_scope scope);

/* setup.c: page tables, GDT, TLS canary; vCPU registers. */
int setup_memory(struct vm *vm);
int setup_vcpu(struct vm *vm);

/* hcall.c: one hypercall; returns 1 to continue, 0 when the run ended. */
int hcall_serve(struct vm *vm);

/* run.c */
int run_vcpu_loop(struct vm *vm);

/* seccomp.c */
int seccomp_install(int vcpu_fd, int wb_fd);

/* Signal used by the watchdog to kick the vCPU thread out of KVM_RUN. */
int kick_signal(void);

#endif
