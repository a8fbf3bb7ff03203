/* lua_timer.c: luahost.after / luahost.every and the luahost.timer type. Timer userdata
 * are anchored while scheduled, keep their callback as a user value, and hold the host
 * while they live. */
#include "lua_timer.h"

typedef struct lh_timer {
    timer t;
    lh_timers *ctx;
} lh_timer;

static lh_timer *check_timer(lua_State *L, int index)
{
    return (lh_timer *)luaL_checkudata(L, index, LH_TIMER);
}

static void set_scheduled(lua_State *L, lh_timers *t, lh_timer *tm, int value)
{
    value = lua_absindex(L, value);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->scheduled_ref);
    lua_pushvalue(L, value);
    lua_rawsetp(L, -2, tm);
    lua_pop(L, 1);
}

static void unanchor(lua_State *L, lh_timers *t, lh_timer *tm)
{
    lua_pushnil(L);
    set_scheduled(L, t, tm, -1);
    lua_pop(L, 1);
}

void lhtimer_init(lua_State *L, lh_timers *t, const timer_clock *clock, lh_budget *budget,
                  lh_logger *log, lh_journal *journal, lh_anchor *anchor)
{
    theap_init(&t->heap);
    t->clock = clock;
    t->budget = budget;
    t->log = log;
    t->journal = journal;
    t->anchor = anchor;
    t->closed = 0;
    lua_newtable(L);
    t->scheduled_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* The longest delay or interval: deadlines stay exact to well under a millisecond below
 * it (timer.c), and nothing a server waits for is further away. */
#define LH_TIMER_MAX_SECONDS 1e9

/* The seconds at index: from 0 (above 0 when positive) to below LH_TIMER_MAX_SECONDS.
 * Raises saying which bound was passed, named as what. */
static lua_Number check_seconds(lua_State *L, int index, int positive, const char *what)
{
    lua_Number n = luaL_checknumber(L, index);
    if (n != n)
        luaL_argerror(L, index, lua_pushfstring(L, "%s is NaN, not a number of seconds", what));
    if (positive ? !(n > 0) : !(n >= 0))
        luaL_argerror(
            L, index,
            lua_pushfstring(L, "%s must be %s", what, positive ? "positive" : "0 or more seconds"));
    if (!(n < LH_TIMER_MAX_SECONDS))
        luaL_argerror(L, index,
                      lua_pushfstring(L, "%s must be under %d seconds (about 31 years)", what,
                                      (int)LH_TIMER_MAX_SECONDS));
    return n;
}

static int schedule_on(lua_State *L, lh_timers *t, lua_Number delay, double interval, int fn)
{
    fn = lua_absindex(L, fn);
    if (t->closed)
        return luaL_error(L, "the host is closed");
    lh_timer *tm = (lh_timer *)lua_newuserdatauv(L, sizeof *tm, 1);
    tm->t.index = TIMER_IDLE;
    tm->t.interval = interval;
    tm->t.deadline = timer_clock_now(t->clock) + delay;
    tm->t.data = tm;
    tm->ctx = t;
    luaL_setmetatable(L, LH_TIMER);
    lh_anchor_hold(t->anchor);
    lua_pushvalue(L, fn);
    lua_setiuservalue(L, -2, 1);
    /* Journaled and anchored before it is scheduled: a memory error in either must not
     * leave in the heap a timer the collector may free. */
    lh_journal_note(t->journal, L, LH_MADE_TIMER, -1, 0);
    set_scheduled(L, t, tm, -1);
    if (theap_push(&t->heap, &tm->t) < 0) {
        unanchor(L, t, tm);
        return luaL_error(L, "not enough memory to schedule a timer");
    }
    return 1;
}

static int schedule(lua_State *L, lua_Number delay, double interval)
{
    luaL_checktype(L, 2, LUA_TFUNCTION);
    return schedule_on(L, (lh_timers *)LH_CTX(L), delay, interval, 2);
}

void lhtimer_after(lua_State *L, lh_timers *t, double delay, int fn)
{
    schedule_on(L, t, delay, 0, fn);
}

static int l_after(lua_State *L)
{
    return schedule(L, check_seconds(L, 1, 0, "delay"), 0);
}

static int l_every(lua_State *L)
{
    lua_Number interval = check_seconds(L, 1, 1, "interval");
    return schedule(L, interval, interval);
}

void lhtimer_cancel(lua_State *L, int index)
{
    lh_timer *tm = check_timer(L, index);
    lh_timers *t = tm->ctx;
    if (tm->t.index == TIMER_IDLE)
        return;
    lh_journal_note(t->journal, L, LH_CANCELLED_TIMER, index, 0);
    theap_remove(&t->heap, &tm->t);
    if (!t->journal->reloading)
        unanchor(L, t, tm);
}

static int timer_cancel(lua_State *L)
{
    lhtimer_cancel(L, 1);
    return 0;
}

static int timer_active(lua_State *L)
{
    lua_pushboolean(L, check_timer(L, 1)->t.index != TIMER_IDLE);
    return 1;
}

static int timer_tostring(lua_State *L)
{
    lh_timer *tm = check_timer(L, 1);
    if (tm->t.index == TIMER_IDLE)
        lua_pushliteral(L, "luahost.timer (idle)");
    else
        lua_pushfstring(L, "luahost.timer (due in %f s)",
                        tm->t.deadline - timer_clock_now(tm->ctx->clock));
    return 1;
}

static int timer_gc(lua_State *L)
{
    lh_timer *tm = check_timer(L, 1);
    lh_anchor_release(L, tm->ctx->anchor);
    return 0;
}

/* A repeating timer is rescheduled before its callback runs, from its own deadline so
 * it keeps its rhythm, but never into the past, so a slow callback cannot make it fire
 * in a burst. */
void lhtimer_run_due(lua_State *L, lh_timers *t)
{
    double now = timer_clock_now(t->clock);
    timer *due;
    while ((due = theap_peek(&t->heap)) && due->deadline <= now) {
        lh_timer *tm = (lh_timer *)due->data;
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->scheduled_ref);
        lua_rawgetp(L, -1, tm);
        lua_remove(L, -2);
        theap_remove(&t->heap, due);
        if (due->interval > 0) {
            due->deadline += due->interval;
            if (due->deadline <= now)
                due->deadline = now + due->interval;
            if (theap_push(&t->heap, due) < 0)
                unanchor(L, t, tm);
        } else {
            unanchor(L, t, tm);
        }
        lua_getiuservalue(L, -1, 1);
        lua_pushvalue(L, -2);
        if (budget_pcall(L, t->budget, 1, 0) != LUA_OK)
            lh_report_error(L, t->log, "error in timer");
        lua_pop(L, 1);
    }
}

