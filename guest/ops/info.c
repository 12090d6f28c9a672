/*
 * info: probe input 0, then describe it. qcow2 -> QCOW2_INFO + NAME records
 * (backing file and format, data file: reported, never opened), then one
 * SNAPSHOT record per internal snapshot and one BITMAP per bitmap; raw ->
 * RAW_INFO (the host computes the virtual size from the file size); vpc
 * (and each format like it) -> one IMAGE_INFO record; vmdk -> IMAGE_INFO,
 * its create type and parent hint (NAME) and one VMDK_EXTENT per extent.
 */
#include "../qcow2/qcow2.h"
#include "../probe/probe.h"
#include "../vpc/vpc.h"
#include "../vhdx/vhdx.h"
#include "../vmdk/vmdk.h"
#include "../luks/luks.h"
#include "../qcow2/crypt.h"
#include "../luks2/luks2.h"

int op_main(void)
{
    const struct params *p = rt_params();
    if (p->n_inputs < 1 || rt_input(0)->format > FMT_LUKS) return rt_error(0, GERR_BAD_PARAMS, 0, 0, 0);
    static struct reader r;
    reader_from_input(&r, 0);
    int fmt = probe_input(&r, rt_input(0)->format);
    if (fmt < 0) return -1;
    if (fmt == FMT_RAW) return raw_emit_info(&r);
    if (fmt == FMT_VPC) {
        static struct vpc v;
        return vpc_open(&v, &r) || vpc_emit_info(&v) ? -1 : 0;
    }
    if (fmt == FMT_VHDX) {
        static struct vhdx v;
        uint32_t mode = (p->flags & INFO_F_CHECK_MODE) ? VHDX_OPEN_CHECK : 0;
        return vhdx_open(&v, &r, mode) || vhdx_emit_info(&v) ? -1 : 0;
    }
    if (fmt == FMT_VMDK) {
        /* extent files, when the image names any, are the inputs after 0; a
         * first run with input 0 alone reports their names (VMDK_OPEN_SCAN) */
        static struct vmdk v;
        uint32_t mode = (p->n_inputs == 1 ? VMDK_OPEN_SCAN : 0) | ((p->flags & INFO_F_READ_WRITE) ? VMDK_OPEN_RW : 0);
        return vmdk_open(&v, &r, mode) || vmdk_emit_info(&v) ? -1 : 0;
    }
    if (fmt == FMT_LUKS) {
        /* qemu's info opens with QCRYPTO_BLOCK_OPEN_NO_IO: the header only, no key. */
        static struct luks k;
        uint8_t v[8];
        if (reader_read(&r, 0, v, sizeof v)) return rt_error(0, GERR_IO, 0, 0, 0);
        if (v[6] == 0 && v[7] == 2) {
            /* LUKS2 (qemu 7.2 has no reader): guest/luks2, the data segment checked against the file */
            static struct luks2 k2;
            return luks2_open_header(&k2, &r) || luks2_emit_info(&k2) ? -1 : 0;
        }
        if (luks_open_header(&k, &r)) return -1;
        /* block_crypto_co_getlength: -EIO when the payload starts past the end of the file */
        if (!(p->flags & INFO_F_READS_DATA) && (uint64_t)k.payload_offset_sector * LUKS_SECTOR > r.size)
            return rt_error(0, GERR_FORMAT, LUKS_E_PAYLOAD_PAST_EOF, 0, 0);
        return luks_emit_info(&k);
    }
    if (fmt != FMT_QCOW2) return rt_error(0, GERR_FORMAT, 0, 0, 0); /* linked without that parser */
    static struct qcow2 q;
    /* `check` opens its image through this op first; in check mode qemu
     * leaves snapshot-table and refcount-table problems to the check itself. */
    uint32_t mode = QCOW2_OPEN_NO_IO | ((p->flags & INFO_F_CHECK_MODE) ? QCOW2_OPEN_CHECK : 0);
    if (qcow2_open(&q, &r, mode)) return -1;
    if (qcow2_emit_info(&q) || qcow2_crypto_emit_info(&q)) return -1;
    if (p->flags & INFO_F_NO_LISTS) return 0;
    /* In check mode the snapshot table was not read (it may be the very thing
     * check reports); the bitmaps' in-use flags say whether check -r's
     * read-write open marks them (and rewrites the header). */
    if (!(mode & QCOW2_OPEN_CHECK) && qcow2_emit_snapshots(&q)) return -1;
    if (qcow2_emit_bitmaps(&q)) return -1;
    return 0;
}
