/* lua_tls.c: TLS for scripts: luahost.tls_context, the tls option of luahost.listen and
 * luahost.connect, and the socket methods starttls, handshake and tls_info. The records
 * themselves are tls.c's; this file gives sockets their TLS state and runs handshakes the
 * host drives (with their timeout), so a script sees a TLS socket as a plain one. */
#include "lua_tls.h"

#include <errno.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

#define LH_TLS_CONTEXT "luahost.tls_context"

typedef struct lh_tls_ctx {
    tls_ctx *ctx; /* NULL once collected */
} lh_tls_ctx;

/* opts.name as a string, or NULL when absent; another type is the script's mistake. */
static const char *opt_string(lua_State *L, int opts, const char *name)
{
    const char *v = NULL;
    if (lua_getfield(L, opts, name) != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "tls option '%s' must be a string", name);
        v = lua_tostring(L, -1);
    }
    lua_pop(L, 1); /* the table keeps the string alive */
    return v;
}

/* opts.alpn, a list of protocol names, in ALPN's wire format (on the buffer b). */
static void opt_alpn(lua_State *L, int opts, luaL_Buffer *b, tls_opts *o)
{
    if (lua_getfield(L, opts, "alpn") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    luaL_argcheck(L, lua_istable(L, -1), 1, "tls option 'alpn' must be a list of names");
    int list = lua_gettop(L);
    luaL_buffinit(L, b);
    for (lua_Integer i = 1; lua_rawgeti(L, list, i) != LUA_TNIL; i++) {
        size_t len;
        const char *name = lua_tolstring(L, -1, &len);
        luaL_argcheck(L, name && len > 0 && len < 256, 1, "ALPN names are strings of 1..255 bytes");
        luaL_addchar(b, (char)len);
        luaL_addlstring(b, name, len);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    luaL_pushresult(b);
    lua_replace(L, list); /* stays on the stack while the context is made */
    o->alpn = (const unsigned char *)lua_tolstring(L, list, &o->alpn_len);
}

/* opts.servers, {[name] = {cert =, key =}}, into an array of n entries (a userdata
 * pushed on the stack, so that an error cannot leak it). */
static void opt_servers(lua_State *L, int opts, tls_opts *o)
{
    if (lua_getfield(L, opts, "servers") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    luaL_argcheck(L, lua_istable(L, -1), 1, "tls option 'servers' must be a table");
    int servers = lua_gettop(L);
    size_t n = 0;
    for (lua_pushnil(L); lua_next(L, servers); lua_pop(L, 1))
        n++;
    tls_cert_for *list = (tls_cert_for *)lua_newuserdatauv(L, (n ? n : 1) * sizeof *list, 0);
    lua_replace(L, servers); /* the names and files stay alive in opts */
    lua_getfield(L, opts, "servers");
    size_t i = 0;
    for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1), i++) {
        luaL_argcheck(L, lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1), 1,
                      "tls option 'servers' maps names to {cert =, key =}");
        list[i].name = lua_tostring(L, -2);
        list[i].cert = opt_string(L, lua_gettop(L), "cert");
        list[i].key = opt_string(L, lua_gettop(L), "key");
        luaL_argcheck(L, list[i].cert && list[i].key, 1, "each of 'servers' needs cert and key");
    }
    lua_pop(L, 1);
    o->servers = list;
    o->nservers = n;
}

static int opt_version(lua_State *L, int opts)
{
    const char *v = opt_string(L, opts, "min_version");
    if (!v || strcmp(v, "1.2") == 0)
        return TLS1_2_VERSION;
    if (strcmp(v, "1.3") == 0)
        return TLS1_3_VERSION;
    return luaL_error(L, "tls option 'min_version' must be \"1.2\" or \"1.3\"");
}

/* Makes a context from the options table at index opts; client says which default of
 * verify applies (a client verifies the server unless told not to). Returns NULL with
 * the reason in err. The stack is left as it was. */
