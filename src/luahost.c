/* luahost.c: luaopen_luahost: the module table (selector, sockets, timers, the loop
 * functions step/run/stop, logging) shared by the executable and luahost.so. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lh.h"

void lh_setfuncs(lua_State *L, const luaL_Reg *funcs, int table, int host)
{
    lua_pushvalue(L, table);
    lua_pushvalue(L, host);
    luaL_setfuncs(L, funcs, 1);
    lua_pop(L, 1);
}

/* Pushes the failure results: nil, "wouldblock" for EAGAIN, else nil, message, errno. */
int lh_push_error(lua_State *L, int neg_errno, const char *what)
{
    luaL_pushfail(L);
    if (neg_errno == -EAGAIN) {
        lua_pushliteral(L, "wouldblock");
        return 2;
    }
    if (what)
        lua_pushfstring(L, "%s: %s", what, strerror(-neg_errno));
    else
        lua_pushstring(L, strerror(-neg_errno));
    lua_pushinteger(L, -neg_errno);
    return 3;
}

static int timeout_arg(lua_State *L, int index)
{
    if (lua_isnoneornil(L, index))
        return -1;
    lua_Number t = luaL_checknumber(L, index);
    if (!(t > 0))
        return 0;
    return t >= 2147483.0 ? INT32_MAX : (int)(t * 1000.0 + 0.999);
}

static int l_step(lua_State *L)
{
    lh_host *host = LH_HOST(L);
    int calls = host_step(L, host, timeout_arg(L, 1));
    if (calls < 0)
        return lh_push_error(L, calls, "select");
    lua_pushinteger(L, calls);
    return 1;
}

/* Runs the loop until stop(), a signal, nothing left to do, or opts.timeout seconds.
 * Returns why it ended: "stopped", "signal", "idle" or "timeout". */
static int l_run(lua_State *L)
{
    lh_host *host = LH_HOST(L);
    double deadline = -1;
    if (host->sel && host->sel->busy)
        return luaL_error(L, "luahost.step or run called from inside a callback");
    if (lua_istable(L, 1) && lua_getfield(L, 1, "timeout") != LUA_TNIL)
        deadline = timer_now() + luaL_checknumber(L, -1);
    const char *why = "stopped";
    while (!host->stop_requested) {
        if (host_is_idle(host)) {
            why = "idle";
            break;
        }
        int wait = deadline < 0 ? -1 : (int)((deadline - timer_now()) * 1000.0 + 0.999);
        int rc = host_step(L, host, wait < 0 && deadline >= 0 ? 0 : wait);
        if (rc < 0)
            return lh_push_error(L, rc, "select");
        if (deadline >= 0 && timer_now() >= deadline) {
            why = "timeout";
            break;
        }
    }
    if (host->stop_requested == 2)
        why = "signal";
    host->stop_requested = 0;
    lua_pushstring(L, why);
    return 1;
}

static int l_stop(lua_State *L)
{
    LH_HOST(L)->stop_requested = 1;
    return 0;
}

static int l_listeners(lua_State *L)
{
    lh_host *host = LH_HOST(L);
    lua_newtable(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->listeners_ref);
    lua_pushnil(L);
    for (int i = 1; lua_next(L, -2); i++)
        lua_rawseti(L, -4, i);
    lua_pop(L, 1);
    return 1;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, host_now(LH_HOST(L)));
    return 1;
}

static int check_level(lua_State *L, int index)
{
    int level = lh_log_level_from_name(luaL_checkstring(L, index));
    luaL_argcheck(L, level >= 0, index, "expected debug, info, warn or error");
    return level;
}

/* luahost.log(level, ...): the arguments as tostring would show them, space-separated. */
static int l_log(lua_State *L)
{
    lh_host *host = LH_HOST(L);
    int level = check_level(L, 1);
    if (level < host->log_level)
        return 0;
    int n = lua_gettop(L); /* before buffinit, which pushes a placeholder of its own */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 2; i <= n; i++) {
        if (i > 2)
            luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL); /* the buffer allows one extra value, for addvalue */
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    lh_log(host, level, "%s", lua_tostring(L, -1));
    return 0;
}

