/* testhost.c: hosts run in process (luahost.open, shutdown, captured_log), the way the
 * test kit runs a script inside busted, and the sim controls of such a host. */
#include "testhost.h"

#include <stdlib.h>
#include <string.h>

#include "lua_sim.h"

const char *lhtest_env_backend(lua_State *L)
{
    const char *name = getenv("LUAHOST_SELECTOR");
    if (!name || !*name)
        return NULL;
    if (!sel_backend_known(name))
        luaL_error(L, "unknown selector backend \"%s\" in $LUAHOST_SELECTOR", name);
    return name;
}

/* Reads luahost.open's table at index 1 into settings. */
static void read_settings(lua_State *L, lh_settings *settings)
{
    lh_settings_init(settings);
    lua_getfield(L, 1, "selector");
    settings->backend = luaL_optstring(L, -1, lhtest_env_backend(L));
    lua_getfield(L, 1, "max_output");
    lua_Integer max_output = luaL_optinteger(L, -1, settings->max_output);
    luaL_argcheck(L, max_output > 0 && max_output <= UINT32_MAX, 1,
                  "max_output must be 1..4294967295 bytes");
    settings->max_output = (uint32_t)max_output;
    lua_getfield(L, 1, "log");
    const char *log = luaL_optstring(L, -1, "stderr");
    luaL_argcheck(L, strcmp(log, "stderr") == 0 || strcmp(log, "capture") == 0, 1,
                  "log must be \"stderr\" or \"capture\"");
    settings->capture_log = strcmp(log, "capture") == 0;
    lua_pop(L, 2); /* the backend's name stays on the stack while it is used */
}

/* luahost.open{selector =, script =, args =, env =, log =, max_output =}: a module table
 * on a new host of its own. script, args and env are what its luahost.reload() loads
 * again, with which arguments, in which environment. */
static int l_open(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lh_settings settings;
    read_settings(L, &settings);
    lh_host *host = lh_host_push(L, &settings);
    int host_index = lua_gettop(L), module = host_index - 1;
    lua_createtable(L, 0, 3);
    lua_getfield(L, 1, "script");
    lua_setfield(L, -2, "path");
    lua_getfield(L, 1, "args");
    lua_setfield(L, -2, "args");
    lua_getfield(L, 1, "env");
    lua_setfield(L, -2, "env");
    lhreload_set_script(L, &host->reload, -1);
    lua_pop(L, 1);
    lhtest_open(L, module, host_index, host);
    lua_settop(L, module);
    return 1;
}

/* luahost.captured_log(): the lines a host opened with {log = "capture"} logged since
 * the last call ("level message\n" each), and how many were dropped past the bound. */
static int l_captured_log(lua_State *L)
{
    lh_log_capture *c = ((lh_host *)LH_CTX(L))->log.capture;
    if (!c)
        return luaL_error(L, "this host's log is not captured (luahost.open{log = \"capture\"})");
    lua_pushlstring(L, c->text ? c->text : "", c->len);
    lua_pushinteger(L, (lua_Integer)c->dropped);
    c->len = 0;
    c->dropped = 0;
    return 2;
}

/* luahost.shutdown([grace]): closes listeners and connections (letting them flush for
 * up to grace seconds, default 1), cancels timers, and closes the host for good. */
static int l_shutdown(lua_State *L)
{
    lh_host *host = (lh_host *)LH_CTX(L);
    lua_Number grace = luaL_optnumber(L, 1, 1.0);
    if (host->selectors.main && host->selectors.main->busy)
        return luaL_error(L, "luahost.shutdown called from inside a callback");
    lh_host_close(L, host, grace > 0 ? grace : 0);
    return 0;
}

static const luaL_Reg test_functions[] = {
    {"open", l_open},
    {"shutdown", l_shutdown},
    {"captured_log", l_captured_log},
    {NULL, NULL},
};

void lhtest_open(lua_State *L, int module, int host_index, lh_host *host)
{
    lh_setfuncs(L, test_functions, module, host_index, host);
    lhsim_attach(L, module, host_index, host);
}
