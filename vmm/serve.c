/*
 * The socket side of `instar serve` (docs/service.md). Deno cannot receive
 * descriptors over SCM_RIGHTS, read SO_PEERCRED or write to a raw fd, so
 * these few functions do it for lib/service/. Nothing here parses images;
 * the request is a bounded header plus NUL-terminated strings, checked here
 * for shape only and decoded again in TypeScript.
 *
 * Wire format (little-endian), client -> service, one request per
 * connection:
 *   struct instar_req_head, then `len - sizeof head` bytes of strings:
 *   cwd, argv[0..argc), env[0..envc), each NUL-terminated. The first
 *   sendmsg carries SCM_RIGHTS with exactly three fds: stdin, stdout,
 *   stderr. After the request the client may send one byte: 'I' (SIGINT)
 *   or 'T' (SIGTERM), a cancel; closing its end is a cancel as well.
 * service -> client: struct instar_reply frames; the last one carries the
 *   exit code. A frame may carry a message the client prints to stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "vmm_internal.h"
#include "client/protocol.h"

/*
 * Listens on `path`: a stale socket left by a dead service is replaced, a
 * live one (connect succeeds) is not (-EADDRINUSE). The socket is created
 * mode 0600. Returns the listening fd or -errno.
 */
VMM_EXPORT int vmm_serve_listen(const char *path)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (!path || strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return -EEXIST;
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0)
            return -errno;
        int live = connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
        close(probe);
        if (live)
            return -EADDRINUSE;
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0 || listen(fd, 128) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* Sends one reply frame; a bounded wait (the socket has SO_SNDTIMEO). */
static int send_reply(int conn, int32_t code, uint32_t kind, const char *msg)
{
    struct instar_reply r;
    memset(&r, 0, sizeof r);
    memcpy(r.magic, INSTAR_REPLY_MAGIC, sizeof r.magic);
    r.kind = kind;
    r.code = code;
    size_t n = msg ? strlen(msg) : 0;
    if (n > INSTAR_MSG_MAX)
        n = INSTAR_MSG_MAX;
    r.msg_len = (uint32_t)n;
    uint8_t buf[sizeof r + INSTAR_MSG_MAX];
    memcpy(buf, &r, sizeof r);
    if (n)
        memcpy(buf + sizeof r, msg, n);
    size_t at = 0, len = sizeof r + n;
    while (at < len) {
        ssize_t w = send(conn, buf + at, len - at, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        at += (size_t)w;
    }
    return 0;
}

static void close_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* Reads exactly `len` bytes (the socket has SO_RCVTIMEO). */
static int read_full(int conn, uint8_t *p, size_t len)
{
    size_t at = 0;
    while (at < len) {
        ssize_t r = recv(conn, p + at, len - at, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -ECONNRESET;
        at += (size_t)r;
    }
    return 0;
}

/*
 * Accepts one connection on `lfd` and checks its peer: meta receives [0] the
 * connection fd, [2] peer uid, [3] peer pid. A peer whose uid is not ours
 * gets a refusal frame and is closed: -EACCES (meta[2] says who).
 * Otherwise the connection fd; vmm_serve_read reads the request. Blocks
 * until a client connects (call it nonblocking).
 */
VMM_EXPORT int vmm_serve_accept(int lfd, int64_t *meta)
{
    if (!meta)
        return -EINVAL;
    int conn;
    do
        conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    while (conn < 0 && (errno == EINTR || errno == ECONNABORTED));
    if (conn < 0)
        return -errno;
    struct timeval tv = { .tv_sec = 5, .tv_usec = 0 };
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    struct ucred cred;
    socklen_t cl = sizeof cred;
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
        int e = errno;
        close(conn);
        return -e;
    }
    meta[0] = conn;
    meta[2] = cred.uid;
    meta[3] = cred.pid;
    if (cred.uid != geteuid()) {
        send_reply(conn, 1, INSTAR_REPLY_EXIT,
                   "instar: the instar service at this socket serves only its own user; refusing another uid\n");
        close(conn);
        return -EACCES;
    }
    return conn;
}

/*
 * Reads the request on an accepted connection into buf[0..cap) (waiting at
 * most 5 s for it: SO_RCVTIMEO). meta receives [1] the request length and
 * [4..6] the passed stdin/stdout/stderr fds. Returns 0; a malformed or
 * late request gets a final frame, the connection is closed and -EPROTO
 * returned. Call it nonblocking: a slow client then delays only itself.
 */
VMM_EXPORT int vmm_serve_read(int conn, uint8_t *buf, uint32_t cap, int64_t *meta)
{
    if (!buf || !meta || cap < sizeof(struct instar_req_head))
        return -EINVAL;
    struct timeval tv = { .tv_sec = 5, .tv_usec = 0 };
    struct instar_req_head head;
    int fds[3] = { -1, -1, -1 };
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * 4)];
    } cbuf;
    struct iovec iov = { .iov_base = &head, .iov_len = sizeof head };
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.space;
    mh.msg_controllen = sizeof cbuf.space;
    ssize_t got;
    do
        got = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC);
    while (got < 0 && errno == EINTR);
    int bad = got <= 0 || (mh.msg_flags & MSG_CTRUNC);
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *p = (int *)CMSG_DATA(c);
        for (int i = 0; i < n; i++) {
            if (nfds < 3)
                fds[nfds++] = p[i];
            else {
                close(p[i]);
                bad = 1;
            }
        }
    }
    if (!bad && nfds != 3)
        bad = 1;
    if (!bad && (size_t)got < sizeof head)
        bad = read_full(conn, (uint8_t *)&head + got, sizeof head - (size_t)got) != 0;
    if (!bad)
        bad = memcmp(head.magic, INSTAR_REQ_MAGIC, sizeof head.magic) != 0 || head.len < sizeof head ||
              head.len > cap || head.len > INSTAR_REQ_MAX || head.argc > INSTAR_ARGS_MAX ||
              head.envc > INSTAR_ARGS_MAX;
    if (!bad) {
        memcpy(buf, &head, sizeof head);
        bad = read_full(conn, buf + sizeof head, head.len - sizeof head) != 0;
    }
    /* The strings: exactly 1 + argc + envc NUL-terminated ones. */
    if (!bad) {
        uint32_t want = 1 + head.argc + head.envc, seen = 0;
        for (uint32_t i = sizeof head; i < head.len; i++)
            if (buf[i] == 0)
                seen++;
        bad = seen != want || buf[head.len - 1] != 0;
    }
    if (bad) {
        send_reply(conn, 1, INSTAR_REPLY_EXIT, "instar: malformed request from the client\n");
        close_fds(fds, 3);
        close(conn);
        return -EPROTO;
    }
    /* From here on the connection only carries cancel bytes and replies;
     * a reply must not wait forever on a client that stopped reading. */
    tv.tv_sec = 0;
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    meta[1] = head.len;
    meta[4] = fds[0];
    meta[5] = fds[1];
    meta[6] = fds[2];
    return 0;
}

