/*
 * snapshot_scan: the metadata scan behind `snapshot -c/-a/-d` of a qcow2
 * image the host parses no bytes of (guest/qcow2/snapshot_scan.c).
 * arg[0] = 1 + the snapshot whose L1 table to walk (0: none);
 * arg[1] = SNAPSCAN_F_* (ACTIVE_L1: walk the active L1 table too).
 */
#include "../qcow2/snapshot_scan.h"
#include "../probe/probe.h"

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs != 1 || p->input_format[0] != FMT_QCOW2) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    static struct reader r;
    reader_from_input(&r, 0);
    if (probe_input(&r, FMT_QCOW2) < 0) return -1;
    return qcow2_snapshot_scan(&r);
}
