/* lua_timer.h: luahost.after / luahost.every and the luahost.timer type, over the core's
 * min-heap. A scheduled timer is anchored so it cannot be collected. */
#ifndef LUAHOST_LUA_TIMER_H
#define LUAHOST_LUA_TIMER_H

#include "budget.h"
#include "lhaux.h"
#include "timer.h"

#define LH_TIMER "luahost.timer"

/* A host's timers. */
typedef struct lh_timers {
    timer_heap heap;
    const timer_clock *clock;
    lh_budget *budget; /* callbacks run within it */
    lh_logger *log;
    lh_journal *journal;
    lh_anchor *anchor; /* each timer userdata holds the host */
    int scheduled_ref; /* table: timer pointer -> its userdata, for those scheduled */
    int closed;
} lh_timers;

void lhtimer_init(lua_State *L, lh_timers *t, const timer_clock *clock, lh_budget *budget,
                  lh_logger *log, lh_journal *journal, lh_anchor *anchor);
/* Puts after and every into the module table; host is the host userdata's index. */
void lhtimer_open(lua_State *L, int module, int host, lh_timers *t);

/* As luahost.after(delay, f) for the function at index fn, from C: pushes the timer. */
void lhtimer_after(lua_State *L, lh_timers *t, double delay, int fn);
/* Runs every timer due by now, each once, its callback within the budget; an error is
 * logged and the timer keeps its schedule. */
void lhtimer_run_due(lua_State *L, lh_timers *t);
/* Milliseconds until the next timer is due, or -1 when none is scheduled. */
int lhtimer_timeout_ms(const lh_timers *t);

/* Cancels the timer at index. While a reload runs, a cancelled timer stays anchored so
 * a rollback can schedule it again without allocating; lhtimer_settle lets it go. */
void lhtimer_cancel(lua_State *L, int index);
/* For a timer a reload cancelled: schedules it again (the reload was rolled back), or
 * lets it go. Allocates no Lua memory. */
void lhtimer_settle(lua_State *L, lh_timers *t, int index, int reschedule);

/* Cancels every timer (the host is shutting down). */
void lhtimer_cancel_all(lua_State *L, lh_timers *t);
/* Cancels every timer and lets them all go, for good: the host is closing. */
void lhtimer_close(lua_State *L, lh_timers *t);

#endif
