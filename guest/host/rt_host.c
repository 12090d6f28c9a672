/*
 * Hosted implementation of guest/include/rt.h (INSTAR_HOSTED): the same
 * parsers and operation programs run as ordinary Linux programs over files,
 * for tests and fuzz targets. It mirrors the guest runtime's limits (heap =
 * ram_size - LAYOUT_HEAP, records <= LIMIT_RECORD_MAX, I/O bounded by the
 * input size) so a program that fits here fits in the VM.
 *
 * usage: <op> [--arg N]... [--flags N] [--ram BYTES] [-o|-O PATH [--cap BYTES]] [--snapshot K] FMT:PATH [...]
 *   FMT is raw, qcow2, vpc, vhdx, auto or a formats.* number; the record
 *   stream goes to stdout (binary).
 *   -o attaches output 0 (created, truncated) for hc_write, bounded by the
 *   cap like the VMM bounds it (default: 1 TiB); -O attaches it as the VMM
 *   does (created if missing, never truncated: the host may have written
 *   metadata first).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "rt.h"

#ifndef HOST_OP
#define HOST_OP 0
#endif

static struct params g_params;
static int g_fds[LIMIT_MAX_INPUTS];
static struct input_entry g_inputs[LIMIT_MAX_INPUTS];
static int g_out_fd = -1;
static uint8_t *g_heap;
static uint64_t g_heap_size, g_heap_used, g_last_alloc, g_heap_peak;
static uint8_t g_out[1 << 16];
/* Hypercall statistics (INSTAR_HOST_STATS=1 prints them): each READ, SEEK
 * and result flush would be one VM exit in the guest. */
static uint64_t g_reads, g_read_bytes, g_seeks, g_flushes;
static size_t g_out_len;

const struct params *rt_params(void) { return &g_params; }
const struct input_entry *rt_input(uint32_t i) { return &g_inputs[i]; }

int64_t hc_read(uint32_t input, uint64_t off, uint64_t len, void *buf)
{
    uint64_t end;
    if (input >= g_params.n_inputs || __builtin_add_overflow(off, len, &end) ||
        end > g_inputs[input].size) {
        fprintf(stderr, "hosted rt: READ outside input %u: off=%llu len=%llu\n", input,
                (unsigned long long)off, (unsigned long long)len);
        exit(70); /* the VMM would end the run: make it loud */
    }
    g_reads++;
    g_read_bytes += len;
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = pread(g_fds[input], (uint8_t *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -5;
        done += (uint64_t)n;
    }
    return (int64_t)len;
}

int64_t hc_write(uint64_t off, uint64_t len, const void *buf)
{
    uint64_t end;
    if (g_out_fd < 0) return (int64_t)len; /* no output attached: discard, as before */
    if (__builtin_add_overflow(off, len, &end) || end > g_params.output_cap) {
        fprintf(stderr, "hosted rt: WRITE past the output cap: off=%llu len=%llu\n", (unsigned long long)off,
                (unsigned long long)len);
        exit(70); /* the VMM would end the run */
    }
    uint64_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(g_out_fd, (const uint8_t *)buf + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            /* The VMM ends the run with HOST_ERROR (errno, failing offset): so does this build. */
            int e = n < 0 ? errno : EIO;
            fprintf(stderr, "hosted rt: write error %d at %llu: %s\n", e, (unsigned long long)(off + done), strerror(e));
            exit(71);
        }
        done += (uint64_t)n;
    }
    return (int64_t)len;
}

int64_t hc_seek(uint32_t input, uint64_t off, uint32_t kind)
{
    if (input >= g_params.n_inputs) exit(70);
    uint64_t size = g_inputs[input].size;
    g_seeks++;
    if (off >= size) return (int64_t)size;
    off_t r = lseek(g_fds[input], (off_t)off, kind == SEEK_KIND_DATA ? SEEK_DATA : SEEK_HOLE);
    if (r < 0 || (uint64_t)r > size) return (int64_t)size;
    return r;
}

/* The vectored calls loop over the single-range ones: the same checks (the
 * hosted build exits loudly where the VMM would end the run). */
int64_t hc_readv(uint32_t input, const struct io_seg *segs, uint32_t n)
{
    uint64_t total = 0;
    if (n == 0 || n > LIMIT_IO_SEGS_MAX) exit(70);
    for (uint32_t i = 0; i < n; i++) {
        if (__builtin_add_overflow(total, segs[i].len, &total) || total > LIMIT_IO_MAX) exit(70);
        int64_t r = hc_read(input, segs[i].off, segs[i].len, (void *)(uintptr_t)segs[i].addr);
        if (r < 0) return r;
        g_reads--; /* one exit for the whole vector */
    }
    g_reads++;
    return (int64_t)total;
}

