/* host.c: making a host (its parts wired together, each hook given at setup) and its
 * module table, with the functions that belong to no one part: now, log, log_level,
 * parse_address, stats. */
#include "host.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lua_group.h"
#include "lua_redis.h"
#include "lua_listen.h"
#include "lua_sockopt.h"
#include "lua_task.h"
#include "stall.h"

void lh_settings_init(lh_settings *s)
{
    memset(s, 0, sizeof *s);
    s->log_level = LH_INFO;
    s->max_output = CONN_DEFAULT_LIMIT;
    s->max_instructions = LH_DEFAULT_MAX_INSTRUCTIONS;
}

/* Frees what the host holds outside Lua; safe to call twice. */
static void release_c(lh_host *host)
{
    budget_stop_watchdog(&host->budget);
    stall_stop(&host->budget);
    signals_close(&host->loop.sig, host->sel);
    watch_close(&host->loop.watch, host->sel);
    worker_close(&host->loop.master, host->sel);
    linger_close_all(&host->linger);
    adm_free(&host->adm);
    theap_free(&host->timers.heap);
    free(host->sockets.scratch);
    host->sockets.scratch = NULL;
    /* The selector's socket calls may be its backend's own (sim's), which go with it. */
    host->sockets.io = host->adm.io = &net_io_kernel;
    sel_free(host->sel);
    host->sel = NULL;
    host->linger.sel = NULL;
}

static int host_gc(lua_State *L)
{
    lh_host *host = (lh_host *)lua_touserdata(L, 1);
    release_c(host);
    lh_log_capture_free(&host->log);
    return 0;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, timer_clock_now((const timer_clock *)LH_CTX(L)));
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
    lh_logger *log = (lh_logger *)LH_CTX(L);
    int level = check_level(L, 1);
    if (level < log->level)
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
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    lh_log_text(log, level, NULL, text, len); /* with its length: a NUL hides nothing */
    return 0;
}

