/* lua_task_core.c: a luahost.task stream's core (lua_task_core.h): made for a socket,
 * read and written by task.lua through __index and __newindex with integer keys, and by
 * lua_task.c through its fields. Every pointer it keeps is to a value one of its user
 * values holds, set in the same step, so none can outlive what it points to. */
#include "lua_task_core.h"

#include <string.h>

lh_task_core *lhtc_push(lua_State *L, int sock, int mt, int state)
{
    sock = lua_absindex(L, sock);
    state = lua_absindex(L, state);
    lh_socket *s = (lh_socket *)lua_touserdata(L, sock);
    if (!s || !lua_getmetatable(L, sock) || !lua_rawequal(L, -1, mt))
        luaL_typeerror(L, sock, LH_SOCKET);
    lua_pop(L, 1);
    lh_task_core *c = (lh_task_core *)lua_newuserdatauv(L, sizeof *c, TCU_COUNT);
    memset(c, 0, sizeof *c);
    luaL_setmetatable(L, LH_TASK_CORE);
    lua_pushvalue(L, sock);
    lua_setiuservalue(L, -2, TCU_SOCK);
    c->sock = s;
    lua_pushliteral(L, "");
    lua_setiuservalue(L, -2, TCU_BUF);
    lua_pushboolean(L, 0);
    lua_setiuservalue(L, -2, TCU_DRAINER);
    lua_pushvalue(L, state);
    lua_setiuservalue(L, -2, TCU_STATE);
    c->state = (lh_task_state *)luaL_checkudata(L, state, LH_TASK_STATE);
    return c;
}

void lhtc_set_buffer(lua_State *L, lh_task_core *c, int core, size_t len)
{
    lua_setiuservalue(L, core, TCU_BUF);
    c->buffered = len;
}

void lhtc_hold(lua_State *L, lh_task_core *c, int core, int tcore, lh_task_tcore *t)
{
    if (c->held == t) /* the wait of every message: the same task as the last one */
        return;
    core = lua_absindex(L, core);
    lua_pushvalue(L, tcore);
    lua_setiuservalue(L, core, TCU_READER);
    c->held = t;
}

/* core[TC_READER] = task or false, from task.lua's wait, unhook and close. */
static void set_reader(lua_State *L, lh_task_core *c)
{
    c->waits = 0;
    if (!lua_toboolean(L, 3)) { /* lets go of the last reader too */
        lua_pushnil(L);
        lua_setiuservalue(L, 1, TCU_READER);
        c->held = NULL;
        return;
    }
    luaL_checktype(L, 3, LUA_TTABLE);
    lh_task_tcore *t = lhtt_of(L, 3);
    lhtc_hold(L, c, 1, lua_gettop(L), t);
    c->waits = 1;
}

static int core_newindex(lua_State *L)
{
    lh_task_core *c = (lh_task_core *)lhtask_check(L, 1, 1, LH_TASK_CORE);
    int v = 3, on = lua_toboolean(L, v);
    switch (luaL_checkinteger(L, 2)) {
    case TC_BUF: {
        size_t len;
        luaL_checktype(L, v, LUA_TSTRING);
        lua_tolstring(L, v, &len);
        lua_pushvalue(L, v);
        lhtc_set_buffer(L, c, 1, len);
        break;
    }
    case TC_READER:
        set_reader(L, c);
        break;
    case TC_DRAINER:
        lua_settop(L, v);
        lua_setiuservalue(L, 1, TCU_DRAINER);
        break;
    case TC_DRAINED:
        c->drained = (unsigned char)on;
        break;
    case TC_DISCARDING:
        c->discarding = (unsigned char)on;
        break;
    case TC_EVENTS:
        c->events = on ? luaL_checkinteger(L, v) : 0;
        break;
    case TC_TIMEOUT:
        c->timeout = on ? luaL_checknumber(L, v) : 0;
        c->has_timeout = (unsigned char)on;
        break;
    case TC_HIGH:
        c->high = luaL_checkinteger(L, v);
        break;
    default:
        return luaL_argerror(L, 2, "not a field a stream's core can be given");
    }
    return 0;
}

/* Pushes false when off, else the number. */
static void push_unless_off(lua_State *L, int on, lua_Number n, int integer)
{
    if (!on)
        lua_pushboolean(L, 0);
    else if (integer)
        lua_pushinteger(L, (lua_Integer)n);
    else
        lua_pushnumber(L, n);
}

static int core_index(lua_State *L)
{
    lh_task_core *c = (lh_task_core *)lhtask_check(L, 1, 1, LH_TASK_CORE);
    switch (luaL_checkinteger(L, 2)) {
    case TC_SOCK:
        lua_getiuservalue(L, 1, TCU_SOCK);
        break;
    case TC_BUF:
        lua_getiuservalue(L, 1, TCU_BUF);
        break;
    case TC_READER:
        if (!c->waits) {
            lua_pushboolean(L, 0);
        } else {
            lua_getiuservalue(L, 1, TCU_READER);
            lhtt_push_task(L, -1);
        }
        break;
    case TC_DRAINER:
        lua_getiuservalue(L, 1, TCU_DRAINER);
        break;
    case TC_DRAINED:
        lua_pushboolean(L, c->drained);
        break;
    case TC_DISCARDING:
        lua_pushboolean(L, c->discarding);
        break;
    case TC_EVENTS:
        push_unless_off(L, c->events != 0, (lua_Number)c->events, 1);
        break;
    case TC_TIMEOUT:
        push_unless_off(L, c->has_timeout, c->timeout, 0);
        break;
    case TC_HIGH:
        lua_pushinteger(L, c->high);
        break;
    default:
        return luaL_argerror(L, 2, "not a field of a stream's core");
    }
    return 1;
}

void lhtc_metatable(lua_State *L)
{
    lhtask_metatable(L, LH_TASK_CORE, core_index, core_newindex);
}
