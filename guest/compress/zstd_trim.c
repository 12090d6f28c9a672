/*
 * convert_zstd must fit in 384 KiB, and Debian's libzstd.a would bring every
 * compression strategy (~250 KiB of lazy/optimal block compressors) and the
 * legacy v0.5-v0.7 decoders (~90 KiB). The guest Makefile links that archive
 * without those members (build/guest-obj/libzstd_min.a) and this file stands
 * in for the symbols they defined.
 *
 * Why this is safe: qemu compresses clusters at zstd's default level (3),
 * whose parameters for every cluster size (<= 2 MiB) select the dfast
 * strategy, so the lazy/opt compressors are never chosen; long-distance
 * matching is off by default (ldm stays linked, its sizing functions are
 * called). The stand-ins trap (a guest fault, never wrong output) if that
 * ever stops being true. Legacy frames make the decoder's legacy entry
 * points fail cleanly: such a cluster reads as an I/O error in this program
 * (documented in docs/quirks.md).
 */
#include <stddef.h>

#define TRAP(name) \
    void name(void); \
    void name(void) { for (;;) __asm__ volatile("ud2"); }

TRAP(ZSTD_compressBlock_btlazy2)
TRAP(ZSTD_compressBlock_btlazy2_dictMatchState)
TRAP(ZSTD_compressBlock_btlazy2_extDict)
TRAP(ZSTD_compressBlock_btopt)
TRAP(ZSTD_compressBlock_btopt_dictMatchState)
TRAP(ZSTD_compressBlock_btopt_extDict)
TRAP(ZSTD_compressBlock_btultra)
TRAP(ZSTD_compressBlock_btultra2)
TRAP(ZSTD_compressBlock_btultra_dictMatchState)
TRAP(ZSTD_compressBlock_btultra_extDict)
TRAP(ZSTD_compressBlock_greedy)
TRAP(ZSTD_compressBlock_greedy_dedicatedDictSearch)
TRAP(ZSTD_compressBlock_greedy_dedicatedDictSearch_row)
TRAP(ZSTD_compressBlock_greedy_dictMatchState)
TRAP(ZSTD_compressBlock_greedy_dictMatchState_row)
TRAP(ZSTD_compressBlock_greedy_extDict)
TRAP(ZSTD_compressBlock_greedy_extDict_row)
TRAP(ZSTD_compressBlock_greedy_row)
TRAP(ZSTD_compressBlock_lazy)
TRAP(ZSTD_compressBlock_lazy2)
TRAP(ZSTD_compressBlock_lazy2_dedicatedDictSearch)
TRAP(ZSTD_compressBlock_lazy2_dedicatedDictSearch_row)
TRAP(ZSTD_compressBlock_lazy2_dictMatchState)
TRAP(ZSTD_compressBlock_lazy2_dictMatchState_row)
TRAP(ZSTD_compressBlock_lazy2_extDict)
TRAP(ZSTD_compressBlock_lazy2_extDict_row)
TRAP(ZSTD_compressBlock_lazy2_row)
TRAP(ZSTD_compressBlock_lazy_dedicatedDictSearch)
TRAP(ZSTD_compressBlock_lazy_dedicatedDictSearch_row)
TRAP(ZSTD_compressBlock_lazy_dictMatchState)
TRAP(ZSTD_compressBlock_lazy_dictMatchState_row)
TRAP(ZSTD_compressBlock_lazy_extDict)
TRAP(ZSTD_compressBlock_lazy_extDict_row)
TRAP(ZSTD_compressBlock_lazy_row)
TRAP(ZSTD_dedicatedDictSearch_lazy_loadDictionary)
TRAP(ZSTD_insertAndFindFirstIndex)
TRAP(ZSTD_row_update)
TRAP(ZSTD_updateTree)

/* Legacy decoders: creation fails (the caller reports an allocation
 * error), every size-returning call returns zstd's generic error code. */
#define ZERR ((size_t)-1)
#define LEGACY(v) \
    void *ZBUFF##v##_createDCtx(void); \
    void *ZBUFF##v##_createDCtx(void) { return NULL; } \
    size_t ZBUFF##v##_freeDCtx(void *p); \
    size_t ZBUFF##v##_freeDCtx(void *p) { (void)p; return 0; } \
    size_t ZBUFF##v##_decompressInitDictionary(void *c, const void *d, size_t n); \
    size_t ZBUFF##v##_decompressInitDictionary(void *c, const void *d, size_t n) { (void)c, (void)d, (void)n; return ZERR; } \
    size_t ZBUFF##v##_decompressContinue(void *c, void *d, size_t *dn, const void *s, size_t *sn); \
    size_t ZBUFF##v##_decompressContinue(void *c, void *d, size_t *dn, const void *s, size_t *sn) \
    { (void)c, (void)d, (void)dn, (void)s, (void)sn; return ZERR; } \
    void *ZSTD##v##_createDCtx(void); \
    void *ZSTD##v##_createDCtx(void) { return NULL; } \
    size_t ZSTD##v##_freeDCtx(void *p); \
    size_t ZSTD##v##_freeDCtx(void *p) { (void)p; return 0; } \
    size_t ZSTD##v##_decompress_usingDict(void *c, void *d, size_t dn, const void *s, size_t sn, const void *x, size_t xn); \
    size_t ZSTD##v##_decompress_usingDict(void *c, void *d, size_t dn, const void *s, size_t sn, const void *x, size_t xn) \
    { (void)c, (void)d, (void)dn, (void)s, (void)sn, (void)x, (void)xn; return ZERR; } \
    size_t ZSTD##v##_getFrameParams(void *p, const void *s, size_t n); \
    size_t ZSTD##v##_getFrameParams(void *p, const void *s, size_t n) { (void)p, (void)s, (void)n; return ZERR; } \
    void ZSTD##v##_findFrameSizeInfoLegacy(const void *s, size_t n, size_t *c, unsigned long long *b); \
    void ZSTD##v##_findFrameSizeInfoLegacy(const void *s, size_t n, size_t *c, unsigned long long *b) \
    { (void)s, (void)n; *c = ZERR; *b = (unsigned long long)-2; }

LEGACY(v05)
LEGACY(v06)
LEGACY(v07)
