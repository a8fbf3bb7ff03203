/* lua_selector.c: the luahost.selector and luahost.key types: register, modify,
 * unregister, get_key, get_map, select (an iterator) and close, as in Python. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lh.h"

static lh_selector *check_selector(lua_State *L, int index)
{
    lh_selector *s = (lh_selector *)luaL_checkudata(L, index, LH_SELECTOR);
    if (!s->core)
        luaL_error(L, "attempt to use a closed selector");
    return s;
}

static lh_key *check_key(lua_State *L, int index)
{
    return (lh_key *)luaL_checkudata(L, index, LH_KEY);
}

void lhsel_push_keys(lua_State *L, lh_selector *s)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->keys_ref);
}

/* A selector's keys table holds, at each registered fd, the registration's entry: a key
 * (user values fileobj and data), or the socket itself when the socket holds its own
 * registration. A socket may when it is registered on its own host's selector with a
 * callback that cannot take the key (a Lua function of at most two parameters): the
 * host never needs the key then, and makes one only when the script asks (register's
 * result, get_key, get_map, select, adopt). An idle connection is thus one object, not
 * two. Any entry that is a socket is one holding its registration. */
_Static_assert(sizeof(lh_key) != sizeof(lh_socket), "dispatch tells entries apart by size");

int lhsel_entry_fd(lua_State *L, int entry)
{
    lh_socket *own = lhsock_test(L, entry);
    return own ? own->conn.fd : ((lh_key *)lua_touserdata(L, entry))->fd;
}

int lhsel_entry_events(lua_State *L, int entry)
{
    lh_socket *own = lhsock_test(L, entry);
    return own ? own->own_events : ((lh_key *)lua_touserdata(L, entry))->events;
}

int lhsel_entry_generation(lua_State *L, int entry)
{
    lh_socket *own = lhsock_test(L, entry);
    return own ? own->own_generation : ((lh_key *)lua_touserdata(L, entry))->generation;
}

void lhsel_push_fileobj(lua_State *L, int entry)
{
    if (lhsock_test(L, entry))
        lua_pushvalue(L, entry);
    else
        lua_getiuservalue(L, entry, 1);
}

void lhsel_push_data(lua_State *L, int entry)
{
    lua_getiuservalue(L, entry, lhsock_test(L, entry) ? 1 : 2);
}

/* Sets what an entry holds (events, generation, data from index data); allocates
 * nothing, so a reload's rollback can use it. */
void lhsel_set_entry(lua_State *L, int entry, int events, int generation, int data)
{
    entry = lua_absindex(L, entry);
    lua_pushvalue(L, data);
    lh_socket *own = lhsock_test(L, entry);
    if (own) {
        own->own_events = (uint8_t)events;
        own->own_generation = generation;
        lua_setiuservalue(L, entry, 1);
    } else {
        lh_key *key = (lh_key *)lua_touserdata(L, entry);
        key->events = events;
        key->generation = generation;
        lua_setiuservalue(L, entry, 2);
    }
}

/* A socket that stops holding its registration lets go of the callback too. */
static void clear_own(lua_State *L, lh_socket *own, int entry)
{
    own->own_events = 0;
    lua_pushnil(L);
    lua_setiuservalue(L, entry, 1);
}

static void push_new_key(lua_State *L, int fd, int events, int generation, int fileobj, int data)
{
    fileobj = lua_absindex(L, fileobj);
    data = lua_absindex(L, data);
    lh_key *key = (lh_key *)lua_newuserdatauv(L, sizeof *key, 2);
    key->fd = fd;
    key->events = events;
    key->generation = generation;
    luaL_setmetatable(L, LH_KEY);
    lua_pushvalue(L, fileobj);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, data);
    lua_setiuservalue(L, -2, 2);
}

/* Pushes the key of an entry: the entry itself, or a new key for a socket holding its
 * registration (this allocates). */
void lhsel_push_key(lua_State *L, int entry)
{
    entry = lua_absindex(L, entry);
    lh_socket *own = lhsock_test(L, entry);
    if (!own) {
        lua_pushvalue(L, entry);
        return;
    }
    lua_getiuservalue(L, entry, 1);
    push_new_key(L, own->conn.fd, own->own_events, own->own_generation, entry, -1);
    lua_remove(L, -2);
}

