/* watch.c: the script file's changes, through inotify on its directory. */
#include "watch.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "timer.h"

void watch_init(watch *w)
{
    conn_init(&w->conn, -1, CONN_WATCH, 0);
    w->name = NULL;
    w->due = 0;
}

int watch_start(watch *w, selector *sel, const char *path)
{
    char dir[4096], name[4096];
    snprintf(dir, sizeof dir, "%s", path);
    snprintf(name, sizeof name, "%s", path);
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0)
        return -errno;
    conn_init(&w->conn, fd, CONN_WATCH, 0);
    int rc = inotify_add_watch(fd, dirname(dir), IN_CLOSE_WRITE | IN_MOVED_TO) < 0
                 ? -errno
                 : sel_set_host_events(sel, fd, SEL_READ, &w->conn);
    if (rc == 0 && !(w->name = strdup(basename(name))))
        rc = -ENOMEM;
    if (rc < 0)
        watch_close(w, sel);
    return rc;
}

void watch_read(watch *w)
{
    char events[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    while ((n = read(w->conn.fd, events, sizeof events)) > 0) {
        for (char *p = events; p < events + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->len && strcmp(ev->name, w->name) == 0)
                w->due = timer_now() + WATCH_SETTLE_SECONDS;
            p += sizeof *ev + ev->len;
        }
    }
}

int watch_due(watch *w)
{
    if (w->due <= 0 || timer_now() < w->due)
        return 0;
    w->due = 0;
    return 1;
}

int watch_timeout_ms(const watch *w)
{
    if (w->due <= 0)
        return -1;
    double left = w->due - timer_now();
    return left <= 0 ? 0 : (int)(left * 1000.0) + 1;
}

void watch_close(watch *w, selector *sel)
{
    if (sel && w->conn.fd >= 0)
        sel_set_host_events(sel, w->conn.fd, 0, NULL);
    if (w->conn.fd >= 0)
        close(w->conn.fd);
    w->conn.fd = -1;
    free(w->name);
    w->name = NULL;
}
