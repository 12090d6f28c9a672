/* Internal helpers shared by the guest/vhdx sources. */
#ifndef INSTAR_VHDX_INT_H
#define INSTAR_VHDX_INT_H
#include "vhdx.h"

/* ERROR(GERR_FORMAT, err, a1, a2); returns -1. */
int vhdx_fail(const struct vhdx *v, uint32_t err, uint64_t a1, uint64_t a2);
/* qemu's bdrv_pread of the image file: -1 after ERROR(VHDX_E_IO) when qemu's
 * block layer refuses the request; bytes past EOF read as zero. */
int vhdx_pread(const struct vhdx *v, uint64_t off, void *buf, uint64_t len);
/* vhdx_parse_log for a read-only open: 0 when no log needs replay. */
int vhdx_parse_log(struct vhdx *v);

#endif
