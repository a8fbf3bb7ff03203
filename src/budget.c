/* budget.c: the instruction budget: a count hook armed by a CPU-time watchdog (or always,
 * without one), a protected call under it, and coroutines guarded by it. */
#include "budget.h"

#include <stdio.h>
#include <errno.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "lhaux.h"

/* The budget the watchdog guards: process state, because signal handlers are. */
static struct {
    lh_budget *budget;
    volatile sig_atomic_t seen_epoch;
} watchdog;

void budget_init(lh_budget *b, long max_instructions)
{
    memset(b, 0, sizeof *b);
    b->max_instructions = max_instructions;
    b->what = "callback";
    b->where.fd = -1;
}

static void budget_hook(lua_State *L, lua_Debug *ar);

/* The budget of the thread L, kept in its extra space: a hook has only L. */
static lh_budget **budget_slot(lua_State *L)
{
    return (lh_budget **)lua_getextraspace(L);
}

/* From now on every instruction and every call on L raises, so a script that catches
 * the error with its own pcall cannot go on: the call to pcall itself fails. */
static void budget_exceeded(lua_State *L, lh_budget *b)
{
    lua_sethook(L, budget_hook, LUA_MASKCALL | LUA_MASKCOUNT, 1);
    /* Where it was stopped: level 0, the function the hook interrupted. luaL_error's
     * level 1 is its caller, for a main chunk the C call that ran it, which has no line,
     * and only a traceback (at log level debug, at startup) would have said where. */
    lua_Debug here;
    char at[LUA_IDSIZE + 32] = "";
    if (lua_getstack(L, 0, &here) && lua_getinfo(L, "Sl", &here) && here.currentline > 0)
        snprintf(at, sizeof at, ", at %s:%d", here.short_src, here.currentline);
    luaL_error(L, "%s ran past its budget of %I instructions (--max-instructions)%s", b->what,
               (lua_Integer)b->max_instructions, at);
}

/* Called every LH_BUDGET_STEP instructions once armed; raises once the callback has
 * used its budget, but lets the message handler run, so the error still gets its
 * traceback. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    lh_budget *b = *budget_slot(L);
    if (!b)
        return;
    if (ar->event == LUA_HOOKCOUNT)
        b->used += LH_BUDGET_STEP;
    if (b->used < b->max_instructions)
        return;
    if (ar->event == LUA_HOOKCALL) {
        lua_getinfo(L, "f", ar);
        int handler = lua_tocfunction(L, -1) == lh_traceback;
        lua_pop(L, 1);
        if (handler)
            return;
    }
    budget_exceeded(L, b);
}

/* SIGVTALRM: a callback that was already running at the previous tick gets the hook. */
static void on_watchdog_tick(int signo)
{
    (void)signo;
    lh_budget *b = watchdog.budget;
    if (b && b->in_callback && b->epoch == watchdog.seen_epoch && !b->armed &&
        b->max_instructions > 0) {
        b->armed = 1;
        lua_sethook(b->running, budget_hook, LUA_MASKCOUNT, LH_BUDGET_STEP);
    }
    if (b)
        watchdog.seen_epoch = b->epoch;
}

int budget_start_watchdog(lh_budget *b)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_watchdog_tick;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGVTALRM, &sa, NULL) < 0)
        return -errno;
    struct itimerval every = {{0, 50000}, {0, 50000}};
    if (setitimer(ITIMER_VIRTUAL, &every, NULL) < 0)
        return -errno;
    watchdog.budget = b;
    b->watched = 1;
    return 0;
}

void budget_stop_watchdog(lh_budget *b)
{
    if (watchdog.budget != b)
        return;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_VIRTUAL, &off, NULL);
    watchdog.budget = NULL;
    b->watched = 0;
}

void budget_arm(lh_budget *b, lua_State *L)
{
    b->armed = 1;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, LH_BUDGET_STEP);
}

int budget_pcall(lua_State *L, lh_budget *b, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    budget_note(b, L, base, -1);
    lua_pushcfunction(L, lh_traceback);
    lua_insert(L, base);
    budget_begin(b, L);
    int status = lua_pcall(L, nargs, nresults, base);
    budget_end(b, L);
    lua_remove(L, base);
    return status;
}

int budget_pcall_chunk(lua_State *L, lh_budget *b, int nargs, int per_wait)
{
    const char *what = b->what;
    b->what = "main chunk";
    b->per_wait = per_wait;
    int status = budget_pcall(L, b, nargs, 0);
    b->per_wait = 0;
    b->what = what;
    return status;
}

void budget_put_aside(lh_budget *b, lh_budget_saved *saved)
{
    saved->running = b->running;
    saved->used = b->used;
    saved->what = b->what;
    saved->per_wait = b->per_wait;
    saved->source = b->where.source;
    saved->line = b->where.line;
    saved->fd = b->where.fd;
    budget_end(b, b->running);
    b->what = "callback";
    b->per_wait = 0;
}

void budget_take_up(lh_budget *b, const lh_budget_saved *saved)
{
    b->where.source = saved->source;
    b->where.line = saved->line;
    b->where.fd = saved->fd;
    b->what = saved->what;
    b->per_wait = saved->per_wait;
    budget_begin(b, saved->running);
    if (!saved->per_wait)
        b->used = saved->used;
}

/* The registry slot of the function last noted: keeping it alive keeps its source
 * string, which the stall watchdog may read, alive. */
static const char noted_key = 0;

void budget_note_init(lh_budget *b, lua_State *L)
{
    lua_pushboolean(L, 0);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &noted_key);
    b->where.noted = NULL;
}

