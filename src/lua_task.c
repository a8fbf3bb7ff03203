/* lua_task.c: the per-message paths of luahost.task (lua/luahost/task.lua) in C: the
 * resumer a waiting stream's key calls, and a stream's receiveany and send when they
 * need not wait or can wait the usual way. A message through Lua took some 150 Lua
 * instructions of bookkeeping and a resume through coroutine.resume; see
 * tests/bench/findings.md (changes 17 and 18).
 *
 * The state they read and write is in C fields of userdata (lua_task_core.h): a
 * stream's core, a task's core and the module's state, which task.lua reads and writes
 * by integer keys, checked against its own when it loads (_task_io returns them). A
 * script can write anything into a stream's table, so its core is taken from there
 * only after a check by metatable (or from the path made for it), and whatever is not
 * the usual case goes to the Lua function each path stands in for, which does the
 * whole job: the C code only ever does what task.lua would have done. */
#include "lua_task.h"

#include <errno.h>
#include <string.h>

#include "lua_socket.h"
#include "lua_task_core.h"
#include "lua_timer.h"

/* The slot of a stream's core in its table, and of a task's core in its. */
enum { S_CORE = 1, T_CORE = 1 };

/* The upvalues of the functions made here. The paths made for one stream (fast.paths)
 * hold it and its core, so that a call on that stream needs no check of its core; the
 * shared ones (Stream.receiveany and send) hold false there. */
enum {
    UP_STATE = 1, /* the module's state, which holds the host and its budget */
    UP_SLOW,      /* the Lua function that does the whole job */
    UP_STREAM,    /* the stream a path was made for, or false */
    UP_CORE,      /* its core, or false */
    UP_MT,        /* the core metatable */
    UP_AFTER,     /* a resumer's: task.lua's after_resume(t, ok, err) */
    UP_COUNT = UP_AFTER,
    UP_PATH = UP_MT, /* a receiveany's or a send's */
};

/* The upvalues of fast.paths, which makes the paths. */
enum { PM_STATE = 1, PM_ON_READY, PM_RECEIVEANY, PM_SEND, PM_MT, PM_AFTER };

#define CHUNK LH_SCRATCH_SIZE /* the most one read asks for, as task.lua's CHUNK */

/* What a task yields when it waits through luahost.task: the resumer tells a wait from
 * a task that yielded by itself by it. */
static const char wait_token = 0;
/* What a stream's resumer resumes its reader with: "ready" (task.lua's wait says so), in
 * a value told by one comparison and pushed without allocating. */
static const char ready_token = 0;

/* The helpers below push what they read and leave it: each path sets the stack's top
 * once, when it is done (a lua_pop is a lua_settop, ~25 instructions). */

/* The core of the stream (a table) at index s, pushed, if it is one of this module's
 * (another host's luahost.task has its own state, which the paths must not mix with
 * theirs); else NULL. */
static lh_task_core *core_of(lua_State *L, int s)
{
    if (lua_rawgeti(L, s, S_CORE) != LUA_TUSERDATA) /* not a light one, whatever its metatable */
        return NULL;
    lh_task_core *c = (lh_task_core *)lua_touserdata(L, -1);
    if (!lua_getmetatable(L, -1) || !lua_rawequal(L, -1, lua_upvalueindex(UP_MT)))
        return NULL;
    lua_pop(L, 1);
    return c->state == lua_touserdata(L, lua_upvalueindex(UP_STATE)) ? c : NULL;
}

/* The core of the stream at index 1, pushed (at index 3, after the two arguments) if
 * push, if its socket is open on a host still open; else NULL. A path made for that
 * stream holds its core, which knows it: one comparison. */
static lh_task_core *stream_core(lua_State *L, int push)
{
    lh_task_core *c = (lh_task_core *)lua_touserdata(L, lua_upvalueindex(UP_CORE));
    if (c && c->stream == lua_topointer(L, 1)) {
        if (push)
            lua_pushvalue(L, lua_upvalueindex(UP_CORE));
    } else {
        c = lua_istable(L, 1) ? core_of(L, 1) : NULL;
    }
    return c && c->sock->conn.fd >= 0 && !c->sock->ctx->closed ? c : NULL;
}

static int pass_results(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    return lua_gettop(L);
}

/* Not the usual case: the Lua function this one stands in for, on the first nargs
 * arguments. */
static int call_slow(lua_State *L, int nargs)
{
    lua_settop(L, nargs);
    lua_pushvalue(L, lua_upvalueindex(UP_SLOW));
    lua_insert(L, 1);
    lua_callk(L, nargs, LUA_MULTRET, 0, pass_results);
    return lua_gettop(L);
}