static tls_ctx *make_ctx(lua_State *L, int opts, int client, char *err, size_t errlen)
{
    int top = lua_gettop(L);
    luaL_Buffer alpn;
    tls_opts o;
    memset(&o, 0, sizeof o);
    o.cert = opt_string(L, opts, "cert");
    o.key = opt_string(L, opts, "key");
    o.ca = opt_string(L, opts, "ca");
    o.ciphers = opt_string(L, opts, "ciphers");
    o.ciphersuites = opt_string(L, opts, "ciphersuites");
    o.min_version = opt_version(L, opts);
    lua_getfield(L, opts, "verify");
    o.verify = lua_isnil(L, -1) ? client : lua_toboolean(L, -1);
    lua_getfield(L, opts, "handshake_timeout");
    o.handshake_timeout = luaL_optnumber(L, -1, 10);
    luaL_argcheck(L, o.handshake_timeout > 0, 1, "handshake_timeout must be positive");
    lua_getfield(L, opts, "tickets");
    lua_Integer tickets = luaL_optinteger(L, -1, 0);
    luaL_argcheck(L, tickets >= 0 && tickets <= 16, 1, "tickets must be from 0 to 16");
    o.tickets = (int)tickets;
    lua_pop(L, 3);
    opt_alpn(L, opts, &alpn, &o);
    opt_servers(L, opts, &o);
    tls_ctx *ctx = tls_ctx_new(&o, err, errlen);
    lua_settop(L, top);
    return ctx;
}

/* luahost.tls_context{cert =, key =, ca =, verify =, alpn =, ciphers =, ciphersuites =,
 * min_version =, servers =, handshake_timeout =, tickets =}: a context, or nil and why (a file
 * missing, a key that does not match). */
static int l_tls_context(lua_State *L)
{
    char err[400];
    luaL_checktype(L, 1, LUA_TTABLE);
    lh_tls_ctx *u = (lh_tls_ctx *)lua_newuserdatauv(L, sizeof *u, 0);
    u->ctx = NULL;
    luaL_setmetatable(L, LH_TLS_CONTEXT);
    lua_getfield(L, 1, "client");
    int client = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!(u->ctx = make_ctx(L, 1, client, err, sizeof err))) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        lua_pushinteger(L, EINVAL);
        return 3;
    }
    return 1;
}

static int ctx_gc(lua_State *L)
{
    lh_tls_ctx *u = (lh_tls_ctx *)luaL_checkudata(L, 1, LH_TLS_CONTEXT);
    tls_ctx_unref(u->ctx);
    u->ctx = NULL;
    return 0;
}

static int ctx_tostring(lua_State *L)
{
    lh_tls_ctx *u = (lh_tls_ctx *)luaL_checkudata(L, 1, LH_TLS_CONTEXT);
    lua_pushfstring(L, "luahost.tls_context (%s)",
                    u->ctx && tls_ctx_has_cert(u->ctx) ? "with a certificate" : "no certificate");
    return 1;
}

/* The context the value at index stands for: a context (a reference is taken), or a
 * table of options, made into one now. Raises on a value of another type; NULL with
 * err set when the options are refused. */
static tls_ctx *ctx_of(lua_State *L, int index, int client, char *err, size_t errlen)
{
    lh_tls_ctx *u = (lh_tls_ctx *)luaL_testudata(L, index, LH_TLS_CONTEXT);
    if (u) {
        tls_ctx_ref(u->ctx);
        return u->ctx;
    }
    luaL_argexpected(L, lua_istable(L, index), index, "luahost.tls_context or table");
    return make_ctx(L, lua_absindex(L, index), client, err, errlen);
}

/* Cancels the timer of s's handshake, which has ended (or s is closing): a pending
 * timer would keep a host with nothing else to do running. */
static void end_timeout(lua_State *L, lh_tls *ctx, lh_socket *s)
{
    if (ctx->timeouts_ref == LUA_NOREF) /* the host is closed: its timers are gone */
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->timeouts_ref);
    if (lua_rawgetp(L, -1, s) != LUA_TNIL) {
        lhtimer_cancel(L, lua_gettop(L));
        lua_pushnil(L);
        lua_rawsetp(L, -3, s);
    }
    lua_pop(L, 2);
}

