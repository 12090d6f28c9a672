/*
 * Host-side file plumbing: range operations on files the host opened (splitting a
 * convert across guests, preallocation). Only regular files, only the paths the
 * host names; no guest is involved.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vmm_internal.h"

/* vmm_file_range operations. */
enum { VMM_RANGE_ALLOCATE = 0, VMM_RANGE_PUNCH = 1 };

/*
 * Opens `path` read-write for a range operation on [off, off+len): the range
 * must fit an off_t, the path must not be a symlink and must name a regular
 * file. Returns the fd, or -errno; *st receives its fstat().
 */
/* "/proc/<this process>/fd/<n>": an unnamed output from vmm_tmpfile_open, reached through its magic link. */
static int own_fd_path(const char *path)
{
    char prefix[48];
    int n = snprintf(prefix, sizeof prefix, "/proc/%ld/fd/", (long)getpid());
    if (n <= 0 || (size_t)n >= sizeof prefix || strncmp(path, prefix, (size_t)n) != 0 || !path[n])
        return 0;
    for (const char *p = path + n; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return 1;
}

static int open_range(const char *path, uint64_t off, uint64_t len, struct stat *st)
{
    uint64_t end;
    if (!path || __builtin_add_overflow(off, len, &end) || end > (uint64_t)INT64_MAX)
        return -EINVAL;
    int fd = open(path, O_RDWR | O_CLOEXEC | (own_fd_path(path) ? 0 : O_NOFOLLOW));
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
 * A range operation on a regular file the caller stat()ed (dev, ino): the
 * path is opened again here, so a different file there is refused (ESTALE).
 *   VMM_RANGE_ALLOCATE: posix_fallocate, as qemu's file-posix does for
 *     preallocation=falloc (the range reads as zeroes, its blocks are
 *     reserved, the file grows to off+len);
 *   VMM_RANGE_PUNCH: a hole punched, the size kept (fallocate PUNCH_HOLE |
 *     KEEP_SIZE), what file-posix does for the discards of a qcow2 shrink.
 * Returns 0 or -errno.
 */
VMM_EXPORT int vmm_file_range(const char *path, uint32_t op, uint64_t off, uint64_t len, uint64_t dev,
                              uint64_t ino)
{
    if (len == 0 || (op != VMM_RANGE_ALLOCATE && op != VMM_RANGE_PUNCH))
        return -EINVAL;
    struct stat st;
    int fd = open_range(path, off, len, &st);
    if (fd < 0)
        return fd;
    int rc;
    if ((uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino)
        rc = -ESTALE;
    else if (op == VMM_RANGE_ALLOCATE)
        rc = -posix_fallocate(fd, (off_t)off, (off_t)len); /* returns the error, sets no errno */
    else
        rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) ? -errno : 0;
    close(fd);
    return rc;
}

/*
 * An unnamed output file in directory `dir` (open O_TMPFILE): a convert
 * killed before it finishes leaves nothing behind. The host writes it through
 * /proc/<pid>/fd/<fd> and links it into place when done. Returns the fd, or
 * -errno when the file system cannot (the caller falls back to a named
 * temporary file).
 */
VMM_EXPORT int vmm_tmpfile_open(const char *dir)
{
    if (!dir)
        return -EINVAL;
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
    return fd < 0 ? -errno : fd;
}

/* Gives the unnamed file `fd` the name `path` (which must not exist): linkat through /proc. */
VMM_EXPORT int vmm_tmpfile_link(int fd, const char *path)
{
    char self[48];
    if (fd < 0 || !path)
        return -EINVAL;
    snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, self, AT_FDCWD, path, AT_SYMLINK_FOLLOW) ? -errno : 0;
}
