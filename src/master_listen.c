/* master_listen.c: the master's listeners, keyed by the address a worker asked for (and,
 * for port 0, which of its requests for that address it is), one socket per slot. */
#include "master_listen.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

void ml_init(master_listeners *l, lh_logger *log)
{
    memset(l, 0, sizeof *l);
    l->log = log;
}

static int any_port(const net_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_port == 0;
    if (a->ss.ss_family == AF_INET6)
        return ((const struct sockaddr_in6 *)&a->ss)->sin6_port == 0;
    return 0;
}

static int same_addr(const net_addr *a, const net_addr *b)
{
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* The entry for a request; a fixed port is one listener whatever nth, and is also the
 * one a port-0 request was given, as a single process's listen returns the listener it
 * has on the address. */
static master_listener *find(master_listeners *l, const net_addr *asked, unsigned nth)
{
    int fixed = !any_port(asked);
    for (size_t i = 0; i < l->n; i++) {
        master_listener *e = &l->v[i];
        if (same_addr(&e->asked, asked) ? fixed || e->nth == nth
                                        : fixed && same_addr(&e->bound, asked))
            return e;
    }
    return NULL;
}

/* A socket bound to addr with SO_REUSEPORT, listening: fd or -errno. */
static int bind_one(const net_addr *addr, int backlog)
{
    int fd = net_socket(addr->ss.ss_family, SOCK_STREAM, 1);
    if (fd < 0)
        return fd;
    int rc = net_bind_listen(fd, addr, backlog, 1);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* 0 if nothing listens on addr, else -EADDRINUSE (or another -errno). The master's sockets
 * have SO_REUSEPORT, so their bind succeeds beside another server's that has it too (a
 * second luahost --workers on the port, say) and the two would share its connections
 * unseen; a socket without it, bound and closed (never listening), cannot. */
static int port_free(const net_addr *addr)
{
    int fd = net_socket(addr->ss.ss_family, SOCK_STREAM, 1), on = 1, rc = 0;
    if (fd < 0)
        return fd;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* Binds asked for the first time: a new entry whose slot socket is the one bound. */
static int bind_first(master_listeners *l, int slot, const net_addr *asked, unsigned nth,
                      int backlog)
{
    master_listener *grown = realloc(l->v, (l->n + 1) * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    l->v = grown;
    int rc = any_port(asked) ? 0 : port_free(asked);
    if (rc < 0)
        return rc;
    int fd = bind_one(asked, backlog);
    if (fd < 0)
        return fd;
    master_listener *e = &l->v[l->n++];
    e->asked = *asked;
    e->nth = nth;
    for (int i = 0; i < MASTER_MAX_WORKERS; i++)
        e->fds[i] = -1;
    e->fds[slot] = fd;
    char where[NET_ADDRSTRLEN] = "?";
    if (net_sockname(fd, &e->bound) == 0)
        net_addr_format(&e->bound, where, sizeof where);
    else
        e->bound = *asked;
    lh_log(l->log, LH_INFO, "listening on %s", where);
    return fd;
}

int ml_get(master_listeners *l, int slot, const net_addr *asked, unsigned nth, int backlog)
{
    if (slot < 0 || slot >= MASTER_MAX_WORKERS)
        return -EINVAL;
    master_listener *e = find(l, asked, nth);
    if (!e)
        return bind_first(l, slot, asked, nth, backlog);
    if (e->fds[slot] < 0) {
        int fd = bind_one(&e->bound, backlog);
        if (fd < 0)
            return fd;
        e->fds[slot] = fd;
    }
    return e->fds[slot];
}

void ml_close_all(master_listeners *l)
{
    for (size_t i = 0; i < l->n; i++)
        for (int s = 0; s < MASTER_MAX_WORKERS; s++)
            if (l->v[i].fds[s] >= 0)
                close(l->v[i].fds[s]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}
