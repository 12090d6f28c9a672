/* arg[0] progress hypercalls, then arg[1] log hypercalls of 4 KiB each, then
 * arg[2] result flushes of one small record each. */
#include "hostile.h"

static char line[4096];

int op_main(void)
{
    for (uint64_t i = 0; i < arg(0); i++)
        hc_progress(i, arg(0));
    for (unsigned i = 0; i < sizeof line - 1; i++)
        line[i] = 'a' + (char)(i % 26);
    for (uint64_t i = 0; i < arg(1); i++)
        hc_log(line);
    struct rec_raw_info r;
    memset(&r, 0, sizeof r);
    struct rec_header h = { .type = REC_RAW_INFO, .size = sizeof r };
    memcpy(r.hdr, &h, sizeof h);
    for (uint64_t i = 0; i < arg(2); i++) {
        r.input = (uint32_t)i;
        raw_hcall(HC_RESULT, (uint64_t)(uintptr_t)&r, sizeof r, 0, 0);
    }
    return 0;
}