/* Whether the callback at index could see a third argument, the key: anything but a Lua
 * function of at most two fixed parameters. */
static int callback_takes_key(lua_State *L, int index)
{
    lua_Debug ar;
    if (lua_type(L, index) != LUA_TFUNCTION || lua_iscfunction(L, index))
        return 1;
    lua_pushvalue(L, index);
    lua_getinfo(L, ">u", &ar);
    return ar.isvararg || ar.nparams > 2;
}

/* The socket at fileobj if it may hold its registration with the callback at data. */
static lh_socket *may_hold_own(lua_State *L, lh_selector *s, int fileobj, int data)
{
    lh_socket *sock = lhsock_test(L, fileobj);
    if (!sock || sock->host != s->host || s->host->sel != s || callback_takes_key(L, data))
        return NULL;
    return sock;
}

/* The fd of a fileobj: a luahost socket, an integer fd, or anything with :fileno(). */
int lhsel_fileobj_fd(lua_State *L, int index)
{
    lh_socket *sock = lhsock_test(L, index);
    lua_Integer fd;
    if (sock) {
        luaL_argcheck(L, sock->conn.fd >= 0, index, "attempt to use a closed socket");
        return sock->conn.fd;
    }
    if (lua_isinteger(L, index)) {
        fd = lua_tointeger(L, index);
    } else if (lua_type(L, index) == LUA_TTABLE || lua_type(L, index) == LUA_TUSERDATA) {
        lua_getfield(L, index, "fileno");
        luaL_argcheck(L, lua_isfunction(L, -1), index, "fileobj has no fileno method");
        lua_pushvalue(L, index);
        lua_call(L, 1, 1);
        luaL_argcheck(L, lua_isinteger(L, -1), index, "fileno() did not return an integer");
        fd = lua_tointeger(L, -1);
        lua_pop(L, 1);
    } else {
        return luaL_typeerror(L, index, "socket, fd or object with fileno");
    }
    luaL_argcheck(L, fd >= 0 && fd <= INT32_MAX, index, "invalid file descriptor");
    return (int)fd;
}

static int check_events(lua_State *L, int index)
{
    lua_Integer events = luaL_checkinteger(L, index);
    if (events < 1 || events > SEL_BOTH)
        luaL_argerror(
            L, index,
            lua_pushfstring(L, "invalid events %d (expected EVENT_READ, EVENT_WRITE or both)",
                            (int)events));
    return (int)events;
}

static void count_registration(lua_State *L, int entry, int delta)
{
    lhsel_push_fileobj(L, entry);
    lh_socket *sock = lhsock_test(L, -1);
    if (sock)
        sock->registrations = (uint16_t)(sock->registrations + delta);
    lua_pop(L, 1);
}

static int sel_modify_l(lua_State *L);

static int sel_register_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    int fd = lhsel_fileobj_fd(L, 2);
    int events = check_events(L, 3);
    lua_settop(L, 4);
    /* A reloading script registers what the old one had: that replaces the callback. */
    if (s->host->reloading && sel_get(s->core, fd))
        return sel_modify_l(L);
    reload_journal_key(L, s->host, 1, fd);
    /* Everything that allocates comes before the core registration, so a memory error
     * cannot leave fd registered in the core with no entry (and the fd then reused). */
    lh_socket *own = may_hold_own(L, s, 2, 4);
    push_new_key(L, fd, events, s->host->generation, 2, 4); /* 5: the result */
    lhsel_push_keys(L, s);
    int already_keyed = lua_rawgeti(L, -1, fd) != LUA_TNIL;
    lua_pop(L, 1);
    if (!already_keyed) {
        lua_pushvalue(L, own ? 2 : 5);
        lua_rawseti(L, -2, fd);
    }
    if (sel_register(s->core, fd, events) < 0) {
        if (!already_keyed) {
            lua_pushnil(L);
            lua_rawseti(L, -2, fd);
        }
        return luaL_error(L, "%s", sel_error(s->core));
    }
    lua_pop(L, 1);
    if (own)
        lhsel_set_entry(L, 2, events, s->host->generation, 4);
    count_registration(L, 5, 1);
    return 1;
}

/* Replaces fd's entry by a new key, or by its socket when that may hold the
 * registration; the new key is the result either way. */