void budget_note_where(lh_budget *b, lua_State *L, int func, int fd)
{
    lh_where *w = &b->where;
    w->fd = fd;
    const void *fn = lua_topointer(L, func);
    if (fn == w->noted && fn) /* the same callback as last time: most events */
        return;
    lua_Debug ar;
    func = lua_absindex(L, func);
    w->source = "=?";
    w->line = 0;
    if (lua_type(L, func) == LUA_TFUNCTION) {
        lua_pushvalue(L, func);
        lua_getinfo(L, ">S", &ar);
        w->source = ar.source;
        w->line = ar.linedefined;
    }
    lua_pushvalue(L, func); /* the slot exists: setting it allocates nothing */
    lua_rawsetp(L, LUA_REGISTRYINDEX, &noted_key);
    w->noted = fn;
}

/* Makes co the thread the watchdog arms and the budget counts, while a callback runs;
 * returns whether it did, for guard_leave. */
static int guard_enter(lh_budget *b, lua_State *co)
{
    if (!co || !b->in_callback || b->max_instructions <= 0)
        return 0;
    *budget_slot(co) = b;
    if (b->armed)
        lua_sethook(co, budget_hook, LUA_MASKCOUNT, LH_BUDGET_STEP);
    b->running = co;
    return 1;
}

/* The resume of co has returned to L: the count goes back to L, and raises there if the
 * coroutine used up the budget (it died of it). */
static void guard_leave(lh_budget *b, lua_State *L, lua_State *co)
{
    /* The count ends with the resume: a hook left on the thread (set above, or by a
     * watchdog tick while it ran) would put every later resume of it, long after this
     * callback, through the VM's hook path. */
    if (lua_gethook(co) == budget_hook)
        lua_sethook(co, NULL, 0, 0);
    b->running = L;
    if (b->used >= b->max_instructions)
        budget_exceeded(L, b);
    if (b->armed)
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, LH_BUDGET_STEP);
}

/* Calls the original coroutine.resume (at index resume) on the arguments (a thread and
 * its values) with that thread made the one the watchdog arms and the budget counts. */
static int resume_guarded(lua_State *L, lh_budget *b, int resume)
{
    int nargs = lua_gettop(L);
    lua_State *co = lua_tothread(L, 1);
    int guarded = guard_enter(b, co);
    lua_pushvalue(L, resume);
    lua_insert(L, 1);
    lua_call(L, nargs, LUA_MULTRET);
    if (guarded)
        guard_leave(b, L, co);
    return lua_gettop(L);
}

int budget_coresume(lua_State *L, lh_budget *b, lua_State *co, int nargs, int *nresults)
{
    int guarded = guard_enter(b, co);
    int status = lua_resume(co, L, nargs, nresults);
    if (guarded)
        guard_leave(b, L, co);
    return status;
}

/* coroutine.resume, guarded. Upvalues: the budget, the original resume. */
static int guarded_resume(lua_State *L)
{
    return resume_guarded(L, (lh_budget *)lua_touserdata(L, lua_upvalueindex(1)),
                          lua_upvalueindex(2));
}

/* Closes the pending to-be-closed variables of a coroutine that died of an error, as
 * Lua's own coroutine.wrap does; returns the error to raise (on the stack top). */
static void close_dead(lua_State *L, lua_State *co)
{
#if LUA_VERSION_RELEASE_NUM >= 50406
    int status = lua_closethread(co, L);
#else
    int status = lua_resetthread(co);
#endif
    if (status != LUA_OK) { /* a __close raised: that error replaces the first */
        lua_xmove(co, L, 1);
        lua_replace(L, 2);
    }
}

/* What coroutine.wrap returns, guarded: resumes its thread (upvalue 3) and raises its
 * error, as the original does. */
static int guarded_wrapped(lua_State *L)
{
    lua_State *co = lua_tothread(L, lua_upvalueindex(3));
    lua_pushvalue(L, lua_upvalueindex(3));
    lua_insert(L, 1);
    int n =
        resume_guarded(L, (lh_budget *)lua_touserdata(L, lua_upvalueindex(1)), lua_upvalueindex(2));
    if (lua_toboolean(L, 1))
        return n - 1;
    if (lua_status(co) != LUA_OK && lua_status(co) != LUA_YIELD)
        close_dead(L, co);
    if (lua_type(L, 2) == LUA_TSTRING) { /* as the original, with where it was called */
        luaL_where(L, 1);
        lua_insert(L, 2);
        lua_concat(L, 2);
    }
    lua_settop(L, 2);
    return lua_error(L);
}

/* coroutine.wrap, guarded. Upvalues: the budget, the original resume. */
static int guarded_wrap(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, guarded_wrapped, 3);
    return 1;
}

void budget_guard_coroutines(lua_State *L, lh_budget *b)
{
    if (lua_getglobal(L, "coroutine") != LUA_TTABLE ||
        lua_getfield(L, -1, "resume") != LUA_TFUNCTION) {
        lua_settop(L, lua_gettop(L) - 2);
        return;
    }
    int table = lua_gettop(L) - 1;
    lua_pushlightuserdata(L, b);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, guarded_resume, 2);
    lua_setfield(L, table, "resume");
    lua_pushlightuserdata(L, b);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, guarded_wrap, 2);
    lua_setfield(L, table, "wrap");
    lua_pop(L, 2);
}

void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    lh_memory *m = (lh_memory *)ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        m->used -= old;
        return NULL;
    }
    if (m->limit && nsize > old && m->used + (nsize - old) > m->limit)
        return NULL; /* Lua collects garbage and retries before it raises */
    void *grown = realloc(ptr, nsize);
    if (grown)
        m->used = m->used - old + nsize;
    return grown;
}
