/*
 * The child process of `deno task fuzz`: links with one target's
 * LLVMFuzzerTestOneInput (built with ASan and SanitizerCoverage inline 8-bit
 * counters) and runs inputs the TypeScript engine sends it. This file is
 * compiled without coverage instrumentation so its own loops add no counters.
 *
 *   runner -serve IN_FIFO OUT_FIFO SHM_FILE [-timeout=S]
 *       Protocol, little-endian. Engine -> runner: u8 command ('R' run,
 *       'L' run then check for leaks, 'Q' quit), u32 length, the input.
 *       Runner -> engine, once at start: 'H', u32 counters. After each
 *       input: 'O', u32 microseconds (ok), or 'K' (LeakSanitizer found a
 *       leak; the runner then exits 77). A timeout writes 'T' and exits 70.
 *       A crash is the pipe closing without a reply: a sanitizer report
 *       (exit 1) or a deadly signal (exit 77), as with libFuzzer.
 *       After every 'O' the counters of that run (raw 8-bit hit counts) are
 *       in SHM_FILE at offset 64; the header holds "INSTARCV", u32 count.
 *   runner [-timeout=S] FILE...
 *       Runs each file once, like a libFuzzer binary given files.
 *   runner -info
 *       Prints the number of counters and PCs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));
int __lsan_do_recoverable_leak_check(void) __attribute__((weak));
void __sanitizer_print_stack_trace(void) __attribute__((weak));

#define SHM_HEADER 64

static uint8_t *g_cnt_start, *g_cnt_stop;
static const uintptr_t *g_pcs_start, *g_pcs_stop;
static int g_out_fd = -1;
static unsigned g_timeout = 1200;

/* SanitizerCoverage calls these from every instrumented object's
 * constructor with the same whole-binary section bounds. */
void __sanitizer_cov_8bit_counters_init(uint8_t *start, uint8_t *stop)
{
    if (g_cnt_start && g_cnt_start != start) {
        fprintf(stderr, "runner: more than one counter module is not supported\n");
        _exit(2);
    }
    g_cnt_start = start;
    g_cnt_stop = stop;
}

void __sanitizer_cov_pcs_init(const uintptr_t *beg, const uintptr_t *end)
{
    g_pcs_start = beg;
    g_pcs_stop = end;
}

static size_t n_counters(void) { return (size_t)(g_cnt_stop - g_cnt_start); }

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "==runner== ERROR: libFuzzer: timeout\n";
    if (write(2, msg, sizeof msg - 1) < 0) { /* nothing to do */ }
    if (g_out_fd >= 0 && write(g_out_fd, "T", 1) < 0) { /* the engine sees EOF */ }
    _exit(70);
}

/* abort() (a target's invariant check) and other signals the sanitizers do
 * not report themselves end the run the way libFuzzer does: a "deadly
 * signal" report with a stack, exit code 77 (its -error_exitcode). */
static void on_deadly(int sig)
{
    char msg[96];
    int n = snprintf(msg, sizeof msg, "==%d== ERROR: libFuzzer: deadly signal (%d)\n", (int)getpid(), sig);
    if (n > 0 && write(2, msg, (size_t)n) < 0) { /* nothing to do */ }
    if (__sanitizer_print_stack_trace) __sanitizer_print_stack_trace();
    _exit(77);
}

static void arm(unsigned seconds)
{
    struct itimerval t = {{0, 0}, {seconds, 0}};
    setitimer(ITIMER_REAL, &t, NULL);
}

static int read_all(int fd, void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (uint8_t *)buf + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        done += (size_t)n;
    }
    return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, (const uint8_t *)buf + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        done += (size_t)n;
    }
    return 0;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Runs one input from its own exact-size heap copy, so a read one byte past
 * the end is an ASan report and not a silent read of the engine's buffer. */
static void run_one(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) _exit(3);
    if (size) memcpy(copy, data, size);
    arm(g_timeout);
    LLVMFuzzerTestOneInput(copy, size);
    arm(0);
    free(copy);
}

/* Zeroes the stack below the caller, where the target's frames were: LSan
 * scans live stack conservatively and its own frames would otherwise cover
 * stale pointers the target left there, hiding a leak. */
