/* reload.c: swapping the script while the server runs. The new main chunk runs with
 * every change it makes journaled; if it fails, the journal is rolled back and the old
 * script keeps serving. If it succeeds, the old script's on_reload callbacks run, the
 * listeners it no longer asks for close, and the keys it did not take over are handed
 * to luahost.adopt. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "lh.h"

/* Pushes the journal's list `name`, creating it on first use. */
static void push_journal_list(lua_State *L, lh_host *host, const char *name)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->journal_ref);
    if (lua_getfield(L, -1, name) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, name);
    }
    lua_remove(L, -2);
}

static void append(lua_State *L, int list, int value)
{
    value = lua_absindex(L, value);
    lua_pushvalue(L, value);
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
}

/* Records, before the first change a reload makes to fd on the selector at
 * selector_index, what that registration was, so that a failed reload can restore it. */
void reload_journal_key(lua_State *L, lh_host *host, int selector_index, int fd)
{
    if (!host->reloading)
        return;
    selector_index = lua_absindex(L, selector_index);
    lh_selector *s = (lh_selector *)lua_touserdata(L, selector_index);
    push_journal_list(L, host, "seen");
    lua_pushfstring(L, "%p:%d", (void *)s, fd);
    if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_pop(L, 2);
        return;
    }
    lua_pushfstring(L, "%p:%d", (void *)s, fd);
    lua_pushboolean(L, 1);
    lua_rawset(L, -4);
    lua_pop(L, 2);
    lua_createtable(L, 0, 5);
    lua_pushvalue(L, selector_index);
    lua_setfield(L, -2, "sel");
    lua_pushinteger(L, fd);
    lua_setfield(L, -2, "fd");
    if (sel_get(s->core, fd)) {
        lhsel_push_keys(L, s);
        lua_rawgeti(L, -1, fd);
        lua_getiuservalue(L, -1, 1);
        lua_setfield(L, -4, "fileobj");
        lua_getiuservalue(L, -1, 2);
        lua_setfield(L, -4, "data");
        lua_pushinteger(L, ((lh_key *)lua_touserdata(L, -1))->events);
        lua_setfield(L, -4, "events");
        lua_pop(L, 2);
    }
    push_journal_list(L, host, "keys");
    append(L, lua_gettop(L), -2);
    lua_pop(L, 2);
}

/* Records a socket, listener or timer the new script created (or a timer it cancelled),
 * to undo on failure. */
void reload_journal_object(lua_State *L, lh_host *host, const char *list, int index)
{
    if (!host->reloading)
        return;
    index = lua_absindex(L, index);
    push_journal_list(L, host, list);
    append(L, lua_gettop(L), index);
    lua_pop(L, 1);
}

/* Records that the new script asked for the listener at index, which until then had
 * generation old_generation, so that a failed reload can put that back. */
void reload_journal_listener(lua_State *L, lh_host *host, int index, int old_generation)
{
    if (!host->reloading)
        return;
    index = lua_absindex(L, index);
    push_journal_list(L, host, "asked");
    int list = lua_gettop(L);
    append(L, list, index);
    lua_pushinteger(L, old_generation);
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
    lua_pop(L, 1);
}

/* Calls method `name` of the object at index with n arguments already pushed, in
 * protected mode; a failure is logged and popped. */
static void call_method(lua_State *L, lh_host *host, int index, const char *name, int n)
{
    index = lua_absindex(L, index);
    lua_getfield(L, index, name);
    lua_insert(L, -n - 1);
    lua_pushvalue(L, index);
    lua_insert(L, -n - 1);
    if (lua_pcall(L, n + 1, 0, 0) != LUA_OK)
        host_report_error(L, host, "rolling back a reload");
}

