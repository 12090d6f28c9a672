/*
 * flatten: writes the whole virtual disk of input 0 (backing chain in inputs
 * 1..) as raw bytes to output 0, like `qemu-img convert -O raw`. A test and
 * benchmark of the read path, and groundwork for convert.
 * arg[0] = input index of the top layer's external data file, 0 = none.
 * All-zero 4 KiB blocks are not written so the output stays sparse; the
 * last sector is always written so the output has the full virtual size.
 */
#include "../qcow2/read.h"
#include "records.h"
#include "zero.h"

#define CHUNK (2ull << 20)
/* Zero runs shorter than this are written out, as qemu-img convert's
 * default min_sparse (4 KiB) does. */
#define SPARSE_BLOCK 4096ull

static struct qread_chain chain;

int op_main(void)
{
    const struct params *p = rt_params();
    uint64_t data_input = p->arg[0];
    if (data_input >= LIMIT_MAX_INPUTS) return rt_error(0, GERR_BAD_PARAMS, 3, data_input, 0);
    if (qread_open(&chain, (uint32_t)data_input)) return -1;
    uint64_t size = chain.size;
    if (size > p->output_cap) return rt_error(0, GERR_BAD_PARAMS, 4, size, p->output_cap);
    uint8_t *buf = rt_alloc(CHUNK);
    if (!buf) return rt_error(0, GERR_OUT_OF_MEMORY, CHUNK, 0, 0);
    for (uint64_t off = 0; off < size;) {
        uint64_t n = size - off < CHUNK ? size - off : CHUNK;
        if (qread_read(&chain, off, n, buf)) return -1;
        bool last = off + n == size;
        bool wrote_end = false;
        if (chain.read_data) {
            /* Write the runs of non-zero 4 KiB blocks, one write each. */
            uint64_t b = 0;
            while (b < n) {
                uint64_t k = n - b < SPARSE_BLOCK ? n - b : SPARSE_BLOCK;
                if (buf_is_zero(buf + b, k)) {
                    b += k;
                    continue;
                }
                uint64_t start = b;
                do {
                    b += k;
                    k = n - b < SPARSE_BLOCK ? n - b : SPARSE_BLOCK;
                } while (b < n && !buf_is_zero(buf + b, k));
                uint64_t w = b - start;
                if (hc_write(off + start, w, buf + start) != (int64_t)w) return rt_error(0, GERR_IO, off, n, 2);
                if (b == n) wrote_end = true;
            }
        }
        if (last && !wrote_end) {
            /* Give the output its full length with one small write. */
            uint64_t t = n < 512 ? n : 512;
            if (hc_write(off + n - t, t, buf + n - t) != (int64_t)t) return rt_error(0, GERR_IO, off, n, 2);
        }
        off += n;
        hc_progress(off, size);
    }
    return 0;
}
