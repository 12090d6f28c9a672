/*
 * VM lifecycle and the exported C interface used by lib/vmm/ffi.ts.
 * A VM is single-use: vmm_create, vmm_load, vmm_set_params, vmm_attach_*,
 * vmm_run, then vmm_result/vmm_log, vmm_destroy.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vmm_internal.h"

/* Result and log caps are bounded here too, whatever the caller asks. */
#define RESULT_CAP_MAX (1ull << 30)
#define LOG_CAP_MAX (16ull << 20)

static int g_kvm_fd = -1;
static struct kvm_cpuid2 *g_cpuid;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_init_errno;

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Opens /dev/kvm and caches KVM_GET_SUPPORTED_CPUID once per process. */
static void kvm_init_once(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        g_init_errno = errno;
        return;
    }
    if (ioctl(fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        g_init_errno = ENOTSUP;
        close(fd);
        return;
    }
    for (uint32_t n = 64; n <= 4096; n *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof *c + n * sizeof(struct kvm_cpuid_entry2));
        if (!c) {
            g_init_errno = ENOMEM;
            break;
        }
        c->nent = n;
        if (ioctl(fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            g_cpuid = c;
            break;
        }
        int e = errno;
        free(c);
        if (e != E2BIG) {
            g_init_errno = e;
            break;
        }
    }
    if (!g_cpuid) {
        if (!g_init_errno)
            g_init_errno = E2BIG;
        close(fd);
        return;
    }
    g_kvm_fd = fd;
}

int kvm_fd_get(void)
{
    pthread_once(&g_once, kvm_init_once);
    if (g_kvm_fd < 0)
        errno = g_init_errno;
    return g_kvm_fd;
}

const struct kvm_cpuid2 *kvm_cpuid_get(void)
{
    pthread_once(&g_once, kvm_init_once);
    return g_cpuid;
}

VMM_EXPORT void vmm_destroy(void *handle);

/* errno of the last failed call on this thread: FFI callers cannot read
 * errno themselves. */
static __thread int t_last_errno;

static int fail_errno(int e)
{
    t_last_errno = e;
    errno = e;
    return -e;
}

VMM_EXPORT int vmm_last_errno(void)
{
    return t_last_errno;
}

/* glibc's message for an errno value ("No such file or directory"), the
 * text qemu-img prints; never NULL. */
VMM_EXPORT const char *vmm_strerror(int e)
{
    const char *s = strerrordesc_np(e);
    return s ? s : "Unknown error";
}

