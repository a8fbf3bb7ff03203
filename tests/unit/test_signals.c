/* test_signals.c: proves that SIGHUP, SIGINT and SIGTERM reach the loop through the
 * selector (the self-pipe is readable, and reading it says which came), that SIGPIPE is
 * ignored, and that closing forgets the pipe. Only one stop signal is sent: a second
 * one ends the process at once, by design. */
#include "signals.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"

/* Whether the selector reports the pipe readable for the host. */
static int pipe_ready(selector *sel, const signals *s)
{
    int n = sel_select(sel, 1000);
    for (int i = 0; i < n; i++) {
        const sel_fired *f = sel_fired_at(sel, i);
        if (f->fd == s->conn.fd && sel_host_data(sel, f->fd) == &s->conn)
            return 1;
    }
    return 0;
}

int main(void)
{
    char err[128];
    selector *sel = sel_new("poll", err, sizeof err);
    signals s;
    int fds[2];
    signals_init(&s);
    CHECK(s.conn.fd == -1);
    CHECK(signals_watch(&s, sel) == 0);
    CHECK(s.conn.kind == CONN_SIGNAL && sel_host_count(sel) == 1);
    CHECK(!pipe_ready(sel, &s) || signals_read(&s) == 0);
    raise(SIGHUP);
    CHECK(pipe_ready(sel, &s));
    CHECK(signals_read(&s) == SIGNALS_SIGHUP);
    raise(SIGHUP);
    raise(SIGTERM);
    CHECK(pipe_ready(sel, &s));
    CHECK(signals_read(&s) == (SIGNALS_SIGHUP | SIGNALS_SIGTERM));
    CHECK(signals_read(&s) == 0);
    /* SIGPIPE is ignored: a write to a closed pipe fails instead of killing us. */
    CHECK(pipe(fds) == 0);
    close(fds[0]);
    CHECK(write(fds[1], "x", 1) < 0);
    close(fds[1]);
    signals_close(&s, sel);
    CHECK(s.conn.fd == -1 && sel_host_count(sel) == 0);
    raise(SIGHUP); /* a late signal finds no pipe and is dropped */
    sel_free(sel);
    if (failures) {
        printf("test_signals: %lu of %lu checks failed\n", failures, checks);
        return 1;
    }
    printf("test_signals: %lu checks passed\n", checks);
    return 0;
}