/* luahost.log_level([level]): the current level; sets it when given. */
static int l_log_level(lua_State *L)
{
    lh_host *host = LH_HOST(L);
    static const char *const names[] = {"debug", "info", "warn", "error"};
    lua_pushstring(L, names[host->log_level]);
    if (!lua_isnoneornil(L, 1))
        host->log_level = check_level(L, 1);
    return 1;
}

/* luahost.parse_address(spec, default_host, default_port) -> host, port, for the
 * "[HOST:]PORT" argument scripts take; nil, message on a malformed spec. */
static int l_parse_address(lua_State *L)
{
    const char *spec = luaL_optstring(L, 1, NULL);
    char host[NET_ADDRSTRLEN], err[160];
    int port = (int)luaL_optinteger(L, 3, 0);
    snprintf(host, sizeof host, "%s", luaL_optstring(L, 2, "127.0.0.1"));
    if (spec && net_parse_hostport(spec, host, sizeof host, &port, err, sizeof err) < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushstring(L, host);
    lua_pushinteger(L, port);
    return 2;
}

/* luahost.stats(): counts an operator or a test can watch for leaks. */
static int l_stats(lua_State *L)
{
    lh_host *host = LH_HOST(L);
    size_t lingering = 0;
    for (lh_linger *l = host->linger_head; l; l = l->next)
        lingering++;
    size_t own = (host->signal_conn.fd >= 0) + (host->watch_conn.fd >= 0);
    selector *core = host->sel ? host->sel->core : NULL;
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, core ? (lua_Integer)sel_count(core) : 0);
    lua_setfield(L, -2, "registered");
    lua_pushinteger(L, core ? (lua_Integer)(sel_host_count(core) - own) : 0);
    lua_setfield(L, -2, "flushing");
    lua_pushinteger(L, (lua_Integer)lingering);
    lua_setfield(L, -2, "lingering");
    lua_pushinteger(L, (lua_Integer)host->timers.count);
    lua_setfield(L, -2, "timers");
    lua_pushinteger(L, host->generation);
    lua_setfield(L, -2, "generation");
    lua_pushinteger(L, (lua_Integer)host->connections);
    lua_setfield(L, -2, "connections");
    lua_pushinteger(L, (lua_Integer)host->refused);
    lua_setfield(L, -2, "refused");
    lua_pushinteger(L, (lua_Integer)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + lua_gc(L, LUA_GCCOUNTB, 0));
    lua_setfield(L, -2, "lua_bytes");
    return 1;
}

static int l_open(lua_State *L);
static int l_shutdown(lua_State *L);
static int l_captured_log(lua_State *L);

static const luaL_Reg module_functions[] = {
    {"stats", l_stats}, {"step", l_step},           {"run", l_run},
    {"stop", l_stop},   {"listeners", l_listeners}, {"now", l_now},
    {"log", l_log},     {"log_level", l_log_level}, {"parse_address", l_parse_address},
    {"open", l_open},   {"shutdown", l_shutdown},   {"captured_log", l_captured_log},
    {NULL, NULL},
};

/* The backend of the default selector: the executable's --selector (left in the
 * registry), else $LUAHOST_SELECTOR, else the best available. */
static const char *default_backend(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "luahost.backend");
    const char *name = lua_tostring(L, -1);
    lua_pop(L, 1); /* the registry keeps the string alive */
    if (!name || !*name) {
        name = getenv("LUAHOST_SELECTOR");
        if (name && *name && !sel_backend_known(name))
            luaL_error(L, "unknown selector backend \"%s\" in $LUAHOST_SELECTOR", name);
    }
    return name && *name ? name : NULL;
}

