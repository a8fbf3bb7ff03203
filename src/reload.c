/* reload.c: swapping the script while the server runs: the journal of what a new load
 * changes, its rollback, and the commit (on_reload, unwanted listeners, adoption). */
#include "reload.h"

#include <stdio.h>
#include <string.h>

static const char *const journal_lists[] = {"seen",      "keys",   "sockets", "listeners", "asked",
                                            "cancelled", "timers", "tls",     NULL};

/* Makes the journal with all its lists before the new chunk runs, so that a rollback
 * (which may run because memory ran out) finds them without allocating. */
static void new_journal(lua_State *L, lh_reload *r)
{
    lua_createtable(L, 0, 8);
    for (int i = 0; journal_lists[i]; i++) {
        lua_newtable(L);
        lua_setfield(L, -2, journal_lists[i]);
    }
    r->journal_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Pushes the journal's list `name`. */
static void push_list(lua_State *L, const lh_reload *r, const char *name)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->journal_ref);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
}

static void append(lua_State *L, int list, int value)
{
    value = lua_absindex(L, value);
    lua_pushvalue(L, value);
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
}

/* Appends the value at index (and, when given, the integer arg) to list `name`. */
static void record_in(lua_State *L, lh_reload *r, const char *name, int index, int with_arg,
                      int arg)
{
    index = lua_absindex(L, index);
    push_list(L, r, name);
    int list = lua_gettop(L);
    append(L, list, index);
    if (with_arg) {
        lua_pushinteger(L, arg);
        lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
    }
    lua_pop(L, 1);
}

/* Records, before the first change a reload makes to fd on the selector at index, the
 * key fd had then (or none), so that a failed reload can put it back. */
static void record_key(lua_State *L, lh_reload *r, int selector_index, int fd)
{
    selector_index = lua_absindex(L, selector_index);
    lh_selector *s = (lh_selector *)lua_touserdata(L, selector_index);
    push_list(L, r, "seen");
    lua_pushfstring(L, "%p:%d", (void *)s, fd);
    if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_pop(L, 2);
        return;
    }
    lua_pushfstring(L, "%p:%d", (void *)s, fd);
    lua_pushboolean(L, 1);
    lua_rawset(L, -4);
    lua_pop(L, 2);
    lua_createtable(L, 0, 3);
    lua_pushvalue(L, selector_index);
    lua_setfield(L, -2, "sel");
    lua_pushinteger(L, fd);
    lua_setfield(L, -2, "fd");
    if (sel_get(s->core, fd)) {
        lhsel_push_keys(L, s);
        lua_rawgeti(L, -1, fd);
        lua_setfield(L, -3, "key");
        lua_pop(L, 1);
    }
    record_in(L, r, "keys", -1, 0, 0);
    lua_pop(L, 1);
}

/* Records a listener (at index) and the TLS context it has now, which the journal holds
 * a reference to until the reload ends: put back if it fails, let go if it succeeds. */
static void record_tls(lua_State *L, lh_reload *r, int index)
{
    index = lua_absindex(L, index);
    lh_socket *s = (lh_socket *)lua_touserdata(L, index);
    tls_ctx *old = (s->flags & LH_TLS_LISTENER) ? (tls_ctx *)s->tls : NULL;
    push_list(L, r, "tls");
    int list = lua_gettop(L);
    append(L, list, index);
    lua_pushlightuserdata(L, old);
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
    lua_pop(L, 1);
    if (old)
        tls_ctx_ref(old);
}

/* The listeners' contexts the reload changed: the old ones put back, latest change
 * first (restore), or the journal's references to them dropped. */
static void settle_tls(lua_State *L, lh_reload *r, int restore)
{
    push_list(L, r, "tls"); /* listener, its context before */
    for (lua_Integer i = (lua_Integer)lua_rawlen(L, -1) - 1; i >= 1; i -= 2) {
        lua_rawgeti(L, -1, i);
        lua_rawgeti(L, -2, i + 1);
        lh_socket *s = (lh_socket *)lua_touserdata(L, -2);
        tls_ctx *old = (tls_ctx *)lua_touserdata(L, -1);
        lua_pop(L, 2);
        if (!restore || s->conn.fd < 0) {
            tls_ctx_unref(old);
            continue;
        }
        if (s->tls)
            lhsock_tls_release(s);
        s->tls = old;
        if (old)
            s->flags |= LH_TLS_LISTENER;
    }
    lua_pop(L, 1);
}