VMM_EXPORT void *vmm_create(const struct vmm_config *cfg)
{
    uint64_t t0 = now_ns();
    if (!cfg || cfg->abi_version != ABI_VERSION || cfg->ram_bytes < LIMIT_RAM_MIN ||
        cfg->ram_bytes > LIMIT_RAM_MAX || (cfg->ram_bytes & (0x200000ull - 1)) ||
        cfg->result_cap > RESULT_CAP_MAX || cfg->log_cap > LOG_CAP_MAX) {
        fail_errno(EINVAL);
        return NULL;
    }
    int kvm = kvm_fd_get();
    if (kvm < 0) {
        fail_errno(errno);
        return NULL;
    }

    struct vm *vm = calloc(1, sizeof *vm);
    if (!vm) {
        fail_errno(ENOMEM);
        return NULL;
    }
    vm->vm_fd = -1;
    vm->vcpu_fd = -1;
    vm->out_fd = -1;
    vm->cfg = *cfg;
    vm->create_ns = t0;
    vm->ram_size = cfg->ram_bytes;
    vm->ram = MAP_FAILED;
    vm->result = MAP_FAILED;
    vm->log = MAP_FAILED;
    for (int i = 0; i < LIMIT_MAX_INPUTS; i++)
        vm->inputs[i].fd = -1;

    vm->vm_fd = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm->vm_fd < 0)
        goto fail;
    /* Not every hypervisor wants this (it backs real-mode emulation on
     * VMX); failure is harmless because the guest never leaves long mode. */
    (void)ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul);

    vm->ram = mmap(NULL, vm->ram_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (vm->ram == MAP_FAILED)
        goto fail;
    /* First touch of guest RAM is slow in 4 KiB pages under PVM. */
    (void)madvise(vm->ram, vm->ram_size, MADV_HUGEPAGE);
    (void)madvise(vm->ram, vm->ram_size, MADV_DONTDUMP);

    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .flags = 0,
        .guest_phys_addr = 0,
        .memory_size = vm->ram_size,
        .userspace_addr = (uint64_t)(uintptr_t)vm->ram,
    };
    if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        goto fail;
    if (setup_memory(vm) < 0) {
        errno = EINVAL;
        goto fail;
    }

    vm->result_cap = cfg->result_cap;
    vm->log_cap = cfg->log_cap;
    if (vm->result_cap) {
        vm->result = mmap(NULL, vm->result_cap, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (vm->result == MAP_FAILED)
            goto fail;
    }
    if (vm->log_cap) {
        vm->log = mmap(NULL, vm->log_cap, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (vm->log == MAP_FAILED)
            goto fail;
    }
    vm->report.setup_ns = now_ns() - t0;
    return vm;
fail: {
    int e = errno;
    vmm_destroy(vm);
    fail_errno(e);
    return NULL;
}
}

/* Every int-returning function below returns 0 or -errno. */
VMM_EXPORT int vmm_load(void *handle, const uint8_t *bin, uint64_t len)
{
    struct vm *vm = handle;
    if (!vm || !bin || vm->ran || len == 0 || len > LIMIT_GUEST_BINARY_MAX ||
        len > LAYOUT_CODE_END - LAYOUT_CODE) {
        return fail_errno(EINVAL);
    }
    uint8_t *dst = mem_at(vm, LAYOUT_CODE, len, MEM_SETUP);
    if (!dst) {
        return fail_errno(EINVAL);
    }
    memcpy(dst, bin, len);
    vm->loaded = 1;
    return 0;
}

VMM_EXPORT int vmm_set_params(void *handle, const uint8_t *p, uint64_t len)
{
    struct vm *vm = handle;
    /* The parameter block, then (optionally) the input table: one
     * input_entry per attached input, copied to layout.INPUTS. */
    const uint64_t table_max = (uint64_t)LIMIT_MAX_INPUTS * sizeof(struct input_entry);
    if (!vm || !p || vm->ran || len > sizeof(struct params) + table_max) {
        return fail_errno(EINVAL);
    }
    uint64_t plen = len < sizeof(struct params) ? len : sizeof(struct params);
    uint8_t *dst = mem_at(vm, LAYOUT_PARAMS, sizeof(struct params), MEM_SETUP);
    uint8_t *table = mem_at(vm, LAYOUT_INPUTS, table_max, MEM_SETUP);
    if (!dst || !table) {
        return fail_errno(EINVAL);
    }
    memset(dst, 0, sizeof(struct params));
    memcpy(dst, p, plen);
    memset(table, 0, table_max);
    memcpy(table, p + plen, len - plen);
    return 0;
}

/* Size of a regular file or block device; anything else is refused. */
static int fd_size(int fd, struct stat *st, uint64_t *size)
{
    if (fstat(fd, st) < 0)
        return -1;
    if (S_ISREG(st->st_mode)) {
        *size = (uint64_t)st->st_size;
        return 0;
    }
    if (S_ISBLK(st->st_mode)) {
        uint64_t sz = 0;
        if (ioctl(fd, BLKGETSIZE64, &sz) < 0)
            return -1;
        *size = sz;
        return 0;
    }
    errno = S_ISDIR(st->st_mode) ? EISDIR : EINVAL;
    return -1;
}

/* Opens a path TypeScript chose and checks it is a file the VMM serves
 * (fd_size: regular file or block device). Returns the fd or -errno. */
static int open_regular(const char *path, int oflags, struct stat *st, uint64_t *size)
{
    int fd = open(path, oflags, 0644);
    if (fd < 0)
        return -errno;
    if (fd_size(fd, st, size) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

VMM_EXPORT int vmm_attach_input(void *handle, const char *path, uint32_t flags,
                                struct vmm_input_info *out)
{
    struct vm *vm = handle;
    if (!vm || !path || vm->ran || (flags & ~(uint32_t)ATTACH_NOFOLLOW)) {
        return fail_errno(EINVAL);
    }
    if (vm->n_inputs >= LIMIT_MAX_INPUTS) {
        return fail_errno(EMFILE);
    }
    int oflags = O_RDONLY | O_CLOEXEC | O_NOCTTY;
    if (flags & ATTACH_NOFOLLOW)
        oflags |= O_NOFOLLOW;
    struct stat st;
    uint64_t size;
    int fd = open_regular(path, oflags, &st, &size);
    if (fd < 0)
        return fail_errno(-fd);
    uint32_t idx = vm->n_inputs++;
    vm->inputs[idx].fd = fd;
    vm->inputs[idx].size = size;
    if (out) {
        memset(out, 0, sizeof *out);
        out->size = size;
        out->dev = (uint64_t)st.st_dev;
        out->ino = (uint64_t)st.st_ino;
        out->index = idx;
    }
    return 0;
}

VMM_EXPORT int vmm_attach_output(void *handle, const char *path, uint32_t flags)
{
    struct vm *vm = handle;
    if (!vm || !path || vm->ran || vm->out_fd >= 0 ||
        (flags & ~(uint32_t)(ATTACH_NOFOLLOW | ATTACH_WRITABLE | ATTACH_CREATE))) {
        return fail_errno(EINVAL);
    }
    int oflags = O_WRONLY | O_CLOEXEC | O_NOCTTY;
    if (flags & ATTACH_NOFOLLOW)
        oflags |= O_NOFOLLOW;
    if (flags & ATTACH_CREATE)
        oflags |= O_CREAT;
    struct stat st;
    uint64_t size;
    int fd = open_regular(path, oflags, &st, &size);
    if (fd < 0)
        return fail_errno(-fd);
    vm->out_fd = fd;
    return 0;
}

VMM_EXPORT const uint8_t *vmm_result(void *handle, uint64_t *len)
{
    struct vm *vm = handle;
    if (len)
        *len = vm && vm->result != MAP_FAILED ? vm->result_len : 0;
    return vm && vm->result != MAP_FAILED ? vm->result : NULL;
}

VMM_EXPORT const uint8_t *vmm_log(void *handle, uint64_t *len)
{
    struct vm *vm = handle;
    if (len)
        *len = vm && vm->log != MAP_FAILED ? vm->log_len : 0;
    return vm && vm->log != MAP_FAILED ? vm->log : NULL;
}

VMM_EXPORT struct vmm_progress *vmm_progress(void *handle)
{
    struct vm *vm = handle;
    return vm ? &vm->progress : NULL;
}

VMM_EXPORT void vmm_destroy(void *handle)
{
    struct vm *vm = handle;
    if (!vm)
        return;
    for (uint32_t i = 0; i < LIMIT_MAX_INPUTS; i++)
        if (vm->inputs[i].fd >= 0)
            close(vm->inputs[i].fd);
    if (vm->out_fd >= 0)
        close(vm->out_fd);
    if (vm->run && vm->run != MAP_FAILED)
        munmap(vm->run, vm->run_size);
    if (vm->vcpu_fd >= 0)
        close(vm->vcpu_fd);
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->ram != MAP_FAILED)
        munmap(vm->ram, vm->ram_size);
    if (vm->result != MAP_FAILED)
        munmap(vm->result, vm->result_cap);
    if (vm->log != MAP_FAILED)
        munmap(vm->log, vm->log_cap);
    free(vm);
}
