/*
 * Result records: staged in [LAYOUT_RESULT, LAYOUT_RESULT_END) and handed to
 * the host with one HC_RESULT per full buffer (VM exits are expensive, so
 * never one per record).
 */
#include "rt.h"

int64_t rt_hc_result(const void *buf, uint64_t len);

#define STAGE ((uint8_t *)(uintptr_t)LAYOUT_RESULT)
#define STAGE_SIZE (LAYOUT_RESULT_END - LAYOUT_RESULT)

static uint64_t staged;

void rt_flush(void)
{
    if (staged) {
        rt_hc_result(STAGE, staged);
        staged = 0;
    }
}

int rt_emit(const void *rec, uint32_t size)
{
    if (size < sizeof(struct rec_header) || size % 8 || size > LIMIT_RECORD_MAX)
        return -1;
    const uint8_t *b = rec;
    uint32_t hdr_size = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
    if (hdr_size != size)
        return -1;
    if (STAGE_SIZE - staged < size)
        rt_flush();
    memcpy(STAGE + staged, rec, size);
    staged += size;
    return 0;
}
