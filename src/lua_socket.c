/* lua_socket.c: the luahost.socket type: its I/O methods, buffered writes and their
 * on_drain callback, closing, write_all, and the host's table of listeners. A socket is
 * recognised by its metatable, as liolib recognises files. */
#include "lua_socket.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int new_table_ref(lua_State *L, const char *mode)
{
    lua_newtable(L);
    if (mode) {
        lua_createtable(L, 0, 1);
        lua_pushstring(L, mode);
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
    }
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

void lhsock_init(lua_State *L, lh_sockets *ctx, selector *sel, uint32_t max_output, admission *adm,
                 linger_list *linger, lh_budget *budget, lh_logger *log, lh_journal *journal,
                 lh_anchor *anchor)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->sel = sel;
    ctx->io = sel_io(sel);
    ctx->max_output = max_output;
    ctx->adm = adm;
    ctx->linger = linger;
    ctx->budget = budget;
    ctx->log = log;
    ctx->journal = journal;
    ctx->anchor = anchor;
    ctx->listeners_ref = ctx->drain_ref = ctx->handles_ref = ctx->spare_ref = LUA_NOREF;
    if (!(ctx->scratch = (char *)malloc(LH_SCRATCH_SIZE)))
        luaL_error(L, "not enough memory");
    ctx->listeners_ref = new_table_ref(L, NULL);
    ctx->drain_ref = new_table_ref(L, "k");
    ctx->handles_ref = new_table_ref(L, "v");
}

void lhsock_nodelay(const lh_sockets *ctx, int fd, int family)
{
    /* A failure costs latency, not correctness: the socket is served all the same. */
    if (net_is_tcp_family(family))
        (void)ctx->io->setsockopt(ctx->io, fd, IPPROTO_TCP, TCP_NODELAY, 1);
}

lh_socket *lhsock_test(lua_State *L, int index)
{
    return (lh_socket *)luaL_testudata(L, index, LH_SOCKET);
}

static void socket_init(lh_socket *s, lh_sockets *ctx, int fd, int family)
{
    conn_init(&s->conn, fd, CONN_SOCKET, ctx->max_output);
    s->ctx = ctx;
    s->generation = 0;
    s->registrations = 0;
    s->family = (uint8_t)family;
    s->flags = 0;
    s->tls = NULL;
}

lh_socket *lhsock_push(lua_State *L, lh_sockets *ctx, int fd, int family)
{
    if (ctx->closed)
        luaL_error(L, "the host is closed");
    lh_socket *s = (lh_socket *)lua_newuserdatauv(L, sizeof *s, 0);
    socket_init(s, ctx, fd, family);
    luaL_setmetatable(L, LH_SOCKET);
    lh_anchor_hold(ctx->anchor);
    lh_journal_note(ctx->journal, L, LH_MADE_SOCKET, -1, 0); /* closed if the reload fails */
    return s;
}

int lhsock_describe(const lh_socket *s, char *out, size_t outlen)
{
    net_addr addr;
    if (s->conn.fd < 0) {
        snprintf(out, outlen, "closed socket");
        return 0;
    }
    int rc = (s->flags & LH_LISTENING) ? net_sockname(s->conn.fd, &addr)
                                       : s->ctx->io->peername(s->ctx->io, s->conn.fd, &addr);
    if (rc == 0) {
        net_addr_format(&addr, out, outlen);
        return 1;
    }
    snprintf(out, outlen, "fd %d", s->conn.fd);
    return 0;
}

int lhsock_push_addr(lua_State *L, const net_addr *addr)
{
    char host[NET_ADDRSTRLEN];
    int port;
    net_addr_host(addr, host, sizeof host, &port);
    lua_pushstring(L, host);
    lua_pushinteger(L, port);
    return 2;
}