/* Makes the running task the reader of the stream at index 1 (its core c at index 3),
 * as task.lua's wait() does, if it can wait the usual way: it runs in its own coroutine
 * (not one of its own making) and is not being cancelled, nobody else waits to read,
 * the stream is registered for reading and has no timeout (so no timer). Returns
 * whether it did. The cores hold the same task and stream as at the last wait mostly:
 * then nothing is written but fields. */
static int become_reader(lua_State *L, lh_task_core *c)
{
    lh_task_tcore *t = c->state->current;
    if (!t || t->co != L || t->cancelling || c->waits || c->has_timeout ||
        c->events != SEL_READ) /* luahost.EVENT_READ */
        return 0;
    if (c->held != t || t->stream != lua_topointer(L, 1)) {
        lua_getiuservalue(L, lua_upvalueindex(UP_STATE), 1); /* the current task's core */
        lhtc_hold(L, c, 3, -1, t);
        lhtt_wait_on(L, t, -1, 1, TC_READER);
    }
    t->slot = TC_READER;
    c->waits = 1;
    return 1;
}

static int receive_any(lua_State *L, lh_task_core *c, lua_Integer max, int woken);

/* Where a receiveany that waited goes on: "ready", read (without looking at whether the
 * last read left the socket dry: this is the wait for it); else it failed, why being
 * what the wait ended with ("closed", "timeout"), as task.lua's fill says it. The
 * core is the one checked before the wait: left at index 3, the frame's own stack kept
 * it alive and in place meanwhile; max came through the context. */
