/*
 * resize_scan: the metadata scan behind `resize` of an image the host
 * parses no bytes of. Input 0's requested format picks the format's scan
 * (the host resizes raw files itself):
 *   qcow2  guest/qcow2/resize_scan.c
 *   vpc    guest/vpc/resize_scan.c
 *   vhdx   guest/vhdx/resize_scan.c
 *   vmdk   guest/vmdk/resize_scan.c
 * arg[0] = the new virtual size in bytes (the host validated it; qcow2);
 * arg[1] bit 0: check the grown range (qcow2, preallocation=metadata).
 */
#include "../qcow2/resize_scan.h"
#include "../vpc/resize_scan.h"
#include "../vhdx/resize_scan.h"
#include "../vmdk/resize_scan.h"
#include "../probe/probe.h"

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs != 1) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    uint32_t fmt = p->input_format[0];
    if (fmt != FMT_QCOW2 && fmt != FMT_VPC && fmt != FMT_VHDX && fmt != FMT_VMDK) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    static struct reader r;
    reader_from_input(&r, 0);
    if (probe_input(&r, fmt) < 0) return -1;
    if (fmt == FMT_VPC) return vpc_resize_scan(&r);
    if (fmt == FMT_VHDX) return vhdx_resize_scan(&r);
    if (fmt == FMT_VMDK) return vmdk_resize_scan(&r);
    return qcow2_resize_scan(&r, p->arg[0]);
}
