/* linger.h: closed connections whose buffered output is still being sent: the host owns
 * their fd and buffer until the peer takes the rest or a deadline passes. No Lua here. */
#ifndef LUAHOST_LINGER_H
#define LUAHOST_LINGER_H

#include <stddef.h>

#include "admission.h"
#include "conn.h"
#include "selector.h"

/* How long a closed connection may take to flush what it still has buffered. */
#define LINGER_SECONDS 5.0

typedef struct linger_rec {
    conn conn; /* first: the selector's host_data for the fd points here (kind CONN_LINGER) */
    double deadline;
    struct linger_rec *next;
} linger_rec;

/* Records in deadline order, since they all wait the same time. */
typedef struct linger_list {
    linger_rec *head, *tail;
    size_t count;
    selector *sel;
    admission *adm; /* closes the fds, counting connections */
    lh_logger *log;
    const timer_clock *clock;
} linger_list;

void linger_init(linger_list *l, selector *sel, admission *adm, lh_logger *log,
                 const timer_clock *clock);

/* Takes over c's fd and pending output (c is left with neither) to finish sending within
 * LINGER_SECONDS. If that cannot be arranged, the output is dropped and the fd reset. */
void linger_add(linger_list *l, conn *c);

/* The fd of rec turned writable: sends more, and finishes rec once all is sent or the
 * send failed. */
void linger_flush(linger_list *l, linger_rec *rec);

/* Drops the output of records past their deadline and closes them with a reset, logging
 * the peer and the bytes dropped. */
void linger_expire(linger_list *l);

/* Milliseconds until the next deadline, or -1 when nothing lingers. */
int linger_timeout_ms(const linger_list *l);

/* Finishes every record now, dropping what was not sent (reset and logged, as above). */
void linger_close_all(linger_list *l);

#endif
