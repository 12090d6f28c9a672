/* Helpers to fill result records (header + fields) before rt_emit. */
#ifndef INSTAR_OPS_RECORDS_H
#define INSTAR_OPS_RECORDS_H
#include "rt.h"

/* Little-endian header: type then size (abi rec_header). */
static inline void rec_set_header(void *rec, uint32_t type, uint32_t size)
{
    uint8_t *h = rec;
    for (int i = 0; i < 4; i++) {
        h[i] = (uint8_t)(type >> (8 * i));
        h[4 + i] = (uint8_t)(size >> (8 * i));
    }
}

static inline void rec_init(void *rec, uint32_t type, uint32_t size)
{
    memset(rec, 0, size);
    rec_set_header(rec, type, size);
}

static inline int emit_name(uint32_t input, uint16_t kind, const uint8_t *bytes, uint16_t len)
{
    static struct rec_name n;
    rec_init(&n, REC_NAME, sizeof n);
    n.input = input;
    n.kind = kind;
    n.len = len;
    memcpy(n.bytes, bytes, len);
    return rt_emit(&n, sizeof n);
}

static inline int emit_check_msg(uint32_t input, uint32_t code, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3)
{
    struct rec_check_msg m;
    rec_init(&m, REC_CHECK_MSG, sizeof m);
    m.code = code;
    m.input = input;
    m.a[0] = a0;
    m.a[1] = a1;
    m.a[2] = a2;
    m.a[3] = a3;
    return rt_emit(&m, sizeof m);
}

#endif
