/*
 * Fuzz-target helper: recomputes the VHD footer checksum at `base` of a
 * mutable input copy (bytes past `size` read as zero, as vpc_open reads
 * them), so mutations of footer fields get past the checksum check. Shared
 * by fuzz/targets/vpc.c and measure_scan.c.
 */
#ifndef INSTAR_FUZZ_VPC_CHECKSUM_H
#define INSTAR_FUZZ_VPC_CHECKSUM_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline void fix_vpc_checksum(uint8_t *d, size_t size, size_t base)
{
    uint8_t *f = d + base;
    if (base + 68 > size || memcmp(f, "conectix", 8)) return;
    uint32_t sum = 0;
    for (size_t i = 0; i < 512 && base + i < size; i++)
        if (i < 64 || i >= 68) sum += f[i];
    sum = ~sum;
    f[64] = (uint8_t)(sum >> 24);
    f[65] = (uint8_t)(sum >> 16);
    f[66] = (uint8_t)(sum >> 8);
    f[67] = (uint8_t)sum;
}
#endif