/* The journal hook the bindings below call while a reload runs. */
static void record(void *ud, lua_State *L, int change, int index, int arg)
{
    lh_reload *r = (lh_reload *)ud;
    switch (change) {
    case LH_MADE_SOCKET:
        record_in(L, r, "sockets", index, 0, 0);
        break;
    case LH_MADE_LISTENER:
        record_in(L, r, "listeners", index, 0, 0);
        break;
    case LH_ASKED_LISTENER:
        record_in(L, r, "asked", index, 1, arg);
        break;
    case LH_MADE_TIMER:
        record_in(L, r, "timers", index, 0, 0);
        break;
    case LH_CANCELLED_TIMER:
        record_in(L, r, "cancelled", index, 0, 0);
        break;
    case LH_CHANGED_KEY:
        record_key(L, r, index, arg);
        break;
    case LH_LISTENER_TLS:
        record_tls(L, r, index);
        break;
    }
}

/* Puts one journaled registration back the way it was, allocating no Lua memory. What
 * the failed script has there now is only unregistered: a socket it made is closed when
 * collected, and one the running script had may still be in use. The record is on the
 * top. */
static void restore_key(lua_State *L, lh_reload *r)
{
    int rec = lua_gettop(L);
    lua_getfield(L, rec, "sel");
    lh_selector *s = (lh_selector *)lua_touserdata(L, -1);
    lua_getfield(L, rec, "fd");
    int fd = (int)lua_tointeger(L, -1);
    lua_getfield(L, rec, "key");
    if (s->core && !lua_isnil(L, -1)) {
        lua_getiuservalue(L, -1, 1);
        lh_socket *sock = lhsock_test(L, -1);
        lua_pop(L, 1);
        if (sock && sock->conn.fd != fd) { /* closed meanwhile: nothing to put back */
            lua_pop(L, 1);
            lua_pushnil(L);
        }
    }
    if (s->core && lhsel_restore(L, s, fd, -1) < 0)
        lh_log(r->log, LH_ERROR, "rolling back a reload: fd %d: %s", fd, sel_error(s->core));
    lua_settop(L, rec);
}

