/* conn.c: buffered output for a connection: send now what the kernel takes, queue the
 * rest under a limit, flush on writability, and pause reads while too much is queued. */
#include "conn.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "net.h"

void conn_init(conn *c, int fd, int kind, uint32_t limit)
{
    c->fd = fd;
    c->kind = (uint8_t)kind;
    c->flags = 0;
    c->limit = limit;
    c->out = NULL;
}

size_t conn_pending(const conn *c)
{
    return c->out ? buf_len(c->out) : 0;
}

void conn_free(conn *c)
{
    if (c->out) {
        buf_free(c->out);
        free(c->out);
        c->out = NULL;
    }
}

size_t conn_high_water(const conn *c)
{
    return c->limit / 4 ? c->limit / 4 : 1;
}

size_t conn_low_water(const conn *c)
{
    return conn_high_water(c) / 4;
}

/* Pausing only matters while the script has the fd registered; the slot exists as long
 * as output is pending, so the pause is kept across a later register. */
static void update_pause(conn *c, selector *sel)
{
    size_t pending = conn_pending(c);
    int want = (c->flags & CONN_PAUSED) ? pending >= conn_low_water(c) && pending > 0
                                        : pending > conn_high_water(c);
    if (want == !!(c->flags & CONN_PAUSED))
        return;
    int handshake = (c->flags & CONN_HANDSHAKE) ? SEL_BOTH : 0;
    if (sel_set_paused(sel, c->fd, (want ? SEL_READ : 0) | handshake) == 0)
        c->flags = want ? (c->flags | CONN_PAUSED) : (c->flags & ~CONN_PAUSED);
}

/* The host's own interest: writability while output is pending, and readability while
 * a handshake is under way (the host reads it). */
static int host_events(const conn *c)
{
    return (conn_pending(c) > 0 ? SEL_WRITE : 0) | ((c->flags & CONN_HANDSHAKE) ? SEL_READ : 0);
}

int conn_sync(conn *c, selector *sel)
{
    int events = host_events(c);
    int rc = sel_set_host_events(sel, c->fd, events, events ? c : NULL);
    if (rc < 0)
        return rc;
    int paused = (c->flags & CONN_PAUSED) ? SEL_READ : 0;
    return sel_set_paused(sel, c->fd, paused | ((c->flags & CONN_HANDSHAKE) ? SEL_BOTH : 0));
}

static int finish_drain(conn *c, selector *sel)
{
    update_pause(c, sel);
    sel_set_host_events(sel, c->fd, host_events(c), (c->flags & CONN_HANDSHAKE) ? c : NULL);
    if (c->flags & CONN_SHUT_WR) {
        c->flags &= ~CONN_SHUT_WR;
        if (shutdown(c->fd, SHUT_WR) < 0 && errno != ENOTCONN)
            return -errno;
    }
    return 0;
}

ssize_t conn_write(conn *c, selector *sel, const net_io *io, const char *data, size_t len,
                   size_t *refused)
{
    size_t pending = conn_pending(c);
    if (c->flags & CONN_WRITE_CLOSED)
        return -EPIPE;
    if (pending == 0) {
        ssize_t sent = io->send(io, c->fd, data, len);
        if (sent < 0 && sent != -EAGAIN)
            return sent;
        sent = sent < 0 ? 0 : sent;
        data += sent;
        len -= (size_t)sent;
        if (len == 0)
            return 0;
    }
    if (len > c->limit || pending > c->limit - len) {
        if (refused)
            *refused = len;
        return -ENOBUFS;
    }
    if (!c->out && (c->out = (buffer *)malloc(sizeof *c->out)) != NULL)
        buf_init(c->out);
    if (!c->out || buf_append(c->out, data, len) < 0)
        return -ENOMEM;
    if (pending == 0) {
        int rc = sel_set_host_events(sel, c->fd, host_events(c), c);
        if (rc < 0) {
            conn_free(c);
            return rc;
        }
    }
    update_pause(c, sel);
    return (ssize_t)buf_len(c->out);
}

ssize_t conn_flush(conn *c, selector *sel, const net_io *io)
{
    size_t len;
    while (conn_pending(c) > 0) {
        const char *data = buf_peek(c->out, &len);
        ssize_t sent = io->send(io, c->fd, data, len);
        if (sent == -EAGAIN)
            break;
        if (sent < 0) {
            conn_drop(c, sel);
            return sent;
        }
        buf_consume(c->out, (size_t)sent);
    }
    if (conn_pending(c) > 0) {
        update_pause(c, sel);
        return (ssize_t)conn_pending(c);
    }
    conn_free(c);
    return finish_drain(c, sel);
}

ssize_t conn_send_pending(conn *c, const net_io *io)
{
    size_t len;
    while (conn_pending(c) > 0) {
        const char *data = buf_peek(c->out, &len);
        ssize_t sent = io->send(io, c->fd, data, len);
        if (sent < 0)
            return sent == -EAGAIN ? (ssize_t)conn_pending(c) : sent;
        buf_consume(c->out, (size_t)sent);
    }
    return 0;
}

void conn_drop(conn *c, selector *sel)
{
    conn_free(c);
    int handshake = c->flags & CONN_HANDSHAKE;
    c->flags &= ~(CONN_SHUT_WR | CONN_HANDSHAKE);
    update_pause(c, sel);
    if (handshake)
        sel_set_paused(sel, c->fd, c->flags & CONN_PAUSED ? SEL_READ : 0);
    sel_set_host_events(sel, c->fd, 0, NULL);
}

int conn_shutdown_write(conn *c, selector *sel)
{
    (void)sel;
    c->flags |= CONN_WRITE_CLOSED;
    if (conn_pending(c) > 0) {
        c->flags |= CONN_SHUT_WR;
        return 0;
    }
    return shutdown(c->fd, SHUT_WR) < 0 ? -errno : 0;
}
