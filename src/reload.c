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

static const char *const journal_lists[] = {"seen",  "keys",      "sockets", "listeners",
                                            "asked", "cancelled", "timers",  NULL};

/* Makes the journal with all its lists before the new chunk runs, so that a rollback
 * (which may run because memory ran out) finds them without allocating. */
static void new_journal(lua_State *L, lh_host *host)
{
    lua_createtable(L, 0, 7);
    for (int i = 0; journal_lists[i]; i++) {
        lua_newtable(L);
        lua_setfield(L, -2, journal_lists[i]);
    }
    host->journal_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Pushes the journal's list `name`. */
static void push_journal_list(lua_State *L, lh_host *host, const char *name)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->journal_ref);
    lua_getfield(L, -1, name);
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
    /* The entry itself is kept, so that restoring it needs no new one. */
    lua_createtable(L, 0, 6);
    lua_pushvalue(L, selector_index);
    lua_setfield(L, -2, "sel");
    lua_pushinteger(L, fd);
    lua_setfield(L, -2, "fd");
    if (sel_get(s->core, fd)) {
        lhsel_push_keys(L, s);
        lua_rawgeti(L, -1, fd);
        lhsel_push_data(L, -1);
        lua_setfield(L, -4, "data");
        lua_pushinteger(L, lhsel_entry_events(L, -1));
        lua_setfield(L, -4, "events");
        lua_pushinteger(L, lhsel_entry_generation(L, -1));
        lua_setfield(L, -4, "generation");
        lua_setfield(L, -3, "entry");
        lua_pop(L, 1);
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

/* Puts one journaled registration back the way it was, the old entry with its old
 * events and data, allocating no Lua memory. The record is on the top. */
static void restore_key(lua_State *L, lh_host *host)
{
    int rec = lua_gettop(L);
    lua_getfield(L, rec, "sel");
    lh_selector *s = (lh_selector *)lua_touserdata(L, -1);
    lua_getfield(L, rec, "fd");
    int fd = (int)lua_tointeger(L, -1);
    int old = rec + 3;
    if (lua_getfield(L, rec, "entry") == LUA_TNIL || !s->core) {
        if (s->core && sel_get(s->core, fd) && lhsel_unregister_fd(L, s, fd) == 0)
            lua_pop(L, 1);
        lua_settop(L, rec);
        return;
    }
    /* What the failed script has there now is only unregistered: a socket it made is
     * closed when collected, and one the running script had may still be in use. */
    if (sel_get(s->core, fd) && lhsel_unregister_fd(L, s, fd) == 0)
        lua_pop(L, 1);
    lhsel_push_fileobj(L, old);
    lh_socket *sock = lhsock_test(L, -1);
    if (!sock || sock->conn.fd == fd) { /* not closed meanwhile */
        lua_getfield(L, rec, "events");
        lua_getfield(L, rec, "generation");
        lua_getfield(L, rec, "data");
        lhsel_set_entry(L, old, (int)lua_tointeger(L, -3), (int)lua_tointeger(L, -2), -1);
        if (lhsel_restore_entry(L, s, old) < 0)
            lh_log(host, LH_ERROR, "rolling back a reload: fd %d: %s", fd, sel_error(s->core));
    }
    lua_settop(L, rec);
}

/* The timers the reload cancelled: scheduled again, or let go. */
static void settle_cancelled(lua_State *L, lh_host *host, int reschedule)
{
    push_journal_list(L, host, "cancelled");
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
        lhtimer_settle(L, host, -1, reschedule);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
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
    settle_cancelled(L, host, 1);
    push_journal_list(L, host, "timers");
    for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
        lhtimer_cancel(L, -1);
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

/* Closes the listeners no load since generation asked for. Closing one only clears its
 * own entry, which a traversal allows, so this needs no memory. */
static void close_unwanted_listeners(lua_State *L, lh_host *host)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->listeners_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lh_socket *sock = lhsock_test(L, -1);
        if (sock && sock->generation < host->generation) {
            char where[NET_ADDRSTRLEN];
            lhsock_describe(sock, where, sizeof where);
            lh_log(host, LH_INFO, "closing listener %s: the new script no longer listens there",
                   where);
            lhsock_close(L, host, sock, 0);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Calls adopt(key) for an entry (arguments: adopt, entry), in protected mode: making
 * the key of a socket holding its registration allocates. */
static int call_adopt(lua_State *L)
{
    lhsel_push_key(L, 2);
    lua_replace(L, 2);
    lua_call(L, 1, 0);
    return 0;
}

/* Hands adopt(key) every registration of the default selector that the new script did
 * not register or modify itself; listeners are not handed over (they were asked for
 * again, or closed). adopt is on the stack top; entries is a table made before the
 * reload with room for every registration then, as only those can be handed over. */
static void adopt_keys(lua_State *L, lh_host *host, int entries)
{
    int adopt = lua_gettop(L);
    selector *core = host->sel->core;
    lua_Integer n = 0; /* the entries to hand over, gathered before adopt changes any */
    lhsel_push_keys(L, host->sel);
    int keys = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, keys)) {
        lhsel_push_fileobj(L, -1);
        lh_socket *sock = lhsock_test(L, -1);
        lua_pop(L, 1);
        if (lhsel_entry_generation(L, -1) < host->generation && !(sock && sock->listening))
            lua_rawseti(L, entries, ++n);
        else
            lua_pop(L, 1);
    }
    for (lua_Integer i = 1; i <= n && lua_rawgeti(L, entries, i) != LUA_TNIL; i++) {
        int fd = lhsel_entry_fd(L, -1);
        lua_rawgeti(L, keys, fd);
        int current = sel_get(core, fd) && lua_rawequal(L, -1, -2);
        lua_pop(L, 1);
        if (!current) { /* an earlier adopt closed or unregistered it */
            lua_pop(L, 1);
            continue;
        }
        lua_pushcfunction(L, lh_traceback);
        lua_pushcfunction(L, call_adopt);
        lua_pushvalue(L, adopt);
        lua_pushvalue(L, -4);
        if (lua_pcall(L, 2, 0, -4) != LUA_OK)
            host_report_error(L, host, "error in adopt");
        lua_pop(L, 2);
    }
    lua_settop(L, adopt - 1);
}

/* Makes the new load the running one: old on_reload callbacks, listeners, adoption.
 * Callbacks run in protected mode and the rest allocates nothing, so it cannot fail. */
static void commit(lua_State *L, lh_host *host, int old_on_reload, int adoptable)
{
    lua_pushvalue(L, old_on_reload);
    run_on_reload(L, host);
    close_unwanted_listeners(L, host);
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->module_ref);
    if (lua_getfield(L, -1, "adopt") == LUA_TFUNCTION && host->sel)
        adopt_keys(L, host, adoptable);
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
 * script failed to compile or raised, in which case everything is as it was. All the
 * memory the reload needs outside the new chunk is allocated before anything changes,
 * and neither rollback nor commit allocates, so running out of memory cannot leave it
 * half done. */
int host_reload(lua_State *L, lh_host *host, const char *path)
{
    if (host->reloading)
        return luaL_error(L, "a reload is already in progress");
    luaL_checkstack(L, 32, "reload");
    if (load_script(L, host, path) != LUA_OK) {
        lh_log(host, LH_ERROR, "reload rejected, still running generation %d: %s", host->generation,
               lua_tostring(L, -1));
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    int chunk = lua_gettop(L), on_reload = chunk + 1, adoptable = chunk + 2;
    int handler = chunk + 3, module = chunk + 4, old_adopt = chunk + 5;
    int old_on_reload = chunk + 6;
    lua_newtable(L);
    lua_createtable(L, host->sel ? (int)sel_count(host->sel->core) : 0, 0);
    lua_pushcfunction(L, lh_traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->module_ref);
    lua_getfield(L, module, "adopt");
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->on_reload_ref);
    lua_pushvalue(L, chunk);
    int nargs = push_script_args(L, host);
    new_journal(L, host);
    lua_pushnil(L);
    lua_setfield(L, module, "adopt"); /* the new script sets its own, or none */
    lua_pushvalue(L, on_reload);
    lua_rawseti(L, LUA_REGISTRYINDEX, host->on_reload_ref);
    host->generation++;
    host->reloading = 1;
    int status = lua_pcall(L, nargs, 0, handler);
    host->reloading = 0;
    if (status != LUA_OK) {
        host->generation--;
        lua_pushvalue(L, old_adopt);
        lua_setfield(L, module, "adopt");
        lua_pushvalue(L, old_on_reload);
        lua_rawseti(L, LUA_REGISTRYINDEX, host->on_reload_ref);
        rollback(L, host);
    } else {
        settle_cancelled(L, host, 0);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, host->journal_ref);
    host->journal_ref = LUA_NOREF;
    if (status != LUA_OK) {
        lh_log(host, LH_ERROR, "reload rejected, still running generation %d: %s", host->generation,
               lua_tostring(L, -1));
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    commit(L, host, old_on_reload, adoptable);
    lh_log(host, LH_INFO, "reloaded %s: generation %d", path, host->generation);
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
