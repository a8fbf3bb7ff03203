/* lua_sockopt.h: the socket methods for options and addresses (setsockopt, getsockopt,
 * setblocking, getpeername, getsockname). */
#ifndef LUAHOST_LUA_SOCKOPT_H
#define LUAHOST_LUA_SOCKOPT_H

#include "lua_socket.h"

/* Adds the methods to the socket type (lhsock_open first). */
void lhsockopt_open(lua_State *L);

#endif
