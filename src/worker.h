/* worker.h: a --workers worker's side of its channel to the master: listeners asked for
 * (the master binds, the worker gets the fd), and heartbeats answered from the loop.
 * No Lua here. */
#ifndef LUAHOST_WORKER_H
#define LUAHOST_WORKER_H

#include "conn.h"
#include "net.h"
#include "selector.h"

/* The environment variable through which the master tells a worker who it is:
 * "NUMBER,COUNT,FD" (FD: the worker's end of the channel). */
#define WORKER_ENV "LUAHOST_WORKER"

/* How long a worker waits for the master's answer to a listen request. */
#define WORKER_REPLY_SECONDS 5

typedef struct worker_asked {
    net_addr addr;
    unsigned count;
} worker_asked;

typedef struct worker_chan {
    conn conn;           /* the channel, kind CONN_MASTER: the selector's host_data for it */
    int number, count;   /* this worker's number (1..count); 1, 1 when not a worker */
    int watched;         /* the selector watches the channel for the host */
    worker_asked *asked; /* the addresses asked for so far, for the nth of a request */
    size_t nasked;
} worker_chan;

/* Not a worker: number and count 1, no channel. */
void worker_init(worker_chan *w);
/* Takes who this process is from value (WORKER_ENV's); 0, or -EINVAL if malformed. */
int worker_from_env(worker_chan *w, const char *value);
/* Asks the master for a listener on addr (backlog for its listen(2)); answers the
 * master's pings while it waits. The fd (non-blocking, close-on-exec), or -errno: the
 * master's bind or listen error, -EPIPE if the master is gone, -ETIMEDOUT if it did not
 * answer within WORKER_REPLY_SECONDS. */
int worker_listen(worker_chan *w, const net_addr *addr, int backlog);
/* Has sel report the channel to the host. 0 or -errno. */
int worker_watch(worker_chan *w, selector *sel);
/* Reads what the master sent and answers its pings. 0, or -1 once the master is gone
 * (the channel is then closed and forgotten by sel). */
int worker_read(worker_chan *w, selector *sel);
/* Closes the channel (sel, if not NULL, forgets it first) and frees what w holds. */
void worker_close(worker_chan *w, selector *sel);

#endif
