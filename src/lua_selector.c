/* lua_selector.c: the luahost.selector and luahost.key types: register, modify,
 * unregister, get_key, get_map, select (an iterator) and close, as in Python. */
#include "lua_selector.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

lh_key *lhsel_test_key(lua_State *L, int index)
{
    return (lh_key *)luaL_testudata(L, index, LH_KEY);
}

void lhsel_push_keys(lua_State *L, const lh_selector *s)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->keys_ref);
}

/* Pushes a new key: fd, events, the running load, fileobj and data from their indices. */
static lh_key *push_new_key(lua_State *L, lh_selector *s, int fd, int events, int fileobj, int data)
{
    fileobj = lua_absindex(L, fileobj);
    data = lua_absindex(L, data);
    lh_key *key = (lh_key *)lua_newuserdatauv(L, sizeof *key, 2);
    key->fd = fd;
    key->events = events;
    key->generation = s->ctx->journal->generation;
    luaL_setmetatable(L, LH_KEY);
    lua_pushvalue(L, fileobj);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, data);
    lua_setiuservalue(L, -2, 2);
    return key;
}

/* The fd of a fileobj: a luahost socket, an integer fd, or anything with :fileno(). */
static int fileobj_fd(lua_State *L, int index)
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

/* A socket counts the selectors it is registered with, so closing it can skip the
 * search when there are none. */
static lh_socket *count_registration(lua_State *L, int key, int delta)
{
    lua_getiuservalue(L, key, 1);
    lh_socket *sock = lhsock_test(L, -1);
    if (sock)
        sock->registrations = (uint16_t)(sock->registrations + delta);
    lua_pop(L, 1);
    return sock;
}

static int sel_modify_l(lua_State *L);

/* A TLS socket newly registered for READ may hold input it read before (a request that
 * came with the handshake's last flight): no kernel readiness will tell of it, so it is
 * posted. */
static void post_tls_input(lh_selector *s, lh_socket *sock, int events)
{
    if (sock && (events & SEL_READ) && lhsock_tls(sock))
        tls_post_input(lhsock_tls(sock), &sock->conn, s->core);
}

static int sel_register_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    int fd = fileobj_fd(L, 2);
    int events = check_events(L, 3);
    lua_settop(L, 4);
    /* A reloading script registers what the old one had: that replaces the callback. */
    if (sel_get(s->core, fd)) {
        if (s->ctx->journal->reloading)
            return sel_modify_l(L);
        sel_register(s->core, fd, events); /* fails, and says why */
        return luaL_error(L, "%s", sel_error(s->core));
    }
    lh_journal_note(s->ctx->journal, L, LH_CHANGED_KEY, 1, fd);
    /* Everything that allocates comes before the core registration, so a memory error
     * cannot leave fd registered in the core with no key (and the fd then reused). */
    push_new_key(L, s, fd, events, 2, 4); /* 5: the result */
    lhsel_push_keys(L, s);                /* 6 */
    lua_pushvalue(L, 5);
    lua_rawseti(L, 6, fd);
    if (sel_register(s->core, fd, events) < 0) {
        lua_pushnil(L);
        lua_rawseti(L, 6, fd);
        return luaL_error(L, "%s", sel_error(s->core));
    }
    post_tls_input(s, count_registration(L, 5, 1), events);
    lua_settop(L, 5);
    return 1;
}

/* Replaces fd's key by a new one with the events and data given (the fileobj
 * registered stays), as Python's modify does; the new key is the result. */
static int sel_modify_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    int fd = fileobj_fd(L, 2);
    int events = check_events(L, 3);
    lua_settop(L, 4);
    if (!sel_get(s->core, fd)) {
        sel_modify(s->core, fd, events); /* fails, and says why */
        return luaL_error(L, "%s", sel_error(s->core));
    }
    lh_journal_note(s->ctx->journal, L, LH_CHANGED_KEY, 1, fd);
    lhsel_push_keys(L, s);                /* 5 */
    lua_rawgeti(L, 5, fd);                /* 6: the key now */
    lua_getiuservalue(L, 6, 1);           /* 7: the object registered, which stays */
    push_new_key(L, s, fd, events, 7, 4); /* 8: the result */
    int adds_read = (events & SEL_READ) && !(sel_get(s->core, fd)->events & SEL_READ);
    if (sel_modify(s->core, fd, events) < 0)
        return luaL_error(L, "%s", sel_error(s->core));
    lua_pushvalue(L, 8);
    lua_rawseti(L, 5, fd); /* the fd's slot exists: no allocation */
    if (adds_read)
        post_tls_input(s, lhsock_test(L, 7), events);
    return 1;
}

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
    count_registration(L, lua_gettop(L), -1);
    return 0;
}

int lhsel_restore(lua_State *L, lh_selector *s, int fd, int index)
{
    index = lua_absindex(L, index);
    if (sel_get(s->core, fd) && lhsel_unregister_fd(L, s, fd) == 0)
        lua_pop(L, 1);
    lh_key *key = lhsel_test_key(L, index);
    if (!key)
        return 0;
    lhsel_push_keys(L, s);
    lua_pushvalue(L, index);
    lua_rawseti(L, -2, fd);
    if (sel_register(s->core, fd, key->events) < 0) {
        lua_pushnil(L);
        lua_rawseti(L, -2, fd);
        lua_pop(L, 1);
        return -1;
    }
    lua_pop(L, 1);
    count_registration(L, index, 1);
    return 0;
}

