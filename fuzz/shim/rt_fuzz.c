/*
 * guest/include/rt.h over a memory buffer, for the fuzz targets (see
 * fuzz_rt.h). What the VMM would treat as the guest misbehaving (a READ
 * outside the input, a WRITE with no output attached, a malformed record)
 * aborts here: for a fuzz target that is a finding, not an error path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "rt.h"
#include "reader.h"
#include "fuzz_rt.h"

/* The guest heap is guest RAM minus the fixed layout below LAYOUT_HEAP; the
 * same budget here makes "out of memory" happen where it would in the VM. */
#define FUZZ_HEAP_BYTES (LIMIT_RAM_DEFAULT - LAYOUT_HEAP)

static struct params g_params;
static const uint8_t *g_data;
static const struct reader *g_reader; /* input 0 through a reader (fuzz_rt_begin_reader) */
static uint64_t g_records;
static uint64_t g_out_cap; /* 0: no output attached (fuzz_rt_allow_writes) */

struct alloc {
    void *p;
    uint64_t size;
};
static struct alloc *g_allocs;
static uint64_t g_n_allocs, g_cap_allocs, g_heap_used;

_Noreturn void fuzz_rt_fail(const char *what, uint64_t a, uint64_t b)
{
    fprintf(stderr, "==%d== ERROR: instar fuzz runtime: %s (%llu, %llu)\n", (int)getpid(), what,
            (unsigned long long)a, (unsigned long long)b);
    abort();
}

const struct params *rt_params(void) { return &g_params; }
/* The input table (layout.INPUTS in the VM): entry 0 mirrors params. */
static struct input_entry g_inputs[LIMIT_MAX_INPUTS];
const struct input_entry *rt_input(uint32_t i) { return &g_inputs[i]; }

void fuzz_rt_begin(const uint8_t *data, size_t size, uint32_t format)
{
    memset(&g_params, 0, sizeof g_params);
    g_params.magic = PARAMS_MAGIC;
    g_params.abi_version = ABI_VERSION;
    g_params.n_inputs = 1;
    g_params.ram_size = LIMIT_RAM_DEFAULT;
    g_params.input_size[0] = size;
    g_params.input_format[0] = format;
    /* A memory buffer has no holes: every byte counts as allocated. */
    g_params.input_alloc[0] = (size + 511) & ~511ull;
    g_inputs[0] = (struct input_entry){.size = size, .alloc = g_params.input_alloc[0], .format = format};
    g_data = data;
    g_reader = NULL;
    g_records = 0;
    g_out_cap = 0;
    fuzz_rt_end();
}

void fuzz_rt_begin_reader(const struct reader *r, uint32_t format)
{
    fuzz_rt_begin(NULL, r->size, format);
    g_reader = r;
}

uint64_t fuzz_rt_records(void) { return g_records; }

void rt_heap_release(uint64_t mark)
{
    while (g_n_allocs > mark) {
        struct alloc *a = &g_allocs[--g_n_allocs];
        g_heap_used -= a->size;
        free(a->p);
    }
}

void fuzz_rt_end(void) { rt_heap_release(0); }

uint64_t rt_heap_mark(void) { return g_n_allocs; }

void *rt_alloc(uint64_t size)
{
    uint64_t used;
    if (__builtin_add_overflow(g_heap_used, size, &used) || used > FUZZ_HEAP_BYTES) return NULL;
    if (g_n_allocs == g_cap_allocs) {
        uint64_t cap = g_cap_allocs ? g_cap_allocs * 2 : 64;
        struct alloc *n = realloc(g_allocs, cap * sizeof *n);
        if (!n) return NULL;
        g_allocs = n;
        g_cap_allocs = cap;
    }
    /* malloc(0) may return NULL; the guest allocator never does. */
    void *p = malloc(size ? size : 1);
    if (!p) return NULL;
    g_allocs[g_n_allocs++] = (struct alloc){p, size};
    g_heap_used = used;
    return p;
}

void rt_free(void *p)
{
    if (p && g_n_allocs && g_allocs[g_n_allocs - 1].p == p) rt_heap_release(g_n_allocs - 1);
}

