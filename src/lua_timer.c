/* lua_timer.c: luahost.after / luahost.every and the luahost.timer type over the core's
 * min-heap. A scheduled timer is anchored by the host so it cannot be collected. */
#include "lh.h"

typedef struct lh_timer {
    timer t;
    lh_host *host;
} lh_timer;

static lh_timer *check_timer(lua_State *L, int index)
{
    return (lh_timer *)luaL_checkudata(L, index, LH_TIMER);
}

static void anchor(lua_State *L, lh_host *host, lh_timer *tm, int index)
{
    index = lua_absindex(L, index);
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->timers_ref);
    lua_pushvalue(L, index);
    lua_rawsetp(L, -2, tm);
    lua_pop(L, 1);
}

static void unanchor(lua_State *L, lh_host *host, lh_timer *tm)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->timers_ref);
    lua_pushnil(L);
    lua_rawsetp(L, -2, tm);
    lua_pop(L, 1);
}

static int schedule(lua_State *L, double interval)
{
    lh_host *host = LH_HOST(L);
    lua_Number delay = luaL_checknumber(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_argcheck(L, delay >= 0 && delay < 1e9, 1, "delay must be 0 or more seconds");
    lh_timer *tm = (lh_timer *)lua_newuserdatauv(L, sizeof *tm, 1);
    tm->t.index = TIMER_IDLE;
    tm->t.interval = interval;
    tm->t.deadline = host_now(host) + delay;
    tm->t.data = tm;
    tm->host = host;
    luaL_setmetatable(L, LH_TIMER);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1);
    /* Journaled and anchored before it is scheduled: a memory error in either must not
     * leave in the heap a timer the collector may free. */
    reload_journal_object(L, host, "timers", -1);
    anchor(L, host, tm, -1);
    if (theap_push(&host->timers, &tm->t) < 0) {
        unanchor(L, host, tm);
        return luaL_error(L, "not enough memory to schedule a timer");
    }
    return 1;
}

static int l_after(lua_State *L)
{
    return schedule(L, 0);
}

static int l_every(lua_State *L)
{
    lua_Number interval = luaL_checknumber(L, 1);
    luaL_argcheck(L, interval > 0, 1, "interval must be positive");
    return schedule(L, interval);
}

/* Cancels the timer at index; allocates nothing unless a reload journals it. While a
 * reload runs the timer stays anchored, so that a rollback can schedule it again without
 * allocating; lhtimer_settle lets it go once the reload is over. */
void lhtimer_cancel(lua_State *L, int index)
{
    lh_timer *tm = check_timer(L, index);
    if (tm->t.index != TIMER_IDLE) {
        reload_journal_object(L, tm->host, "cancelled", index);
        theap_remove(&tm->host->timers, &tm->t);
        if (!tm->host->reloading)
            unanchor(L, tm->host, tm);
    }
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
        lua_pushfstring(L, "luahost.timer (due in %f s)", tm->t.deadline - host_now(tm->host));
    return 1;
}

/* Runs every timer due by now, each once: a repeating timer is rescheduled before its
 * callback runs, from its own deadline so it keeps its rhythm, but never into the past,
 * so a slow callback cannot make it fire in a burst. */
void lhtimer_run_due(lua_State *L, lh_host *host)
{
    double now = host_now(host);
    timer *t;
    while ((t = theap_peek(&host->timers)) && t->deadline <= now) {
        lh_timer *tm = (lh_timer *)t->data;
        lua_rawgeti(L, LUA_REGISTRYINDEX, host->timers_ref);
        lua_rawgetp(L, -1, tm);
        lua_remove(L, -2);
        theap_remove(&host->timers, t);
        if (t->interval > 0) {
            t->deadline += t->interval;
            if (t->deadline <= now)
                t->deadline = now + t->interval;
            if (theap_push(&host->timers, t) < 0)
                unanchor(L, host, tm);
        } else {
            unanchor(L, host, tm);
        }
        lua_pushcfunction(L, lh_traceback);
        lua_getiuservalue(L, -2, 1);
        lua_pushvalue(L, -3);
        if (host_pcall(L, host, 1, lua_gettop(L) - 2) != LUA_OK)
            host_report_error(L, host, "error in timer");
        lua_pop(L, 2);
    }
}

/* For a timer a reload cancelled (still anchored), once the reload is over: schedules
 * it again (the reload was rolled back), or lets it go. Allocates no Lua memory. */
void lhtimer_settle(lua_State *L, lh_host *host, int index, int reschedule)
{
    lh_timer *tm = check_timer(L, index);
    if (tm->t.index != TIMER_IDLE)
        return;
    if (!reschedule || theap_push(&host->timers, &tm->t) < 0)
        unanchor(L, host, tm);
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

void lhtimer_open(lua_State *L, int module, int host)
{
    if (luaL_newmetatable(L, LH_TIMER)) {
        luaL_newlib(L, timer_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, timer_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lh_setfuncs(L, module_functions, module, host);
}
