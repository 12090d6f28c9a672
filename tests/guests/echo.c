/* A well-behaved guest: reads the first and last 8 bytes of input 0 and
 * reports them with the input size in an ERROR record (code INTERNAL), the
 * SEEK_DATA/SEEK_HOLE answers from offset arg[1] in a MAP_EXTENT record,
 * logs a line, reports progress, and, when an output is attached, writes
 * the 16 bytes at offset arg[0]. */
#include "hostile.h"

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int op_main(void)
{
    const struct params *p = rt_params();
    uint8_t buf[16];
    memset(buf, 0, sizeof buf);
    if (p->n_inputs < 1 || p->input_size[0] < 8)
        return rt_error(0, GERR_BAD_PARAMS, p->n_inputs, 0, 0);
    uint64_t size = p->input_size[0];
    if (hc_read(0, 0, 8, buf) != 8 || hc_read(0, size - 8, 8, buf + 8) != 8)
        return rt_error(0, GERR_IO, 0, 0, 0);
    rt_error(0, GERR_INTERNAL, le64(buf), size, le64(buf + 8));

    struct rec_map_extent m;
    memset(&m, 0, sizeof m);
    struct rec_header h = { .type = REC_MAP_EXTENT, .size = sizeof m };
    memcpy(m.hdr, &h, sizeof h);
    m.start = (uint64_t)hc_seek(0, arg(1), SEEK_KIND_DATA);
    m.length = (uint64_t)hc_seek(0, arg(1), SEEK_KIND_HOLE);
    m.offset = p->op;
    m.flags = p->flags;
    rt_emit(&m, sizeof m);

    hc_log("echo guest says hello");
    hc_progress(3, 4);
    if (p->output_cap >= 16 && hc_write(arg(0), 16, buf) != 16)
        return rt_error(0, GERR_IO, 1, 0, 0);
    return 0;
}
