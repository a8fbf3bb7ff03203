/* lua_task_state.c: a luahost.task task's core and the module's state (lua_task_core.h),
 * read and written by task.lua through __index and __newindex with integer keys, and by
 * lua_task.c through their fields. As in a stream's core, every pointer kept is to a
 * value a user value holds, set in the same step. */
#include "lua_task_core.h"

#include "lua_timer.h"

#include <string.h>

lh_task_tcore *lhtt_push(lua_State *L, int task, int co)
{
    task = lua_absindex(L, task);
    co = lua_absindex(L, co);
    luaL_checktype(L, task, LUA_TTABLE);
    luaL_checktype(L, co, LUA_TTHREAD);
    lh_task_tcore *t = (lh_task_tcore *)lua_newuserdatauv(L, sizeof *t, TTU_COUNT);
    memset(t, 0, sizeof *t);
    luaL_setmetatable(L, LH_TASK_TCORE);
    lua_pushvalue(L, task);
    lua_setiuservalue(L, -2, TTU_SELF);
    lua_pushvalue(L, co);
    lua_setiuservalue(L, -2, TTU_CO);
    t->co = lua_tothread(L, co);
    lua_pushvalue(L, -1);
    lua_rawseti(L, task, 1);
    return t;
}

void *lhtask_check(lua_State *L, int index, int mt, const char *name)
{
    void *p = lua_touserdata(L, index);
    if (!p || !lua_getmetatable(L, index) || !lua_rawequal(L, -1, lua_upvalueindex(mt)))
        luaL_typeerror(L, index, name);
    lua_pop(L, 1);
    return p;
}

lh_task_tcore *lhtt_of(lua_State *L, int task)
{
    lua_rawgeti(L, task, 1);
    void *t = lua_touserdata(L, -1);
    if (!t || !lua_getmetatable(L, -1) || !lua_rawequal(L, -1, lua_upvalueindex(2)))
        luaL_error(L, "luahost.task: a task expected");
    lua_pop(L, 1);
    return (lh_task_tcore *)t;
}

void lhtt_push_task(lua_State *L, int tcore)
{
    lua_getiuservalue(L, tcore, TTU_SELF);
}

void lhtt_wait_on(lua_State *L, lh_task_tcore *t, int tcore, int stream, int slot)
{
    t->slot = slot;
    const void *p = lua_topointer(L, stream);
    if (t->stream == p) /* the wait of every message: the same stream as the last one */
        return;
    tcore = lua_absindex(L, tcore);
    lua_pushvalue(L, stream);
    lua_setiuservalue(L, tcore, TTU_STREAM);
    t->stream = p;
}

/* Holds the value at index 3 (a thread, a stream, a timer) in user value n of the task
 * core at index 1, or lets go of what it held for false; returns whether it holds one. */
static int hold(lua_State *L, int n, int type)
{
    int on = lua_toboolean(L, 3);
    if (on && type != LUA_TNONE)
        luaL_checktype(L, 3, type);
    lua_settop(L, 3);
    lua_pushvalue(L, 3);
    if (!on)
        lua_pushnil(L);
    lua_setiuservalue(L, 1, n);
    return on;
}

static int tcore_newindex(lua_State *L)
{
    lh_task_tcore *t = (lh_task_tcore *)lhtask_check(L, 1, 1, LH_TASK_TCORE);
    switch (luaL_checkinteger(L, 2)) {
    case TT_CO: /* the pointers are set once the value is held */
        t->co = hold(L, TTU_CO, LUA_TTHREAD) ? lua_tothread(L, 3) : NULL;
        break;
    case TT_STREAM:
        t->stream = hold(L, TTU_STREAM, LUA_TTABLE) ? lua_topointer(L, 3) : NULL;
        break;
    case TT_SLOT:
        t->slot = lua_toboolean(L, 3) ? (int)luaL_checkinteger(L, 3) : 0;
        break;
    case TT_TIMER: /* a luahost.timer, which the C resumer may cancel, is told apart */
        t->timer = hold(L, TTU_TIMER, LUA_TNONE) ? 1 + (luaL_testudata(L, 3, LH_TIMER) != NULL) : 0;
        break;
    case TT_CANCELLING:
        t->cancelling = (unsigned char)lua_toboolean(L, 3);
        break;
    default:
        return luaL_argerror(L, 2, "not a field a task's core can be given");
    }
    return 0;
}

