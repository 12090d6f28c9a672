/* qcow2's check algorithm (qemu 7.2's qcow2_co_check_locked, no repair). */
#ifndef INSTAR_QCOW2_CHECK_H
#define INSTAR_QCOW2_CHECK_H
#include "qcow2.h"

/* Checks the qcow2 image r (probed by the caller): CHECK_MSG records in
 * qemu's order, then one CHECK record. 0, or -1 after an ERROR record. */
int qcow2_check(const struct reader *r);
#endif
