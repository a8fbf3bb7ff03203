/* lhaux.c: the bindings' shared helpers: errors, the message handler, module functions
 * with their context, and the host's anchor. */
#include "lhaux.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int lh_push_error(lua_State *L, int neg_errno, const char *what)
{
    luaL_pushfail(L);
    if (neg_errno == -EAGAIN) {
        lua_pushliteral(L, "wouldblock");
        return 2;
    }
    if (what)
        lua_pushfstring(L, "%s: %s", what, strerror(-neg_errno));
    else
        lua_pushstring(L, strerror(-neg_errno));
    lua_pushinteger(L, -neg_errno);
    return 3;
}

/* Pushes "chunk:line: " for the nearest Lua function on the stack, or "" if there is none:
 * error({}) or error(42) carries no position of its own, yet the operator needs one. */
static void push_raise_position(lua_State *L)
{
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
    }
    lua_pushliteral(L, "");
}

/* Pushes the string at the stack top followed by a traceback, in place of it. The
 * message goes apart from luaL_traceback, which would cut it at a NUL. */
static void append_traceback(lua_State *L)
{
    lua_pushliteral(L, "\n");
    luaL_traceback(L, L, NULL, 1);
    lua_concat(L, 3);
}

int lh_traceback(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING) {
        lua_settop(L, 1);
        append_traceback(L);
        return 1;
    }
    push_raise_position(L);
    int base = lua_gettop(L);
    /* An object with __tostring speaks for itself, as lua5.4 lets it. */
    if (!luaL_callmeta(L, 1, "__tostring") || lua_type(L, -1) != LUA_TSTRING) {
        lua_settop(L, base);
        if (lua_type(L, 1) == LUA_TNUMBER)
            lua_pushstring(L, lua_tostring(L, 1));
        else
            lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    lua_concat(L, 2);
    append_traceback(L);
    return 1;
}

void lh_report_error(lua_State *L, lh_logger *log, const char *where)
{
    char head[256];
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    snprintf(head, sizeof head, "%s: ", where);
    if (!msg) {
        msg = "(error object is not a string)";
        len = strlen(msg);
    }
    lh_log_text(log, LH_ERROR, head, msg, len);
    lua_pop(L, 1);
}

void lh_setfuncs(lua_State *L, const luaL_Reg *funcs, int table, int host, void *ctx)
{
    table = lua_absindex(L, table);
    host = lua_absindex(L, host);
    for (; funcs->name; funcs++) {
        lua_pushvalue(L, host);
        lua_pushlightuserdata(L, ctx);
        lua_pushcclosure(L, funcs->func, 2);
        lua_setfield(L, table, funcs->name);
    }
}

void lh_anchor_init(lua_State *L, lh_anchor *a, int index)
{
    lua_pushvalue(L, index);
    a->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    a->holders = 0;
    a->closed = 0;
}

static void let_go_if_done(lua_State *L, lh_anchor *a)
{
    if (a->closed && a->holders == 0 && a->ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, a->ref);
        a->ref = LUA_NOREF;
    }
}

void lh_anchor_hold(lh_anchor *a)
{
    a->holders++;
}

void lh_anchor_release(lua_State *L, lh_anchor *a)
{
    if (a->holders > 0)
        a->holders--;
    let_go_if_done(L, a);
}

void lh_anchor_close(lua_State *L, lh_anchor *a)
{
    a->closed = 1;
    let_go_if_done(L, a);
}

void lh_set_methods(lua_State *L, const luaL_Reg *funcs, int t, int mt)
{
    t = lua_absindex(L, t);
    mt = lua_absindex(L, mt);
    for (; funcs->name; funcs++) {
        lua_pushvalue(L, mt);
        lua_pushcclosure(L, funcs->func, 1);
        lua_setfield(L, t, funcs->name);
    }
}
