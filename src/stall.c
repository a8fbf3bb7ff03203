/* stall.c: the stall watchdog: SIGALRM ticks; a callback found running at enough ticks in
 * a row is reported and the process ended, with only async-signal-safe calls. */
#include "stall.h"

#include <errno.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

/* Ticks in a row a callback must be seen running: the limit is this many ticks. */
#define STALL_TICKS 4

/* Process state, because signal handlers are. */
static struct {
    lh_budget *budget;
    sig_atomic_t epoch; /* the bracket seen running at the last tick */
    int ticks;          /* ticks in a row it has been seen */
    char limit[24];     /* the limit in seconds, as text, written once at start */
} stall;

/* Appends text (at most max bytes, up to a newline) to buf at *len; async-signal-safe. */
static void put(char *buf, size_t *len, size_t cap, const char *text, size_t max)
{
    for (size_t i = 0; text[i] && text[i] != '\n' && i < max && *len < cap; i++)
        buf[(*len)++] = text[i];
}

/* Appends n in decimal; async-signal-safe. */
static void put_int(char *buf, size_t *len, size_t cap, long n)
{
    char digits[24];
    int i = (int)sizeof digits - 1;
    unsigned long u = n < 0 ? 0UL - (unsigned long)n : (unsigned long)n;
    digits[i] = '\0';
    do
        digits[--i] = (char)('0' + u % 10);
    while ((u /= 10) && i > 1);
    if (n < 0)
        digits[--i] = '-';
    put(buf, len, cap, digits + i, sizeof digits);
}

/* Writes the line naming what is stuck, then ends the process. */
static void report_and_exit(const lh_budget *b)
{
    char line[512];
    size_t n = 0, cap = sizeof line - 1;
    const char *source = b->where.source;
    put(line, &n, cap, "luahost: watchdog: a ", 64);
    put(line, &n, cap, b->what, 32);
    put(line, &n, cap, " has run for more than ", 64);
    put(line, &n, cap, stall.limit, sizeof stall.limit);
    put(line, &n, cap, " s (--max-callback-seconds): ", 64);
    if (source && (source[0] == '@' || source[0] == '=')) {
        put(line, &n, cap, "defined at ", 16);
        put(line, &n, cap, source + 1, 200);
        if (b->where.line > 0) { /* 0: a main chunk */
            put(line, &n, cap, ":", 1);
            put_int(line, &n, cap, b->where.line);
        }
    } else {
        put(line, &n, cap, source ? "defined in a string chunk" : "where unknown", 32);
    }
    if (b->where.fd >= 0) {
        put(line, &n, cap, ", called for fd ", 32);
        put_int(line, &n, cap, b->where.fd);
    }
    put(line, &n, cap, "; exiting with status ", 32);
    put_int(line, &n, cap, LH_STALL_EXIT_STATUS);
    line[n++] = '\n';
    ssize_t written = write(STDERR_FILENO, line, n);
    (void)written; /* nothing more can be done about stderr now */
    _exit(LH_STALL_EXIT_STATUS);
}

static void on_stall_tick(int signo)
{
    (void)signo;
    int saved = errno;
    lh_budget *b = stall.budget;
    if (b && b->in_callback && b->epoch == stall.epoch) {
        if (++stall.ticks >= STALL_TICKS)
            report_and_exit(b);
    } else if (b) {
        stall.epoch = b->epoch;
        stall.ticks = 0;
    }
    errno = saved;
}

int stall_start(lh_budget *b, lua_State *L, long seconds)
{
    size_t n = 0;
    put_int(stall.limit, &n, sizeof stall.limit - 1, seconds);
    stall.limit[n] = '\0';
    budget_note_init(b, L);
    stall.budget = b;
    stall.ticks = 0;
    stall.epoch = b->epoch - 1;
    b->where.on = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stall_tick;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    long usec = seconds * 1000000L / STALL_TICKS;
    struct itimerval every = {{usec / 1000000, usec % 1000000}, {usec / 1000000, usec % 1000000}};
    if (sigaction(SIGALRM, &sa, NULL) < 0 || setitimer(ITIMER_REAL, &every, NULL) < 0) {
        int err = errno;
        stall_stop(b);
        return -err;
    }
    return 0;
}

void stall_stop(lh_budget *b)
{
    if (stall.budget != b)
        return;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    stall.budget = NULL;
    b->where.on = 0;
}