static int sel_modify_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    int fd = lhsel_fileobj_fd(L, 2);
    int events = check_events(L, 3);
    lua_settop(L, 4);
    if (!sel_get(s->core, fd)) {
        sel_modify(s->core, fd, events); /* fails, and says why */
        return luaL_error(L, "%s", sel_error(s->core));
    }
    reload_journal_key(L, s->host, 1, fd);
    lhsel_push_keys(L, s);    /* 5 */
    lua_rawgeti(L, 5, fd);    /* 6: the entry now */
    lhsel_push_fileobj(L, 6); /* 7: the object registered, which stays */
    lh_socket *own = may_hold_own(L, s, 7, 4);
    push_new_key(L, fd, events, s->host->generation, 7, 4); /* 8: the result */
    if (sel_modify(s->core, fd, events) < 0)
        return luaL_error(L, "%s", sel_error(s->core));
    lh_socket *was_own = lhsock_test(L, 6);
    if (was_own)
        clear_own(L, was_own, 6);
    if (own)
        lhsel_set_entry(L, 7, events, s->host->generation, 4);
    lua_pushvalue(L, own ? 7 : 8);
    lua_rawseti(L, 5, fd); /* the fd's slot exists: no allocation */
    return 1;
}

/* Unregisters fd and leaves its entry on the stack; returns 0 or the negative errno
 * (with nothing pushed). Allocates nothing. */
int lhsel_unregister_fd(lua_State *L, lh_selector *s, int fd)
{
    int rc = sel_unregister(s->core, fd);
    if (rc < 0)
        return rc;
    lhsel_push_keys(L, s);
    lua_rawgeti(L, -1, fd);
    lua_pushnil(L);
    lua_rawseti(L, -3, fd);
    lua_remove(L, -2);
    int entry = lua_gettop(L);
    count_registration(L, entry, -1);
    lh_socket *own = lhsock_test(L, entry);
    if (own)
        clear_own(L, own, entry);
    return 0;
}

/* Registers again an entry this selector had and has since unregistered, with the
 * events it holds (set them first: lhsel_set_entry). For a failed reload's rollback,
 * which may run because memory ran out: the fd's slot in the keys table was only
 * cleared, so putting the entry back needs no memory. 0, or -1 when the core refuses
 * (sel_error says why). */
int lhsel_restore_entry(lua_State *L, lh_selector *s, int entry)
{
    entry = lua_absindex(L, entry);
    int fd = lhsel_entry_fd(L, entry);
    lhsel_push_keys(L, s);
    lua_pushvalue(L, entry);
    lua_rawseti(L, -2, fd);
    if (sel_register(s->core, fd, lhsel_entry_events(L, entry)) < 0) {
        lua_pushnil(L);
        lua_rawseti(L, -2, fd);
        lua_pop(L, 1);
        lh_socket *own = lhsock_test(L, entry);
        if (own)
            clear_own(L, own, entry);
        return -1;
    }
    lua_pop(L, 1);
    count_registration(L, entry, 1);
    return 0;
}

static int sel_unregister_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    int fd = lhsel_fileobj_fd(L, 2);
    if (sel_get(s->core, fd)) {
        reload_journal_key(L, s->host, 1, fd);
        lhsel_push_keys(L, s);
        lua_rawgeti(L, -1, fd);
        lhsel_push_key(L, -1); /* the result, made before anything changes */
    }
    if (lhsel_unregister_fd(L, s, fd) < 0)
        return luaL_error(L, "%s", sel_error(s->core));
    lua_pop(L, 1);
    return 1;
}

static int sel_get_key_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    lh_socket *sock = lhsock_test(L, 2);
    if (sock && sock->conn.fd < 0)
        return 0;
    int fd = lhsel_fileobj_fd(L, 2);
    if (!sel_get(s->core, fd))
        return 0;
    lhsel_push_keys(L, s);
    lua_rawgeti(L, -1, fd);
    lhsel_push_key(L, -1);
    return 1;
}

static int sel_get_map_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    lua_createtable(L, 0, (int)sel_count(s->core));
    int map = lua_gettop(L);
    lhsel_push_keys(L, s);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lhsel_push_fileobj(L, -1);
        lhsel_push_key(L, -2);
        lua_rawset(L, map);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 1;
}

