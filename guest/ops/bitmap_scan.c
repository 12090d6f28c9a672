/*
 * bitmap_scan: the metadata behind `bitmap` (qcow2 persistent dirty
 * bitmaps) of an image the host parses no bytes of: guest/qcow2/bitmap_scan.c.
 * Input 0 is the qcow2 image; no arguments.
 */
#include "../qcow2/bitmap_scan.h"
#include "../probe/probe.h"

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs != 1 || p->input_format[0] != FMT_QCOW2) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    static struct reader r;
    reader_from_input(&r, 0);
    if (probe_input(&r, FMT_QCOW2) < 0) return -1;
    return qcow2_bitmap_scan(&r);
}
