/* Holes of a host file, from the EXTENTS hypercall: file-posix's
 * block_status as convert and compare see it. */
#ifndef INSTAR_CHAIN_EXTENTS_H
#define INSTAR_CHAIN_EXTENTS_H
#include "reader.h"

/* The file's data extents inside [from, to), one EXTENTS call per window. */
struct file_extents {
    struct extent ext[LIMIT_EXTENTS_MAX];
    uint32_t n;
    uint32_t input; /* the file the window belongs to (a vmdk layer has several) */
    uint64_t from, to;
};

/*
 * Status of [off, off+len) of file r (len > 0): sets *n (0 < *n <= len) to
 * the leading run and returns CS_DATA or CS_ZERO (a hole, or past the end of
 * the file), each with CS_ALLOCATED | CS_OFFSET_VALID. -1 after an ERROR
 * record.
 */
int file_extents_status(struct file_extents *x, const struct reader *r, uint64_t off, uint64_t len, uint64_t *n);
#endif
