/* testhost.h: hosts run in process, which the test kit is built on: luahost.open (a new
 * host in the same Lua state), luahost.shutdown, luahost.captured_log, and the sim
 * backend's controls. */
#ifndef LUAHOST_TESTHOST_H
#define LUAHOST_TESTHOST_H

#include "host.h"

/* Puts open, shutdown and captured_log into the module table at index module (and
 * luahost.sim on the sim backend); host_index is the host userdata's. */
void lhtest_open(lua_State *L, int module, int host_index, lh_host *host);

/* The backend $LUAHOST_SELECTOR names, or NULL when it is unset or empty; raises when
 * it names none. */
const char *lhtest_env_backend(lua_State *L);

#endif