static void tls_closing(void *ud, lua_State *L, lh_socket *s)
{
    end_timeout(L, (lh_tls *)ud, s);
}

/* The handshake of s ran out of time: it fails as a handshake does, so the script
 * learns of it on its next recv. Upvalues: the host's lh_tls, s, and s's tls_conn. */
static int handshake_timeout(lua_State *L)
{
    lh_tls *ctx = (lh_tls *)lua_touserdata(L, lua_upvalueindex(1));
    lh_socket *s = (lh_socket *)lua_touserdata(L, lua_upvalueindex(2));
    tls_conn *t = (tls_conn *)lua_touserdata(L, lua_upvalueindex(3));
    end_timeout(L, ctx, s);
    if (s->conn.fd < 0 || lhsock_tls(s) != t || !(s->conn.flags & CONN_HANDSHAKE))
        return 0;
    char why[96], peer[NET_ADDRSTRLEN];
    snprintf(why, sizeof why, "TLS handshake timed out after %g s", tls_handshake_timeout(t));
    lhsock_describe(s, peer, sizeof peer); /* before the shutdown, which loses the peer */
    tls_fail(t, &s->conn, ctx->sockets->sel, why);
    lh_log(ctx->sockets->log, LH_DEBUG, "%s: %s", peer, why);
    return 0;
}

/* Gives the socket at index the TLS state t and starts its handshake, which the host
 * runs (the script's events are withheld until it is done) within its timeout. */
static void start_tls(lua_State *L, lh_tls *ctx, int index, tls_conn *t)
{
    index = lua_absindex(L, index);
    lh_socket *s = (lh_socket *)lua_touserdata(L, index);
    lh_sockets *socks = ctx->sockets;
    if (socks->closed) {
        tls_conn_free(t);
        luaL_error(L, "the host is closed");
    }
    s->tls = t;
    s->conn.flags |= CONN_HANDSHAKE;
    if (socks->sel)
        conn_sync(&s->conn, socks->sel);
    lua_pushlightuserdata(L, ctx);
    lua_pushvalue(L, index);
    lua_pushlightuserdata(L, t);
    lua_pushcclosure(L, handshake_timeout, 3);
    lhtimer_after(L, ctx->timers, tls_handshake_timeout(t), -1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->timeouts_ref);
    lua_pushvalue(L, -2);
    lua_rawsetp(L, -2, s);
    lua_pop(L, 3);                       /* the table, the timer, the closure */
    if (!tls_is_server(t) && socks->sel) /* the client speaks first */
        tls_handshake(t, &s->conn, socks->sel, socks->io);
}

/* The hook lhsock_flush calls while s's handshake runs. A failure is logged at debug
 * with the peer (named first: a failed connection is shut down, and its peer's address
 * goes with it): it is the client's, and the script learns of it on its next recv. */
static void tls_ready(void *ud, lua_State *L, lh_socket *s)
{
    lh_tls *ctx = (lh_tls *)ud;
    tls_conn *t = lhsock_tls(s);
    char peer[NET_ADDRSTRLEN];
    (void)L;
    if (!t)
        return;
    /* Named only when the line would be written: a getpeername a handshake step else. */
    int logged = ctx->sockets->log->level <= LH_DEBUG;
    if (logged)
        lhsock_describe(s, peer, sizeof peer);
    int rc = tls_handshake(t, &s->conn, ctx->sockets->sel, ctx->sockets->io);
    if (rc < 0 && logged)
        lh_log(ctx->sockets->log, LH_DEBUG, "%s: %s", peer, tls_error(t));
    if (rc != 0)
        end_timeout(L, ctx, s);
}

/* The hook sock_accept calls for a connection of a TLS listener (socket c on the top). */
static void tls_accepted(void *ud, lua_State *L, lh_socket *listener, lh_socket *c)
{
    lh_tls *ctx = (lh_tls *)ud;
    char err[200];
    tls_conn *t = tls_conn_new((tls_ctx *)listener->tls, 1, NULL, err, sizeof err);
    if (!t) {
        lhsock_reset(L, c, 0, err);
        return;
    }
    start_tls(L, ctx, -1, t);
}

