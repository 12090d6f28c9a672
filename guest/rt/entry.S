/*
 * Guest entry: the first byte of every flat guest binary (guest.ld puts
 * .text.entry first, at LAYOUT_CODE). The VMM starts us at CPL3 with RSP at
 * LAYOUT_STACK_TOP. A flat binary carries no .bss, so zero it here before
 * any C code runs.
 */
    .section .text.entry, "ax"
    .globl _start
_start:
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    cld
    rep stosb
    and $-16, %rsp
    xor %ebp, %ebp
    call rt_start
    ud2 /* rt_start never returns; if it did, crash visibly */

    .section .note.GNU-stack, "", @progbits
