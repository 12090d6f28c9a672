/*
 * Hypercall dispatch. The guest fills `struct hcall` at LAYOUT_HCALL and
 * does `out` to HC_PORT; the vCPU is stopped while we serve it. Every
 * argument is guest-controlled: each range is checked (no wrap, inside the
 * input / output cap / guest RAM) before any byte moves, and any violation
 * ends the run with a typed status instead of an error code the guest could
 * probe with.
 */
#include <errno.h>
#include <fcntl.h>
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

/* One checked read segment: [off, off+len) of input `in` into guest
 * [gpa, gpa+len). Returns 1, or 0 after ending the run. */
static int read_seg(struct vm *vm, uint64_t nr, uint64_t in, uint64_t off, uint64_t len, uint64_t gpa)
{
    uint64_t end;
    if (in >= vm->n_inputs || len > LIMIT_IO_MAX || __builtin_add_overflow(off, len, &end) ||
        end > vm->inputs[in].size)
        return bad(vm, nr);
    uint8_t *dst = guest_buf(vm, gpa, len);
    if (!dst)
        return bad(vm, nr);
    int fd = vm->inputs[in].fd;
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, dst + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR && !vm->kicked)
                continue;
            if (errno == EINTR)
                return end_run(vm, RUN_TIMEOUT, 0, 0);
            return end_run(vm, RUN_HOST_ERROR, (uint32_t)nr, errno);
        }
        if (n == 0) {
            /* The file shrank after it was attached: the rest reads as
             * zeroes, as past-EOF reads do in qemu's file driver. */
            memset(dst + done, 0, len - done);
            break;
        }
        done += (uint64_t)n;
    }
    vm->report.bytes_read += len;
    return 1;
}

/* Each pwrite moves at most this much. Measured under PVM KVM (2026-12-07):
 * 1 GiB written from guest memory into new clusters of an image took 2.1 s
 * in 8 MiB pwrites, 1.6 s in 4 MiB, 0.26 s in 2 MiB (qemu-img writes 2 MiB
 * at a time and took 0.26 s too). The guest still asks for big writes: one
 * VM exit per 8 MiB; only the syscalls are cut. */
#define WRITE_PIECE (2ull << 20)

/* One checked write segment to output `out` (only 0 exists). */
static int write_seg(struct vm *vm, uint64_t nr, uint64_t out, uint64_t off, uint64_t len, uint64_t gpa)
{
    uint64_t end;
    if (vm->out_fd < 0 || out != 0 || len > LIMIT_IO_MAX)
        return bad(vm, nr);
    if (__builtin_add_overflow(off, len, &end) || end > vm->cfg.output_cap)
        return end_run(vm, RUN_OUTPUT_CAP, (uint32_t)nr, 0);
    const uint8_t *src = guest_buf(vm, gpa, len);
    if (!src)
        return bad(vm, nr);
    uint64_t done = 0;
    while (done < len) {
        uint64_t piece = len - done < WRITE_PIECE ? len - done : WRITE_PIECE;
        ssize_t n = pwrite(vm->out_fd, src + done, piece, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR && !vm->kicked)
                continue;
            if (errno == EINTR)
                return end_run(vm, RUN_TIMEOUT, 0, 0);
            /* The output offset that failed: qemu-img's "error while writing at byte N". */
            vm->report.reserved[0] = off + done;
            return end_run(vm, RUN_HOST_ERROR, (uint32_t)nr, errno);
        }
        if (n == 0) {
            vm->report.reserved[0] = off + done;
            return end_run(vm, RUN_HOST_ERROR, (uint32_t)nr, EIO);
        }
        done += (uint64_t)n;
    }
    vm->report.bytes_written += len;
    /* Write-behind (VMM_F_WRITE_BEHIND, asked by a host that fdatasyncs the
     * output right after the run): start writeback of what was just written
     * so the final flush does not wait for all of it. A hint only: an error
     * here shows up in that fdatasync. Measured (2026-12-07): commit of 512
     * MiB 0.77 s without, 0.62 s with (qemu-img 0.65 s). */
    if (vm->cfg.flags & VMM_F_WRITE_BEHIND)
        (void)sync_file_range(vm->out_fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
    return 1;
}

