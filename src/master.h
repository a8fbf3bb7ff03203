/* master.h: luahost --workers N: a master that runs no script. It starts N workers (the
 * same command line, run again with WORKER_ENV set), owns their listeners, restarts a
 * worker that dies (backing off when it keeps dying), passes SIGHUP on, stops them all
 * on SIGINT/SIGTERM, and kills a worker that stops answering its heartbeat. No Lua here. */
#ifndef LUAHOST_MASTER_H
#define LUAHOST_MASTER_H

#include "log.h"
#include "master_listen.h"

/* A worker that exits sooner than this after its start counts as failing to start. */
#define MASTER_QUICK_EXIT_SECONDS 1.0
/* The first delay of the backoff, doubled with each quick exit in a row, up to the most. */
#define MASTER_BACKOFF_FIRST 0.1
#define MASTER_BACKOFF_MOST  5.0
/* A worker silent this many times the heartbeat limit is killed: the worker's own stall
 * watchdog, at the limit, says first what is stuck. */
#define MASTER_HEARTBEAT_GRACE 1.5

typedef struct master_config {
    int workers;              /* 1..MASTER_MAX_WORKERS */
    char **argv;              /* the command line each worker runs again */
    double heartbeat_seconds; /* --max-callback-seconds; 0: no heartbeat */
    lh_logger *log;
} master_config;

/* Runs the master until every worker is gone: after SIGINT/SIGTERM (0, or 128 + the
 * signal when a second one killed them), or when each exited 0 by itself (0). Returns 1
 * if it cannot start (no signal pipe). */
int master_run(const master_config *cfg);

#endif