/* The time a sim host's clock starts at: far from 0, which some fields read as "none". */
#define SIM_EPOCH 1000.0

/* Pushes a module table on a new host of its own, selector on backend (NULL: the best
 * available). */
static lh_host *push_module(lua_State *L, const char *backend)
{
    lua_newtable(L);
    int module = lua_gettop(L);
    lh_host *host = host_push_new(L);
    int host_index = lua_gettop(L);
    lh_setfuncs(L, module_functions, module, host_index);
    lhsel_open(L, module, host_index);
    lhsock_open(L, module, host_index);
    lhtimer_open(L, module, host_index);
    lhreload_open(L, module, host_index);
    lua_pushvalue(L, module);
    host->module_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    host->sel = lhsel_push_new(L, host, backend);
    lua_pushvalue(L, -1);
    luaL_ref(L, LUA_REGISTRYINDEX); /* the host's own selector lives as long as the state */
    lua_setfield(L, module, "selector");
    if (strcmp(sel_backend_name(host->sel->core), "sim") == 0) {
        host->virtual_clock = 1;
        host->virtual_now = SIM_EPOCH;
        lhsim_open(L, module, host_index);
    }
    lua_pushinteger(L, SEL_READ);
    lua_setfield(L, module, "EVENT_READ");
    lua_pushinteger(L, SEL_WRITE);
    lua_setfield(L, module, "EVENT_WRITE");
    lua_pushliteral(L, LUAHOST_VERSION);
    lua_setfield(L, module, "version");
    lua_settop(L, module);
    return host;
}

/* luahost.open{selector =, script =, args =, env =, log =, max_output =}: a module table on a new
 * host of its own, for running a script in process (the test kit does). script, args and env are
 * what luahost.reload() loads again, with which arguments, in which environment. */
static int l_open(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "selector");
    const char *backend = luaL_optstring(L, -1, default_backend(L));
    lh_host *host = push_module(L, backend);
    lua_createtable(L, 0, 3);
    lua_getfield(L, 1, "script");
    lua_setfield(L, -2, "path");
    lua_getfield(L, 1, "args");
    lua_setfield(L, -2, "args");
    lua_getfield(L, 1, "env");
    lua_setfield(L, -2, "env");
    host->script_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, 1, "max_output");
    lua_Integer max_output = luaL_optinteger(L, -1, host->max_output);
    luaL_argcheck(L, max_output > 0 && max_output <= UINT32_MAX, 1,
                  "max_output must be 1..4294967295 bytes");
    host->max_output = (uint32_t)max_output;
    lua_pop(L, 1);
    lua_getfield(L, 1, "log");
    const char *log = luaL_optstring(L, -1, "stderr");
    luaL_argcheck(L, strcmp(log, "stderr") == 0 || strcmp(log, "capture") == 0, 1,
                  "log must be \"stderr\" or \"capture\"");
    lua_pop(L, 1);
    if (strcmp(log, "capture") == 0 &&
        !(host->log_captured = (lh_log_capture *)calloc(1, sizeof *host->log_captured)))
        return luaL_error(L, "not enough memory");
    return 1;
}

/* luahost.captured_log(): the lines a host opened with {log = "capture"} logged since
 * the last call ("level message\n" each), and how many were dropped past the bound. */
static int l_captured_log(lua_State *L)
{
    lh_log_capture *c = LH_HOST(L)->log_captured;
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
    lh_host *host = LH_HOST(L);
    lua_Number grace = luaL_optnumber(L, 1, 1.0);
    if (host->sel && host->sel->busy)
        return luaL_error(L, "luahost.shutdown called from inside a callback");
    host_close(L, host, grace > 0 ? grace : 0);
    return 0;
}

int luaopen_luahost(lua_State *L)
{
    push_module(L, default_backend(L));
    lua_getfield(L, -1, "stats");
    lua_getupvalue(L, -1, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "luahost.host"); /* for the executable's settings */
    lua_pop(L, 1);
    return 1;
}
