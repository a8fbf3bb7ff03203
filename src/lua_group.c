/* lua_group.c: a group keeps its sockets as C pointers beside a table that anchors them
 * (socket -> position, position -> socket), so a write walks the pointers with no Lua
 * look-up or type check per socket. The table is the truth: a pointer is used only
 * while its socket is anchored there, and every step re-reads the count, so a
 * finalizer that changes the group mid-write cannot make it read a stale pointer. */
#include "lua_group.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "lhaux.h"
#include "lua_socket.h"

typedef struct lh_group {
    lh_socket **members; /* members[i] is anchored at anchors[i + 1] */
    size_t count;
    size_t capacity;
} lh_group;

enum { ANCHORS = 1 }; /* the group's user value: the anchor table */

/* For methods (upvalue 1: the group metatable): the group at index, else a type error. */
static lh_group *group_check(lua_State *L, int index)
{
    void *p = lua_touserdata(L, index);
    if (p && lua_getmetatable(L, index)) {
        int same = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
        if (same)
            return (lh_group *)p;
    }
    luaL_typeerror(L, index, LH_GROUP);
    return NULL;
}

/* The socket argument at index, which must be open. */
static lh_socket *socket_arg(lua_State *L, int index)
{
    lh_socket *s = lhsock_test(L, index);
    luaL_argexpected(L, s != NULL, index, LH_SOCKET);
    if (s->conn.fd < 0)
        luaL_argerror(L, index, "socket is closed");
    return s;
}

/* The position (from 1) of the socket at index in g, or 0; anchors is at index a. */
static size_t position_of(lua_State *L, lh_group *g, int a, int index, const lh_socket *s)
{
    lua_pushvalue(L, index);
    lua_Integer pos = lua_rawget(L, a) == LUA_TNUMBER ? lua_tointeger(L, -1) : 0;
    lua_pop(L, 1);
    if (pos < 1 || (size_t)pos > g->count || g->members[pos - 1] != s)
        return 0; /* absent, or left behind by an add that ran out of memory */
    return (size_t)pos;
}

/* Takes the member at position pos out: the last one moves into its place. Sets only
 * keys that exist (or clears them), so it allocates nothing and cannot fail. */
static void drop_at(lua_State *L, lh_group *g, int a, size_t pos)
{
    size_t last = g->count;
    lua_rawgeti(L, a, (lua_Integer)pos);
    lua_pushnil(L);
    lua_rawset(L, a);
    if (pos != last) {
        lua_rawgeti(L, a, (lua_Integer)last);
        lua_pushvalue(L, -1);
        lua_pushinteger(L, (lua_Integer)pos);
        lua_rawset(L, a);
        lua_rawseti(L, a, (lua_Integer)pos);
        g->members[pos - 1] = g->members[last - 1];
    }
    lua_pushnil(L);
    lua_rawseti(L, a, (lua_Integer)last);
    g->count = last - 1;
}

/* luahost.group(): an empty group. */
static int l_group(lua_State *L)
{
    lh_group *g = (lh_group *)lua_newuserdatauv(L, sizeof *g, 1);
    g->members = NULL;
    g->count = g->capacity = 0;
    luaL_setmetatable(L, LH_GROUP);
    lua_newtable(L);
    lua_setiuservalue(L, -2, ANCHORS);
    return 1;
}

