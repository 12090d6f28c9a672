/* qcow2_encrypt with a LUKS2 source (guest/ops.mk qcow2_encrypt_luks2): its
 * LUKS2 reader and Argon2 in place of the other readers; the INTO mode
 * (convert -n into an encrypted qcow2) opens the target with qcow2's header
 * and crypto-header parsers only. */
#include "qcow2_encrypt.c"
