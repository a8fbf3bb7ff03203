/* signals.h: SIGINT, SIGTERM and SIGHUP routed through a self-pipe that the selector
 * watches, so a signal arriving just before the wait is not missed; SIGPIPE ignored.
 * One process, one set of handlers: the executable's host. No Lua here. */
#ifndef LUAHOST_SIGNALS_H
#define LUAHOST_SIGNALS_H

#include "conn.h"
#include "selector.h"

typedef struct signals {
    conn conn; /* the pipe's read end, kind CONN_SIGNAL: the selector's host_data for it */
    int write_fd;
} signals;

/* What signals_read found, as flags. */
enum { SIGNALS_SIGINT = 1, SIGNALS_SIGTERM = 2, SIGNALS_SIGHUP = 4 };

/* Marks s as not watching (its fds -1). */
void signals_init(signals *s);
/* Installs the handlers and has sel watch the pipe for the host. 0 or -errno. */
int signals_watch(signals *s, selector *sel);
/* Reads what arrived: a SIGNALS_* flag for each signal that did. */
int signals_read(signals *s);
/* Closes the pipe (sel, if not NULL, forgets it first); the handlers stay, and a late
 * signal finds no pipe and is dropped. */
void signals_close(signals *s, selector *sel);

#endif
