/*
 * convert_zstd must fit in 384 KiB with every reader linked (qcow2, vpc,
 * vhdx, vmdk). zlib's crc32.o (~13 KiB: crc32_z and its 9 KiB of tables) is
 * linked only because inflate.c and deflate.c name crc32() for gzip
 * wrappers; the guest never uses one: qcow2 clusters are raw deflate
 * (windowBits -12) and vmdk grains zlib-wrapped (adler32). This stand-in
 * keeps crc32.o out of that program and traps (a guest fault, never wrong
 * output) if a gzip stream ever reached it.
 */
unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len);
unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len)
{
    (void)crc;
    (void)buf;
    (void)len;
    for (;;) __asm__ volatile("ud2");
}