static int receiveany_woken(lua_State *L, int status, lua_KContext max)
{
    (void)status;
    size_t len = 0;
    const char *why = NULL;
    int ready = lua_touserdata(L, -1) == &ready_token;
    if (!ready && lua_type(L, -1) == LUA_TSTRING) {
        why = lua_tolstring(L, -1, &len);
        ready = len == 5 && memcmp(why, "ready", 5) == 0;
    }
    if (ready) { /* the stack is left as it is: a wait again sets its top */
        lh_task_core *c = (lh_task_core *)lua_touserdata(L, 3);
        /* Closed, or turned TLS (starttls), behind the stream's back meanwhile. */
        if (c->sock->conn.fd < 0 || c->sock->ctx->closed || c->sock->tls)
            return call_slow(L, 2);
        return receive_any(L, c, (lua_Integer)max, 1);
    }
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

/* Returns the n bytes read at data, keeping what passes max in the buffer of the core c
 * (at index 3). */
static int return_read(lua_State *L, lh_task_core *c, const char *data, size_t n, size_t max)
{
    if (n > max) {
        lua_pushlstring(L, data + max, n - max);
        lhtc_set_buffer(L, c, 3, n - max);
        n = max;
    }
    lua_pushlstring(L, data, n);
    return 1;
}

/* The stream's socket was read dry, or was when last read: wait for it, or let the Lua
 * function do all. */
static int wait_to_read(lua_State *L, lh_task_core *c, lua_Integer max)
{
    if (!become_reader(L, c))
        return call_slow(L, 2);
    if (lua_gettop(L) > 3) /* woken before, for nothing: what the wake left goes */
        lua_settop(L, 3);
    lua_pushlightuserdata(L, (void *)&wait_token);
    return lua_yieldk(L, 1, (lua_KContext)max, receiveany_woken);
}

/* receiveany's read, the stream at index 1 and its core c at 3: on an empty buffer,
 * whatever one read brings, waiting first if the last one left the socket dry (unless
 * woken, as it was for this read). */
static int receive_any(lua_State *L, lh_task_core *c, lua_Integer max, int woken)
{
    if (c->buffered || c->discarding)
        return call_slow(L, 2);
    /* Woken for this read, the socket had been drained (the wait was for it). */
    if (c->drained && !woken)
        return wait_to_read(L, c, max);
    char *scratch = c->sock->ctx->scratch;
    ssize_t n = lhsock_recv(c->sock, scratch, CHUNK);
    c->drained = n < CHUNK;
    if (n == -EAGAIN)
        return wait_to_read(L, c, max);
    if (n > 0)
        return return_read(L, c, scratch, (size_t)n, (size_t)max);
    lua_pushnil(L);
    if (n == 0)
        lua_pushliteral(L, "closed");
    else
        lua_pushstring(L, strerror((int)-n));
    return 2;
}

/* s:receiveany([max]): checks the arguments and takes the stream's core (at index 3). */
static int task_receiveany(lua_State *L)
{
    lua_settop(L, 2);
    lua_Integer max = CHUNK;
    int is_int = 1;
    if (!lua_isnil(L, 2))
        max = lua_tointegerx(L, 2, &is_int);
    lh_task_core *c = is_int && max > 0 ? stream_core(L, 1) : NULL;
    if (!c || c->sock->tls) /* TLS input is read through s:recv, in task.lua */
        return call_slow(L, 2);
    /* No read brings more than CHUNK; so bounded, max fits a continuation's context. */
    return receive_any(L, c, max < CHUNK ? max : CHUNK, 0);
}

/* s:send(data) while the output is under the high water: buffered at once (task.lua's
 * Stream.send in all; that one waits when over it). */
static int task_send(lua_State *L)
{
    lh_task_core *c = stream_core(L, 0);
    if (!c || c->high < 0 || conn_pending(&c->sock->conn) > (size_t)c->high)
        return call_slow(L, 2);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    ssize_t rc = lhsock_write(L, c->sock, data, len);
    if (rc >= 0) {
        lua_pushinteger(L, (lua_Integer)len);
        return 1;
    }
    luaL_pushfail(L);
    if (rc == -ENOBUFS)
        lua_pushliteral(L, "buffer full");
    else
        lua_pushstring(L, rc == -EAGAIN ? "wouldblock" : strerror((int)-rc));
    lua_pushinteger(L, 0);
    return 3;
}

/* The task core waiting to read the stream whose core is c, if its coroutine can be
 * resumed here: no task cut short waits to be reaped (the state's current), it has no
 * timer or a luahost.timer (cancelled here), and it is suspended in a yield. */
static lh_task_tcore *wakeable(lh_task_state *st, lh_task_core *c)
{
    lh_task_tcore *t = c->waits ? c->held : NULL;
    if (!t || !t->co || (t->timer && t->timer != TT_HAS_TIMER) || st->current ||
        lua_status(t->co) != LUA_YIELD || !lua_checkstack(t->co, 1))
        return NULL;
    return t;
}

/* After the resume of the task whose core is at index tcore (which left status and
 * nres on co): unless it waits again, task.lua's after_resume(task, ok, err) ends it. */
static void after_resume(lua_State *L, int tcore, lua_State *co, int status, int nres)
{
    int ok = status == LUA_OK || status == LUA_YIELD;
    if (status == LUA_YIELD && nres == 1 && lua_touserdata(co, -1) == &wait_token) {
        lua_pop(co, 1);
        return;
    }
    lua_pushvalue(L, lua_upvalueindex(UP_AFTER));
    lhtt_push_task(L, tcore);
    lua_pushboolean(L, ok);
    if (ok) {
        lua_pop(co, nres);
        lua_pushnil(L);
    } else {
        lua_xmove(co, L, 1); /* the error; co keeps its frames for the traceback */
    }
    lua_call(L, 3, 0);
}

/* A stream's key callback: resumes the task waiting to read with "ready", as task.lua's
 * on_ready would (through wake_from_host), within the budget of this callback. A task
 * cut short by the budget stays the current one, for task.lua to end at its next
 * callback. The task keeps its stream (task.lua's unhook clears only the stream core's
 * slot that still holds the task); the stream's core keeps holding the task and the
 * state the last current task, so that the next wait and resume, of the same task
 * mostly, need not set them again. The task's core and coroutine are pushed: held on
 * this stack while they run, whatever the script does to the cores. Upvalues UP_STREAM
 * and UP_CORE: the stream, its core. */
static int task_resume(lua_State *L)
{
    lh_task_core *c = (lh_task_core *)lua_touserdata(L, lua_upvalueindex(UP_CORE));
    lh_task_state *st = c->state;
    lh_task_tcore *t = wakeable(st, c);
    if (!t) {
        lua_pushvalue(L, lua_upvalueindex(UP_SLOW));
        lua_pushvalue(L, lua_upvalueindex(UP_STREAM));
        lua_call(L, 1, 0);
        return 0;
    }
    lua_State *co = t->co;
    c->waits = 0;
    int tcore = lua_gettop(L) + 1;
    lua_getiuservalue(L, lua_upvalueindex(UP_CORE), TCU_READER); /* t's */
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    if (t->timer) { /* the wait's timer, cancelled as task.lua's unhook does */
        lua_getiuservalue(L, tcore, TTU_TIMER);
        lhtimer_cancel(L, -1);
        t->timer = 0;
    }
    lhts_set_current(L, st, lua_upvalueindex(UP_STATE), tcore, t);
    lua_pushlightuserdata(co, (void *)&ready_token);
    int nres = 0;
    int status = budget_coresume(L, st->budget, co, 1, &nres);
    st->current = NULL;
    after_resume(L, tcore, co, status, nres);
    return 0;
}

/* Pushes path f for the stream at index 1 and its core at 2, with slow (an upvalue of
 * fast.paths) and n upvalues in all. */
static void push_path(lua_State *L, lua_CFunction f, int slow, int n)
{
    static const int from[] = {[UP_MT] = PM_MT, [UP_AFTER] = PM_AFTER};
    lua_pushvalue(L, lua_upvalueindex(PM_STATE));
    lua_pushvalue(L, lua_upvalueindex(slow));
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    for (int i = UP_MT; i <= n; i++)
        lua_pushvalue(L, lua_upvalueindex(from[i]));
    lua_pushcclosure(L, f, n);
}

/* fast.paths(stream): the callback for the stream's key (its resumer), and its
 * receiveany and send. */
static int task_paths(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    if (lua_rawgeti(L, 1, S_CORE) != LUA_TUSERDATA || !lua_getmetatable(L, 2) ||
        !lua_rawequal(L, -1, lua_upvalueindex(PM_MT)))
        luaL_argerror(L, 1, "a stream with a core expected");
    lua_settop(L, 2);
    lh_task_core *c = (lh_task_core *)lua_touserdata(L, 2);
    /* Its paths reach the state as c->state and hold it as UP_STATE: the same. */
    luaL_argcheck(L, c->state == lua_touserdata(L, lua_upvalueindex(PM_STATE)), 1,
                  "a stream of another luahost.task");
    c->stream = lua_topointer(L, 1); /* its paths hold it; only here is a core given one */
    push_path(L, task_resume, PM_ON_READY, UP_COUNT);
    push_path(L, task_receiveany, PM_RECEIVEANY, UP_PATH);
    push_path(L, task_send, PM_SEND, UP_PATH);
    return 3;
}

/* Makes the current task t (its core at index tcore) the one waiting in slot of the
 * stream at index 1, whose core c is at index core; returns whether another waits there
 * already. */
static int hook_on(lua_State *L, lh_task_core *c, int core, lh_task_tcore *t, int tcore, int slot)
{
    if (slot == TC_READER) {
        if (c->waits)
            return 1;
        lhtc_hold(L, c, core, tcore, t);
        c->waits = 1;
    } else {
        luaL_argcheck(L, slot == TC_DRAINER, 2, "READER or DRAINER expected");
        lua_getiuservalue(L, core, TCU_DRAINER);
        if (lua_toboolean(L, -1))
            return 1;
        lhtt_push_task(L, tcore);
        lua_setiuservalue(L, core, TCU_DRAINER);
    }
    lhtt_wait_on(L, t, tcore, 1, slot);
    return 0;
}

/* fast.hook(stream or nil, slot): the bookkeeping of task.lua's wait() in one call. The
 * running task, and what its stream's key is registered for (or false), once it is made
 * the one waiting on the stream in slot (TC_READER, TC_DRAINER), as wait() made it; or
 * false and why not: "outside" a task, "cancelling", "busy" (another task waits there).
 * Its upvalues are a shared path's. */
static int task_hook(lua_State *L)
{
    lua_settop(L, 2);
    lh_task_state *st = (lh_task_state *)lua_touserdata(L, lua_upvalueindex(UP_STATE));
    lh_task_tcore *t = st->current;
    const char *why = !t ? "outside" : t->cancelling ? "cancelling" : NULL;
    lh_task_core *c = NULL;
    int tcore = 0;
    if (!why && !lua_isnil(L, 1)) {
        c = lua_istable(L, 1) ? core_of(L, 1) : NULL; /* at index 3 */
        luaL_argcheck(L, c != NULL, 1, "a stream of this luahost.task expected");
        lua_getiuservalue(L, lua_upvalueindex(UP_STATE), 1); /* t's core */
        tcore = lua_gettop(L);
        why = hook_on(L, c, 3, t, tcore, (int)luaL_checkinteger(L, 2)) ? "busy" : NULL;
    } else if (!why) {
        lua_getiuservalue(L, lua_upvalueindex(UP_STATE), 1);
        tcore = lua_gettop(L);
    }
    if (why) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, why);
        return 2;
    }
    lhtt_push_task(L, tcore);
    if (c && c->events)
        lua_pushinteger(L, c->events);
    else
        lua_pushboolean(L, 0);
    return 2;
}

