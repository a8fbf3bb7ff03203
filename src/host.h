/* host.h: a host: the parts that serve one script (logger, clock, selector, sockets,
 * timers, budget, admission, lingering closes, reload, loop) put together as one Lua
 * userdata, and the module table through which a script reaches it. */
#ifndef LUAHOST_HOST_H
#define LUAHOST_HOST_H

#include <stdint.h>

#include "admission.h"
#include "budget.h"
#include "lhaux.h"
#include "linger.h"
#include "loop.h"
#include "lua_selector.h"
#include "lua_socket.h"
#include "lua_timer.h"
#include "lua_tls.h"
#include "reload.h"

/* What a host is made with: the executable's command line, or luahost.open's table. */
typedef struct lh_settings {
    const char *backend;    /* the selector's; NULL: the best available */
    int log_level;          /* LH_DEBUG .. LH_ERROR */
    int capture_log;        /* keep the log for a test instead of printing it */
    uint32_t max_output;    /* bytes a connection may buffer */
    size_t max_connections; /* 0: no limit */
    long long fd_limit;     /* RLIMIT_NOFILE, for the log (0: unknown) */
    long max_instructions;  /* per callback; 0: no budget */
    int debug_gc;           /* a full collection after every round */
} lh_settings;

/* The defaults: best backend, info, 1 MiB of output, no connection limit, the default
 * instruction budget. */
void lh_settings_init(lh_settings *s);

typedef struct lh_host {
    lh_anchor anchor;
    lh_logger log;
    timer_clock clock;
    selector *sel; /* the host's selector (luahost.selector wraps it); freed last */
    admission adm;
    linger_list linger;
    lh_budget budget;
    lh_timers timers;
    lh_sockets sockets;
    lh_tls tls;
    lh_selectors selectors;
    lh_reload reload;
    lh_loop loop;
    int closed;
} lh_host;

/* Pushes the module table of a new host made with settings, and above it the host
 * userdata; returns the host. Raises on failure (an unknown backend, no memory). */
lh_host *lh_host_push(lua_State *L, const lh_settings *settings);

/* Ends a host for good: shuts it down (letting output flush for up to grace seconds),
 * then closes its listeners, selectors and timers and frees what it holds. Objects still
 * pointing at it see a closed host; it is collected once none is left. */
void lh_host_close(lua_State *L, lh_host *host, double grace_seconds);

#endif