int64_t hc_writev(const struct io_seg *segs, uint32_t n)
{
    uint64_t total = 0;
    if (n == 0 || n > LIMIT_IO_SEGS_MAX) exit(70);
    for (uint32_t i = 0; i < n; i++) {
        if (__builtin_add_overflow(total, segs[i].len, &total) || total > LIMIT_IO_MAX) exit(70);
        int64_t r = hc_write(segs[i].off, segs[i].len, (const void *)(uintptr_t)segs[i].addr);
        if (r < 0) return r;
    }
    return (int64_t)total;
}

int64_t hc_extents(uint32_t input, uint64_t off, uint64_t len, struct extent *out)
{
    uint64_t end;
    if (input >= g_params.n_inputs || __builtin_add_overflow(off, len, &end) || end > g_inputs[input].size)
        exit(70);
    g_seeks++;
    int64_t n = 0;
    uint64_t pos = off;
    while (pos < end && n < LIMIT_EXTENTS_MAX) {
        off_t d = lseek(g_fds[input], (off_t)pos, SEEK_DATA);
        uint64_t data = d < 0 ? (errno == ENXIO ? end : pos) : (uint64_t)d;
        if (data >= end) break;
        off_t h = lseek(g_fds[input], (off_t)data, SEEK_HOLE);
        uint64_t hole = h < 0 || (uint64_t)h > end ? end : (uint64_t)h;
        if (hole <= data) hole = end;
        out[n].off = data;
        out[n].len = hole - data;
        n++;
        pos = hole;
    }
    return n;
}

/* With INSTAR_HOST_PROGRESS set, progress goes to stderr as "progress D T"
 * lines (tests/support/hosted_runner.ts replays them as the VMM's polls). */
void hc_progress(uint64_t done, uint64_t total)
{
    static int want = -1;
    if (want < 0) want = getenv("INSTAR_HOST_PROGRESS") != NULL;
    if (want) fprintf(stderr, "progress %llu %llu\n", (unsigned long long)done, (unsigned long long)total);
}

void hc_log(const char *s)
{
    if (getenv("INSTAR_DEBUG")) fprintf(stderr, "guest: %s\n", s);
}

void rt_flush(void)
{
    if (g_out_len) g_flushes++;
    if (g_out_len && fwrite(g_out, 1, g_out_len, stdout) != g_out_len) exit(71);
    g_out_len = 0;
}

_Noreturn void hc_done(uint64_t status)
{
    rt_flush();
    fflush(stdout);
    if (status != GUEST_OK) fprintf(stderr, "guest status %llu\n", (unsigned long long)status);
    if (getenv("INSTAR_HOST_STATS"))
        fprintf(stderr, "reads %llu (%llu bytes) seeks %llu flushes %llu heap %llu\n", (unsigned long long)g_reads,
                (unsigned long long)g_read_bytes, (unsigned long long)g_seeks, (unsigned long long)g_flushes,
                (unsigned long long)g_heap_peak);
    exit(0);
}

int rt_emit(const void *rec, uint32_t size)
{
    if (size < 8 || size % 8 || size > LIMIT_RECORD_MAX) return -1;
    if (g_out_len + size > sizeof g_out) rt_flush();
    memcpy(g_out + g_out_len, rec, size);
    /* The header's size field must match what was passed. */
    uint32_t hs = size;
    memcpy(g_out + g_out_len + 4, &hs, 4);
    g_out_len += size;
    return 0;
}

void *rt_alloc(uint64_t size)
{
    uint64_t rounded, end;
    if (__builtin_add_overflow(size, 15, &rounded)) return NULL;
    rounded &= ~(uint64_t)15;
    if (__builtin_add_overflow(g_heap_used, rounded, &end) || end > g_heap_size) return NULL;
    void *p = g_heap + g_heap_used;
    g_last_alloc = g_heap_used;
    g_heap_used = end;
    if (end > g_heap_peak) g_heap_peak = end;
    return p;
}

void rt_free(void *p)
{
    if (p && (uint8_t *)p == g_heap + g_last_alloc) g_heap_used = g_last_alloc;
}

