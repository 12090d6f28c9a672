/*
 * instar's thin client (docs/service.md): no parsing, no V8. It hands its
 * argv, working directory, a few environment entries, its RLIMIT_AS and
 * RLIMIT_CPU and (SCM_RIGHTS) its stdin/stdout/stderr to the per-user
 * `instar serve`, forwards SIGINT/SIGTERM as a cancel and exits with the
 * service's exit code. With no service listening it execs the direct Deno
 * CLI when the address-space limit allows V8 to start, else prints one
 * line saying how to start the service and exits 1.
 *
 * Socket: $INSTAR_SOCKET, else $XDG_RUNTIME_DIR/instar.sock, else
 * /run/instar/<uid>.sock. Direct CLI: $INSTAR_CLI (an executable), else
 * the command `instar install-client` wrote into g_cli below.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "protocol.h"

/* V8 reserves its heap cage up front; below this it cannot start. */
#define DIRECT_CLI_MIN_AS (64ull << 30)

/*
 * The direct CLI's argv prefix, NUL-separated and ending in an empty
 * string, patched in by `instar install-client` (which finds the marker).
 * Read through a volatile pointer so the compiler keeps the bytes.
 */
#define CLI_MARKER "@@INSTAR_CLI_PREFIX@@"
char g_cli[4096] __attribute__((used)) = CLI_MARKER;

static int g_sock = -1;
static volatile sig_atomic_t g_cancelled;
static int g_send_failed;

static void die(const char *msg)
{
    fprintf(stderr, "instar: %s\n", msg);
    exit(1);
}

