/* convert with the zlib compressor (see convert.c). */
#define CONVERT_ZLIB 1
#include "convert.c"
