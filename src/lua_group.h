/* lua_group.h: luahost.group(): a set of sockets that one write reaches (a chat room's
 * fan-out). */
#ifndef LUAHOST_LUA_GROUP_H
#define LUAHOST_LUA_GROUP_H

#include <lua.h>

#define LH_GROUP "luahost.group"

/* Makes the group metatable (once per Lua state) and puts luahost.group into the
 * module table at index module. */
void lhgroup_open(lua_State *L, int module);

#endif
