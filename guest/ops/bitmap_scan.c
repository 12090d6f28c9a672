/*
 * bitmap_scan: the metadata behind `bitmap` (qcow2 persistent dirty
 * bitmaps) of an image the host parses no bytes of: guest/qcow2/bitmap_scan.c.
 * Input 0 is the qcow2 image. arg[0] = 0: the scan; 1: a merge
 * (qcow2_bitmap_merge, input 1 the -b source when arg[3] = 1); 2: the scan
 * with set bits judged against arg[1] bytes (resize --shrink).
 */
#include "../qcow2/bitmap_scan.h"
#include "../probe/probe.h"

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs < 1 || p->n_inputs > 2 || p->input_format[0] != FMT_QCOW2) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    static struct reader r, s;
    reader_from_input(&r, 0);
    if (probe_input(&r, FMT_QCOW2) < 0) return -1;
    if (p->arg[0] == 0 || p->arg[0] == 2) {
        if (p->n_inputs != 1) return rt_error(0, GERR_BAD_PARAMS, 0, 1, 0);
        return qcow2_bitmap_scan(&r, p->arg[0] == 2 ? p->arg[1] : UINT64_MAX);
    }
    if (p->arg[0] != 1) return rt_error(0, GERR_BAD_PARAMS, 0, 2, 0);
    if (p->n_inputs == 2) {
        if (p->input_format[1] != FMT_QCOW2) return rt_error(0, GERR_BAD_PARAMS, 0, 3, 0);
        reader_from_input(&s, 1);
        if (probe_input(&s, FMT_QCOW2) < 0) return -1;
    }
    return qcow2_bitmap_merge(&r, p->n_inputs == 2 ? &s : 0);
}
