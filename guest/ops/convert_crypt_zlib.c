/* convert with the zlib compressor (qcow2 -c, streamOptimized vmdk) from an
 * encrypted source: LUKS1, LUKS2, qcow2 LUKS or AES (see convert.c, guest/ops.mk). */
#define CONVERT_ZLIB 1
#include "convert.c"