static int sel_unregister_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    int fd = fileobj_fd(L, 2);
    if (sel_get(s->core, fd))
        lh_journal_note(s->ctx->journal, L, LH_CHANGED_KEY, 1, fd);
    if (lhsel_unregister_fd(L, s, fd) < 0)
        return luaL_error(L, "%s", sel_error(s->core));
    return 1;
}

static int sel_get_key_l(lua_State *L)
{
    lh_selector *s = check_selector(L, 1);
    lh_socket *sock = lhsock_test(L, 2);
    if (sock && sock->conn.fd < 0)
        return 0;
    int fd = fileobj_fd(L, 2);
    if (!sel_get(s->core, fd))
        return 0;
    lhsel_push_keys(L, s);
    lua_rawgeti(L, -1, fd);
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
        lua_getiuservalue(L, -1, 1);
        lua_pushvalue(L, -2);
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
        int mask = lhsel_script_mask(L, s, f);
        if (!mask)
            continue;
        lhsel_push_keys(L, s);
        lua_rawgeti(L, -1, f->fd);
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
    int waited = ms != 0 ? budget_wait_begin(s->ctx->budget) : 0; /* a poll is no wait */
    int n = sel_select(s->core, ms);
    budget_wait_end(s->ctx->budget, waited);
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
            count_registration(L, lua_gettop(L), -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, s->keys_ref);
    s->keys_ref = LUA_NOREF;
    if (s->owns_core)
        sel_free(s->core);
    s->core = NULL;
    lh_selector **link = &s->ctx->all;
    while (*link && *link != s)
        link = &(*link)->next;
    if (*link)
        *link = s->next;
    if (s->ctx->main == s)
        s->ctx->main = NULL;
}

void lhsel_release_all(lua_State *L, lh_selectors *ctx)
{
    while (ctx->all)
        selector_release(L, ctx->all);
}

static int sel_close_l(lua_State *L)
{
    lh_selector *s = (lh_selector *)luaL_checkudata(L, 1, LH_SELECTOR);
    if (s->core && s->ctx->main == s)
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
    if (s->ctx)
        lh_anchor_release(L, s->ctx->anchor);
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

/* Pushes a closed selector, to which a core is then given: the userdata comes first, so
 * a memory error cannot leak the core. */
static lh_selector *push_selector(lua_State *L)
{
    lh_selector *s = (lh_selector *)lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    s->keys_ref = LUA_NOREF;
    luaL_setmetatable(L, LH_SELECTOR);
    return s;
}

/* Makes the selector with its core one of ctx's. */
static void attach(lua_State *L, lh_selectors *ctx, lh_selector *s)
{
    s->ctx = ctx;
    lh_anchor_hold(ctx->anchor);
    lua_newtable(L);
    s->keys_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->next = ctx->all;
    ctx->all = s;
}

lh_selector *lhsel_push_new(lua_State *L, lh_selectors *ctx, const char *backend)
{
    char err[160];
    lh_selector *s = push_selector(L);
    s->core = sel_new(backend, err, sizeof err);
    if (!s->core && (errno == EMFILE || errno == ENFILE)) {
        /* Out of fds: unreferenced selectors may hold some until collected (as Lua's io
         * library does for fopen, collect them all and try once more). */
        lua_gc(L, LUA_GCCOLLECT);
        s->core = sel_new(backend, err, sizeof err);
    }
    if (!s->core)
        luaL_error(L, "%s", err);
    s->owns_core = 1;
    attach(L, ctx, s);
    return s;
}

lh_selector *lhsel_push_main(lua_State *L, lh_selectors *ctx, selector *core)
{
    lh_selector *s = push_selector(L);
    s->core = core;
    attach(L, ctx, s);
    ctx->main = s;
    return s;
}

/* The sockets' closing hook: unregisters sock from every selector that has it, before its
 * fd is closed, so no event for a reused fd number can reach the old key. */
static void forget_socket(void *ud, lua_State *L, lh_socket *sock)
{
    lh_selectors *ctx = (lh_selectors *)ud;
    for (lh_selector *s = ctx->all; s && sock->registrations > 0; s = s->next) {
        if (!s->core || !sel_get(s->core, sock->conn.fd))
            continue;
        lhsel_push_keys(L, s);
        lua_rawgeti(L, -1, sock->conn.fd);
        lua_getiuservalue(L, -1, 1);
        int same = lua_touserdata(L, -1) == sock;
        lua_pop(L, 3);
        if (same && lhsel_unregister_fd(L, s, sock->conn.fd) == 0)
            lua_pop(L, 1);
    }
}

static int l_new_selector(lua_State *L)
{
    lhsel_push_new(L, (lh_selectors *)LH_CTX(L), luaL_optstring(L, 1, NULL));
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

void lhsel_init(lh_selectors *ctx, lh_journal *journal, lh_anchor *anchor, lh_budget *budget)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->journal = journal;
    ctx->anchor = anchor;
    ctx->budget = budget;
}

void lhsel_open(lua_State *L, int module, int host, lh_selectors *ctx, lh_sockets *sockets)
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
    }
    lua_pop(L, 2);
    sockets->closing = forget_socket;
    sockets->closing_ud = ctx;
    lh_setfuncs(L, module_functions, module, host, ctx);
}