uint64_t rt_heap_mark(void) { return g_heap_used; }
void rt_heap_release(uint64_t mark)
{
    if (mark <= g_heap_used) g_heap_used = mark;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || !*s || *end) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    uint32_t nargs = 0, snapshot = 0;
    uint64_t ram = LIMIT_RAM_DEFAULT;
    g_params.magic = PARAMS_MAGIC;
    g_params.abi_version = ABI_VERSION;
    g_params.op = HOST_OP;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--arg") && i + 1 < argc) {
            if (nargs >= 8 || parse_u64(argv[++i], &g_params.arg[nargs++])) goto usage;
        } else if (!strcmp(argv[i], "--flags") && i + 1 < argc) {
            uint64_t f;
            if (parse_u64(argv[++i], &f) || f > UINT32_MAX) goto usage;
            g_params.flags = (uint32_t)f;
        } else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "-O")) && i + 1 < argc) {
            int trunc = argv[i][1] == 'o' ? O_TRUNC : 0;
            g_out_fd = open(argv[++i], O_WRONLY | O_CREAT | trunc | O_CLOEXEC, 0644);
            if (g_out_fd < 0) {
                perror(argv[i]);
                return 1;
            }
            if (!g_params.output_cap) g_params.output_cap = 1ull << 40;
        } else if (!strcmp(argv[i], "--cap") && i + 1 < argc) {
            if (parse_u64(argv[++i], &g_params.output_cap)) goto usage;
        } else if (!strcmp(argv[i], "--snapshot") && i + 1 < argc) {
            uint64_t v;
            if (parse_u64(argv[++i], &v) || v > UINT32_MAX) goto usage;
            snapshot = (uint32_t)v; /* params.input_snapshot of the next input */
        } else if (!strcmp(argv[i], "--kdf-max-iters") && i + 1 < argc) {
            if (parse_u64(argv[++i], &g_params.kdf_max_iters)) goto usage;
        } else if (!strcmp(argv[i], "--secrets-stdin")) {
            /* params.secret_inputs, input_secret_len then secret, as the VMM
             * would write them: passphrases never travel in argv. */
            uint8_t *dst = (uint8_t *)&g_params.secret_inputs;
            size_t want = sizeof g_params.secret_inputs, got = 0;
            while (got < want) {
                ssize_t n = read(0, dst + got, want - got);
                if (n <= 0) goto usage;
                got += (size_t)n;
            }
            dst = (uint8_t *)g_params.input_secret_len, want = sizeof g_params.input_secret_len, got = 0;
            while (got < want) {
                ssize_t n = read(0, dst + got, want - got);
                if (n <= 0) goto usage;
                got += (size_t)n;
            }
            dst = g_params.secret, want = sizeof g_params.secret, got = 0;
            while (got < want) {
                ssize_t n = read(0, dst + got, want - got);
                if (n <= 0) goto usage;
                got += (size_t)n;
            }
        } else if (!strcmp(argv[i], "--ram") && i + 1 < argc) {
            if (parse_u64(argv[++i], &ram) || ram < LIMIT_RAM_MIN || ram > LIMIT_RAM_MAX) goto usage;
        } else {
            const char *colon = strchr(argv[i], ':');
            if (!colon || g_params.n_inputs >= LIMIT_MAX_INPUTS) goto usage;
            size_t fl = (size_t)(colon - argv[i]);
            uint32_t fmt;
            if (fl == 3 && !strncmp(argv[i], "raw", 3)) fmt = FMT_RAW;
            else if (fl == 5 && !strncmp(argv[i], "qcow2", 5)) fmt = FMT_QCOW2;
            else if (fl == 4 && !strncmp(argv[i], "auto", 4)) fmt = FMT_AUTO;
            else if (fl == 3 && !strncmp(argv[i], "vpc", 3)) fmt = FMT_VPC;
            else if (fl == 4 && !strncmp(argv[i], "vhdx", 4)) fmt = FMT_VHDX;
            else if (fl == 1 && argv[i][0] >= '0' && argv[i][0] <= '9') fmt = (uint32_t)(argv[i][0] - '0');
            else goto usage;
            int fd = open(colon + 1, O_RDONLY | O_CLOEXEC);
            struct stat st;
            if (fd < 0 || fstat(fd, &st) < 0) {
                perror(colon + 1);
                return 1;
            }
            uint32_t k = g_params.n_inputs++;
            g_fds[k] = fd;
            g_inputs[k].size = (uint64_t)st.st_size;
            /* a block device (convert -n into a LUKS volume): its size as the VMM's BLKGETSIZE64 gives it */
            if (S_ISBLK(st.st_mode)) {
                off_t end = lseek(fd, 0, SEEK_END);
                g_inputs[k].size = end > 0 ? (uint64_t)end : 0;
            }
            g_inputs[k].alloc = (uint64_t)st.st_blocks * 512;
            g_inputs[k].format = fmt;
            g_inputs[k].snapshot = snapshot;
            if (k < LIMIT_PARAM_INPUTS) {
                g_params.input_size[k] = g_inputs[k].size;
                g_params.input_alloc[k] = g_inputs[k].alloc;
                g_params.input_format[k] = fmt;
                g_params.input_snapshot[k] = snapshot;
            }
            snapshot = 0;
        }
    }
    /* no input: only luks_write (a new image, or its PBKDF2 benchmark) */
    if (g_params.n_inputs == 0 && HOST_OP != OP_LUKS_WRITE) goto usage;
    g_params.ram_size = ram;
    g_heap_size = ram - LAYOUT_HEAP;
    g_heap = malloc(g_heap_size);
    if (!g_heap) return 1;
    hc_done(op_main() == 0 ? GUEST_OK : GUEST_ERROR);
usage:
    fprintf(stderr, "usage: %s [--arg N]... [--flags N] [--ram BYTES] [-o|-O PATH [--cap BYTES]] FMT:PATH...\n", argv[0]);
    return 2;
}