/* table[pointer] = the value at index, in the registry table ref. */
static void set_by_pointer(lua_State *L, int ref, const void *pointer, int index)
{
    index = lua_absindex(L, index);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushvalue(L, index);
    lua_rawsetp(L, -2, pointer);
    lua_pop(L, 1);
}

static void clear_by_pointer(lua_State *L, int ref, const void *pointer)
{
    lua_pushnil(L);
    set_by_pointer(L, ref, pointer, -1);
    lua_pop(L, 1);
}

/* Lets go of s's on_drain callback: the callback may hold the socket, and must not
 * outlive it. */
static void forget_drain(lua_State *L, lh_socket *s)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ctx->handles_ref);
    if (lua_rawgetp(L, -1, s) != LUA_TNIL) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->ctx->drain_ref);
        lua_pushvalue(L, -2);
        lua_pushnil(L);
        lua_rawset(L, -3);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

/* Closes s's fd, with a reset when output is lost: bytes still pending, refused ones
 * (of a write past the limit), or always (why given, e.g. its callback failed: the
 * stream ends at no point the script chose). The reset is logged with the peer, why and
 * the bytes dropped. */
void lhsock_tls_release(lh_socket *s)
{
    if (s->flags & LH_TLS_LISTENER)
        tls_ctx_unref((tls_ctx *)s->tls);
    else
        tls_conn_free((tls_conn *)s->tls);
    s->tls = NULL;
    s->flags &= (uint8_t)~LH_TLS_LISTENER;
}

int lhsock_push_tls_error(lua_State *L, lh_socket *s, int rc)
{
    tls_conn *t = lhsock_tls(s);
    if (rc == -EAGAIN || !t || !*tls_error(t))
        return lh_push_error(L, rc, NULL);
    luaL_pushfail(L);
    lua_pushstring(L, tls_error(t));
    lua_pushinteger(L, -rc);
    return 3;
}

static void close_fd(lh_sockets *ctx, lh_socket *s, size_t refused, const char *why)
{
    if (s->tls)
        lhsock_tls_release(s);
    size_t dropped = conn_pending(&s->conn) + refused;
    if (ctx->sel)
        conn_drop(&s->conn, ctx->sel);
    conn_free(&s->conn);
    if (dropped == 0 && !why) {
        adm_close(ctx->adm, &s->conn);
        return;
    }
    char peer[NET_ADDRSTRLEN];
    lhsock_describe(s, peer, sizeof peer);
    adm_close_reset(ctx->adm, &s->conn, peer, why ? why : "aborted", dropped);
}

/* lhsock_close and lhsock_reset: unregisters s everywhere, then lingers (graceful) or
 * closes its fd. */
static void close_socket(lua_State *L, lh_socket *s, int graceful, size_t refused, const char *why)
{
    lh_sockets *ctx = s->ctx;
    if (s->conn.fd < 0)
        return;
    if (ctx->closed) {
        close_fd(ctx, s, refused, why);
        return;
    }
    if (s->registrations > 0)
        ctx->closing(ctx->closing_ud, L, s);
    if (s->conn.flags & CONN_HANDSHAKE)
        ctx->tls_closing(ctx->tls_ud, L, s);
    lhsock_remove_listener(L, s);
    if (s->flags & LH_HAS_DRAIN)
        forget_drain(L, s);
    if (graceful && lhsock_tls(s)) /* close_notify: the end is the one this side chose */
        tls_close_notify(lhsock_tls(s), &s->conn, ctx->sel, ctx->io);
    if (graceful && conn_pending(&s->conn) > 0) {
        if (s->tls)
            lhsock_tls_release(s);
        linger_add(ctx->linger, &s->conn);
        return;
    }
    close_fd(ctx, s, refused, why);
}

void lhsock_close(lua_State *L, lh_socket *s, int graceful)
{
    close_socket(L, s, graceful, 0, NULL);
}

void lhsock_reset(lua_State *L, lh_socket *s, size_t refused, const char *why)
{
    close_socket(L, s, 0, refused, why);
}

