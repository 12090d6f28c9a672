/*
 * Hypercall dispatch. The guest fills `struct hcall` at LAYOUT_HCALL and
 * does `out` to HC_PORT; the vCPU is stopped while we serve it. Every
 * argument is guest-controlled: each range is checked (no wrap, inside the
 * input / output cap / guest RAM) before any byte moves, and any violation
 * ends the run with a typed status instead of an error code the guest could
 * probe with.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "vmm_internal.h"

static int end_run(struct vm *vm, uint32_t status, uint32_t detail, int64_t err)
{
    vm->report.status = status;
    vm->report.detail = detail;
    vm->report.err = err;
    return 0;
}

static int bad(struct vm *vm, uint64_t nr)
{
    return end_run(vm, RUN_BAD_HYPERCALL, nr > 0xffffffffull ? 0xffffffffu : (uint32_t)nr, 0);
}

/* Guest range [gpa, gpa+len) as a host pointer, or NULL (never below
 * SYS_END, never past RAM, never wrapping). */
static uint8_t *guest_buf(struct vm *vm, uint64_t gpa, uint64_t len)
{
    return mem_at(vm, gpa, len, MEM_GUEST);
}

static int hc_read(struct vm *vm, struct hcall *h)
{
    uint64_t end;
    if (h->a0 >= vm->n_inputs || h->a2 > LIMIT_IO_MAX ||
        __builtin_add_overflow(h->a1, h->a2, &end) || end > vm->inputs[h->a0].size)
        return bad(vm, h->nr);
    uint8_t *dst = guest_buf(vm, h->a3, h->a2);
    if (!dst)
        return bad(vm, h->nr);
    int fd = vm->inputs[h->a0].fd;
    uint64_t done = 0;
    while (done < h->a2) {
        ssize_t n = pread(fd, dst + done, h->a2 - done, (off_t)(h->a1 + done));
        if (n < 0) {
            if (errno == EINTR && !vm->kicked)
                continue;
            if (errno == EINTR)
                return end_run(vm, RUN_TIMEOUT, 0, 0);
            return end_run(vm, RUN_HOST_ERROR, HC_READ, errno);
        }
        if (n == 0) {
            /* The file shrank after it was attached: the rest reads as
             * zeroes, as past-EOF reads do in qemu's file driver. */
            memset(dst + done, 0, h->a2 - done);
            break;
        }
        done += (uint64_t)n;
    }
    vm->report.bytes_read += h->a2;
    h->ret = (int64_t)h->a2;
    return 1;
}

static int hc_write(struct vm *vm, struct hcall *h)
{
    uint64_t end;
    if (vm->out_fd < 0 || h->a0 != 0 || h->a2 > LIMIT_IO_MAX)
        return bad(vm, h->nr);
    if (__builtin_add_overflow(h->a1, h->a2, &end) || end > vm->cfg.output_cap)
        return end_run(vm, RUN_OUTPUT_CAP, HC_WRITE, 0);
    const uint8_t *src = guest_buf(vm, h->a3, h->a2);
    if (!src)
        return bad(vm, h->nr);
    uint64_t done = 0;
    while (done < h->a2) {
        ssize_t n = pwrite(vm->out_fd, src + done, h->a2 - done, (off_t)(h->a1 + done));
        if (n < 0) {
            if (errno == EINTR && !vm->kicked)
                continue;
            if (errno == EINTR)
                return end_run(vm, RUN_TIMEOUT, 0, 0);
            return end_run(vm, RUN_HOST_ERROR, HC_WRITE, errno);
        }
        if (n == 0)
            return end_run(vm, RUN_HOST_ERROR, HC_WRITE, EIO);
        done += (uint64_t)n;
    }
    vm->report.bytes_written += h->a2;
    h->ret = (int64_t)h->a2;
    return 1;
}

static int hc_result(struct vm *vm, struct hcall *h)
{
    uint64_t end;
    const uint8_t *src = guest_buf(vm, h->a0, h->a1);
    if (!src)
        return bad(vm, h->nr);
    if (__builtin_add_overflow(vm->result_len, h->a1, &end) || end > vm->result_cap)
        return end_run(vm, RUN_RESULT_CAP, HC_RESULT, 0);
    if (h->a1)
        memcpy(vm->result + vm->result_len, src, h->a1);
    vm->result_len = end;
    h->ret = 0;
    return 1;
}

static int hc_log(struct vm *vm, struct hcall *h)
{
    const uint8_t *src = guest_buf(vm, h->a0, h->a1);
    if (!src)
        return bad(vm, h->nr);
    uint64_t room = vm->log_cap - vm->log_len;
    uint64_t n = h->a1 < room ? h->a1 : room; /* the rest is dropped */
    if (n)
        memcpy(vm->log + vm->log_len, src, n);
    vm->log_len += n;
    h->ret = 0;
    return 1;
}

static int hc_seek(struct vm *vm, struct hcall *h)
{
    if (h->a0 >= vm->n_inputs || h->a1 >= vm->inputs[h->a0].size ||
        (h->a2 != SEEK_KIND_DATA && h->a2 != SEEK_KIND_HOLE))
        return bad(vm, h->nr);
    uint64_t size = vm->inputs[h->a0].size;
    off_t r = lseek(vm->inputs[h->a0].fd, (off_t)h->a1, h->a2 == SEEK_KIND_DATA ? SEEK_DATA : SEEK_HOLE);
    uint64_t pos;
    if (r < 0) {
        /* ENXIO: no more data (or hole) after a1. Anything else means the
         * filesystem cannot tell: treat the whole file as data. */
        if (errno == ENXIO || h->a2 == SEEK_KIND_HOLE)
            pos = size;
        else
            pos = h->a1;
    } else {
        pos = (uint64_t)r;
    }
    if (pos > size) /* the file grew after attach: clamp to what the guest knows */
        pos = size;
    h->ret = (int64_t)pos;
    return 1;
}

int hcall_serve(struct vm *vm)
{
    struct hcall *slot = mem_at(vm, LAYOUT_HCALL, sizeof(struct hcall), MEM_GUEST);
    if (!slot)
        return end_run(vm, RUN_HOST_ERROR, 0, EFAULT);
    /* Work on a private copy so the checks and the use see the same values. */
    struct hcall h;
    memcpy(&h, slot, sizeof h);
    h.ret = 0;
    int go;
    switch (h.nr) {
    case HC_READ:
        go = hc_read(vm, &h);
        break;
    case HC_WRITE:
        go = hc_write(vm, &h);
        break;
    case HC_RESULT:
        go = hc_result(vm, &h);
        break;
    case HC_PROGRESS:
        /* TS polls these from another thread while the run goes on. */
        __atomic_store_n(&vm->progress.done, h.a0, __ATOMIC_RELAXED);
        __atomic_store_n(&vm->progress.total, h.a1, __ATOMIC_RELAXED);
        go = 1;
        break;
    case HC_LOG:
        go = hc_log(vm, &h);
        break;
    case HC_DONE:
        vm->report.guest_status = h.a0;
        return end_run(vm, RUN_DONE, 0, 0);
    case HC_SEEK:
        go = hc_seek(vm, &h);
        break;
    default:
        return bad(vm, h.nr);
    }
    if (go)
        memcpy((uint8_t *)slot + offsetof(struct hcall, ret), &h.ret, sizeof h.ret);
    return go;
}
