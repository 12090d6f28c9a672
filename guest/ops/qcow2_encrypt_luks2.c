/* qcow2_encrypt with a LUKS2 source (guest/ops.mk qcow2_encrypt_luks2): no INTO mode. */
#define QE_NO_INTO 1
#include "qcow2_encrypt.c"