static int sock_close(lua_State *L)
{
    lhsock_close(L, lhsock_check(L, 1), 1);
    lua_pushboolean(L, 1);
    return 1;
}

static int sock_abort(lua_State *L)
{
    lhsock_close(L, lhsock_check(L, 1), 0);
    lua_pushboolean(L, 1);
    return 1;
}

static int sock_gc(lua_State *L)
{
    lh_socket *s = lhsock_check(L, 1);
    lhsock_close(L, s, 1);
    lh_anchor_release(L, s->ctx->anchor);
    return 0;
}

static int sock_tostring(lua_State *L)
{
    lh_socket *s = lhsock_check(L, 1);
    char where[NET_ADDRSTRLEN];
    if (s->conn.fd < 0)
        lua_pushstring(L, "luahost.socket (closed)");
    else if (!lhsock_describe(s, where, sizeof where))
        lua_pushfstring(L, "luahost.socket (fd %d)", s->conn.fd);
    else
        lua_pushfstring(L, "luahost.socket (fd %d, %s%s)", s->conn.fd, where,
                        (s->flags & LH_LISTENING) ? ", listening" : "");
    return 1;
}

static int sock_fileno(lua_State *L)
{
    lua_pushinteger(L, lhsock_check(L, 1)->conn.fd);
    return 1;
}

/* The socket an accept fills, made before the accept (so that a memory error cannot
 * leak the fd), or the one the last accept made and found no client for: a script's
 * accept loop ends with a failed accept every time, and a socket made for nothing is
 * garbage with a finalizer, which a generational collector keeps for a major cycle
 * (0.04 KiB per connection at 10,000 idle ones). */
static lh_socket *push_unused_socket(lua_State *L, lh_sockets *ctx)
{
    if (ctx->spare_ref == LUA_NOREF)
        return lhsock_push(L, ctx, -1, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->spare_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, ctx->spare_ref);
    ctx->spare_ref = LUA_NOREF;
    lh_socket *s = (lh_socket *)lua_touserdata(L, -1);
    socket_init(s, ctx, -1, 0); /* as new, whatever a failed reload's rollback did to it */
    return s;
}

static int sock_accept(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    lh_sockets *ctx = s->ctx;
    net_addr peer;
    const char *refusal = NULL;
    lh_socket *c = push_unused_socket(L, ctx);
    int fd = adm_accept(ctx->adm, s->conn.fd, &peer, &refusal);
    if (fd < 0 && !ctx->closed) { /* c is unused: kept for the next accept */
        lua_pushvalue(L, -1);
        ctx->spare_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* reuses the slot unref freed */
    }
    if (fd == -EMFILE || fd == -ENFILE)
        lhsock_pause_listeners(L, ctx, 1);
    if (fd == ADM_REFUSED) {
        luaL_pushfail(L);
        lua_pushstring(L, refusal);
        lua_pushinteger(L, EMFILE);
        return 3;
    }
    if (fd < 0)
        return lh_push_error(L, fd, NULL);
    c->conn.flags |= CONN_ACCEPTED;
    c->conn.fd = fd;
    c->family = (uint8_t)peer.ss.ss_family;
    lhsock_nodelay(ctx, fd, c->family);
    if (s->tls)
        ctx->tls_accepted(ctx->tls_ud, L, s, c);
    return 1 + lhsock_push_addr(L, &peer);
}

ssize_t lhsock_recv(lh_socket *s, char *into, size_t want)
{
    ssize_t n = s->ctx->io->recv(s->ctx->io, s->conn.fd, into, want);
    if (n <= 0 && n != -EAGAIN)
        s->conn.flags |= CONN_EOF_SEEN;
    return n;
}

/* Pushes what recv got: the n bytes at data, "" at the end of the stream, or the
 * failure. */