/*
 * Waits for the client to cancel: returns the cancel byte ('I' or 'T'),
 * 0 when the client closed its end or vmm_conn_end shut the socket down,
 * or -errno. Call it nonblocking.
 */
VMM_EXPORT int vmm_conn_wait(int conn)
{
    for (;;) {
        uint8_t b;
        ssize_t r = recv(conn, &b, 1, 0);
        if (r == 1) {
            if (b == 'I' || b == 'T')
                return b;
            continue; /* anything else is ignored */
        }
        if (r == 0)
            return 0;
        if (errno == EINTR)
            continue;
        return -errno;
    }
}

/* Sends the final frame with the exit code (and an optional message). */
VMM_EXPORT int vmm_conn_reply(int conn, int32_t code, const char *msg)
{
    return send_reply(conn, code, INSTAR_REPLY_EXIT, msg);
}

/* Ends the conversation: wakes a pending vmm_conn_wait. Close afterwards. */
VMM_EXPORT int vmm_conn_end(int conn)
{
    return shutdown(conn, SHUT_RDWR) < 0 ? -errno : 0;
}

/* Writes all of p[0..len) to fd (a descriptor the client passed).
 * Returns 0 or -errno. Call it nonblocking: a full pipe may wait. */
VMM_EXPORT int vmm_fd_write(int fd, const uint8_t *p, uint64_t len)
{
    uint64_t at = 0;
    while (at < len) {
        ssize_t w = write(fd, p + at, len - at);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        at += (uint64_t)w;
    }
    return 0;
}

/* Reads up to len bytes from fd (a descriptor the client passed: its stdin).
 * Returns the count (0 at end of stream) or -errno. Call it nonblocking: a
 * pipe may wait. */
VMM_EXPORT int64_t vmm_fd_read(int fd, uint8_t *p, uint64_t len)
{
    if (len > (uint64_t)INT32_MAX)
        len = (uint64_t)INT32_MAX;
    for (;;) {
        ssize_t r = read(fd, p, (size_t)len);
        if (r >= 0)
            return (int64_t)r;
        if (errno != EINTR)
            return -(int64_t)errno;
    }
}

/* Whether fd (a descriptor the client passed) is a terminal: 1, else 0. */
VMM_EXPORT int vmm_fd_isatty(int fd)
{
    return isatty(fd) ? 1 : 0;
}

VMM_EXPORT int vmm_fd_close(int fd)
{
    return close(fd) < 0 ? -errno : 0;
}

/* Whether fd is an open listening Unix stream socket (socket activation). */
VMM_EXPORT int vmm_fd_is_listener(int fd)
{
    int v = 0, t = 0;
    socklen_t l = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) < 0)
        return 0;
    l = sizeof t;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &l) < 0)
        return 0;
    /* Activated sockets may lack CLOEXEC: set it, children must not hold it. */
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return v && t == SOCK_STREAM;
}

/*
 * Cancels a running vmm_run from another thread (the same kick the
 * watchdog uses; the run ends with RUN_TIMEOUT and the caller, who asked
 * for it, knows it was a cancel).
 */
VMM_EXPORT void vmm_cancel(void *handle)
{
    struct vm *vm = handle;
    if (!vm)
        return;
    vm->kicked = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    struct kvm_run *kr = __atomic_load_n(&vm->run, __ATOMIC_ACQUIRE);
    if (kr)
        __atomic_store_n(&kr->immediate_exit, 1, __ATOMIC_SEQ_CST);
    pid_t tid = vm->vcpu_tid;
    if (tid)
        syscall(SYS_tgkill, getpid(), tid, kick_signal());
}
