/*
 * Host-side file plumbing for operations split across guests: convert -c
 * runs two guests on two cores, each writing its half of the compressed
 * data to its own file; the second half is then copied behind the first
 * here, with copy_file_range, so output bytes never pass through the
 * TypeScript heap. Only regular files, only the paths the host names.
 */

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmm_internal.h"

VMM_EXPORT int vmm_copy_range(const char *src, uint64_t src_off, const char *dst, uint64_t dst_off, uint64_t len)
{
    uint64_t end;
    if (!src || !dst || __builtin_add_overflow(src_off, len, &end) || end > (uint64_t)INT64_MAX ||
        __builtin_add_overflow(dst_off, len, &end) || end > (uint64_t)INT64_MAX)
        return -EINVAL;
    int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (in < 0)
        return -errno;
    int out = open(dst, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
    if (out < 0) {
        int e = errno;
        close(in);
        return -e;
    }
    struct stat a, b;
    int rc = 0;
    if (fstat(in, &a) || fstat(out, &b)) {
        rc = -errno;
    } else if (!S_ISREG(a.st_mode) || !S_ISREG(b.st_mode) || (uint64_t)a.st_size < src_off + len) {
        rc = -EINVAL;
    }
    loff_t ip = (loff_t)src_off, op = (loff_t)dst_off;
    uint64_t left = len;
    while (!rc && left) {
        ssize_t n = copy_file_range(in, &ip, out, &op, left, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP)) {
            /* No kernel copy between these files: a bounded buffer loop. */
            static __thread char buf[1 << 20];
            ssize_t r = pread(in, buf, left < sizeof buf ? left : sizeof buf, ip);
            if (r <= 0) {
                rc = r < 0 ? -errno : -EIO;
                break;
            }
            ssize_t w = pwrite(out, buf, (size_t)r, op);
            if (w != r) {
                rc = w < 0 ? -errno : -EIO;
                break;
            }
            ip += r;
            op += r;
            left -= (uint64_t)r;
            continue;
        }
        if (n <= 0) {
            rc = n < 0 ? -errno : -EIO;
            break;
        }
        left -= (uint64_t)n;
    }
    close(in);
    close(out);
    return rc;
}