static int push_received(lua_State *L, const char *data, ssize_t n)
{
    if (n < 0)
        return lh_push_error(L, (int)n, NULL);
    lua_pushlstring(L, data, (size_t)n);
    return 1;
}

/* sock_recv over TLS: the same results, and TLS's own failures with their reason. */
static int tls_recv_push(lua_State *L, lh_socket *s, size_t want)
{
    lh_sockets *ctx = s->ctx;
    tls_conn *t = lhsock_tls(s);
    if (!t)
        return lh_push_error(L, -ENOTCONN, NULL);
    luaL_Buffer b;
    char *space = want <= LH_SCRATCH_SIZE ? ctx->scratch : luaL_buffinitsize(L, &b, want);
    ssize_t n = tls_recv(t, &s->conn, ctx->sel, ctx->io, space, want);
    if (n <= 0 && n != -EAGAIN) /* as lhsock_recv: the host tells a script that ignores it */
        s->conn.flags |= CONN_EOF_SEEN;
    if (n < 0 && n != -EAGAIN)
        return lhsock_push_tls_error(L, s, (int)n);
    if (n <= 0 || want <= LH_SCRATCH_SIZE)
        return push_received(L, space, n);
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

static int sock_recv(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    lh_sockets *ctx = s->ctx;
    int is_integer;
    lua_Integer want = lua_tointegerx(L, 2, &is_integer);
    if (!is_integer) /* the usual case is an integer: the auxiliary library costs ~40 more */
        want = luaL_optinteger(L, 2, LH_SCRATCH_SIZE);
    luaL_argcheck(L, want > 0, 2, "size must be positive");
    if (__builtin_expect(s->tls != NULL, 0))
        return tls_recv_push(L, s, (size_t)want);
    if (want <= LH_SCRATCH_SIZE)
        return push_received(L, ctx->scratch, lhsock_recv(s, ctx->scratch, (size_t)want));
    luaL_Buffer b;
    char *space = luaL_buffinitsize(L, &b, (size_t)want);
    ssize_t n = lhsock_recv(s, space, (size_t)want);
    if (n <= 0)
        return push_received(L, "", n);
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* Unbuffered send, as in Python. While write() has bytes queued it reports wouldblock
 * rather than let these bytes overtake them. */
static int sock_send(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    ssize_t n;
    if (s->tls) {
        tls_conn *t = lhsock_tls(s);
        n = t ? tls_send(t, &s->conn, s->ctx->sel, s->ctx->io, data, len) : -ENOTCONN;
        if (n < 0)
            return lhsock_push_tls_error(L, s, (int)n);
        lua_pushinteger(L, n);
        return 1;
    }
    if (conn_pending(&s->conn) > 0)
        return lh_push_error(L, -EAGAIN, NULL);
    n = s->ctx->io->send(s->ctx->io, s->conn.fd, data, len);
    if (n < 0)
        return lh_push_error(L, (int)n, NULL);
    lua_pushinteger(L, n);
    return 1;
}

/* Writes through s's output buffer. Past the limit the socket is closed, with the
 * reason logged, and -ENOBUFS returned. */
ssize_t lhsock_write(lua_State *L, lh_socket *s, const char *data, size_t len)
{
    lh_sockets *ctx = s->ctx;
    if (!ctx->sel)
        return luaL_error(L, "the host's selector is closed");
    size_t refused = 0;
    ssize_t pending;
    if (__builtin_expect(s->tls == NULL, 1)) /* plain TCP: the path the bench measures */
        pending = conn_write(&s->conn, ctx->sel, ctx->io, data, len, &refused);
    else if (lhsock_tls(s))
        pending = tls_write(lhsock_tls(s), &s->conn, ctx->sel, ctx->io, data, len, &refused);
    else
        pending = -ENOTCONN; /* a listener */
    if (pending != -ENOBUFS)
        return pending;
    char why[96];
    snprintf(why, sizeof why, "output buffer full (%zu bytes pending, limit %u)",
             conn_pending(&s->conn), (unsigned)s->conn.limit);
    lhsock_reset(L, s, refused, why);
    return -ENOBUFS;
}

static int sock_write(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    ssize_t pending = lhsock_write(L, s, data, len);
    if (pending >= 0) {
        lua_pushinteger(L, pending);
        return 1;
    }
    if (pending != -ENOBUFS)
        return lhsock_push_tls_error(L, s, (int)pending);
    luaL_pushfail(L);
    lua_pushliteral(L, "buffer full");
    return 2;
}

/* write_all's step for the value on the stack top (popped): writes unless it is not an
 * open socket or is except; a failure goes into the table at index 4, made at the first
 * one. A socket is told by its metatable's address, mt: exact while the metatable lives
 * (the registry keeps it), and cheaper than lua_rawequal in a loop over many. Returns 1
 * when it wrote. */
static int write_all_one(lua_State *L, const void *mt, const lh_socket *except, const char *data,
                         size_t len)
{
    lh_socket *s = (lh_socket *)lua_touserdata(L, -1);
    int has_mt = s && lua_getmetatable(L, -1);
    if (!has_mt || lua_topointer(L, -1) != mt || s == except || s->conn.fd < 0) {
        lua_pop(L, 1 + has_mt);
        return 0;
    }
    ssize_t rc = lhsock_write(L, s, data, len);
    if (rc >= 0) {
        lua_pop(L, 2);
        return 1;
    }
    lua_pop(L, 1);
    if (lua_isnil(L, 4)) {
        lua_newtable(L);
        lua_replace(L, 4);
    }
    lua_pushstring(L, rc == -ENOBUFS ? "buffer full" : strerror((int)-rc));
    lua_rawset(L, 4);
    return 0;
}

/* luahost.write_all(sockets, data, [except]): s:write(data) for every open socket of
 * sockets but except: a chat's fan-out in one call. sockets is a sequence of sockets
 * when sockets[1] is set (read by index: ~200 instructions per socket less than
 * walking a table's keys with next), else a table whose keys are sockets. Returns how
 * many were written to, and a table socket -> error ("buffer full" or the system's
 * message) for those that failed, or nil when none did. */
static int l_write_all(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    const lh_socket *except = lhsock_test(L, 3);
    lua_settop(L, 3);
    lua_pushnil(L);                  /* 4: the failures, made at the first one */
    luaL_getmetatable(L, LH_SOCKET); /* 5: kept alive while its address is compared */
    const void *mt = lua_topointer(L, 5);
    lua_Integer written = 0;
    if (lua_rawgeti(L, 1, 1) != LUA_TNIL) {
        for (lua_Integer i = 2;; i++) {
            written += write_all_one(L, mt, except, data, len);
            if (lua_rawgeti(L, 1, i) == LUA_TNIL)
                break;
        }
    } else {
        while (lua_next(L, 1)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            written += write_all_one(L, mt, except, data, len);
        }
    }
    lua_settop(L, 4);
    lua_pushinteger(L, written);
    lua_insert(L, 4);
    return 2;
}

static int sock_pending(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)conn_pending(&lhsock_check(L, 1)->conn));
    return 1;
}

