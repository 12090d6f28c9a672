/*
 * Host-side file plumbing: range operations on files the host opened (splitting a
 * convert across guests, preallocation). Only regular files, only the paths the
 * host names; no guest is involved.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmm_internal.h"

/*
 * Opens `path` read-write for a range operation on [off, off+len): the range
 * must fit an off_t, the path must not be a symlink and must name a regular
 * file. Returns the fd, or -errno; *st receives its fstat().
 */
static int open_range(const char *path, uint64_t off, uint64_t len, struct stat *st)
{
    uint64_t end;
    if (!path || __builtin_add_overflow(off, len, &end) || end > (uint64_t)INT64_MAX)
        return -EINVAL;
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    if (fstat(fd, st) || !S_ISREG(st->st_mode)) {
        close(fd);
        return -EINVAL;
    }
    return fd;
}

/*
 * Removes [off, off+len) from a regular file, moving what follows down
 * (fallocate FALLOC_FL_COLLAPSE_RANGE: a metadata operation on ext4/xfs).
 * Two convert guests write into one file with a worst-case gap between
 * their halves; collapsing the gap beats copying the second half. The
 * caller falls back to leaving the gap (a hole) when this fails.
 */
VMM_EXPORT int vmm_collapse_range(const char *path, uint64_t off, uint64_t len)
{
    struct stat st;
    int fd = open_range(path, off, len, &st);
    if (fd < 0)
        return fd;
    int rc = fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, (off_t)off, (off_t)len) ? -errno : 0;
    close(fd);
    return rc;
}

/*
 * Allocates [off, off+len) of a regular file with posix_fallocate, as
 * qemu's file-posix does for preallocation=falloc (the range reads as
 * zeroes and its blocks are reserved; the file grows to off+len). The file
 * must still be the one the caller stat()ed (dev, ino): the path is opened
 * again here. Returns 0 or -errno.
 */
VMM_EXPORT int vmm_preallocate(const char *path, uint64_t off, uint64_t len, uint64_t dev, uint64_t ino)
{
    if (len == 0)
        return -EINVAL;
    struct stat st;
    int fd = open_range(path, off, len, &st);
    if (fd < 0)
        return fd;
    int rc;
    if ((uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino)
        rc = -ESTALE;
    else
        rc = -posix_fallocate(fd, (off_t)off, (off_t)len); /* returns the error, sets no errno */
    close(fd);
    return rc;
}

/*
 * Punches [off, off+len) out of a regular file, keeping its size (fallocate
 * PUNCH_HOLE | KEEP_SIZE): what qemu's file-posix does for a discard, which
 * qcow2 sends for clusters a shrink frees. Same identity check as above.
 * Returns 0 or -errno.
 */
VMM_EXPORT int vmm_punch_hole(const char *path, uint64_t off, uint64_t len, uint64_t dev, uint64_t ino)
{
    if (len == 0)
        return -EINVAL;
    struct stat st;
    int fd = open_range(path, off, len, &st);
    if (fd < 0)
        return fd;
    int rc;
    if ((uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino)
        rc = -ESTALE;
    else
        rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) ? -errno : 0;
    close(fd);
    return rc;
}