static void on_signal(int sig)
{
    if (g_cancelled) /* a second signal: stop waiting */
        _exit(128 + sig);
    g_cancelled = 1;
    char b = sig == SIGINT ? 'I' : 'T';
    if (g_sock >= 0)
        send(g_sock, &b, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static const char *socket_path(char *buf, size_t cap)
{
    const char *s = getenv("INSTAR_SOCKET");
    if (s && *s)
        return s;
    const char *x = getenv("XDG_RUNTIME_DIR");
    if (x && *x)
        snprintf(buf, cap, "%s/instar.sock", x);
    else
        snprintf(buf, cap, "/run/instar/%u.sock", (unsigned)getuid());
    return buf;
}

static int wants_env(const char *e)
{
    static const char *names[] = { "TMPDIR=", "LC_ALL=", "LC_MESSAGES=", "LANG=", "HOME=",
                                   "XDG_CONFIG_HOME=", NULL };
    if (strncmp(e, "INSTAR_", 7) == 0)
        return 1;
    for (int i = 0; names[i]; i++)
        if (strncmp(e, names[i], strlen(names[i])) == 0)
            return 1;
    return 0;
}

static uint64_t wire_limit(int res)
{
    struct rlimit rl;
    if (getrlimit(res, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        return INSTAR_RLIM_NONE;
    return (uint64_t)rl.rlim_cur;
}

/* No service: exec the direct CLI if V8 can start here, else one line. */
static void no_service(const char *path, int argc, char **argv)
{
    uint64_t as = wire_limit(RLIMIT_AS);
    if (as != INSTAR_RLIM_NONE && as < DIRECT_CLI_MIN_AS) {
        fprintf(stderr,
                "instar: no instar service at %s and the address-space limit (%llu MiB) is too small for the "
                "direct CLI; start it with `instar serve` (or `systemctl --user start instar.socket`)\n",
                path, (unsigned long long)(as >> 20));
        exit(1);
    }
    char *args[256 + 64];
    int n = 0;
    const char *env_cli = getenv("INSTAR_CLI");
    static char prefix[sizeof g_cli];
    if (env_cli && *env_cli) {
        args[n++] = (char *)env_cli;
    } else {
        volatile const char *v = g_cli;
        for (size_t i = 0; i < sizeof prefix; i++)
            prefix[i] = v[i];
        prefix[sizeof prefix - 1] = 0;
        /* Still the marker (not installed by install-client) or empty. No
         * second copy of the marker may exist in the binary, so no strcmp. */
        if (prefix[0] == '@' || prefix[0] == 0) {
            fprintf(stderr, "instar: no instar service at %s and no direct CLI known; start it with `instar serve` "
                            "or set INSTAR_CLI\n", path);
            exit(1);
        }
        for (char *p = prefix; *p && n < 64; p += strlen(p) + 1)
            args[n++] = p;
    }
    if (argc - 1 > 256)
        die("too many arguments");
    for (int i = 1; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    execv(args[0], args);
    fprintf(stderr, "instar: could not run the direct CLI %s: %s\n", args[0], strerror(errno));
    exit(1);
}

/* Appends a NUL-terminated string to the request. */
static void put(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s) + 1;
    if (*len + n > INSTAR_REQ_MAX)
        die("the command line is too long for the instar service");
    while (*len + n > *cap) {
        *cap *= 2;
        *buf = realloc(*buf, *cap);
        if (!*buf)
            die("out of memory");
    }
    memcpy(*buf + *len, s, n);
    *len += n;
}

static void read_full(int fd, void *p, size_t len)
{
    size_t at = 0;
    while (at < len) {
        ssize_t r = recv(fd, (char *)p + at, len - at, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 && g_send_failed)
            die("cannot send the request to the instar service");
        if (r <= 0) {
            fprintf(stderr, "instar: the instar service closed the connection before the command finished "
                            "(it stopped or crashed); the command's outcome is unknown\n");
            exit(1);
        }
        at += (size_t)r;
    }
}

int main(int argc, char **argv)
{
    extern char **environ;
    /* Closed standard descriptors travel as /dev/null (and the socket must
     * not land on one of them). */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) != fd)
            return 1;
    signal(SIGPIPE, SIG_IGN);
    char pbuf[PATH_MAX];
    const char *path = socket_path(pbuf, sizeof pbuf);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path)
        die("the socket path is too long");
    strcpy(sa.sun_path, path);

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die("cannot create a socket");
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(s);
        if (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR)
            no_service(path, argc, argv);
        fprintf(stderr, "instar: cannot connect to the instar service at %s: %s\n", path, strerror(e));
        return 1;
    }

    size_t cap = 4096, len = sizeof(struct instar_req_head);
    char *buf = malloc(cap);
    if (!buf)
        die("out of memory");
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        die("cannot determine the working directory");
    put(&buf, &len, &cap, cwd);
    for (int i = 1; i < argc; i++)
        put(&buf, &len, &cap, argv[i]);
    uint32_t envc = 0;
    for (char **e = environ; *e; e++)
        if (wants_env(*e) && envc < INSTAR_ARGS_MAX) {
            put(&buf, &len, &cap, *e);
            envc++;
        }
    if ((uint32_t)argc - 1 > INSTAR_ARGS_MAX)
        die("too many arguments");
    struct instar_req_head h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, INSTAR_REQ_MAGIC, sizeof h.magic);
    h.len = (uint32_t)len;
    h.argc = (uint32_t)argc - 1;
    h.envc = envc;
    h.rlimit_as = wire_limit(RLIMIT_AS);
    h.rlimit_cpu = wire_limit(RLIMIT_CPU);
    memcpy(buf, &h, sizeof h);

    int fds[3] = { 0, 1, 2 };
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof fds)];
    } cbuf;
    memset(&cbuf, 0, sizeof cbuf);
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr mh;
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.space;
    mh.msg_controllen = sizeof cbuf.space;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    /* A service that refuses us (another uid) replies and closes before
     * reading: a failed send still reads that reply. */
    int send_failed = 0;
    ssize_t w;
    do
        w = sendmsg(s, &mh, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        send_failed = 1;
    size_t at = w < 0 ? len : (size_t)w;
    while (at < len) {
        w = send(s, buf + at, len - at, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            send_failed = 1;
            break;
        }
        at += (size_t)w;
    }
    g_send_failed = send_failed;
    free(buf);

    /* From here a SIGINT/SIGTERM is a cancel the service acts on. */
    g_sock = s;
    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_handler = on_signal;
    sigemptyset(&act.sa_mask);
    sigaction(SIGINT, &act, NULL);
    sigaction(SIGTERM, &act, NULL);

    for (;;) {
        struct instar_reply r;
        read_full(s, &r, sizeof r);
        if (memcmp(r.magic, INSTAR_REPLY_MAGIC, 4) != 0 || r.msg_len > INSTAR_MSG_MAX)
            die("malformed reply from the instar service");
        if (r.msg_len) {
            char msg[INSTAR_MSG_MAX];
            read_full(s, msg, r.msg_len);
            fwrite(msg, 1, r.msg_len, stderr);
        }
        if (r.kind == INSTAR_REPLY_EXIT)
            return r.code & 0xff;
    }
}
