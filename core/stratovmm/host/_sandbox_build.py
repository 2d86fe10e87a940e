"""cffi (API mode) builder for the seccomp SIGSYS reporter, ``stratovmm.host._sandbox``.

The filter's default action is ``SECCOMP_RET_TRAP``: the kernel does not run
the forbidden system call and sends the thread ``SIGSYS`` with the call's
number in ``si_syscall``.  Python cannot handle that usefully: its signal
handlers run later, on the main thread, without the ``siginfo_t``, while the
offending thread carries on.  So the handler is this small C function.  It
only uses async-signal-safe calls: it formats one log line (time, level,
thread name and id, module, the call's name and number, and for ``ioctl`` the request,
read from the saved registers) with its own digit routines,
``write``\\ s it to stderr and the log file, and then ends the process.

It ends the process by asking for something the filter forbids: resetting
``SIGSYS`` (``rt_sigaction`` is allowed for every signal except ``SIGSYS``).
Because ``SIGSYS`` is blocked while its handler runs, the kernel resets it to
its default action and unblocks it (``force_sig_info_to_task``), and the
default action of ``SIGSYS`` terminates the whole process, as
``SECCOMP_RET_KILL_PROCESS`` would.  The lines after that call only run
outside the filter (never in practice) and kill the process the ordinary way.

``svmm_load_filter`` loads a BPF program libseccomp compiled earlier (kept by
``stratovmm.host.seccompcache``) the way ``seccomp_load`` does with our attributes:
``PR_SET_NO_NEW_PRIVS``, then ``seccomp(SECCOMP_SET_MODE_FILTER)`` with
``SECCOMP_FILTER_FLAG_TSYNC`` (every thread).
"""

from __future__ import annotations

from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef("""
#define SVMM_NAME_WIDTH ...
#define SVMM_NAME_COUNT ...
#define SVMM_MAX_FDS ...
int svmm_install_sigsys(const int *fds, int nfds, const char *names, long utc_offset);
#define SVMM_FILTER_TSYNC ...
#define SVMM_FILTER_LOG ...
#define SVMM_MAX_INSNS ...
int svmm_load_filter(const unsigned char *program, unsigned int insns, unsigned int flags);
""")

