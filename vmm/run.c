/*
 * vmm_run: one guest run on a VMM-owned thread, watched by the caller.
 *
 * The vCPU thread creates the vCPU, sets its registers, filters itself with
 * seccomp (only KVM_RUN, pread64/pwrite64/lseek and thread exit remain) and
 * runs the loop: one switch over exit reasons. The calling thread (a Deno
 * FFI worker, which we never filter) is the watchdog: it joins with a
 * deadline; when the deadline passes it sets immediate_exit and kicks the
 * vCPU thread with a real-time signal until the thread returns.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vmm_internal.h"

static void kick_handler(int sig)
{
    (void)sig; /* its only job is to interrupt KVM_RUN with EINTR */
}

static pthread_once_t g_sig_once = PTHREAD_ONCE_INIT;
static int g_sig_ok;

/* SIGRTMIN+4: glibc keeps the first real-time signals for itself, and Deno
 * does not use the real-time range. */
int kick_signal(void)
{
    return SIGRTMIN + 4;
}

/* The kick handler's address is process-wide, but this library may be
 * loaded more than once (each Deno worker that dlopens it gets its own
 * copy from its own private path) and unloaded when a worker ends. A
 * handler left pointing into an unloaded copy turns the next watchdog kick
 * into a segfault of the whole process (two test files in parallel did it).
 * So the copy that installs the handler pins itself: RTLD_NODELETE keeps it
 * mapped for the life of the process. RTLD_NOLOAD only promotes the copy
 * that is already loaded (its file is gone by now; the name still matches). */
static void pin_this_library(void)
{
    Dl_info info;
    if (dladdr((void *)kick_handler, &info) != 0 && info.dli_fname != NULL)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static void install_kick_handler(void)
{
    pin_this_library();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must return EINTR */
    g_sig_ok = sigaction(kick_signal(), &sa, NULL) == 0;
}

static void set_status(struct vm *vm, uint32_t status, uint32_t detail, int64_t err)
{
    vm->report.status = status;
    vm->report.detail = detail;
    vm->report.err = err;
}

/* Unfiltered (test) runs only: where the guest crashed, for diagnostics,
 * in report.reserved[0..1] (rip, rsp). */
static void debug_regs(struct vm *vm)
{
    struct kvm_regs r;
    if ((vm->cfg.flags & VMM_F_NO_SECCOMP) && ioctl(vm->vcpu_fd, KVM_GET_REGS, &r) == 0) {
        vm->report.reserved[0] = r.rip;
        vm->report.reserved[1] = r.rsp;
    }
}

/* The run loop proper. Returns when the run has ended; report is filled. */
int run_vcpu_loop(struct vm *vm)
{
    struct kvm_run *run = vm->run;
    for (;;) {
        if (vm->kicked) {
            set_status(vm, RUN_TIMEOUT, 0, 0);
            return 0;
        }
        int rc = ioctl(vm->vcpu_fd, KVM_RUN, 0);
        vm->report.exits++;
        if (rc < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                /* Ours (the watchdog) ends the run; anyone else's is retried. */
                if (vm->kicked) {
                    set_status(vm, RUN_TIMEOUT, 0, 0);
                    return 0;
                }
                continue;
            }
            set_status(vm, RUN_HOST_ERROR, 0, errno);
            return 0;
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            if (run->io.direction != KVM_EXIT_IO_OUT || run->io.port != HC_PORT || run->io.count != 1) {
                set_status(vm, RUN_UNEXPECTED_EXIT, KVM_EXIT_IO, 0);
                return 0;
            }
            if (!hcall_serve(vm))
                return 0;
            break;
        case KVM_EXIT_INTR:
            if (vm->kicked) {
                set_status(vm, RUN_TIMEOUT, 0, 0);
                return 0;
            }
            break;
        case KVM_EXIT_SHUTDOWN: /* triple fault: any guest fault, no IDT */
        case KVM_EXIT_HLT:
            set_status(vm, RUN_GUEST_FAULT, run->exit_reason, 0);
            debug_regs(vm);
            return 0;
        default: /* MMIO (access outside RAM), debug, internal errors, ... */
            set_status(vm, RUN_UNEXPECTED_EXIT, run->exit_reason, 0);
            return 0;
        }
    }
}

/* Blocks every signal on the vCPU thread except the kick, so that signal
 * handlers the embedding process installed (Deno's) never run on a
 * filtered thread. Synchronous faults still arrive. */
static int mask_signals(void)
{
    sigset_t set;
    sigfillset(&set);
    sigdelset(&set, kick_signal());
    return pthread_sigmask(SIG_SETMASK, &set, NULL);
}

