/* convert with the zstd compressor from a LUKS1 or LUKS2 source (see convert.c, guest/ops.mk). */
#define CONVERT_ZSTD 1
#include "convert.c"