static void __attribute__((noinline)) scrub_stack(void)
{
    volatile uint8_t pad[1 << 17];
    for (size_t i = 0; i < sizeof pad; i += 64) pad[i] = 0;
    memset((void *)pad, 0, sizeof pad);
}

static int serve(const char *in_path, const char *out_path, const char *shm_path)
{
    /* Open order matches the engine's (it opens the input FIFO first). */
    int in = open(in_path, O_RDONLY | O_CLOEXEC);
    if (in < 0) { perror(in_path); return 2; }
    g_out_fd = open(out_path, O_WRONLY | O_CLOEXEC);
    if (g_out_fd < 0) { perror(out_path); return 2; }
    size_t n = n_counters();
    int sfd = open(shm_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (sfd < 0 || ftruncate(sfd, (off_t)(SHM_HEADER + n)) < 0) { perror(shm_path); return 2; }
    uint8_t *shm = mmap(NULL, SHM_HEADER + n, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
    if (shm == MAP_FAILED) { perror("mmap"); return 2; }
    memset(shm, 0, SHM_HEADER);
    memcpy(shm, "INSTARCV", 8);
    uint32_t n32 = (uint32_t)n;
    memcpy(shm + 8, &n32, 4);
    uint8_t hello[5] = {'H'};
    memcpy(hello + 1, &n32, 4);
    if (write_all(g_out_fd, hello, 5)) return 2;
    uint8_t *buf = NULL;
    size_t cap = 0;
    for (;;) {
        uint8_t hdr[5];
        if (read_all(in, hdr, 5)) break; /* engine went away */
        uint32_t len;
        memcpy(&len, hdr + 1, 4);
        if (hdr[0] == 'Q') break;
        if (len > cap) {
            free(buf);
            cap = len;
            buf = malloc(cap);
            if (!buf) return 3;
        }
        if (read_all(in, buf, len)) break;
        memset(g_cnt_start, 0, n);
        uint64_t t0 = now_us();
        run_one(buf, len);
        uint64_t dt = now_us() - t0;
        memcpy(shm + SHM_HEADER, g_cnt_start, n);
        if (hdr[0] == 'L') scrub_stack();
        if (hdr[0] == 'L' && __lsan_do_recoverable_leak_check && __lsan_do_recoverable_leak_check()) {
            write_all(g_out_fd, "K", 1);
            _exit(77);
        }
        uint8_t rep[5] = {'O'};
        uint32_t us = dt > UINT32_MAX ? UINT32_MAX : (uint32_t)dt;
        memcpy(rep + 1, &us, 4);
        if (write_all(g_out_fd, rep, 5)) break;
    }
    free(buf);
    return 0;
}

static int replay_file(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) { perror(path); return 1; }
    size_t size = (size_t)st.st_size;
    uint8_t *data = malloc(size ? size : 1);
    if (!data || read_all(fd, data, size)) { perror(path); return 1; }
    close(fd);
    fprintf(stderr, "Running: %s\n", path);
    uint64_t t0 = now_us();
    run_one(data, size);
    fprintf(stderr, "Executed %s in %llu ms\n", path, (unsigned long long)((now_us() - t0) / 1000));
    free(data);
    return 0;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on_deadly;
    sigaction(SIGABRT, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    int first = 1;
    for (; first < argc && strncmp(argv[first], "-timeout=", 9) == 0; first++)
        g_timeout = (unsigned)strtoul(argv[first] + 9, NULL, 10);
    if (g_timeout == 0) g_timeout = 1200;
    if (first < argc && strcmp(argv[first], "-info") == 0) {
        printf("counters %zu pcs %zu\n", n_counters(), (size_t)(g_pcs_stop - g_pcs_start) / 2);
        return 0;
    }
    if (first + 3 < argc + 0 && strcmp(argv[first], "-serve") == 0)
        return serve(argv[first + 1], argv[first + 2], argv[first + 3]);
    if (first >= argc) {
        fprintf(stderr, "usage: %s -serve IN OUT SHM [-timeout=S] | [-timeout=S] FILE... | -info\n", argv[0]);
        return 2;
    }
    for (int i = first; i < argc; i++)
        if (replay_file(argv[i])) return 1;
    return 0;
}
