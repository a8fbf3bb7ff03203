/* lua_listen.h: the constructors of sockets (luahost.listen, connect, socket) and the
 * methods that give a socket an address (bind, listen, connect, connect_ex). */
#ifndef LUAHOST_LUA_LISTEN_H
#define LUAHOST_LUA_LISTEN_H

#include "lua_socket.h"

/* Adds the methods to the socket type (lhsock_open first) and the constructors to the
 * module table; host is the host userdata's index. */
void lhlisten_open(lua_State *L, int module, int host, lh_sockets *ctx);

#endif
