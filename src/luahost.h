/* luahost.h: the module's entry points: luaopen_luahost for require "luahost" (lua5.4,
 * busted), and luahost_push for the executable, which makes its host from settings. */
#ifndef LUAHOST_LUAHOST_H
#define LUAHOST_LUAHOST_H

#include "host.h"

/* Pushes the module table of a new host made with settings; returns the host. */
lh_host *luahost_push(lua_State *L, const lh_settings *settings);

int luaopen_luahost(lua_State *L);

#endif
