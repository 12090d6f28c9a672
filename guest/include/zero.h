/* Zero detection for the data path (convert): 64-bit words, four
 * at a time, so the compiler can keep it in registers and vectorise it; a
 * byte loop only for a tail shorter than 32 bytes (a last partial sector). */
#ifndef INSTAR_ZERO_H
#define INSTAR_ZERO_H
#include <stdbool.h>
#include <stdint.h>

static inline bool buf_is_zero(const uint8_t *buf, uint64_t len)
{
    uint64_t i = 0;
    for (; i + 32 <= len; i += 32) {
        uint64_t a, b, c, d;
        __builtin_memcpy(&a, buf + i, 8);
        __builtin_memcpy(&b, buf + i + 8, 8);
        __builtin_memcpy(&c, buf + i + 16, 8);
        __builtin_memcpy(&d, buf + i + 24, 8);
        if (a | b | c | d) return false;
    }
    for (; i < len; i++)
        if (buf[i]) return false;
    return true;
}
#endif
