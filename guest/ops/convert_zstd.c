/* convert with the zstd compressor (see convert.c). */
#define CONVERT_ZSTD 1
#include "convert.c"