/* The timers the reload cancelled: scheduled again, or let go. */
static void settle_cancelled(lua_State *L, lh_reload *r, int reschedule)
{
    push_list(L, r, "cancelled");
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
        lhtimer_settle(L, r->timers, -1, reschedule);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

static void close_made(lua_State *L, lh_reload *r, const char *list)
{
    push_list(L, r, list);
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
        lhsock_close(L, (lh_socket *)lua_touserdata(L, -1), 0);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

static void rollback(lua_State *L, lh_reload *r)
{
    push_list(L, r, "keys");
    for (lua_Integer i = (lua_Integer)lua_rawlen(L, -1); i >= 1; i--) {
        lua_rawgeti(L, -1, i);
        restore_key(L, r);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    close_made(L, r, "listeners");
    close_made(L, r, "sockets");
    push_list(L, r, "asked"); /* listener, generation before the reload */
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i += 2) {
        lua_rawgeti(L, -2, i + 1);
        ((lh_socket *)lua_touserdata(L, -2))->generation = (int)lua_tointeger(L, -1);
        lua_pop(L, 2);
    }
    lua_pop(L, 2);
    settle_cancelled(L, r, 1);
    push_list(L, r, "timers");
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
        lhtimer_cancel(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

/* Calls the function below nargs arguments in protected mode, with lh_traceback, within
 * the budget: the callback's own when the reload runs inside one (luahost.reload()),
 * else one of its own, so a chunk that never ends is aborted like a callback. */
static int call_budgeted(lua_State *L, lh_reload *r, int nargs)
{
    if (!r->budget->in_callback)
        return budget_pcall(L, r->budget, nargs, 0);
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, lh_traceback);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, 0, base);
    lua_remove(L, base);
    return status;
}

/* Calls the function below nargs arguments as call_budgeted does; logs an error as
 * "where: message". */
static void call_logged(lua_State *L, lh_reload *r, int nargs, const char *where)
{
    if (call_budgeted(L, r, nargs) != LUA_OK)
        lh_report_error(L, r->log, where);
}

/* Runs the new main chunk (below nargs arguments) as the budget's "main chunk". */
static int run_chunk(lua_State *L, lh_reload *r, int nargs)
{
    const char *what = r->budget->what;
    r->budget->what = "main chunk";
    int status = call_budgeted(L, r, nargs);
    r->budget->what = what;
    return status;
}

/* Whether the new chunk left nothing to serve: no registration it made or changed is
 * still there, it made no timer, and it did not call luahost.stop(). */
static int left_nothing(lua_State *L, lh_reload *r)
{
    if (r->stopping && *r->stopping)
        return 0;
    int found = 0;
    /* A listener made or asked for again is a script that means to serve: a task-style
     * script's accept loop may carry on from the old load, registering nothing new. */
    const char *lists[] = {"timers", "listeners", "asked"};
    for (size_t i = 0; !found && i < sizeof lists / sizeof lists[0]; i++) {
        push_list(L, r, lists[i]);
        found = lua_rawlen(L, -1) > 0;
        lua_pop(L, 1);
    }
    push_list(L, r, "keys");
    for (lua_Integer i = 1; !found && lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
        lua_getfield(L, -1, "sel");
        lh_selector *s = (lh_selector *)lua_touserdata(L, -1);
        lua_getfield(L, -2, "fd");
        found = s->core && sel_get(s->core, (int)lua_tointeger(L, -1));
        lua_pop(L, 3);
    }
    lua_pop(L, 1);
    return !found;
}

/* Runs the old script's on_reload callbacks (on the stack top, as a list), in order. */
static void run_on_reload(lua_State *L, lh_reload *r)
{
    int list = lua_gettop(L);
    for (lua_Integer i = 1; lua_rawgeti(L, list, i) != LUA_TNIL; i++)
        call_logged(L, r, 0, "error in on_reload");
    lua_settop(L, list - 1);
}

/* Hands adopt(key) every key of the host's selector that the new script did not register
 * or modify itself; listeners are not handed over (they were asked for again, or
 * closed). adopt is on the stack top; keys is a table made before the reload with room
 * for every registration then, as only those can be handed over. */
static void adopt_keys(lua_State *L, lh_reload *r, int gathered)
{
    int adopt = lua_gettop(L);
    lh_selector *s = r->selectors->main;
    lua_Integer n = 0; /* the keys to hand over, gathered before adopt changes any */
    lhsel_push_keys(L, s);
    int keys = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, keys)) {
        const lh_key *key = lhsel_test_key(L, -1);
        lua_getiuservalue(L, -1, 1);
        lh_socket *sock = lhsock_test(L, -1);
        lua_pop(L, 1);
        if (key->generation < r->journal.generation && !(sock && (sock->flags & LH_LISTENING)))
            lua_rawseti(L, gathered, ++n);
        else
            lua_pop(L, 1);
    }
    for (lua_Integer i = 1; i <= n && lua_rawgeti(L, gathered, i) != LUA_TNIL; i++) {
        const lh_key *key = lhsel_test_key(L, -1);
        lua_rawgeti(L, keys, key->fd);
        int current = s->core && sel_get(s->core, key->fd) && lua_rawequal(L, -1, -2);
        lua_pop(L, 1);
        if (!current) { /* an earlier adopt closed or unregistered it */
            lua_pop(L, 1);
            continue;
        }
        lua_pushvalue(L, adopt);
        lua_insert(L, -2);
        call_logged(L, r, 1, "error in adopt");
    }
    lua_settop(L, adopt - 1);
}

/* Makes the new load the running one: old on_reload callbacks, listeners, adoption.
 * Callbacks run in protected mode and the rest allocates nothing, so it cannot fail. */