/* g:add(socket): true, or false when it is a member already. */
static int group_add(lua_State *L)
{
    lh_group *g = group_check(L, 1);
    lh_socket *s = socket_arg(L, 2);
    lua_settop(L, 2);
    lua_getiuservalue(L, 1, ANCHORS);
    if (position_of(L, g, 3, 2, s)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (g->count == g->capacity) {
        size_t grown = g->capacity ? 2 * g->capacity : 8;
        lh_socket **members = realloc(g->members, grown * sizeof *members);
        if (!members)
            return luaL_error(L, "not enough memory");
        g->members = members;
        g->capacity = grown;
    }
    lua_Integer pos = (lua_Integer)g->count + 1;
    lua_pushvalue(L, 2); /* anchored first: a memory error here leaves no pointer */
    lua_rawseti(L, 3, pos);
    lua_pushvalue(L, 2);
    lua_pushinteger(L, pos);
    lua_rawset(L, 3);
    g->members[g->count++] = s;
    lua_pushboolean(L, 1);
    return 1;
}

/* g:remove(socket): true, or false when it was not a member. */
static int group_remove(lua_State *L)
{
    lh_group *g = group_check(L, 1);
    lh_socket *s = lhsock_test(L, 2);
    luaL_argexpected(L, s != NULL, 2, LH_SOCKET);
    lua_settop(L, 2);
    lua_getiuservalue(L, 1, ANCHORS);
    size_t pos = position_of(L, g, 3, 2, s);
    if (pos)
        drop_at(L, g, 3, pos);
    lua_pushboolean(L, pos != 0);
    return 1;
}

/* Records in the table at index 5 (made at the first failure) that the member at
 * position pos failed with rc. */
static void note_failure(lua_State *L, size_t pos, ssize_t rc)
{
    lua_rawgeti(L, 4, (lua_Integer)pos); /* the socket, before anything allocates */
    if (lua_isnil(L, 5)) {
        lua_newtable(L);
        lua_replace(L, 5);
    }
    lua_pushstring(L, rc == -ENOBUFS ? "buffer full" : strerror((int)-rc));
    lua_rawset(L, 5);
}

/* g:write(data[, except]): s:write(data) for every member but except. Members that have
 * closed leave the group here. Returns how many were written to, and a table
 * socket -> error ("buffer full" or the system's message) for those that failed, or nil
 * when none did. */
static int group_write(lua_State *L)
{
    lh_group *g = group_check(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    const lh_socket *except = lhsock_test(L, 3);
    lua_settop(L, 3);
    lua_getiuservalue(L, 1, ANCHORS); /* 4 */
    lua_pushnil(L);                   /* 5: the failures */
    lua_Integer written = 0;
    for (size_t pos = 1; pos <= g->count;) {
        lh_socket *s = g->members[pos - 1];
        if (s->conn.fd < 0) {
            drop_at(L, g, 4, pos);
            continue;
        }
        if (s != except) {
            ssize_t rc = lhsock_write(L, s, data, len);
            if (rc >= 0)
                written++;
            else
                note_failure(L, pos, rc);
        }
        pos++;
    }
    lua_pushinteger(L, written);
    lua_insert(L, 5);
    return 2;
}

/* #g: the members, counting those closed since the last write. */
static int group_len(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)group_check(L, 1)->count);
    return 1;
}

/* g:sockets(): the members as a new sequence, in no particular order. */
static int group_sockets(lua_State *L)
{
    lh_group *g = group_check(L, 1);
    lua_getiuservalue(L, 1, ANCHORS);
    lua_createtable(L, (int)g->count, 0);
    for (size_t pos = 1; pos <= g->count; pos++) {
        lua_rawgeti(L, -2, (lua_Integer)pos);
        lua_rawseti(L, -2, (lua_Integer)pos);
    }
    return 1;
}

static int group_gc(lua_State *L)
{
    lh_group *g = group_check(L, 1);
    free(g->members);
    g->members = NULL;
    g->count = g->capacity = 0;
    return 0;
}

static const luaL_Reg group_methods[] = {
    {"add", group_add},     {"remove", group_remove},
    {"write", group_write}, {"sockets", group_sockets},
    {NULL, NULL},
};

static const luaL_Reg group_metamethods[] = {
    {"__len", group_len},
    {"__gc", group_gc},
    {NULL, NULL},
};

void lhgroup_open(lua_State *L, int module)
{
    module = lua_absindex(L, module);
    if (luaL_newmetatable(L, LH_GROUP)) {
        lh_set_methods(L, group_metamethods, -1, -1);
        lua_newtable(L);
        lh_set_methods(L, group_methods, -1, -2);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_group);
    lua_setfield(L, module, "group");
}
