/* convert with the zstd compressor from an encrypted qcow2 source, LUKS or
 * AES, over qcow2 or raw backing files (see convert.c, guest/ops.mk). */
#define CONVERT_ZSTD 1
#include "convert.c"