/* fast.core(socket): a new stream's core. Upvalue: the module's state. */
static int task_core(lua_State *L)
{
    luaL_getmetatable(L, LH_SOCKET);
    lhtc_push(L, 1, lua_gettop(L), lua_upvalueindex(1));
    return 1;
}

/* Pushes Stream.receiveany or send: f with the upvalues of a path made for no stream,
 * the state at index 1 and the core metatable at 2. */
static void push_shared(lua_State *L, lua_CFunction f, int slow)
{
    lua_pushvalue(L, 1);
    lua_pushvalue(L, slow);
    lua_pushboolean(L, 0);
    lua_pushboolean(L, 0);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, f, UP_PATH);
}

static int get_function(lua_State *L, int t, const char *name)
{
    lua_getfield(L, t, name);
    luaL_argcheck(L, lua_isfunction(L, -1), 1, name);
    return lua_gettop(L);
}

static void set_integer(lua_State *L, int t, const char *name, int value)
{
    lua_pushinteger(L, value);
    lua_setfield(L, t, name);
}

/* The slots and keys, for task.lua to use the same ones. */
static void set_slots(lua_State *L, int t)
{
    static const struct {
        const char *name;
        int slot;
    } slots[] = {
        {"CURRENT", TS_CURRENT},
        {"CORE", S_CORE},
        {"TCORE", T_CORE},
        {"SOCK", TC_SOCK},
        {"BUF", TC_BUF},
        {"READER", TC_READER},
        {"DRAINER", TC_DRAINER},
        {"DRAINED", TC_DRAINED},
        {"EVENTS", TC_EVENTS},
        {"TIMEOUT", TC_TIMEOUT},
        {"DISCARDING", TC_DISCARDING},
        {"HIGH", TC_HIGH},
        {"CO", TT_CO},
        {"STREAM", TT_STREAM},
        {"SLOT", TT_SLOT},
        {"TIMER", TT_TIMER},
        {"CANCELLING", TT_CANCELLING},
    };
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
        set_integer(L, t, slots[i].name, slots[i].slot);
}

