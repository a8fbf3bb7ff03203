/* worker.c: a worker's channel to its master: synchronous listen requests (the reply
 * carries the fd) and heartbeats answered whenever the loop runs, so a worker whose loop
 * is stuck stops answering and the master can tell. */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fdpass.h"
#include "timer.h"

void worker_init(worker_chan *w)
{
    memset(w, 0, sizeof *w);
    conn_init(&w->conn, -1, CONN_MASTER, 0);
    w->number = w->count = 1;
}

int worker_from_env(worker_chan *w, const char *value)
{
    int number, count, fd, end = 0;
    if (sscanf(value, "%d,%d,%d%n", &number, &count, &fd, &end) != 3 || value[end] != '\0' ||
        count < 1 || number < 1 || number > count || fd < 0)
        return -EINVAL;
    /* Close-on-exec from here: a script's io.popen must not inherit the channel. */
    if (net_set_nonblocking(fd, 1) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -EINVAL;
    w->number = number;
    w->count = count;
    w->conn.fd = fd;
    return 0;
}

/* How many listeners for addr this worker has asked for before; the master keys its
 * port-0 listeners by it, so a script's second listen on port 0 gets a second port. */
static worker_asked *asked_for(worker_chan *w, const net_addr *addr)
{
    for (size_t i = 0; i < w->nasked; i++)
        if (w->asked[i].addr.len == addr->len &&
            memcmp(&w->asked[i].addr.ss, &addr->ss, addr->len) == 0)
            return &w->asked[i];
    worker_asked *grown = realloc(w->asked, (w->nasked + 1) * sizeof *grown);
    if (!grown)
        return NULL;
    w->asked = grown;
    grown[w->nasked].addr = *addr;
    grown[w->nasked].count = 0;
    return &grown[w->nasked++];
}

/* Answers a ping; anything else the master sends outside a request is ignored. */
static void answer(worker_chan *w, const fdpass_msg *m)
{
    if (m->type != FDPASS_PING)
        return;
    fdpass_msg pong;
    memset(&pong, 0, sizeof pong);
    pong.type = FDPASS_PONG;
    pong.value = m->value;
    fdpass_send(w->conn.fd, &pong, -1); /* a full channel: the next ping will do */
}

/* Waits for the master's reply, answering pings meanwhile. The fd or -errno. */
static int await_reply(worker_chan *w)
{
    double deadline = timer_now() + WORKER_REPLY_SECONDS;
    for (;;) {
        fdpass_msg m;
        int fd, rc = fdpass_recv(w->conn.fd, &m, &fd);
        if (rc == 0)
            return -EPIPE;
        if (rc == 1 && m.type == FDPASS_REPLY) {
            if (m.value == 0 && fd >= 0)
                return fd;
            if (fd >= 0)
                close(fd);
            return m.value ? -m.value : -EPROTO;
        }
        if (fd >= 0)
            close(fd);
        if (rc == 1)
            answer(w, &m);
        else if (rc != -EAGAIN)
            return rc;
        double left = deadline - timer_now();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {w->conn.fd, POLLIN, 0};
        if (poll(&p, 1, (int)(left * 1000) + 1) < 0 && errno != EINTR)
            return -errno;
    }
}

int worker_listen(worker_chan *w, const net_addr *addr, int backlog)
{
    if (w->conn.fd < 0)
        return -EPIPE;
    worker_asked *a = asked_for(w, addr);
    if (!a)
        return -ENOMEM;
    fdpass_msg m;
    memset(&m, 0, sizeof m);
    m.type = FDPASS_LISTEN;
    m.value = backlog;
    m.nth = a->count;
    m.addr = *addr;
    int rc = fdpass_send(w->conn.fd, &m, -1);
    if (rc < 0)
        return rc == -EAGAIN ? -ETIMEDOUT : rc;
    int fd = await_reply(w);
    if (fd < 0)
        return fd;
    net_set_nonblocking(fd, 1);
    a->count++;
    return fd;
}

int worker_watch(worker_chan *w, selector *sel)
{
    if (w->conn.fd < 0)
        return 0;
    int rc = sel_set_host_events(sel, w->conn.fd, SEL_READ, &w->conn);
    w->watched = rc == 0;
    return rc;
}

int worker_read(worker_chan *w, selector *sel)
{
    for (;;) {
        fdpass_msg m;
        int fd, rc = fdpass_recv(w->conn.fd, &m, &fd);
        if (fd >= 0)
            close(fd);
        if (rc == 1)
            answer(w, &m);
        else if (rc == -EAGAIN || rc == -EPROTO)
            return 0;
        else {
            worker_close(w, sel);
            return -1;
        }
    }
}

void worker_close(worker_chan *w, selector *sel)
{
    if (sel && w->watched && w->conn.fd >= 0)
        sel_set_host_events(sel, w->conn.fd, 0, NULL);
    if (w->conn.fd >= 0)
        close(w->conn.fd);
    w->conn.fd = -1;
    w->watched = 0;
    free(w->asked);
    w->asked = NULL;
    w->nasked = 0;
}
