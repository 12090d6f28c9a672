/*
 * check: probe input 0 and run its format's check. Raw inputs get RAW_INFO
 * and no check records (the host prints that the format does not support
 * checks); qcow2 runs guest/qcow2/check.c, vhdx guest/vhdx's vhdx_check,
 * vmdk guest/vmdk/check.c (its extent files are the inputs after 0).
 */
#include "../qcow2/check.h"
#include "../probe/probe.h"
#include "../vhdx/vhdx.h"
#include "../vmdk/vmdk.h"

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs < 1 || rt_input(0)->format > FMT_VMDK) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    static struct reader r;
    reader_from_input(&r, 0);
    int fmt = probe_input(&r, rt_input(0)->format);
    if (fmt < 0) return -1;
    if (fmt == FMT_RAW) return raw_emit_info(&r);
    if (fmt == FMT_VHDX) return vhdx_check(&r);
    if (fmt == FMT_VMDK) return vmdk_check(&r);
    if (fmt != FMT_QCOW2) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0); /* the host knows vpc has no check */
    return qcow2_check(&r);
}
