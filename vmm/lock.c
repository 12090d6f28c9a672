/*
 * QEMU's image locks (block/file-posix.c raw_apply_lock_bytes and
 * raw_check_lock_bytes), so instar and a running QEMU never write an image
 * under each other. Each permission bit i of qemu's BLK_PERM_* (0 consistent
 * read, 1 write, 2 write unchanged, 3 resize) has two lock bytes: 100 + i,
 * held (a shared OFD lock) by every user that takes permission i, and
 * 200 + i, held by every user that does not share permission i. A user that
 * wants permission i must find no one holding 200 + i; a user that does not
 * share i must find no one holding 100 + i.
 *
 * Why here and not in TypeScript: OFD locks belong to an open file
 * description that must stay open for the whole command (several guest runs),
 * and Deno has no way to hand a file descriptor to fcntl(); the VMM library is
 * already the host's native layer that opens files for the sandbox (with
 * O_NOFOLLOW where policy says so). The lock fd is the host's own: no guest
 * ever sees it, and it is opened read-only (shared locks need no write access).
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmm_internal.h"

#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200
#define LOCK_PERM_BITS 4 /* BLK_PERM_ALL = 0xf in qemu 7.2 */

/*
 * Opens `path` read-only for image locks (O_NOFOLLOW when nofollow), and
 * reports its device and inode in st_out[0..1]. Returns the fd or -errno.
 */
VMM_EXPORT int vmm_lock_open(const char *path, uint32_t nofollow, uint64_t *st_out)
{
    if (!path || !st_out)
        return -EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | (nofollow ? O_NOFOLLOW : 0));
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st)) {
        int e = errno;
        close(fd);
        return -e;
    }
    st_out[0] = (uint64_t)st.st_dev;
    st_out[1] = (uint64_t)st.st_ino;
    return fd;
}

static int lock_byte(int fd, int off, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &fl) ? -errno : 0;
}

/* qemu_lock_fd_test(fd, off, 1, true): -EAGAIN when another open file holds the byte. */
static int test_byte(int fd, int off)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};
    if (fcntl(fd, F_OFD_GETLK, &fl))
        return -errno;
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

/*
 * raw_apply_lock_bytes(perm, ~shared) then raw_check_lock_bytes(perm, shared)
 * on a fd from vmm_lock_open. Returns 0, or -errno with *what set to the
 * failing step: 0x100 | byte for a lock that could not be taken ("Failed to
 * lock byte N"), 0x200 | bit for a permission someone else does not share
 * ("Failed to get \"NAME\" lock"), 0x300 | bit for a permission this user
 * does not share and someone else has ("Failed to get shared \"NAME\" lock").
 */
VMM_EXPORT int vmm_lock_apply(int fd, uint32_t perm, uint32_t shared, uint32_t *what)
{
    if (fd < 0 || !what)
        return -EINVAL;
    *what = 0;
    for (int i = 0; i < LOCK_PERM_BITS; i++) {
        if ((perm & (1u << i))) {
            int rc = lock_byte(fd, LOCK_PERM_BASE + i, F_RDLCK);
            if (rc) {
                *what = 0x100 | (uint32_t)(LOCK_PERM_BASE + i);
                return rc;
            }
        }
    }
    for (int i = 0; i < LOCK_PERM_BITS; i++) {
        if (!(shared & (1u << i))) {
            int rc = lock_byte(fd, LOCK_SHARED_BASE + i, F_RDLCK);
            if (rc) {
                *what = 0x100 | (uint32_t)(LOCK_SHARED_BASE + i);
                return rc;
            }
        }
    }
    for (int i = 0; i < LOCK_PERM_BITS; i++) {
        if (perm & (1u << i)) {
            int rc = test_byte(fd, LOCK_SHARED_BASE + i);
            if (rc) {
                *what = 0x200 | (uint32_t)i;
                return rc;
            }
        }
    }
    for (int i = 0; i < LOCK_PERM_BITS; i++) {
        if (!(shared & (1u << i))) {
            int rc = test_byte(fd, LOCK_PERM_BASE + i);
            if (rc) {
                *what = 0x300 | (uint32_t)i;
                return rc;
            }
        }
    }
    return 0;
}