/* Seconds as in Python (nil blocks, negative polls) to milliseconds, rounded up. */
static int timeout_ms(lua_State *L, int index)
{
    if (lua_isnoneornil(L, index))
        return -1;
    lua_Number t = luaL_checknumber(L, index);
    if (!(t > 0))
        return 0;
    return t >= 2147483.0 ? INT32_MAX : (int)ceil(t * 1000.0);
}

/* One step of the select() iterator: the next deliverable key and mask. Output the host
 * buffered is flushed here too, so a script's own select loop keeps writes moving. */
static int sel_iterate(lua_State *L)
{
    lh_selector *s = (lh_selector *)luaL_checkudata(L, 1, LH_SELECTOR);
    if (!s->core) /* closed inside its own loop, which Python allows: the loop just ends */
        return 0;
    while (s->cursor < s->batch) {
        const sel_fired *f = sel_fired_at(s->core, s->cursor++);
        if (!f)
            break;
        int mask = host_script_mask(L, s->host, s->core, f);
        if (!mask)
            continue;
        lhsel_push_keys(L, s);
        lua_rawgeti(L, -1, f->fd);
        lhsel_push_key(L, -1);
        lua_pushinteger(L, mask);
        return 2;
    }
    return 0;
}

static int sel_select_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    int ms = timeout_ms(L, 2);
    if (s->busy)
        return luaL_error(L, "select() called while the host is dispatching this selector's "
                             "events (use the host loop, or a selector of your own)");
    int n = sel_select(s->core, ms);
    if (n < 0)
        return luaL_error(L, "select failed: %s", sel_error(s->core));
    s->cursor = 0;
    s->batch = n;
    lua_pushcfunction(L, sel_iterate);
    lua_pushvalue(L, 1);
    return 2;
}

/* Unregisters everything and frees the backend. */
static void selector_release(lua_State *L, lh_selector *s)
{
    /* A selector whose making ran out of memory after sel_new has no keys table. */
    if (s->keys_ref != LUA_NOREF) {
        lhsel_push_keys(L, s);
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            int entry = lua_gettop(L);
            count_registration(L, entry, -1);
            lh_socket *own = lhsock_test(L, entry);
            if (own)
                clear_own(L, own, entry);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, s->keys_ref);
    s->keys_ref = LUA_NOREF;
    sel_free(s->core);
    s->core = NULL;
    lh_selector **link = &s->host->selectors;
    while (*link && *link != s)
        link = &(*link)->next;
    if (*link)
        *link = s->next;
    if (s->host->sel == s)
        s->host->sel = NULL;
}

/* Closes every selector of the host, its own included (the host is being closed). */
void lhsel_release_all(lua_State *L, lh_host *host)
{
    while (host->selectors)
        selector_release(L, host->selectors);
}

static int sel_close_l(lua_State *L)
{
    lh_selector *s = (lh_selector *)luaL_checkudata(L, 1, LH_SELECTOR);
    if (s->core && s->host->sel == s)
        return luaL_error(L, "luahost.selector belongs to the host and cannot be closed");
    if (s->core)
        selector_release(L, s);
    return 0;
}

static int sel_gc(lua_State *L)
{
    lh_selector *s = (lh_selector *)luaL_checkudata(L, 1, LH_SELECTOR);
    if (s->core)
        selector_release(L, s);
    return 0;
}