/* luahost.listen(host, port, {tls = context or options, ...}): the plain listen (the
 * upvalue 3), then its connections are TLS ones. Asked again (a reload), a listener takes
 * the new context: new connections get the new certificate, open ones keep theirs. */
static int l_listen(lua_State *L)
{
    char err[400];
    tls_ctx *tctx = NULL;
    if (lua_istable(L, 3) && lua_getfield(L, 3, "tls") != LUA_TNIL) {
        if (!(tctx = ctx_of(L, -1, 0, err, sizeof err)))
            return luaL_argerror(L, 3, err);
        if (!tls_ctx_has_cert(tctx)) {
            tls_ctx_unref(tctx);
            return luaL_argerror(L, 3, "a TLS listener needs a certificate (cert and key)");
        }
    }
    lua_settop(L, 3);
    lua_pushvalue(L, lua_upvalueindex(3));
    lua_insert(L, 1);
    lua_call(L, 3, LUA_MULTRET);
    lh_socket *s = lhsock_test(L, 1);
    if (!s) {
        tls_ctx_unref(tctx);
        return lua_gettop(L);
    }
    /* Journaled: a reload that fails later puts the old context back. */
    if (s->tls || tctx)
        lh_journal_note(s->ctx->journal, L, LH_LISTENER_TLS, 1, 0);
    if (s->tls)
        lhsock_tls_release(s);
    s->tls = tctx;
    if (tctx)
        s->flags |= LH_TLS_LISTENER;
    return 1;
}

/* The client side's TLS state for the socket at index, with the options or context at
 * opts and the server name given (or NULL); raises on a refused option. */
static tls_conn *client_tls(lua_State *L, int opts, const char *servername)
{
    char err[400];
    if (lua_istable(L, opts) && !luaL_testudata(L, opts, LH_TLS_CONTEXT)) {
        const char *name = opt_string(L, opts, "servername");
        servername = name ? name : servername;
    }
    tls_ctx *tctx = ctx_of(L, opts, 1, err, sizeof err);
    if (!tctx)
        luaL_error(L, "%s", err);
    tls_conn *t = tls_conn_new(tctx, 0, servername, err, sizeof err);
    tls_ctx_unref(tctx);
    if (!t)
        luaL_error(L, "%s", err);
    return t;
}

/* luahost.connect(host, port, {tls = context or {servername =, verify =, ca =, alpn =,
 * cert =, key =}}): the plain connect (upvalue 3), then a TLS client of host (or of
 * servername), verifying the server unless verify = false. */
static int l_connect(lua_State *L)
{
    lh_tls *ctx = (lh_tls *)LH_CTX(L);
    const char *host = luaL_checkstring(L, 1);
    int has_tls = lua_istable(L, 3) && lua_getfield(L, 3, "tls") != LUA_TNIL;
    tls_conn *t = has_tls ? client_tls(L, 4, host) : NULL;
    lua_settop(L, 2);
    lua_pushvalue(L, lua_upvalueindex(3));
    lua_insert(L, 1);
    lua_call(L, 2, LUA_MULTRET);
    lh_socket *s = lhsock_test(L, 1);
    if (!t)
        return lua_gettop(L);
    if (!s) {
        tls_conn_free(t);
        return lua_gettop(L);
    }
    lua_settop(L, 1);
    start_tls(L, ctx, 1, t);
    return 1;
}

/* s:starttls(context or options[, servername]): a plain connected socket turns TLS: the
 * server side for an accepted socket, else the client (of servername, if given). Bytes
 * written before go out first, in the clear. */
static int sock_starttls(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    lh_tls *ctx = (lh_tls *)s->ctx->tls_ud;
    luaL_argcheck(L, !s->tls && !(s->flags & LH_LISTENING), 1,
                  "starttls needs a plain connected socket");
    int server = (s->conn.flags & CONN_ACCEPTED) != 0;
    char err[400];
    tls_conn *t;
    if (server) {
        tls_ctx *tctx = ctx_of(L, 2, 0, err, sizeof err);
        if (!tctx)
            return luaL_argerror(L, 2, err);
        t = tls_conn_new(tctx, 1, NULL, err, sizeof err);
        tls_ctx_unref(tctx);
        if (!t)
            return luaL_error(L, "%s", err);
    } else {
        t = client_tls(L, 2, luaL_optstring(L, 3, NULL));
    }
    lua_settop(L, 1);
    start_tls(L, ctx, 1, t);
    lua_pushboolean(L, 1);
    return 1;
}