static int sock_setlimit(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    lua_Integer limit = luaL_checkinteger(L, 2);
    luaL_argcheck(L, limit > 0 && limit <= UINT32_MAX, 2, "limit must be 1..4294967295 bytes");
    s->conn.limit = (uint32_t)limit;
    lua_pushboolean(L, 1);
    return 1;
}

/* The callback runs each time the buffered output drains; nil removes it. It is kept in
 * a table weakly keyed by the socket, so that it never keeps a socket alive that the
 * script dropped, and sockets that never use it pay nothing. */
static int sock_on_drain(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    set_by_pointer(L, s->ctx->handles_ref, s, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ctx->drain_ref);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_rawset(L, -3);
    s->flags |= LH_HAS_DRAIN;
    lua_settop(L, 1);
    return 1;
}

/* Runs s's on_drain callback, if it has one, within the budget. */
static void run_on_drain(lua_State *L, lh_sockets *ctx, lh_socket *s)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->handles_ref);
    lua_rawgetp(L, -1, s);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->drain_ref);
    lua_pushvalue(L, -2);
    if (lua_rawget(L, -2) != LUA_TFUNCTION) {
        lua_pop(L, 4);
        return;
    }
    lua_pushvalue(L, -3);
    if (budget_pcall(L, ctx->budget, 1, 0) != LUA_OK) {
        char where[NET_ADDRSTRLEN + 32];
        memcpy(where, "error in on_drain for ", 23);
        lhsock_describe(s, where + 22, sizeof where - 22);
        lh_report_error(L, ctx->log, where);
    }
    lua_pop(L, 3);
}