/* Pushes user value n of the task core at index 1 if on, else false. */
static void push_held(lua_State *L, int on, int n)
{
    if (on)
        lua_getiuservalue(L, 1, n);
    else
        lua_pushboolean(L, 0);
}

static int tcore_index(lua_State *L)
{
    lh_task_tcore *t = (lh_task_tcore *)lhtask_check(L, 1, 1, LH_TASK_TCORE);
    switch (luaL_checkinteger(L, 2)) {
    case TT_CO:
        push_held(L, t->co != NULL, TTU_CO);
        break;
    case TT_STREAM:
        push_held(L, t->stream != NULL, TTU_STREAM);
        break;
    case TT_SLOT:
        if (t->stream && t->slot)
            lua_pushinteger(L, t->slot);
        else
            lua_pushboolean(L, 0);
        break;
    case TT_TIMER:
        push_held(L, t->timer, TTU_TIMER);
        break;
    case TT_CANCELLING:
        lua_pushboolean(L, t->cancelling);
        break;
    default:
        return luaL_argerror(L, 2, "not a field of a task's core");
    }
    return 1;
}

lh_task_state *lhts_push(lua_State *L, int host, lh_budget *b)
{
    host = lua_absindex(L, host);
    lh_task_state *s = (lh_task_state *)lua_newuserdatauv(L, sizeof *s, 2);
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, LH_TASK_STATE);
    lua_pushvalue(L, host);
    lua_setiuservalue(L, -2, 2);
    s->budget = b;
    return s;
}

void lhts_set_current(lua_State *L, lh_task_state *s, int state, int tcore, lh_task_tcore *t)
{
    s->current = t;
    if (s->held == t) /* most resumes: the task resumed last */
        return;
    state = lua_absindex(L, state);
    lua_pushvalue(L, tcore);
    lua_setiuservalue(L, state, 1);
    s->held = t;
}

/* state[TS_CURRENT] = task or false (which keeps holding the last one: the next resume
 * is of that task mostly). */
static int state_newindex(lua_State *L)
{
    lh_task_state *s = (lh_task_state *)lhtask_check(L, 1, 1, LH_TASK_STATE);
    luaL_argcheck(L, luaL_checkinteger(L, 2) == TS_CURRENT, 2, "not a field of the state");
    if (!lua_toboolean(L, 3)) {
        s->current = NULL;
        return 0;
    }
    luaL_checktype(L, 3, LUA_TTABLE);
    lh_task_tcore *t = lhtt_of(L, 3);
    lhts_set_current(L, s, 1, -1, t);
    return 0;
}

static int state_index(lua_State *L)
{
    lh_task_state *s = (lh_task_state *)lhtask_check(L, 1, 1, LH_TASK_STATE);
    luaL_argcheck(L, luaL_checkinteger(L, 2) == TS_CURRENT, 2, "not a field of the state");
    if (!s->current) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_getiuservalue(L, 1, 1);
    lhtt_push_task(L, -1);
    return 1;
}

void lhtask_metatable(lua_State *L, const char *name, lua_CFunction index, lua_CFunction newindex)
{
    if (!luaL_newmetatable(L, name))
        return;
    int mt = lua_gettop(L);
    lua_CFunction f[] = {index, newindex};
    const char *key[] = {"__index", "__newindex"};
    for (int i = 0; i < 2; i++) {
        lua_pushvalue(L, mt);
        luaL_getmetatable(L, LH_TASK_TCORE);
        lua_pushcclosure(L, f[i], 2);
        lua_setfield(L, mt, key[i]);
    }
    lua_pushliteral(L, "not a table");
    lua_setfield(L, mt, "__metatable");
}

void lhtt_metatable(lua_State *L)
{
    lhtask_metatable(L, LH_TASK_TCORE, tcore_index, tcore_newindex);
}

void lhts_metatable(lua_State *L)
{
    lhtask_metatable(L, LH_TASK_STATE, state_index, state_newindex);
}
