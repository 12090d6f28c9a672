/*
 * seccomp filter for the vCPU thread (never for a Deno thread: the filter is
 * installed by the thread the VMM created, and applies to it alone).
 *
 * After setup the thread needs only: KVM_RUN on its own vCPU fd, pread64 /
 * pwrite64 / lseek for READ, WRITE and SEEK hypercalls, rt_sigreturn for the
 * watchdog's kick, and exit; with VMM_F_WRITE_BEHIND, sync_file_range on the
 * output fd alone. Anything else kills the thread; vmm_run then reports a
 * host error.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vmm_internal.h"

#define LD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define ALLOW_NR(n) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (n), 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))

int seccomp_install(int vcpu_fd, int wb_fd)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_THREAD),
        LD_NR,
        /* x32 syscalls share the arch value; refuse them. */
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_THREAD),
        ALLOW_NR(SYS_pread64),
        ALLOW_NR(SYS_pwrite64),
        ALLOW_NR(SYS_lseek),
        ALLOW_NR(SYS_rt_sigreturn),
        ALLOW_NR(SYS_exit),
        /* sync_file_range(wb_fd, ...) only; wb_fd is -1 without write-behind. */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sync_file_range, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(0)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)wb_fd, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        LD_NR,
        /* ioctl(vcpu_fd, KVM_RUN) only. */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_ioctl, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(0)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)vcpu_fd, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(1)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, KVM_RUN, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_THREAD),
    };
    struct sock_fprog prog = { .len = (unsigned short)(sizeof f / sizeof f[0]), .filter = f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    /* Plain seccomp(2) without SECCOMP_FILTER_FLAG_TSYNC: this thread only. */
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0)
        return -1;
    return 0;
}
