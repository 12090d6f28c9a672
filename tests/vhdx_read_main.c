/*
 * Test-only op program (hosted build, see tests/vhdx_guest_test.ts): opens
 * input 0 through vhdx_layer_ops and writes the disk as raw to output 0,
 * reading each run the way block_status describes it (LS_ZERO: nothing
 * written, the output is sparse; LS_OFFSET_VALID: the bytes at *host). The
 * test compares the file with `qemu-img convert -O raw`.
 * arg[0] != 0 caps each block_status request at arg[0] bytes, so runs are
 * also asked for from unaligned positions.
 */
#include "chain/layer.h"
#include "vhdx/vhdx.h"


int op_main(void)
{
    static struct layer l;
    static uint8_t buf[1 << 20];
    const struct params *p = rt_params();
    uint64_t cap = p->arg[0];
    reader_from_input(&l.r, 0);
    l.ops = &vhdx_layer_ops;
    if (l.ops->open(&l)) return -1;
    uint64_t pos = 0;
    while (pos < l.length) {
        uint64_t want = l.length - pos, len = 0, host = 0;
        if (cap && want > cap) want = cap;
        int st = l.ops->block_status(&l, pos, want, &len, &host);
        if (st < 0) return -1;
        if (len == 0 || len > want) return rt_error(0, GERR_INTERNAL, pos, len, 0);
        if (st & LS_OFFSET_VALID) {
            for (uint64_t done = 0; done < len;) {
                uint64_t n = len - done < sizeof buf ? len - done : sizeof buf;
                if (reader_read(l.data, host + done, buf, n)) return rt_error(0, GERR_IO, host + done, n, 0);
                if (hc_write(pos + done, n, buf) != (int64_t)n) return rt_error(0, GERR_IO, pos + done, n, 1);
                done += n;
            }
        } else if (!(st & LS_ZERO)) {
            return rt_error(0, GERR_INTERNAL, pos, (uint64_t)st, 1);
        }
        pos += len;
    }
    return 0;
}