static int hc_read(struct vm *vm, struct hcall *h)
{
    if (!read_seg(vm, h->nr, h->a0, h->a1, h->a2, h->a3))
        return 0;
    h->ret = (int64_t)h->a2;
    return 1;
}

static int hc_write(struct vm *vm, struct hcall *h)
{
    if (!write_seg(vm, h->nr, h->a0, h->a1, h->a2, h->a3))
        return 0;
    h->ret = (int64_t)h->a2;
    return 1;
}

/* READV / WRITEV: the segment array is copied out of guest memory first so
 * the guest cannot change a segment between its check and its use; the
 * summed length is bounded like one READ/WRITE. */
static int hc_vector(struct vm *vm, struct hcall *h, int writing)
{
    struct io_seg *segs = vm->segs; /* per VM: two VMs may run at once */
    uint64_t bytes;
    if (h->a2 == 0 || h->a2 > LIMIT_IO_SEGS_MAX)
        return bad(vm, h->nr);
    const uint8_t *src = guest_buf(vm, h->a1, h->a2 * sizeof(struct io_seg));
    if (!src)
        return bad(vm, h->nr);
    memcpy(segs, src, h->a2 * sizeof(struct io_seg));
    uint64_t total = 0;
    for (uint64_t i = 0; i < h->a2; i++)
        if (__builtin_add_overflow(total, segs[i].len, &total) || total > LIMIT_IO_MAX)
            return bad(vm, h->nr);
    for (uint64_t i = 0; i < h->a2; i++) {
        int go = writing ? write_seg(vm, h->nr, h->a0, segs[i].off, segs[i].len, segs[i].addr)
                         : read_seg(vm, h->nr, h->a0, segs[i].off, segs[i].len, segs[i].addr);
        if (!go)
            return 0;
    }
    bytes = total;
    h->ret = (int64_t)bytes;
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

/* EXTENTS: the data extents of an input's host file inside [a1, a1+a2),
 * found with SEEK_DATA/SEEK_HOLE; at most LIMIT_EXTENTS_MAX per call. A
 * filesystem that cannot tell reports the whole range as data. */
static int hc_extents(struct vm *vm, struct hcall *h)
{
    uint64_t end;
    if (h->a0 >= vm->n_inputs || __builtin_add_overflow(h->a1, h->a2, &end) || end > vm->inputs[h->a0].size)
        return bad(vm, h->nr);
    uint8_t *dst = guest_buf(vm, h->a3, LIMIT_EXTENTS_MAX * sizeof(struct extent));
    if (!dst)
        return bad(vm, h->nr);
    int fd = vm->inputs[h->a0].fd;
    uint64_t pos = h->a1;
    int64_t n = 0;
    while (pos < end && n < LIMIT_EXTENTS_MAX) {
        off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
        uint64_t data;
        if (d < 0)
            data = errno == ENXIO ? end : pos;
        else
            data = (uint64_t)d;
        if (data >= end)
            break;
        off_t ho = lseek(fd, (off_t)data, SEEK_HOLE);
        uint64_t hole = ho < 0 ? end : (uint64_t)ho;
        if (hole > end)
            hole = end;
        if (hole <= data) /* the file changed under us: call the rest data */
            hole = end;
        struct extent e = { .off = data, .len = hole - data };
        memcpy(dst + (uint64_t)n * sizeof e, &e, sizeof e);
        n++;
        pos = hole;
    }
    h->ret = n;
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
    case HC_READV:
        go = hc_vector(vm, &h, 0);
        break;
    case HC_WRITEV:
        go = hc_vector(vm, &h, 1);
        break;
    case HC_EXTENTS:
        go = hc_extents(vm, &h);
        break;
    default:
        return bad(vm, h.nr);
    }
    if (go)
        memcpy((uint8_t *)slot + offsetof(struct hcall, ret), &h.ret, sizeof h.ret);
    return go;
}
