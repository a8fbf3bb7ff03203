/* lua_redis.h: luahost.resp, the RESP codec luahost.redis speaks: hiredis's reply reader
 * and command formatter, so no Redis protocol is parsed or written by hand here. */
#ifndef LUAHOST_LUA_REDIS_H
#define LUAHOST_LUA_REDIS_H

#include <lua.h>

#define LH_RESP_READER "luahost.resp_reader"

/* Makes the reader metatable (once per Lua state) and puts luahost.resp (format,
 * reader) into the module table at index module. */
void lhresp_open(lua_State *L, int module);

#endif
