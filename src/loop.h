/* loop.h: the host loop: wait for readiness, call each ready key's callback in protected
 * mode within the budget, flush buffered output, run due timers, finish lingering
 * closes, and stop or reload when asked (luahost.stop, signals, --watch). */
#ifndef LUAHOST_LOOP_H
#define LUAHOST_LOOP_H

#include "admission.h"
#include "budget.h"
#include "linger.h"
#include "lua_selector.h"
#include "lua_socket.h"
#include "lua_timer.h"
#include "reload.h"
#include "signals.h"
#include "watch.h"
#include "worker.h"

typedef struct lh_loop {
    lh_selectors *selectors;
    lh_sockets *sockets;
    lh_timers *timers;
    lh_budget *budget;
    lh_reload *reload;
    admission *adm;
    linger_list *linger;
    lh_logger *log;
    signals sig;        /* the executable's: SIGINT, SIGTERM, SIGHUP through the selector */
    watch watch;        /* --watch */
    worker_chan master; /* a --workers worker's channel to its master */
    int stop;           /* 1: luahost.stop() was called; 2: a signal asked */
    int debug_gc;       /* --debug-gc: a full collection after every round */
} lh_loop;

/* Sets the loop up over the host's parts, and makes it the handler of the host's own
 * readiness (output to flush, signals, the watched file) on the host's selectors. */
void loop_init(lh_loop *loop, lh_selectors *selectors, lh_sockets *sockets, lh_timers *timers,
               lh_budget *budget, lh_reload *reload, admission *adm, linger_list *linger,
               lh_logger *log);
/* Puts step, run and stop into the module table; host is the host userdata's index. */
void loop_open(lua_State *L, int module, int host, lh_loop *loop);

/* One round: waits up to timeout_ms (-1: no limit; less if a timer, a lingering close or
 * the end of an accept pause is due sooner), dispatches the batch, runs due timers.
 * Returns the callbacks run, or a negative errno if the wait failed. */
int loop_step(lua_State *L, lh_loop *loop, int timeout_ms);
/* Steps until stop, a signal, nothing left to do, or timeout seconds (< 0: none).
 * Returns why it ended: "stopped", "signal", "idle" or "timeout"; NULL with *err set
 * when the wait failed. */
const char *loop_run(lua_State *L, lh_loop *loop, double timeout, int *err);
/* The fds the host's selector watches for the loop itself (signals, the watched file,
 * the master's channel), which keep nothing alive. */
size_t loop_own_fds(const lh_loop *loop);
/* Nothing left to do: no registration, no timer, no output waiting to be sent. */
int loop_is_idle(const lh_loop *loop);
/* Closes every listener and every socket registered on the host's selector (letting
 * them flush), cancels timers, and runs until the output is sent or grace runs out. */
void loop_shutdown(lua_State *L, lh_loop *loop, double grace_seconds);

#endif