_SOURCE = r"""
#include <fcntl.h>
#include <signal.h>
#include <ucontext.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define SVMM_NAME_WIDTH 32
#define SVMM_NAME_COUNT 512
#define SVMM_MAX_FDS 4

static int svmm_fds[SVMM_MAX_FDS];
static int svmm_nfds;
static char svmm_names[SVMM_NAME_COUNT][SVMM_NAME_WIDTH];
static long svmm_utc_offset;

static size_t svmm_put(char *buf, size_t n, size_t cap, const char *s)
{
    while (*s && n < cap)
        buf[n++] = *s++;
    return n;
}

static size_t svmm_put_uint(char *buf, size_t n, size_t cap, unsigned long v, int digits, int base)
{
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = "0123456789abcdef"[v % (unsigned long)base];
        v /= (unsigned long)base;
    } while (v && i < 24);
    while (i < digits && i < 24)
        tmp[i++] = '0';
    while (i > 0 && n < cap)
        buf[n++] = tmp[--i];
    return n;
}

/* days since 1970-01-01 -> civil date (H. Hinnant's algorithm, no tables, no locks) */
static void svmm_civil(long days, long *y, unsigned *m, unsigned *d)
{
    days += 719468;
    long era = (days >= 0 ? days : days - 146096) / 146097;
    unsigned doe = (unsigned)(days - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (long)yoe + era * 400 + (*m <= 2);
}

static size_t svmm_put_time(char *buf, size_t n, size_t cap)
{
    struct timespec ts;
    long y;
    unsigned mo, d;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return n;
    long t = (long)ts.tv_sec + svmm_utc_offset;
    long days = t / 86400, secs = t % 86400;
    if (secs < 0) {
        secs += 86400;
        days -= 1;
    }
    svmm_civil(days, &y, &mo, &d);
    n = svmm_put_uint(buf, n, cap, (unsigned long)y, 4, 10);
    n = svmm_put(buf, n, cap, "-");
    n = svmm_put_uint(buf, n, cap, mo, 2, 10);
    n = svmm_put(buf, n, cap, "-");
    n = svmm_put_uint(buf, n, cap, d, 2, 10);
    n = svmm_put(buf, n, cap, " ");
    n = svmm_put_uint(buf, n, cap, (unsigned long)(secs / 3600), 2, 10);
    n = svmm_put(buf, n, cap, ":");
    n = svmm_put_uint(buf, n, cap, (unsigned long)(secs / 60 % 60), 2, 10);
    n = svmm_put(buf, n, cap, ":");
    n = svmm_put_uint(buf, n, cap, (unsigned long)(secs % 60), 2, 10);
    n = svmm_put(buf, n, cap, ".");
    return svmm_put_uint(buf, n, cap, (unsigned long)(ts.tv_nsec / 1000000), 3, 10);
}

/* the thread's kernel name (vcpu0, iothread-io0...; read-only opens are allowed) */
static size_t svmm_put_comm(char *buf, size_t n, size_t cap)
{
    char comm[32];
    ssize_t got;
    int fd = open("/proc/thread-self/comm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return n;
    got = read(fd, comm, sizeof(comm) - 1);
    close(fd);
    if (got <= 0)
        return n;
    comm[got] = 0;
    for (ssize_t i = 0; i < got; i++)
        if (comm[i] == '\n' || comm[i] == ']')
            comm[i] = 0;
    n = svmm_put(buf, n, cap, comm);
    return svmm_put(buf, n, cap, " ");
}

static void svmm_on_sigsys(int sig, siginfo_t *info, void *ucontext)
{
    char line[384];
    size_t n = 0, cap = sizeof(line) - 1;
    int nr = info->si_syscall;
    struct sigaction dfl;
    sigset_t set;

    n = svmm_put_time(line, n, cap);
    n = svmm_put(line, n, cap, " ERROR [");
    n = svmm_put_comm(line, n, cap);
    n = svmm_put(line, n, cap, "tid ");
    n = svmm_put_uint(line, n, cap, (unsigned long)syscall(SYS_gettid), 0, 10);
    n = svmm_put(line, n, cap, "] stratovmm.host.sandbox: seccomp: forbidden system call ");
    if (nr >= 0 && nr < SVMM_NAME_COUNT && svmm_names[nr][0])
        n = svmm_put(line, n, cap, svmm_names[nr]);
    else
        n = svmm_put(line, n, cap, "?");
    n = svmm_put(line, n, cap, " (");
    n = svmm_put_uint(line, n, cap, (unsigned long)(unsigned)nr, 0, 10);
    n = svmm_put(line, n, cap, ")");
#ifdef __x86_64__
    if (nr == SYS_ioctl) {   /* which request: the allow-list names requests */
        const ucontext_t *uc = ucontext;
        n = svmm_put(line, n, cap, " request 0x");
        n = svmm_put_uint(line, n, cap, (unsigned long)(unsigned)uc->uc_mcontext.gregs[REG_RSI],
                          0, 16);
    }
#endif
    n = svmm_put(line, n, cap, " at 0x");
    n = svmm_put_uint(line, n, cap, (unsigned long)info->si_call_addr, 0, 16);
    n = svmm_put(line, n, cap, "; killing the process\n");
    for (int i = 0; i < svmm_nfds; i++) {
        ssize_t rc = write(svmm_fds[i], line, n);
        (void)rc;
    }

    /* Forbidden by the filter: the kernel resets SIGSYS to SIG_DFL and kills us. */
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    raise(sig);
    _exit(128 + sig);
}

int svmm_install_sigsys(const int *fds, int nfds, const char *names, long utc_offset)
{
    struct sigaction sa;
    if (nfds > SVMM_MAX_FDS)
        nfds = SVMM_MAX_FDS;
    for (int i = 0; i < nfds; i++)
        svmm_fds[i] = fds[i];
    svmm_nfds = nfds;
    memcpy(svmm_names, names, sizeof(svmm_names));
    for (int i = 0; i < SVMM_NAME_COUNT; i++)
        svmm_names[i][SVMM_NAME_WIDTH - 1] = 0;
    svmm_utc_offset = utc_offset;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = svmm_on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSYS, &sa, NULL);
}

#define SVMM_FILTER_TSYNC SECCOMP_FILTER_FLAG_TSYNC
#define SVMM_FILTER_LOG SECCOMP_FILTER_FLAG_LOG
#define SVMM_MAX_INSNS BPF_MAXINSNS

/* 0, or -errno; with TSYNC the kernel answers the id of a thread it could not
 * synchronise (positive), which is returned as is. */
int svmm_load_filter(const unsigned char *program, unsigned int insns, unsigned int flags)
{
    struct sock_fprog prog;
    if (insns == 0 || insns > BPF_MAXINSNS)
        return -EINVAL;
    prog.len = (unsigned short)insns;
    prog.filter = (struct sock_filter *)program;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -errno;
    long rc = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    return rc < 0 ? -errno : (int)rc;
}
"""

ffibuilder.set_source("stratovmm.host._sandbox", _SOURCE, py_limited_api=True)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