static void commit(lua_State *L, lh_reload *r, int old_on_reload, int gathered)
{
    lua_pushvalue(L, old_on_reload);
    run_on_reload(L, r);
    lhsock_close_unwanted_listeners(L, r->sockets, r->journal.generation);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->module_ref);
    if (lua_getfield(L, -1, "adopt") == LUA_TFUNCTION && r->selectors->main)
        adopt_keys(L, r, gathered);
    else
        lua_pop(L, 1);
    lua_pop(L, 1);
}

/* Pushes a field of the script's table ("path", "args" or "env"); returns its type. */
static int push_script_field(lua_State *L, const lh_reload *r, const char *name)
{
    if (r->script_ref == LUA_NOREF) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->script_ref);
    int type = lua_getfield(L, -1, name);
    lua_remove(L, -2);
    return type;
}

/* Pushes the script's arguments, as the first load got them; returns how many. */
static int push_script_args(lua_State *L, const lh_reload *r)
{
    if (push_script_field(L, r, "args") != LUA_TTABLE) {
        lua_pop(L, 1);
        return 0;
    }
    int n = (int)lua_rawlen(L, -1);
    luaL_checkstack(L, n, "too many script arguments");
    for (int i = 1; i <= n; i++)
        lua_rawgeti(L, -i, i);
    lua_remove(L, -n - 1);
    return n;
}

/* Compiles path; a script run in process gets its own environment, as its first load
 * did. */
static int load_script(lua_State *L, const lh_reload *r, const char *path)
{
    int status = luaL_loadfile(L, path);
    if (status != LUA_OK)
        return status;
    if (push_script_field(L, r, "env") == LUA_TTABLE)
        lua_setupvalue(L, -2, 1);
    else
        lua_pop(L, 1);
    return LUA_OK;
}

static int rejected(lua_State *L, lh_reload *r)
{
    char head[64];
    snprintf(head, sizeof head,
             "reload rejected, still running generation %d: ", r->journal.generation);
    size_t len = 0;
    const char *why = lua_tolstring(L, -1, &len); /* with its length: it may hold a NUL */
    if (!why)
        why = "(error object is not a string)", len = strlen(why);
    lh_log_text(r->log, LH_ERROR, head, why, len);
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
}

/* Why a guarded reload that left nothing to serve is refused. */
static const char nothing_left[] =
    "the new script registered nothing, made no timer and asked for no listener: the "
    "server would stop (a script that means to stop calls luahost.stop())";

int lhreload_run(lua_State *L, lh_reload *r, const char *path, int guarded)
{
    if (r->journal.reloading)
        return luaL_error(L, "a reload is already in progress");
    luaL_checkstack(L, 32, "reload");
    if (load_script(L, r, path) != LUA_OK)
        return rejected(L, r);
    int chunk = lua_gettop(L), on_reload = chunk + 1, gathered = chunk + 2;
    int why_empty = chunk + 3, module = chunk + 4, old_adopt = chunk + 5;
    int old_on_reload = chunk + 6;
    lh_selector *main = r->selectors->main;
    lua_newtable(L);
    lua_createtable(L, main ? (int)sel_count(main->core) : 0, 0);
    lua_pushstring(L, nothing_left); /* made now: refusing must not allocate */
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->module_ref);
    lua_getfield(L, module, "adopt");
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->on_reload_ref);
    lua_pushvalue(L, chunk);
    int nargs = push_script_args(L, r);
    new_journal(L, r);
    /* The new script sets its own, or none. false, not nil, while it runs: a cleared key
     * can be dropped when the new chunk grows the module table, and putting the old
     * adopt back after a failure would then allocate, which out of memory raises. */
    lua_pushboolean(L, 0);
    lua_setfield(L, module, "adopt");
    lua_pushvalue(L, on_reload);
    lua_rawseti(L, LUA_REGISTRYINDEX, r->on_reload_ref);
    r->journal.generation++;
    r->journal.reloading = 1;
    int status = run_chunk(L, r, nargs);
    r->journal.reloading = 0;
    if (status == LUA_OK && guarded && left_nothing(L, r)) {
        lua_pushvalue(L, why_empty);
        status = LUA_ERRRUN;
    }
    if (status != LUA_OK) {
        r->journal.generation--;
        lua_pushvalue(L, old_adopt);
        lua_setfield(L, module, "adopt");
        lua_pushvalue(L, old_on_reload);
        lua_rawseti(L, LUA_REGISTRYINDEX, r->on_reload_ref);
        rollback(L, r);
        settle_tls(L, r, 1);
    } else {
        if (lua_getfield(L, module, "adopt") == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
            lua_pushnil(L); /* set none: nil as before the load */
            lua_setfield(L, module, "adopt");
        }
        lua_pop(L, 1);
        settle_cancelled(L, r, 0);
        settle_tls(L, r, 0);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, r->journal_ref);
    r->journal_ref = LUA_NOREF;
    if (status != LUA_OK)
        return rejected(L, r);
    commit(L, r, old_on_reload, gathered);
    lh_log(r->log, LH_INFO, "reloaded %s: generation %d", path, r->journal.generation);
    lua_pushboolean(L, 1);
    return 1;
}