/* Puts one journaled registration back the way it was. The record is on the top. */
static void restore_key(lua_State *L, lh_host *host)
{
    int rec = lua_gettop(L);
    lua_getfield(L, rec, "sel");
    lh_selector *s = (lh_selector *)lua_touserdata(L, -1);
    lua_getfield(L, rec, "fd");
    int fd = (int)lua_tointeger(L, -1);
    lua_getfield(L, rec, "fileobj");
    int sel = rec + 1, old = rec + 3;
    if (!s->core) {
        lua_settop(L, rec);
        return;
    }
    const sel_key *slot = sel_get(s->core, fd);
    if (slot) { /* what the failed script has there now */
        lhsel_push_keys(L, s);
        lua_rawgeti(L, -1, fd);
        lua_getiuservalue(L, -1, 1);
        /* Only unregistered: a socket the failed script made is closed when collected,
         * and one the running script had may still be in use by it. */
        call_method(L, host, sel, "unregister", 1);
        lua_settop(L, old);
    }
    if (!lua_isnil(L, old)) {
        lua_pushvalue(L, old);
        lua_getfield(L, rec, "events");
        lua_getfield(L, rec, "data");
        call_method(L, host, sel, "register", 3);
    }
    lua_settop(L, rec);
}

static void rollback(lua_State *L, lh_host *host)
{
    push_journal_list(L, host, "keys");
    for (lua_Integer i = (lua_Integer)lua_rawlen(L, -1); i >= 1; i--) {
        lua_rawgeti(L, -1, i);
        restore_key(L, host);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    static const char *const made[] = {"listeners", "sockets"};
    for (int list = 0; list < 2; list++) {
        push_journal_list(L, host, made[list]);
        for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
            lhsock_close(L, host, lhsock_test(L, -1), 0);
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
    }
    push_journal_list(L, host, "asked"); /* listener, generation before the reload */
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i += 2) {
        lua_rawgeti(L, -2, i + 1);
        lhsock_test(L, -2)->generation = (int)lua_tointeger(L, -1);
        lua_pop(L, 2);
    }
    lua_pop(L, 2);
    push_journal_list(L, host, "cancelled");
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
        lhtimer_reschedule(L, host, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
    push_journal_list(L, host, "timers");
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
        call_method(L, host, -1, "cancel", 0);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

/* Runs the old script's on_reload callbacks (on the stack top, as a list), in order. */
static void run_on_reload(lua_State *L, lh_host *host)
{
    int list = lua_gettop(L);
    for (lua_Integer i = 1; lua_rawgeti(L, list, i) != LUA_TNIL; i++) {
        lua_pushcfunction(L, lh_traceback);
        lua_insert(L, -2);
        if (lua_pcall(L, 0, 0, -2) != LUA_OK)
            host_report_error(L, host, "error in on_reload");
        lua_pop(L, 1);
    }
    lua_settop(L, list - 1);
}

/* Closes the listeners no load since generation asked for. */
static void close_unwanted_listeners(lua_State *L, lh_host *host)
{
    lua_newtable(L); /* collected first: closing changes the table being traversed */
    int doomed = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->listeners_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lh_socket *sock = lhsock_test(L, -1);
        if (sock && sock->generation < host->generation)
            append(L, doomed, -1);
        lua_pop(L, 1);
    }
    for (lua_Integer i = 1; lua_rawgeti(L, doomed, i) != LUA_TNIL; i++) {
        lh_socket *sock = lhsock_test(L, -1);
        char where[NET_ADDRSTRLEN];
        lhsock_describe(sock, where, sizeof where);
        lh_log(host, LH_INFO, "closing listener %s: the new script no longer listens there", where);
        lhsock_close(L, host, sock, 0);
        lua_pop(L, 1);
    }
    lua_pop(L, 3);
}

/* Hands adopt(key) every key of the default selector that the new script did not
 * register or modify itself; listeners are not handed over (they were asked for again,
 * or closed). adopt is on the stack top. */
static void adopt_keys(lua_State *L, lh_host *host)
{
    int adopt = lua_gettop(L);
    selector *core = host->sel->core;
    lua_newtable(L); /* the keys to hand over, gathered before adopt changes any */
    int keys = lua_gettop(L);
    lhsel_push_keys(L, host->sel);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lh_key *key = (lh_key *)lua_touserdata(L, -1);
        lua_getiuservalue(L, -1, 1);
        lh_socket *sock = lhsock_test(L, -1);
        lua_pop(L, 1);
        if (key->generation < host->generation && !(sock && sock->listening))
            append(L, keys, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    for (lua_Integer i = 1; lua_rawgeti(L, keys, i) != LUA_TNIL; i++) {
        lh_key *key = (lh_key *)lua_touserdata(L, -1);
        if (!sel_get(core, key->fd)) { /* an earlier adopt closed it */
            lua_pop(L, 1);
            continue;
        }
        lua_pushcfunction(L, lh_traceback);
        lua_pushvalue(L, adopt);
        lua_pushvalue(L, -3);
        if (lua_pcall(L, 1, 0, -3) != LUA_OK)
            host_report_error(L, host, "error in adopt");
        lua_pop(L, 2);
    }
    lua_settop(L, adopt - 1);
}

/* Makes the new load the running one: old on_reload callbacks, listeners, adoption. */
static void commit(lua_State *L, lh_host *host, int old_on_reload)
{
    lua_pushvalue(L, old_on_reload);
    run_on_reload(L, host);
    close_unwanted_listeners(L, host);
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->module_ref);
    if (lua_getfield(L, -1, "adopt") == LUA_TFUNCTION && host->sel)
        adopt_keys(L, host);
    else
        lua_pop(L, 1);
    lua_pop(L, 1);
}

/* Pushes what the host knows of its script: "path", "args" (a sequence) or "env" (the
 * table its chunks run in). A script the kit runs in process has its own; the
 * executable's is in the registry. Returns the type pushed. */
int lh_push_script_field(lua_State *L, lh_host *host, const char *name)
{
    if (host->script_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, host->script_ref);
        lua_getfield(L, -1, name);
        lua_remove(L, -2);
        return lua_type(L, -1);
    }
    if (strcmp(name, "env") == 0) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    return lua_getfield(L, LUA_REGISTRYINDEX,
                        strcmp(name, "path") == 0 ? "luahost.script" : "luahost.script_args");
}

