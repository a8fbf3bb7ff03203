/* lua_sim.h: the controls of a host on the "sim" backend, for tests (luahost.sim). */
#ifndef LUAHOST_LUA_SIM_H
#define LUAHOST_LUA_SIM_H

#include "host.h"

/* If host runs on the sim backend: makes its clock virtual and puts luahost.sim into the
 * module table at index module (host_index: the host userdata). Else does nothing. */
void lhsim_attach(lua_State *L, int module, int host_index, lh_host *host);

#endif