/* fast.task(t, co): makes the core of the task t (a table), whose coroutine is co. */
static int task_tcore(lua_State *L)
{
    lhtt_push(L, 1, 2);
    return 0;
}

/* luahost._task_io{on_ready =, after_resume =, receiveany =, send =}: for task.lua
 * only. Returns the slots and keys the C paths read and write, the token a wait yields
 * (WAIT), the module's state (state), core(socket) for a new stream, task(t, co) for a
 * new task, hook(stream, slot) for task.lua's wait, and the paths: paths(stream) (the stream's
 * resumer, receiveany and send, made for it), and the shared receiveany and send, each falling back
 * to the Lua function given under its name (a resumer: on_ready(stream)). */
static int l_task_io(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lhtt_metatable(L);
    lhts_metatable(L);
    lua_settop(L, 1);
    lhts_push(L, lua_upvalueindex(1), (lh_budget *)lua_touserdata(L, lua_upvalueindex(2)));
    lua_insert(L, 1);
    lhtc_metatable(L);
    lua_insert(L, 2); /* the state at 1, the core metatable at 2, the table at 3 */
    int on_ready = get_function(L, 3, "on_ready");
    int receiveany = get_function(L, 3, "receiveany");
    int send = get_function(L, 3, "send");
    int after = get_function(L, 3, "after_resume");
    lua_createtable(L, 0, 24);
    int out = lua_gettop(L);
    lua_pushvalue(L, 1); /* fast.paths, its upvalues as PM_* */
    lua_pushvalue(L, on_ready);
    lua_pushvalue(L, receiveany);
    lua_pushvalue(L, send);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, after);
    lua_pushcclosure(L, task_paths, PM_AFTER);
    lua_setfield(L, out, "paths");
    push_shared(L, task_receiveany, receiveany);
    lua_setfield(L, out, "receiveany");
    push_shared(L, task_send, send);
    lua_setfield(L, out, "send");
    push_shared(L, task_hook, send);
    lua_setfield(L, out, "hook");
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, task_core, 1);
    lua_setfield(L, out, "core");
    lua_pushcfunction(L, task_tcore);
    lua_setfield(L, out, "task");
    lua_pushvalue(L, 1);
    lua_setfield(L, out, "state");
    lua_pushlightuserdata(L, (void *)&wait_token);
    lua_setfield(L, out, "WAIT");
    lua_pushlightuserdata(L, (void *)&ready_token);
    lua_setfield(L, out, "READY");
    set_slots(L, out);
    return 1;
}

static const luaL_Reg functions[] = {{"_task_io", l_task_io}, {NULL, NULL}};

void lhtask_open(lua_State *L, int module, int host, lh_budget *budget)
{
    lh_setfuncs(L, functions, module, host, budget);
}
