/* luahost.c: the module's entry points: a host with its module table, the test-host API
 * included, for the executable (luahost_push) and for require "luahost" (luaopen). */
#include "luahost.h"

#include "testhost.h"

lh_host *luahost_push(lua_State *L, const lh_settings *settings)
{
    lh_host *host = lh_host_push(L, settings);
    lhtest_open(L, lua_gettop(L) - 1, lua_gettop(L), host);
    lua_pop(L, 1);
    return host;
}

/* Each require that opens the module makes a host of its own, on the backend
 * $LUAHOST_SELECTOR names, else the best available. */
int luaopen_luahost(lua_State *L)
{
    lh_settings settings;
    lh_settings_init(&settings);
    settings.backend = lhtest_env_backend(L);
    luahost_push(L, &settings);
    return 1;
}