int lhtimer_timeout_ms(const lh_timers *t)
{
    return theap_timeout_ms(&t->heap, timer_clock_now(t->clock));
}

void lhtimer_settle(lua_State *L, lh_timers *t, int index, int reschedule)
{
    lh_timer *tm = check_timer(L, index);
    if (tm->t.index != TIMER_IDLE)
        return;
    if (!reschedule || theap_push(&t->heap, &tm->t) < 0)
        unanchor(L, t, tm);
}

void lhtimer_cancel_all(lua_State *L, lh_timers *t)
{
    timer *next;
    while ((next = theap_peek(&t->heap))) {
        theap_remove(&t->heap, next);
        unanchor(L, t, (lh_timer *)next->data);
    }
}

void lhtimer_close(lua_State *L, lh_timers *t)
{
    lhtimer_cancel_all(L, t);
    theap_free(&t->heap);
    t->closed = 1;
    luaL_unref(L, LUA_REGISTRYINDEX, t->scheduled_ref); /* and with it, the timers */
    t->scheduled_ref = LUA_NOREF;
}

static const luaL_Reg timer_methods[] = {
    {"cancel", timer_cancel},
    {"active", timer_active},
    {NULL, NULL},
};

static const luaL_Reg module_functions[] = {
    {"after", l_after},
    {"every", l_every},
    {NULL, NULL},
};

void lhtimer_open(lua_State *L, int module, int host, lh_timers *t)
{
    if (luaL_newmetatable(L, LH_TIMER)) {
        luaL_newlib(L, timer_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, timer_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, timer_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lh_setfuncs(L, module_functions, module, host, t);
}
