/* Sends a malformed result stream straight through HC_RESULT (the runtime's
 * rt_emit would refuse these), chosen by arg[0]:
 *   0: an ERROR record claiming a huge size
 *   1: an ERROR record with the wrong (but aligned, small) size
 *   2: an unknown record type
 *   3: a truncated header at the end of the stream
 *   4: a NAME record whose len exceeds LIMIT_NAME_MAX
 *   5: more result bytes than the result cap (arg[1] bytes in 1 MiB calls) */
#include "hostile.h"

static uint8_t buf[2048];

int op_main(void)
{
    struct rec_header h = { 0, 0 };
    uint64_t len = 0;
    switch (arg(0)) {
    case 0:
        h = (struct rec_header){ REC_ERROR, 0xfffffff8u };
        len = 64;
        break;
    case 1:
        h = (struct rec_header){ REC_ERROR, 48 };
        len = 48;
        break;
    case 2:
        h = (struct rec_header){ 0x7777, 40 };
        len = 40;
        break;
    case 3:
        h = (struct rec_header){ REC_RAW_INFO, 16 };
        len = 20;
        memcpy(buf + 16, &h, 4);
        break;
    case 4: {
        struct rec_name *n = (struct rec_name *)buf;
        h = (struct rec_header){ REC_NAME, sizeof *n };
        n->kind = NAME_BACKING_FILE;
        n->len = 2000;
        len = sizeof *n;
        break;
    }
    case 5:
        for (uint64_t done = 0; done < arg(1); done += 1 << 20)
            raw_hcall(HC_RESULT, LAYOUT_HEAP, 1 << 20, 0, 0);
        return 0;
    }
    memcpy(buf, &h, sizeof h);
    raw_hcall(HC_RESULT, (uint64_t)(uintptr_t)buf, len, 0, 0);
    return 0;
}
