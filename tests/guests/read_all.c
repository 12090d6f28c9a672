/* Reads all of input 0 in chunks of arg[0] bytes (through the runtime's
 * hc_read) and reports a checksum of its 64-bit little-endian words (sum of
 * word * (index + 1), mod 2^64) in an ERROR record (code INTERNAL, a0 =
 * checksum, a1 = bytes read). The input size must be a multiple of 8. */
#include "hostile.h"

int op_main(void)
{
    const struct params *p = rt_params();
    uint64_t chunk = arg(0), size = p->input_size[0], sum = 0, idx = 0;
    if (p->n_inputs < 1 || chunk == 0 || chunk % 8 || size % 8)
        return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    uint64_t *buf = rt_alloc(chunk);
    if (!buf)
        return rt_error(0, GERR_OUT_OF_MEMORY, chunk, 0, 0);
    for (uint64_t off = 0; off < size; off += chunk) {
        uint64_t n = size - off < chunk ? size - off : chunk;
        if (hc_read(0, off, n, buf) != (int64_t)n)
            return rt_error(0, GERR_IO, off, 0, 0);
        for (uint64_t i = 0; i < n / 8; i++)
            sum += buf[i] * ++idx;
        hc_progress(off + n, size);
    }
    rt_error(0, GERR_INTERNAL, sum, size, 0);
    return 0;
}