void lhsock_flush(lua_State *L, lh_sockets *ctx, lh_socket *s)
{
    if (s->conn.flags & CONN_HANDSHAKE) { /* the handshake's turn: no drain yet */
        if (conn_pending(&s->conn) > 0)
            conn_flush(&s->conn, ctx->sel, ctx->io);
        ctx->tls_ready(ctx->tls_ud, L, s);
        return;
    }
    ssize_t rc = conn_flush(&s->conn, ctx->sel, ctx->io);
    /* Backpressure withheld the script's READ, and with it any post of input TLS held:
     * once it is given back, that input is posted again. */
    if (lhsock_tls(s) && !(s->conn.flags & CONN_PAUSED))
        tls_post_input(lhsock_tls(s), &s->conn, ctx->sel);
    if (rc == 0 && (s->flags & LH_HAS_DRAIN))
        run_on_drain(L, ctx, s);
    else if (rc < 0)
        lh_log(ctx->log, LH_DEBUG, "fd %d: output dropped: %s", s->conn.fd, strerror((int)-rc));
}

static int sock_shutdown(lua_State *L)
{
    static const char *const hows[] = {"r", "w", "rw", NULL};
    lh_socket *s = lhsock_check_open(L, 1);
    int how = luaL_checkoption(L, 2, "rw", hows);
    if (how != 1 && shutdown(s->conn.fd, SHUT_RD) < 0 && errno != ENOTCONN)
        return lh_push_error(L, -errno, NULL);
    if (how != 0) {
        if (lhsock_tls(s)) /* close_notify first: the peer sees a clean end */
            tls_close_notify(lhsock_tls(s), &s->conn, s->ctx->sel, s->ctx->io);
        int rc = conn_shutdown_write(&s->conn, s->ctx->sel);
        if (rc < 0 && rc != -ENOTCONN)
            return lh_push_error(L, rc, NULL);
    }
    lua_pushboolean(L, 1);
    return 1;
}

void lhsock_add_listener(lua_State *L, lh_sockets *ctx, int index)
{
    lh_socket *s = (lh_socket *)lua_touserdata(L, index);
    if (s->flags & LH_LISTENING)
        return;
    lh_journal_note(ctx->journal, L, LH_MADE_LISTENER, index, 0);
    set_by_pointer(L, ctx->listeners_ref, s, index);
    s->flags |= LH_LISTENING;
    s->generation = ctx->journal->generation;
}

void lhsock_remove_listener(lua_State *L, lh_socket *s)
{
    if (!(s->flags & LH_LISTENING))
        return;
    clear_by_pointer(L, s->ctx->listeners_ref, s);
    s->flags &= (uint8_t) ~(LH_LISTENING | LH_LISTENING_ANY_PORT);
}

void lhsock_log_listening(const lh_socket *s)
{
    net_addr addr;
    char where[NET_ADDRSTRLEN] = "?";
    if (net_sockname(s->conn.fd, &addr) == 0)
        net_addr_format(&addr, where, sizeof where);
    lh_log(s->ctx->log, LH_INFO, "listening on %s", where);
}