/* luahost.log_level([level]): the current level; sets it when given. */
static int l_log_level(lua_State *L)
{
    lh_logger *log = (lh_logger *)LH_CTX(L);
    lua_pushstring(L, lh_log_level_name(log->level));
    if (!lua_isnoneornil(L, 1))
        log->level = check_level(L, 1);
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

static void set_count(lua_State *L, const char *name, size_t value)
{
    lua_pushinteger(L, (lua_Integer)value);
    lua_setfield(L, -2, name);
}

/* luahost.stats(): counts an operator or a test can watch for leaks. */
static int l_stats(lua_State *L)
{
    lh_host *host = (lh_host *)LH_CTX(L);
    size_t own = loop_own_fds(&host->loop);
    selector *core = host->selectors.main ? host->selectors.main->core : NULL;
    lua_createtable(L, 0, 8);
    set_count(L, "registered", core ? sel_count(core) : 0);
    set_count(L, "flushing", core ? sel_host_count(core) - own : 0);
    set_count(L, "lingering", host->linger.count);
    set_count(L, "timers", host->timers.heap.count);
    set_count(L, "generation", (size_t)host->reload.journal.generation);
    set_count(L, "connections", host->adm.connections);
    set_count(L, "refused", host->adm.refused);
    set_count(L, "lua_bytes",
              (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0));
    return 1;
}

/* luahost.worker(): this worker's number and the count (1, 1 without --workers). */
static int l_worker(lua_State *L)
{
    const worker_chan *w = (const worker_chan *)LH_CTX(L);
    lua_pushinteger(L, w->number);
    lua_pushinteger(L, w->count);
    return 2;
}

/* A host's functions for the module table, on parts of it: each names its part. */
static const luaL_Reg clock_functions[] = {{"now", l_now}, {NULL, NULL}};
static const luaL_Reg worker_functions[] = {{"worker", l_worker}, {NULL, NULL}};
static const luaL_Reg log_functions[] = {{"log", l_log}, {"log_level", l_log_level}, {NULL, NULL}};
static const luaL_Reg host_functions[] = {
    {"stats", l_stats}, {"parse_address", l_parse_address}, {NULL, NULL}};

/* Sets up every part, each with what it needs and the hooks it calls up through. */
static void init_parts(lua_State *L, lh_host *host, const lh_settings *settings)
{
    lh_journal *journal = &host->reload.journal;
    host->log.level = settings->log_level;
    budget_init(&host->budget, settings->max_instructions);
    adm_init(&host->adm, &host->log, &host->clock, sel_io(host->sel), sel_fd_limit(host->sel));
    host->adm.max_connections = settings->max_connections;
    host->adm.fd_limit = settings->fd_limit;
    linger_init(&host->linger, host->sel, &host->adm, &host->log, &host->clock);
    lhreload_init(L, &host->reload, &host->selectors, &host->sockets, &host->timers, &host->budget,
                  &host->log);
    lhsel_init(&host->selectors, journal, &host->anchor, &host->budget);
    lhtimer_init(L, &host->timers, &host->clock, &host->budget, &host->log, journal, &host->anchor);
    lhsock_init(L, &host->sockets, host->sel, settings->max_output, &host->adm, &host->linger,
                &host->budget, &host->log, journal, &host->anchor);
    lhtls_init(L, &host->tls, &host->sockets, &host->timers);
    loop_init(&host->loop, &host->selectors, &host->sockets, &host->timers, &host->budget,
              &host->reload, &host->adm, &host->linger, &host->log);
    host->loop.debug_gc = settings->debug_gc;
}

/* Pushes the host userdata, with its finalizer set before anything is acquired. */
static lh_host *push_host(lua_State *L, const lh_settings *settings)
{
    char err[160];
    lh_host *host = (lh_host *)lua_newuserdatauv(L, sizeof *host, 0);
    memset(host, 0, sizeof *host);
    host->anchor.ref = LUA_NOREF;
    signals_init(&host->loop.sig);
    watch_init(&host->loop.watch);
    worker_init(&host->loop.master);
    host->adm.spare_fd = -1;
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, host_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    if (settings->capture_log && lh_log_capture_start(&host->log) < 0)
        luaL_error(L, "not enough memory");
    if (!(host->sel = sel_new(settings->backend, err, sizeof err)))
        luaL_error(L, "%s", err);
    return host;
}

lh_host *lh_host_push(lua_State *L, const lh_settings *settings)
{
    lua_newtable(L);
    int module = lua_gettop(L);
    lh_host *host = push_host(L, settings);
    int index = lua_gettop(L);
    init_parts(L, host, settings);
    lh_anchor_init(L, &host->anchor, index);
    lh_setfuncs(L, clock_functions, module, index, &host->clock);
    lh_setfuncs(L, log_functions, module, index, &host->log);
    lh_setfuncs(L, host_functions, module, index, host);
    lh_setfuncs(L, worker_functions, module, index, &host->loop.master);
    lhsock_open(L, module, index, &host->sockets);
    lhgroup_open(L, module);
    lhresp_open(L, module);
    lhlisten_open(L, module, index, &host->sockets);
    lhsockopt_open(L);
    lhtls_open(L, module, index, &host->tls);
    lhsel_open(L, module, index, &host->selectors, &host->sockets);
    lhtimer_open(L, module, index, &host->timers);
    lhtask_open(L, module, index, &host->budget);
    lhreload_open(L, module, index, &host->reload);
    loop_open(L, module, index, &host->loop);
    lhsel_push_main(L, &host->selectors, host->sel);
    lua_setfield(L, module, "selector");
    lua_pushinteger(L, SEL_READ);
    lua_setfield(L, module, "EVENT_READ");
    lua_pushinteger(L, SEL_WRITE);
    lua_setfield(L, module, "EVENT_WRITE");
    lua_pushliteral(L, LUAHOST_VERSION);
    lua_setfield(L, module, "version");
    lua_settop(L, index);
    return host;
}

void lh_host_close(lua_State *L, lh_host *host, double grace_seconds)
{
    if (host->closed)
        return;
    loop_shutdown(L, &host->loop, grace_seconds);
    lhsock_close_listeners(L, &host->sockets);
    lhsel_release_all(L, &host->selectors);
    lhtimer_close(L, &host->timers);
    lhtls_release(L, &host->tls);
    lhsock_release(L, &host->sockets);
    lhreload_release(L, &host->reload);
    release_c(host);
    host->closed = 1;
    lh_anchor_close(L, &host->anchor);
}