int64_t hc_read(uint32_t input, uint64_t off, uint64_t len, void *buf)
{
    uint64_t end;
    if (input >= g_params.n_inputs || __builtin_add_overflow(off, len, &end) || end > g_params.input_size[input])
        fuzz_rt_fail("READ outside the input", off, len);
    if (g_reader) {
        if (g_reader->read(g_reader->ctx, off, buf, len)) return -1;
        return (int64_t)len;
    }
    memcpy(buf, g_data + off, len);
    return (int64_t)len;
}

int64_t hc_readv(uint32_t input, const struct io_seg *segs, uint32_t n)
{
    uint64_t total = 0;
    if (n == 0 || n > LIMIT_IO_SEGS_MAX) fuzz_rt_fail("READV segment count", n, 0);
    for (uint32_t i = 0; i < n; i++) {
        if (__builtin_add_overflow(total, segs[i].len, &total) || total > LIMIT_IO_MAX)
            fuzz_rt_fail("READV too long", total, segs[i].len);
        hc_read(input, segs[i].off, segs[i].len, (void *)(uintptr_t)segs[i].addr);
    }
    return (int64_t)total;
}

/* No output is attached unless the target set a cap (fuzz_rt_allow_writes): the
 * VMM would refuse any write, or one past the cap. The bytes are dropped. */

void fuzz_rt_allow_writes(uint64_t cap) { g_out_cap = cap; }

static void check_write(uint64_t off, uint64_t len)
{
    uint64_t end;
    if (!g_out_cap) fuzz_rt_fail("WRITE with no output attached", off, len);
    if (__builtin_add_overflow(off, len, &end) || end > g_out_cap) fuzz_rt_fail("WRITE past the output cap", off, len);
}

int64_t hc_write(uint64_t off, uint64_t len, const void *buf)
{
    (void)buf;
    check_write(off, len);
    return (int64_t)len;
}

int64_t hc_writev(const struct io_seg *segs, uint32_t n)
{
    if (n > LIMIT_IO_SEGS_MAX) fuzz_rt_fail("WRITEV with too many segments", n, 0);
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        check_write(segs[i].off, segs[i].len);
        total += segs[i].len;
    }
    if (total > LIMIT_IO_MAX) fuzz_rt_fail("WRITEV over the hypercall's limit", total, 0);
    return (int64_t)total;
}

/* A memory buffer is all data: the next hole is its end. */
int64_t hc_seek(uint32_t input, uint64_t off, uint32_t kind)
{
    if (input >= g_params.n_inputs) fuzz_rt_fail("SEEK on a missing input", input, 0);
    uint64_t size = g_params.input_size[input];
    if (off >= size) return (int64_t)size;
    return kind == SEEK_KIND_DATA ? (int64_t)off : (int64_t)size;
}

int64_t hc_extents(uint32_t input, uint64_t off, uint64_t len, struct extent *out)
{
    uint64_t end;
    if (input >= g_params.n_inputs || __builtin_add_overflow(off, len, &end) || end > g_params.input_size[input])
        fuzz_rt_fail("EXTENTS outside the input", off, len);
    if (len == 0) return 0;
    out[0].off = off;
    out[0].len = len;
    return 1;
}

void hc_progress(uint64_t done, uint64_t total)
{
    (void)done;
    (void)total;
}

void hc_log(const char *s) { (void)s; }

_Noreturn void hc_done(uint64_t status) { fuzz_rt_fail("hc_done called by a parser", status, 0); }

/* Records go nowhere, but their shape is what the VMM checks before the
 * host reads them, so a malformed one is a finding. */
int rt_emit(const void *rec, uint32_t size)
{
    if (size < 8 || size % 8 || size > LIMIT_RECORD_MAX) fuzz_rt_fail("malformed record", size, 0);
    /* Touch every byte so ASan sees a record built from a short buffer. */
    volatile uint8_t sink = 0;
    for (uint32_t i = 0; i < size; i++) sink ^= ((const uint8_t *)rec)[i];
    (void)sink;
    g_records++;
    return 0;
}

void rt_flush(void) {}
