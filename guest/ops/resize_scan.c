/*
 * resize_scan: the metadata scan behind `resize` of an image the host
 * parses no bytes of. qcow2 only (the host resizes raw files itself): probe
 * input 0 as qcow2, then guest/qcow2/resize_scan.c.
 * arg[0] = the new virtual size in bytes (the host validated it);
 * arg[1] bit 0: check the grown range (preallocation=metadata).
 */
#include "../qcow2/resize_scan.h"
#include "../probe/probe.h"

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs != 1 || p->input_format[0] != FMT_QCOW2) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    static struct reader r;
    reader_from_input(&r, 0);
    if (probe_input(&r, FMT_QCOW2) < 0) return -1;
    return qcow2_resize_scan(&r, p->arg[0]);
}
