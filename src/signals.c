/* signals.c: the self-pipe and its handlers. A second SIGINT/SIGTERM ends the process at
 * once, for a loop that is stuck. */
#include "signals.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static int signal_write_fd = -1; /* the one piece of process state a handler may touch */

static volatile sig_atomic_t stop_signals; /* SIGINT/SIGTERM received so far */

static void on_signal(int signo)
{
    int saved = errno;
    /* A second stop signal ends the process at once: the loop may be stuck (a runaway
     * coroutine, say), and an operator pressing Ctrl-C twice means it. */
    if (signo != SIGHUP && stop_signals++ > 0)
        _exit(128 + signo);
    unsigned char byte = (unsigned char)signo;
    if (signal_write_fd >= 0 && write(signal_write_fd, &byte, 1) < 0) {
        /* the pipe is full: a stop is already pending */
    }
    errno = saved;
}

void signals_init(signals *s)
{
    conn_init(&s->conn, -1, CONN_SIGNAL, 0);
    s->write_fd = -1;
}

int signals_watch(signals *s, selector *sel)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    conn_init(&s->conn, fds[0], CONN_SIGNAL, 0);
    s->write_fd = fds[1];
    int rc = sel_set_host_events(sel, fds[0], SEL_READ, &s->conn);
    if (rc < 0) {
        signals_close(s, sel);
        return rc;
    }
    signal_write_fd = fds[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

int signals_read(signals *s)
{
    unsigned char got[32];
    ssize_t n;
    int found = 0;
    while ((n = read(s->conn.fd, got, sizeof got)) > 0)
        for (ssize_t i = 0; i < n; i++)
            found |= got[i] == SIGHUP   ? SIGNALS_SIGHUP
                     : got[i] == SIGINT ? SIGNALS_SIGINT
                                        : SIGNALS_SIGTERM;
    return found;
}

void signals_close(signals *s, selector *sel)
{
    if (sel && s->conn.fd >= 0)
        sel_set_host_events(sel, s->conn.fd, 0, NULL);
    if (s->write_fd == signal_write_fd)
        signal_write_fd = -1;
    if (s->conn.fd >= 0)
        close(s->conn.fd);
    if (s->write_fd >= 0)
        close(s->write_fd);
    s->conn.fd = s->write_fd = -1;
}