/* Pushes the script's arguments, as the first load got them; returns how many. */
static int push_script_args(lua_State *L, lh_host *host)
{
    if (lh_push_script_field(L, host, "args") != LUA_TTABLE) {
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

/* Runs the new chunk (on the stack top) with reloading set; returns the pcall status,
 * leaving the error message on the stack on failure. */
static int run_new_chunk(lua_State *L, lh_host *host)
{
    lua_pushcfunction(L, lh_traceback);
    lua_insert(L, -2);
    int handler = lua_gettop(L) - 1;
    int nargs = push_script_args(L, host);
    lua_newtable(L);
    host->journal_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    host->reloading = 1;
    int status = lua_pcall(L, nargs, 0, handler);
    host->reloading = 0;
    lua_remove(L, handler);
    return status;
}

/* Compiles path; a script run in process gets its own environment, as its first load
 * did. */
static int load_script(lua_State *L, lh_host *host, const char *path)
{
    int status = luaL_loadfile(L, path);
    if (status != LUA_OK)
        return status;
    if (lh_push_script_field(L, host, "env") == LUA_TTABLE)
        lua_setupvalue(L, -2, 1);
    else
        lua_pop(L, 1);
    return LUA_OK;
}

/* Loads path as the new script. Pushes true, or nil and the error (logged) when the
 * script failed to compile or raised, in which case everything is as it was. */
int host_reload(lua_State *L, lh_host *host, const char *path)
{
    if (host->reloading)
        return luaL_error(L, "a reload is already in progress");
    if (load_script(L, host, path) != LUA_OK) {
        lh_log(host, LH_ERROR, "reload rejected, still running generation %d: %s", host->generation,
               lua_tostring(L, -1));
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->module_ref);
    lua_getfield(L, -1, "adopt");
    lua_pushnil(L);
    lua_setfield(L, -3, "adopt"); /* the new script sets its own, or none */
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->on_reload_ref);
    int saved = lua_gettop(L); /* module, old adopt, old on_reload */
    lua_newtable(L);
    lua_rawseti(L, LUA_REGISTRYINDEX, host->on_reload_ref);
    lua_pushvalue(L, saved - 3);
    host->generation++;
    int status = run_new_chunk(L, host);
    if (status != LUA_OK) {
        host->generation--;
        rollback(L, host);
        lua_pushvalue(L, saved - 1);
        lua_setfield(L, saved - 2, "adopt");
        lua_pushvalue(L, saved);
        lua_rawseti(L, LUA_REGISTRYINDEX, host->on_reload_ref);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, host->journal_ref);
    host->journal_ref = LUA_NOREF;
    if (status != LUA_OK) {
        lh_log(host, LH_ERROR, "reload rejected, still running generation %d: %s", host->generation,
               lua_tostring(L, -1));
        luaL_pushfail(L);
        lua_insert(L, -2);
        lua_replace(L, saved - 2); /* the message */
        lua_replace(L, saved - 3); /* nil before it */
        lua_settop(L, saved - 2);
        return 2;
    }
    commit(L, host, saved);
    lh_log(host, LH_INFO, "reloaded %s: generation %d", path, host->generation);
    lua_settop(L, saved - 4);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_reload(lua_State *L)
{
    lh_host *host = LH_HOST(L);
    const char *path = luaL_optstring(L, 1, NULL);
    if (!path) {
        lh_push_script_field(L, host, "path");
        path = lua_tostring(L, -1);
        if (!path)
            return luaL_error(L, "no script to reload: pass its path");
    }
    return host_reload(L, host, path);
}

static int l_generation(lua_State *L)
{
    lua_pushinteger(L, LH_HOST(L)->generation);
    return 1;
}

static int l_on_reload(lua_State *L)
{
    lh_host *host = LH_HOST(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->on_reload_ref);
    append(L, lua_gettop(L), 1);
    return 0;
}

/* Watches the directory of path (editors often replace a file rather than write it)
 * for changes to the script; 0 or -errno. */
int host_watch_file(lh_host *host, const char *path)
{
    char dir[4096], name[4096];
    snprintf(dir, sizeof dir, "%s", path);
    snprintf(name, sizeof name, "%s", path);
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (inotify_add_watch(fd, dirname(dir), IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    conn_init(&host->watch_conn, fd, CONN_WATCH, 0);
    int rc = sel_set_host_events(host->sel->core, fd, SEL_READ, &host->watch_conn);
    if (rc < 0) {
        close(fd);
        host->watch_conn.fd = -1;
        return rc;
    }
    host->watch_name = strdup(basename(name));
    return host->watch_name ? 0 : -ENOMEM;
}

/* Reads what inotify reported; a change to the script schedules a reload shortly after,
 * so that a burst of writes from an editor becomes one reload. */
void host_watch_event(lh_host *host)
{
    char events[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    while ((n = read(host->watch_conn.fd, events, sizeof events)) > 0) {
        for (char *p = events; p < events + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->len && strcmp(ev->name, host->watch_name) == 0)
                host->reload_at = timer_now() + 0.1;
            p += sizeof *ev + ev->len;
        }
    }
}

static const luaL_Reg module_functions[] = {
    {"reload", l_reload},
    {"generation", l_generation},
    {"on_reload", l_on_reload},
    {NULL, NULL},
};

void lhreload_open(lua_State *L, int module, int host)
{
    lh_setfuncs(L, module_functions, module, host);
}