void lhsock_pause_listeners(lua_State *L, lh_sockets *ctx, int paused)
{
    if (!ctx->sel)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->listeners_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lh_socket *s = (lh_socket *)lua_touserdata(L, -1);
        if (s->conn.fd >= 0 && sel_slot(ctx->sel, s->conn.fd))
            sel_set_paused(ctx->sel, s->conn.fd, paused ? SEL_READ : 0);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Closes the listeners of a generation below `below` (all of them for INT_MAX). */
static void close_listeners_below(lua_State *L, lh_sockets *ctx, int below, int say)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->listeners_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lh_socket *s = (lh_socket *)lua_touserdata(L, -1);
        if (s->generation < below) {
            char where[NET_ADDRSTRLEN];
            lhsock_describe(s, where, sizeof where);
            if (say)
                lh_log(ctx->log, LH_INFO,
                       "closing listener %s: the new script no longer listens there", where);
            lhsock_close(L, s, 0);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

void lhsock_close_listeners(lua_State *L, lh_sockets *ctx)
{
    close_listeners_below(L, ctx, INT32_MAX, 0);
}

void lhsock_close_unwanted_listeners(lua_State *L, lh_sockets *ctx, int generation)
{
    close_listeners_below(L, ctx, generation, 1);
}

/* luahost.listeners(): the listening sockets, as a sequence. */
static int l_listeners(lua_State *L)
{
    lh_sockets *ctx = (lh_sockets *)LH_CTX(L);
    lua_newtable(L);
    if (ctx->closed)
        return 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->listeners_ref);
    lua_pushnil(L);
    for (int i = 1; lua_next(L, -2); i++)
        lua_rawseti(L, -4, i);
    lua_pop(L, 1);
    return 1;
}

void lhsock_release(lua_State *L, lh_sockets *ctx)
{
    ctx->closed = 1;
    ctx->sel = NULL;
    free(ctx->scratch);
    ctx->scratch = NULL;
    int *refs[] = {&ctx->listeners_ref, &ctx->drain_ref, &ctx->handles_ref, &ctx->spare_ref};
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
        luaL_unref(L, LUA_REGISTRYINDEX, *refs[i]);
        *refs[i] = LUA_NOREF;
    }
}

static const luaL_Reg socket_methods[] = {
    {"accept", sock_accept},     {"recv", sock_recv},         {"send", sock_send},
    {"write", sock_write},       {"pending", sock_pending},   {"setlimit", sock_setlimit},
    {"on_drain", sock_on_drain}, {"shutdown", sock_shutdown}, {"close", sock_close},
    {"abort", sock_abort},       {"fileno", sock_fileno},     {NULL, NULL},
};

static const luaL_Reg socket_metamethods[] = {
    {"__gc", sock_gc},
    {"__close", sock_gc},
    {"__tostring", sock_tostring},
    {NULL, NULL},
};

static const luaL_Reg module_functions[] = {
    {"write_all", l_write_all},
    {"listeners", l_listeners},
    {NULL, NULL},
};

void lhsock_add_methods(lua_State *L, const luaL_Reg *methods)
{
    luaL_getmetatable(L, LH_SOCKET);
    lua_getfield(L, -1, "__index");
    lh_set_methods(L, methods, -1, -2);
    lua_pop(L, 2);
}

void lhsock_open(lua_State *L, int module, int host, lh_sockets *ctx)
{
    if (luaL_newmetatable(L, LH_SOCKET)) {
        lh_set_methods(L, socket_metamethods, -1, -1);
        lua_newtable(L);
        lua_setfield(L, -2, "__index");
        lhsock_add_methods(L, socket_methods);
    }
    lua_pop(L, 1);
    lh_setfuncs(L, module_functions, module, host, ctx);
}