static int sel_index(lua_State *L)
{
    lh_selector *s = (lh_selector *)luaL_checkudata(L, 1, LH_SELECTOR);
    const char *field = luaL_checkstring(L, 2);
    if (strcmp(field, "backend") == 0) {
        lua_pushstring(L, s->core ? sel_backend_name(s->core) : "closed");
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

static int sel_tostring(lua_State *L)
{
    lh_selector *s = (lh_selector *)luaL_checkudata(L, 1, LH_SELECTOR);
    if (!s->core)
        lua_pushliteral(L, "luahost.selector (closed)");
    else
        lua_pushfstring(L, "luahost.selector (%s, %d registered)", sel_backend_name(s->core),
                        (int)sel_count(s->core));
    return 1;
}

static int key_index(lua_State *L)
{
    static const char *const fields[] = {"fileobj", "data", "fd", "events", NULL};
    lh_key *key = check_key(L, 1);
    const char *name = luaL_checkstring(L, 2);
    int field = 0;
    while (fields[field] && strcmp(fields[field], name) != 0)
        field++;
    switch (field) {
    case 0:
        lua_getiuservalue(L, 1, 1);
        break;
    case 1:
        lua_getiuservalue(L, 1, 2);
        break;
    case 2:
        lua_pushinteger(L, key->fd);
        break;
    case 3:
        lua_pushinteger(L, key->events);
        break;
    default:
        return luaL_error(L, "selector keys have no field '%s' (fileobj, fd, events, data)", name);
    }
    return 1;
}

static int key_newindex(lua_State *L)
{
    return luaL_error(L, "selector keys are read-only (use modify to change events or data)");
}

static int key_tostring(lua_State *L)
{
    lh_key *key = check_key(L, 1);
    lua_pushfstring(L, "luahost.key (fd %d, events %d)", key->fd, key->events);
    return 1;
}

/* Keys made at different times for the same registration are equal, as Python's (named
 * tuples) are: same fileobj, fd, events and data. */
static int key_eq(lua_State *L)
{
    lh_key *a = (lh_key *)luaL_testudata(L, 1, LH_KEY);
    lh_key *b = (lh_key *)luaL_testudata(L, 2, LH_KEY);
    int equal = a && b && a->fd == b->fd && a->events == b->events;
    for (int uv = 1; equal && uv <= 2; uv++) {
        lua_getiuservalue(L, 1, uv);
        lua_getiuservalue(L, 2, uv);
        equal = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    lua_pushboolean(L, equal);
    return 1;
}

lh_selector *lhsel_push_new(lua_State *L, lh_host *host, const char *backend)
{
    char err[160];
    lh_selector *s = (lh_selector *)lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    s->keys_ref = LUA_NOREF;
    luaL_setmetatable(L, LH_SELECTOR);
    s->core = sel_new(backend, err, sizeof err);
    if (!s->core)
        luaL_error(L, "%s", err);
    s->host = host;
    lua_newtable(L);
    s->keys_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->next = host->selectors;
    host->selectors = s;
    return s;
}

/* Unregisters sock from every selector that has it, before its fd is closed, so no
 * event for a reused fd number can reach the old key. */
void lhsel_forget_socket(lua_State *L, lh_host *host, lh_socket *sock)
{
    for (lh_selector *s = host->selectors; s && sock->registrations > 0; s = s->next) {
        if (!s->core || !sel_get(s->core, sock->conn.fd))
            continue;
        lhsel_push_keys(L, s);
        lua_rawgeti(L, -1, sock->conn.fd);
        lhsel_push_fileobj(L, -1);
        int same = lua_touserdata(L, -1) == sock;
        lua_pop(L, 3);
        if (same && lhsel_unregister_fd(L, s, sock->conn.fd) == 0)
            lua_pop(L, 1);
    }
}

static int l_new_selector(lua_State *L)
{
    lhsel_push_new(L, LH_HOST(L), luaL_optstring(L, 1, NULL));
    return 1;
}

static const luaL_Reg selector_methods[] = {
    {"register", sel_register_l},     {"modify", sel_modify_l},
    {"unregister", sel_unregister_l}, {"get_key", sel_get_key_l},
    {"get_map", sel_get_map_l},       {"select", sel_select_l},
    {"close", sel_close_l},           {NULL, NULL},
};

static const luaL_Reg module_functions[] = {
    {"new_selector", l_new_selector},
    {NULL, NULL},
};

void lhsel_open(lua_State *L, int module, int host)
{
    if (luaL_newmetatable(L, LH_SELECTOR)) {
        luaL_newlib(L, selector_methods);
        lua_pushcclosure(L, sel_index, 1);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, sel_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, sel_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    if (luaL_newmetatable(L, LH_KEY)) {
        lua_pushcfunction(L, key_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, key_newindex);
        lua_setfield(L, -2, "__newindex");
        lua_pushcfunction(L, key_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushcfunction(L, key_eq);
        lua_setfield(L, -2, "__eq");
    }
    lua_pop(L, 2);
    lh_setfuncs(L, module_functions, module, host);
}