/* s:handshake(): true once the handshake is done, nil and "wouldblock" while it waits
 * for the peer, or nil and why it failed: for a script that drives its own socket. */
static int sock_handshake(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    tls_conn *t = lhsock_tls(s);
    luaL_argcheck(L, t != NULL, 1, "not a TLS socket");
    int rc = tls_handshake(t, &s->conn, s->ctx->sel, s->ctx->io);
    if (rc != 0)
        end_timeout(L, (lh_tls *)s->ctx->tls_ud, s);
    if (rc == 0)
        rc = -EAGAIN;
    if (rc < 0)
        return lhsock_push_tls_error(L, s, rc);
    lua_pushboolean(L, 1);
    return 1;
}

/* s:tls_info(): {version, cipher, alpn, servername, subject, verified} once the
 * handshake is done; nil for a plain socket or before. */
static int sock_tls_info(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    tls_conn *t = lhsock_tls(s);
    tls_info info;
    if (!t || !tls_done(t)) {
        luaL_pushfail(L);
        return 1;
    }
    tls_get_info(t, &info);
    lua_createtable(L, 0, 6);
    lua_pushstring(L, info.version);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, info.cipher);
    lua_setfield(L, -2, "cipher");
    if (info.alpn_len)
        lua_pushlstring(L, (const char *)info.alpn, info.alpn_len);
    else
        lua_pushnil(L);
    lua_setfield(L, -2, "alpn");
    lua_pushstring(L, info.servername);
    lua_setfield(L, -2, "servername");
    lua_pushstring(L, info.subject[0] ? info.subject : NULL);
    lua_setfield(L, -2, "subject");
    lua_pushboolean(L, info.verified);
    lua_setfield(L, -2, "verified");
    return 1;
}

void lhtls_init(lua_State *L, lh_tls *ctx, lh_sockets *sockets, lh_timers *timers)
{
    ctx->sockets = sockets;
    ctx->timers = timers;
    lua_newtable(L);
    ctx->timeouts_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sockets->tls_accepted = tls_accepted;
    sockets->tls_ready = tls_ready;
    sockets->tls_closing = tls_closing;
    sockets->tls_ud = ctx;
}

void lhtls_release(lua_State *L, lh_tls *ctx)
{
    luaL_unref(L, LUA_REGISTRYINDEX, ctx->timeouts_ref);
    ctx->timeouts_ref = LUA_NOREF;
}

/* Replaces module function name with f, which calls the original (its upvalue 3). */
static void wrap(lua_State *L, int module, int host, lh_tls *ctx, const char *name, lua_CFunction f)
{
    lua_pushvalue(L, host);
    lua_pushlightuserdata(L, ctx);
    lua_getfield(L, module, name);
    lua_pushcclosure(L, f, 3);
    lua_setfield(L, module, name);
}

void lhtls_open(lua_State *L, int module, int host, lh_tls *ctx)
{
    static const luaL_Reg ctx_meta[] = {
        {"__gc", ctx_gc}, {"__tostring", ctx_tostring}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"tls_context", l_tls_context}, {NULL, NULL}};
    if (luaL_newmetatable(L, LH_TLS_CONTEXT))
        luaL_setfuncs(L, ctx_meta, 0);
    lua_pop(L, 1);
    lh_setfuncs(L, funcs, module, host, ctx);
    wrap(L, module, host, ctx, "listen", l_listen);
    wrap(L, module, host, ctx, "connect", l_connect);
    static const luaL_Reg methods[] = {{"starttls", sock_starttls},
                                       {"handshake", sock_handshake},
                                       {"tls_info", sock_tls_info},
                                       {NULL, NULL}};
    lhsock_add_methods(L, methods); /* shared by every host: they find theirs through s */
}