void lhreload_if_requested(lua_State *L, lh_reload *r)
{
    if (!r->requested)
        return;
    r->requested = 0;
    int top = lua_gettop(L);
    push_script_field(L, r, "path");
    const char *path = lua_tostring(L, -1);
    if (path)
        lhreload_run(L, r, path, 1);
    else
        lh_log(r->log, LH_WARN, "no script to reload");
    lua_settop(L, top);
}

/* The module's functions on a host that luahost.shutdown closed. */
static lh_reload *check_open(lua_State *L)
{
    lh_reload *r = (lh_reload *)LH_CTX(L);
    if (r->module_ref == LUA_NOREF)
        luaL_error(L, "the host is closed");
    return r;
}

static int l_reload(lua_State *L)
{
    lh_reload *r = check_open(L);
    const char *path = luaL_optstring(L, 1, NULL);
    if (!path) {
        push_script_field(L, r, "path");
        path = lua_tostring(L, -1);
        if (!path)
            return luaL_error(L, "no script to reload: pass its path");
    }
    return lhreload_run(L, r, path, 0);
}

static int l_generation(lua_State *L)
{
    lua_pushinteger(L, ((lh_reload *)LH_CTX(L))->journal.generation);
    return 1;
}

static int l_on_reload(lua_State *L)
{
    lh_reload *r = check_open(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->on_reload_ref);
    append(L, lua_gettop(L), 1);
    return 0;
}

static const luaL_Reg module_functions[] = {
    {"reload", l_reload},
    {"generation", l_generation},
    {"on_reload", l_on_reload},
    {NULL, NULL},
};

void lhreload_init(lua_State *L, lh_reload *r, lh_selectors *selectors, lh_sockets *sockets,
                   lh_timers *timers, lh_budget *budget, lh_logger *log)
{
    memset(r, 0, sizeof *r);
    r->budget = budget;
    r->journal.generation = 1;
    r->journal.record = record;
    r->journal.ud = r;
    r->selectors = selectors;
    r->sockets = sockets;
    r->timers = timers;
    r->log = log;
    r->journal_ref = r->module_ref = r->script_ref = LUA_NOREF;
    lua_newtable(L);
    r->on_reload_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void lhreload_open(lua_State *L, int module, int host, lh_reload *r)
{
    lua_pushvalue(L, module);
    r->module_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lh_setfuncs(L, module_functions, module, host, r);
}

void lhreload_set_script(lua_State *L, lh_reload *r, int index)
{
    lua_pushvalue(L, index);
    luaL_unref(L, LUA_REGISTRYINDEX, r->script_ref);
    r->script_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void lhreload_release(lua_State *L, lh_reload *r)
{
    int *refs[] = {&r->on_reload_ref, &r->module_ref, &r->script_ref, &r->journal_ref};
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
        luaL_unref(L, LUA_REGISTRYINDEX, *refs[i]);
        *refs[i] = LUA_NOREF;
    }
}