static void *vcpu_thread(void *arg)
{
    struct vm *vm = arg;
    vm->vcpu_tid = (pid_t)syscall(SYS_gettid);
    uint64_t t0 = now_ns();
    if (mask_signals() != 0) {
        set_status(vm, RUN_SETUP_ERROR, 0, EINVAL);
        return NULL;
    }
    vm->vcpu_fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, 0);
    if (vm->vcpu_fd < 0) {
        set_status(vm, RUN_SETUP_ERROR, 0, errno);
        return NULL;
    }
    int kvm = kvm_fd_get();
    int sz = kvm < 0 ? -1 : ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (sz <= 0) {
        set_status(vm, RUN_SETUP_ERROR, 0, errno);
        return NULL;
    }
    vm->run_size = (size_t)sz;
    void *r = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd, 0);
    if (r == MAP_FAILED) {
        set_status(vm, RUN_SETUP_ERROR, 0, errno);
        return NULL;
    }
    /* Published only once valid: the watchdog may read it concurrently. */
    __atomic_store_n(&vm->run, (struct kvm_run *)r, __ATOMIC_RELEASE);
    if (setup_vcpu(vm) < 0) {
        set_status(vm, RUN_SETUP_ERROR, 0, errno);
        return NULL;
    }
    if (!(vm->cfg.flags & VMM_F_NO_SECCOMP) && seccomp_install(vm->vcpu_fd, (vm->cfg.flags & VMM_F_WRITE_BEHIND) && vm->out_fd >= 0 ? vm->out_fd : -1) < 0) {
        set_status(vm, RUN_SETUP_ERROR, 0, errno);
        return NULL;
    }
    vm->report.setup_ns += now_ns() - t0;
    __atomic_store_n(&vm->started_run, 1, __ATOMIC_RELEASE);
    run_vcpu_loop(vm);
    /* Leave without glibc's thread teardown: after the filter only the raw
     * exit syscall is allowed. The kernel clears our tid, which wakes the
     * joiner. */
    if (!(vm->cfg.flags & VMM_F_NO_SECCOMP))
        syscall(SYS_exit, 0);
    return NULL;
}

static void add_ms(struct timespec *ts, uint64_t ms)
{
    uint64_t ns = (uint64_t)ts->tv_nsec + (ms % 1000) * 1000000ull;
    ts->tv_sec += (time_t)(ms / 1000 + ns / 1000000000ull);
    ts->tv_nsec = (long)(ns % 1000000000ull);
}

VMM_EXPORT int vmm_run(void *handle, struct vmm_report *rep)
{
    struct vm *vm = handle;
    if (!vm || !rep || vm->ran || !vm->loaded) {
        return -EINVAL;
    }
    vm->ran = 1;
    uint64_t t0 = now_ns();
    /* If the vCPU thread dies without reaching an outcome (e.g. killed by
     * its own seccomp filter), this is what the caller sees. */
    set_status(vm, RUN_HOST_ERROR, 0, ECANCELED);
    pthread_once(&g_sig_once, install_kick_handler);
    if (!g_sig_ok) {
        set_status(vm, RUN_SETUP_ERROR, 0, EINVAL);
        goto out;
    }

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    /* The new thread inherits the caller's signal mask; it sets its own. */
    pthread_t th;
    int e = pthread_create(&th, &attr, vcpu_thread, vm);
    pthread_attr_destroy(&attr);
    if (e != 0) {
        set_status(vm, RUN_SETUP_ERROR, 0, e);
        goto out;
    }

    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    add_ms(&deadline, vm->cfg.timeout_ms ? vm->cfg.timeout_ms : 30000);
    e = pthread_clockjoin_np(th, NULL, CLOCK_MONOTONIC, &deadline);
    if (e == ETIMEDOUT) {
        vm->kicked = 1;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        for (;;) {
            struct kvm_run *kr = __atomic_load_n(&vm->run, __ATOMIC_ACQUIRE);
            if (kr)
                __atomic_store_n(&kr->immediate_exit, 1, __ATOMIC_SEQ_CST);
            if (vm->vcpu_tid)
                syscall(SYS_tgkill, getpid(), vm->vcpu_tid, kick_signal());
            struct timespec again;
            clock_gettime(CLOCK_MONOTONIC, &again);
            add_ms(&again, 2);
            e = pthread_clockjoin_np(th, NULL, CLOCK_MONOTONIC, &again);
            if (e != ETIMEDOUT)
                break;
        }
    }
out:
    vm->report.result_len = vm->result_len;
    vm->report.log_len = vm->log_len;
    vm->report.elapsed_ns = now_ns() - t0;
    *rep = vm->report;
    return 0;
}
