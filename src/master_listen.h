/* master_listen.h: the --workers master's listeners: each address bound once (port 0
 * too: every worker gets the port the first bind got), with one SO_REUSEPORT socket per
 * worker slot, so the kernel spreads new connections over the workers and wakes only
 * the one whose socket got the connection. A slot's socket outlives its worker: the
 * replacement gets the same listener. No Lua here. */
#ifndef LUAHOST_MASTER_LISTEN_H
#define LUAHOST_MASTER_LISTEN_H

#include "log.h"
#include "net.h"

/* The most workers a master runs. */
#define MASTER_MAX_WORKERS 64

typedef struct master_listener {
    net_addr asked;              /* as a worker asked for it */
    unsigned nth;                /* port 0: the worker's how-manieth request for it */
    net_addr bound;              /* where the first socket was bound */
    int fds[MASTER_MAX_WORKERS]; /* each slot's socket, -1 until it asks */
} master_listener;

typedef struct master_listeners {
    master_listener *v;
    size_t n;
    lh_logger *log;
} master_listeners;

void ml_init(master_listeners *l, lh_logger *log);
/* The socket of slot (0-based) for a worker's request for asked (its nth for that
 * address). The first request for an address binds it and logs "listening on
 * HOST:PORT"; the slot's later requests get the same socket. The fd stays the master's
 * (send a copy), or -errno. */
int ml_get(master_listeners *l, int slot, const net_addr *asked, unsigned nth, int backlog);
/* Closes every socket and frees the table. */
void ml_close_all(master_listeners *l);

#endif
