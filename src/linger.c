/* linger.c: lingering closes: finish sending a closed connection's output, or drop it at
 * the deadline (or when the host stops) with a reset; the fd is closed either way. */
#include "linger.h"

#include <stdio.h>
#include <stdlib.h>

void linger_init(linger_list *l, selector *sel, admission *adm, lh_logger *log,
                 const timer_clock *clock)
{
    l->head = l->tail = NULL;
    l->count = 0;
    l->sel = sel;
    l->adm = adm;
    l->log = log;
    l->clock = clock;
}

/* Closes c's fd; output it still has is dropped, which the peer is told with a reset
 * (a FIN would pass the cut stream off as whole), and the log with whom and how much. */
static void drop_and_close(linger_list *l, conn *c, const char *why)
{
    size_t dropped = conn_pending(c);
    if (l->sel)
        conn_drop(c, l->sel);
    conn_free(c);
    if (dropped == 0) {
        adm_close(l->adm, c);
        return;
    }
    char peer[NET_ADDRSTRLEN];
    net_addr addr;
    const net_io *io = l->sel ? sel_io(l->sel) : &net_io_kernel;
    peer[0] = '\0';
    if (io->peername(io, c->fd, &addr) == 0)
        net_addr_format(&addr, peer, sizeof peer);
    if (!peer[0]) /* no address, or an unnamed unix socket's empty one */
        snprintf(peer, sizeof peer, "fd %d", c->fd);
    adm_close_reset(l->adm, c, peer, why, dropped);
}

void linger_add(linger_list *l, conn *c)
{
    linger_rec *rec = (linger_rec *)malloc(sizeof *rec);
    if (!rec || !l->sel || sel_set_host_events(l->sel, c->fd, SEL_WRITE, &rec->conn) < 0) {
        drop_and_close(l, c,
                       rec ? "cannot linger: the host is closing" : "cannot linger: out of memory");
        free(rec);
        return;
    }
    rec->conn = *c;
    rec->conn.kind = CONN_LINGER;
    rec->deadline = timer_clock_now(l->clock) + LINGER_SECONDS;
    rec->next = NULL;
    if (l->tail)
        l->tail->next = rec;
    else
        l->head = rec;
    l->tail = rec;
    l->count++;
    c->out = NULL; /* the record owns it now */
    c->fd = -1;
}

static void unlink_rec(linger_list *l, linger_rec *rec)
{
    linger_rec **link = &l->head, *prev = NULL;
    while (*link && *link != rec) {
        prev = *link;
        link = &(*link)->next;
    }
    if (!*link)
        return;
    *link = rec->next;
    if (l->tail == rec)
        l->tail = prev;
    l->count--;
}

static void finish(linger_list *l, linger_rec *rec, const char *why)
{
    drop_and_close(l, &rec->conn, why);
    unlink_rec(l, rec);
    free(rec);
}

void linger_flush(linger_list *l, linger_rec *rec)
{
    if (conn_flush(&rec->conn, l->sel, sel_io(l->sel)) <= 0)
        finish(l, rec, "sending failed"); /* nothing is left pending either way */
}

void linger_expire(linger_list *l)
{
    double now = timer_clock_now(l->clock);
    while (l->head && l->head->deadline <= now) {
        char why[64];
        snprintf(why, sizeof why, "output not taken within %.0f s of closing", LINGER_SECONDS);
        finish(l, l->head, why);
    }
}

int linger_timeout_ms(const linger_list *l)
{
    if (!l->head)
        return -1;
    double left = l->head->deadline - timer_clock_now(l->clock);
    return left <= 0 ? 0 : (int)(left * 1000.0) + 1;
}

void linger_close_all(linger_list *l)
{
    while (l->head)
        finish(l, l->head, "the host is stopping");
}
