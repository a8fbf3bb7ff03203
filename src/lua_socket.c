/* lua_socket.c: the luahost.socket type (accept, recv, send, buffered write, close, ...)
 * and luahost.listen / connect / socket. System failures return nil, message, errno. */
#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "lh.h"

/* A socket carries a mark computed from its own address, so the check run on every
 * method call needs no metatable (luaL_checkudata's look-up by name and the stack work
 * around it were a tenth of an echo's instructions). Only a full userdata of exactly a
 * socket's size is read, and another userdata would pass only by holding, at that
 * offset, the one 32-bit value its own address gives. */
static uint32_t socket_mark(const lh_socket *s)
{
    uint64_t a = (uint64_t)(uintptr_t)s;
    return (uint32_t)(a ^ (a >> 29)) ^ 0x6c68736bu;
}

/* The socket at index, or NULL. */
lh_socket *lhsock_test(lua_State *L, int index)
{
    /* rawlen is a string's or table's length too, and 0 for light userdata; touserdata
     * is NULL for all but userdata: together, a full userdata of a socket's size. */
    lh_socket *s = (lh_socket *)lua_touserdata(L, index);
    if (!s || lua_rawlen(L, index) != sizeof(lh_socket))
        return NULL;
    return s->conn.mark == socket_mark(s) ? s : NULL;
}

static lh_socket *check_socket(lua_State *L, int index)
{
    lh_socket *s = lhsock_test(L, index);
    if (!s)
        luaL_typeerror(L, index, LH_SOCKET);
    return s;
}

/* The socket at index, which must be open: using a closed one is the script's mistake. */
static lh_socket *check_open(lua_State *L, int index)
{
    lh_socket *s = check_socket(L, index);
    if (s->conn.fd < 0)
        luaL_error(L, "attempt to use a closed socket");
    return s;
}

/* Creates the userdata before any fd is attached (as liolib does), so a memory error
 * cannot leak a descriptor: callers set conn.fd once they own one. */
lh_socket *lhsock_push(lua_State *L, lh_host *host, int fd, int family)
{
    lh_socket *s = (lh_socket *)lua_newuserdatauv(L, sizeof *s, 1); /* 1: callback, if own */
    conn_init(&s->conn, fd, CONN_SOCKET, host->max_output);
    s->conn.mark = socket_mark(s);
    s->host = host;
    s->registrations = 0;
    s->family = (uint8_t)family;
    s->listening = 0;
    s->generation = 0;
    s->own_events = 0;
    s->own_generation = 0;
    luaL_setmetatable(L, LH_SOCKET);
    reload_journal_object(L, host, "sockets", -1); /* closed if the reload fails */
    return s;
}

/* Closes every listener the host has. Closing one only clears its own entry, which a
 * traversal allows, so this needs no memory (and a shutdown cannot stop halfway). */
void lhsock_close_listeners(lua_State *L, lh_host *host)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->listeners_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lhsock_close(L, host, (lh_socket *)lua_touserdata(L, -1), 0);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* The selector whose backend does s's I/O (only "sim" changes it), or NULL. */
static selector *io_of(const lh_socket *s)
{
    return s->host->sel && !s->host->closed ? s->host->sel->core : NULL;
}

/* The peer's address (a listener's own), else "fd N"; returns whether it had one. */
int lhsock_describe(lh_socket *s, char *out, size_t outlen)
{
    net_addr addr;
    if (s->conn.fd < 0) {
        snprintf(out, outlen, "closed socket");
        return 0;
    }
    int rc =
        s->listening ? net_sockname(s->conn.fd, &addr) : sel_peername(io_of(s), s->conn.fd, &addr);
    if (rc == 0) {
        net_addr_format(&addr, out, outlen);
        return 1;
    }
    snprintf(out, outlen, "fd %d", s->conn.fd);
    return 0;
}

/* Pushes an address as two results, host and port. */
static int push_addr(lua_State *L, const net_addr *addr)
{
    char host[NET_ADDRSTRLEN];
    int port;
    net_addr_host(addr, host, sizeof host, &port);
    lua_pushstring(L, host);
    lua_pushinteger(L, port);
    return 2;
}

static void table_set_socket(lua_State *L, int ref, lh_socket *s, int value_index)
{
    value_index = lua_absindex(L, value_index);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushvalue(L, value_index);
    lua_rawsetp(L, -2, s);
    lua_pop(L, 1);
}

static void table_clear_socket(lua_State *L, int ref, lh_socket *s)
{
    lua_pushnil(L);
    table_set_socket(L, ref, s, -1);
    lua_pop(L, 1);
}

/* Closes sock: unregisters it everywhere, then either hands its pending output to the
 * host to finish sending (graceful) or drops it. The socket is closed to Lua at once. */
void lhsock_close(lua_State *L, lh_host *host, lh_socket *s, int graceful)
{
    if (s->conn.fd < 0)
        return;
    if (!host->closed) {
        lhsel_forget_socket(L, host, s);
        if (s->listening)
            table_clear_socket(L, host->listeners_ref, s);
        table_clear_socket(L, host->drain_ref, s);
    }
    selector *core = host->sel && !host->closed ? host->sel->core : NULL;
    if (core && graceful && conn_pending(&s->conn) > 0) {
        host_linger(host, &s->conn);
    } else {
        if (core)
            conn_drop(&s->conn, core);
        conn_free(&s->conn);
        host_close_fd(host, &s->conn);
    }
    s->conn.fd = -1;
}

static int sock_close(lua_State *L)
{
    lh_socket *s = check_socket(L, 1);
    lhsock_close(L, s->host, s, 1);
    lua_pushboolean(L, 1);
    return 1;
}

static int sock_abort(lua_State *L)
{
    lh_socket *s = check_socket(L, 1);
    lhsock_close(L, s->host, s, 0);
    lua_pushboolean(L, 1);
    return 1;
}

static int sock_gc(lua_State *L)
{
    lh_socket *s = check_socket(L, 1);
    lhsock_close(L, s->host, s, 1);
    return 0;
}

static int sock_tostring(lua_State *L)
{
    lh_socket *s = check_socket(L, 1);
    char where[NET_ADDRSTRLEN];
    if (s->conn.fd < 0)
        lua_pushstring(L, "luahost.socket (closed)");
    else if (!lhsock_describe(s, where, sizeof where))
        lua_pushfstring(L, "luahost.socket (fd %d)", s->conn.fd);
    else
        lua_pushfstring(L, "luahost.socket (fd %d, %s%s)", s->conn.fd, where,
                        s->listening ? ", listening" : "");
    return 1;
}

static int sock_fileno(lua_State *L)
{
    lua_pushinteger(L, check_socket(L, 1)->conn.fd);
    return 1;
}

/* Why a just-accepted fd must be closed at once, or NULL: past --max-connections, or
 * beyond what the host's selector can watch (select: FD_SETSIZE), which is refused here
 * where the script expects accept to fail, not later in register, where it would raise. */
static const char *accept_refusal(lh_host *host, int fd)
{
    int limit = host->sel ? sel_fd_limit(host->sel->core) : 0;
    if (host->max_connections && host->connections >= host->max_connections)
        return "too many connections (--max-connections)";
    if (limit > 0 && fd >= limit)
        return "fd beyond what the selector backend can watch";
    return NULL;
}

static int sock_accept(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    lh_host *host = s->host;
    /* The rest of a connect storm waits for the next round: established clients first. */
    if (host->sel && host->sel->busy && host->accepts_this_round >= LH_ACCEPTS_PER_ROUND)
        return lh_push_error(L, -EAGAIN, NULL);
    net_addr peer;
    lh_socket *c = lhsock_push(L, host, -1, 0);
    int fd = sel_accept(io_of(s), s->conn.fd, &peer);
    if (fd == -EMFILE || fd == -ENFILE)
        host_out_of_fds(L, host, s->conn.fd, -fd);
    if (fd < 0)
        return lh_push_error(L, fd, NULL);
    if (host->sel && host->sel->busy)
        host->accepts_this_round++;
    const char *refusal = accept_refusal(host, fd);
    if (refusal) {
        host_refuse(host, fd, refusal);
        luaL_pushfail(L);
        lua_pushstring(L, refusal);
        lua_pushinteger(L, EMFILE);
        return 3;
    }
    c->conn.flags |= CONN_ACCEPTED;
    host->connections++;
    c->conn.fd = fd;
    c->family = (uint8_t)peer.ss.ss_family;
    return 1 + push_addr(L, &peer);
}

static int sock_recv(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    lua_Integer want = luaL_optinteger(L, 2, LH_SCRATCH_SIZE);
    luaL_argcheck(L, want > 0, 2, "size must be positive");
    if (want <= LH_SCRATCH_SIZE) {
        ssize_t n = sel_recv(io_of(s), s->conn.fd, s->host->scratch, (size_t)want);
        if (n <= 0 && n != -EAGAIN)
            s->conn.flags |= CONN_EOF_SEEN;
        if (n < 0)
            return lh_push_error(L, (int)n, NULL);
        lua_pushlstring(L, s->host->scratch, (size_t)n);
        return 1;
    }
    luaL_Buffer b;
    char *space = luaL_buffinitsize(L, &b, (size_t)want);
    ssize_t n = sel_recv(io_of(s), s->conn.fd, space, (size_t)want);
    if (n <= 0 && n != -EAGAIN)
        s->conn.flags |= CONN_EOF_SEEN;
    if (n < 0)
        return lh_push_error(L, (int)n, NULL);
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* Unbuffered send, as in Python. While write() has bytes queued it reports wouldblock
 * rather than let these bytes overtake them. */
static int sock_send(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    if (conn_pending(&s->conn) > 0)
        return lh_push_error(L, -EAGAIN, NULL);
    ssize_t n = sel_send(io_of(s), s->conn.fd, data, len);
    if (n < 0)
        return lh_push_error(L, (int)n, NULL);
    lua_pushinteger(L, n);
    return 1;
}

/* Writes through s's output buffer. Past the limit the socket is closed, with the
 * reason logged, and -ENOBUFS returned. */
static ssize_t write_or_close(lua_State *L, lh_socket *s, const char *data, size_t len)
{
    lh_host *host = s->host;
    if (!host->sel)
        return luaL_error(L, "the host's selector is closed");
    ssize_t pending = conn_write(&s->conn, host->sel->core, data, len);
    if (pending != -ENOBUFS)
        return pending;
    char where[NET_ADDRSTRLEN];
    lhsock_describe(s, where, sizeof where);
    lh_log(host, LH_WARN, "closing %s: output buffer full (%zu bytes pending, limit %u)", where,
           conn_pending(&s->conn), (unsigned)s->conn.limit);
    lhsock_close(L, host, s, 0);
    return -ENOBUFS;
}

static int sock_write(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    ssize_t pending = write_or_close(L, s, data, len);
    if (pending >= 0) {
        lua_pushinteger(L, pending);
        return 1;
    }
    if (pending != -ENOBUFS)
        return lh_push_error(L, (int)pending, NULL);
    luaL_pushfail(L);
    lua_pushliteral(L, "buffer full");
    return 2;
}

/* write_all's step for the value on the stack top (popped): writes unless it is not an
 * open socket or is except; a failure goes into the table at index 4, made at the
 * first one. Returns 1 when it wrote. */
static int write_all_one(lua_State *L, const lh_socket *except, const char *data, size_t len)
{
    lh_socket *s = lhsock_test(L, -1);
    if (!s || s == except || s->conn.fd < 0) {
        lua_pop(L, 1);
        return 0;
    }
    ssize_t rc = write_or_close(L, s, data, len);
    if (rc >= 0) {
        lua_pop(L, 1);
        return 1;
    }
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
    lua_pushnil(L); /* 4: the failures, made at the first one */
    lua_Integer written = 0;
    if (lua_rawgeti(L, 1, 1) != LUA_TNIL) {
        for (lua_Integer i = 2;; i++) {
            written += write_all_one(L, except, data, len);
            if (lua_rawgeti(L, 1, i) == LUA_TNIL)
                break;
        }
    } else {
        while (lua_next(L, 1)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            written += write_all_one(L, except, data, len);
        }
    }
    lua_settop(L, 4);
    lua_pushinteger(L, written);
    lua_insert(L, 4);
    return 2;
}

static int sock_pending(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)conn_pending(&check_socket(L, 1)->conn));
    return 1;
}

static int sock_setlimit(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    lua_Integer limit = luaL_checkinteger(L, 2);
    luaL_argcheck(L, limit > 0 && limit <= UINT32_MAX, 2, "limit must be 1..4294967295 bytes");
    s->conn.limit = (uint32_t)limit;
    lua_pushboolean(L, 1);
    return 1;
}

/* The callback runs each time the buffered output drains; nil removes it. It is kept
 * beside the socket, not in it, so that sockets that never use it pay nothing. */
static int sock_on_drain(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    /* The handle first: a callback without it would be called with nil. */
    table_set_socket(L, s->host->handles_ref, s, 1);
    table_set_socket(L, s->host->drain_ref, s, 2);
    lua_settop(L, 1);
    return 1;
}

/* Called by the host when the output of s has drained: runs its on_drain callback. */
int lhsock_flushed(lua_State *L, lh_host *host, lh_socket *s)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->drain_ref);
    if (lua_rawgetp(L, -1, s) != LUA_TFUNCTION) {
        lua_pop(L, 2);
        return LUA_OK;
    }
    lua_remove(L, -2);
    lua_pushcfunction(L, lh_traceback);
    lua_insert(L, -2);
    int handler = lua_gettop(L) - 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->handles_ref);
    lua_rawgetp(L, -1, s);
    lua_remove(L, -2);
    int status = host_pcall(L, host, 1, handler);
    if (status != LUA_OK) {
        char where[NET_ADDRSTRLEN + 32];
        memcpy(where, "error in on_drain for ", 23);
        lhsock_describe(s, where + 22, sizeof where - 22);
        host_report_error(L, host, where);
    }
    lua_remove(L, handler);
    return status;
}

static int sock_shutdown(lua_State *L)
{
    static const char *const hows[] = {"r", "w", "rw", NULL};
    lh_socket *s = check_open(L, 1);
    int how = luaL_checkoption(L, 2, "rw", hows);
    if (how != 1 && shutdown(s->conn.fd, SHUT_RD) < 0 && errno != ENOTCONN)
        return lh_push_error(L, -errno, NULL);
    if (how != 0 && s->host->sel) {
        int rc = conn_shutdown_write(&s->conn, s->host->sel->core);
        if (rc < 0 && rc != -ENOTCONN)
            return lh_push_error(L, rc, NULL);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int sock_getpeername(lua_State *L)
{
    net_addr addr;
    lh_socket *s = check_open(L, 1);
    int rc = sel_peername(io_of(s), s->conn.fd, &addr);
    return rc < 0 ? lh_push_error(L, rc, NULL) : push_addr(L, &addr);
}

static int sock_getsockname(lua_State *L)
{
    net_addr addr;
    int rc = net_sockname(check_open(L, 1)->conn.fd, &addr);
    return rc < 0 ? lh_push_error(L, rc, NULL) : push_addr(L, &addr);
}

static int sock_setblocking(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    luaL_checkany(L, 2);
    int rc = net_set_nonblocking(s->conn.fd, !lua_toboolean(L, 2));
    if (rc < 0)
        return lh_push_error(L, rc, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

static const char *const option_names[] = {"reuseaddr", "reuseport", "keepalive", "nodelay",
                                           "rcvbuf",    "sndbuf",    "error",     NULL};
static const int option_levels[] = {SOL_SOCKET, SOL_SOCKET, SOL_SOCKET, IPPROTO_TCP,
                                    SOL_SOCKET, SOL_SOCKET, SOL_SOCKET};
static const int option_codes[] = {SO_REUSEADDR, SO_REUSEPORT, SO_KEEPALIVE, TCP_NODELAY,
                                   SO_RCVBUF,    SO_SNDBUF,    SO_ERROR};
enum { FIRST_SIZE_OPTION = 4, ERROR_OPTION = 6 };

static int sock_setsockopt(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    int which = luaL_checkoption(L, 2, NULL, option_names);
    int value;
    luaL_argcheck(L, which != ERROR_OPTION, 2, "'error' can only be read");
    if (which >= FIRST_SIZE_OPTION) {
        lua_Integer n = luaL_checkinteger(L, 3);
        luaL_argcheck(L, n >= 0 && n <= INT32_MAX, 3, "size out of range");
        value = (int)n;
    } else {
        luaL_checkany(L, 3);
        value = lua_toboolean(L, 3);
    }
    if (setsockopt(s->conn.fd, option_levels[which], option_codes[which], &value, sizeof value) <
            0 &&
        !(errno == EOPNOTSUPP && sel_backend_state(io_of(s), "sim")))
        return lh_push_error(L, -errno, NULL); /* sim's socketpairs have no TCP options */
    lua_pushboolean(L, 1);
    return 1;
}

/* Booleans for flags, numbers for sizes; "error" is SO_ERROR: 0, or the errno of a
 * failed non-blocking connect (read it once the socket turns writable). */
static int sock_getsockopt(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    int which = luaL_checkoption(L, 2, NULL, option_names);
    int value = 0;
    socklen_t len = sizeof value;
    if (getsockopt(s->conn.fd, option_levels[which], option_codes[which], &value, &len) < 0)
        return lh_push_error(L, -errno, NULL);
    if (which < FIRST_SIZE_OPTION)
        lua_pushboolean(L, value);
    else
        lua_pushinteger(L, value);
    return 1;
}

/* Resolves arguments host, port at index and index+1 into addr, or pushes the failure.
 * For a unix-domain socket (sock given and AF_UNIX) the one argument is a path. */
static int resolve_args(lua_State *L, int index, int passive, net_addr *addr, int *nresults,
                        const lh_socket *sock)
{
    if (sock && sock->family == AF_UNIX) {
        size_t len;
        const char *path = luaL_checklstring(L, index, &len);
        struct sockaddr_un *un = (struct sockaddr_un *)&addr->ss;
        luaL_argcheck(L, len > 0 && len < sizeof un->sun_path, index, "path too long or empty");
        memset(un, 0, sizeof *un);
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, path, len);
        addr->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
        return 0;
    }
    const char *host = luaL_checkstring(L, index);
    lua_Integer port = luaL_checkinteger(L, index + 1);
    char err[160];
    luaL_argcheck(L, port >= 0 && port <= 65535, index + 1, "port must be 0..65535");
    int rc = net_resolve(host, (int)port, passive, addr, err, sizeof err);
    if (rc < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        lua_pushinteger(L, rc == -EINVAL ? EINVAL : -rc);
        *nresults = 3;
    }
    return rc;
}

static int sock_bind(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    net_addr addr;
    int nres, one = 1;
    if (resolve_args(L, 2, 1, &addr, &nres, s) < 0)
        return nres;
    setsockopt(s->conn.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s->conn.fd, (struct sockaddr *)&addr.ss, addr.len) < 0)
        return lh_push_error(L, -errno, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

/* Marks s as a listener: logged, and kept in luahost.listeners(). */
static void became_listener(lua_State *L, lh_socket *s, int index)
{
    net_addr addr;
    char where[NET_ADDRSTRLEN] = "?";
    s->listening = LISTENING;
    s->generation = s->host->generation;
    reload_journal_object(L, s->host, "listeners", index);
    table_set_socket(L, s->host->listeners_ref, s, index);
    if (net_sockname(s->conn.fd, &addr) == 0)
        net_addr_format(&addr, where, sizeof where);
    lh_log(s->host, LH_INFO, "listening on %s", where);
}

static int sock_listen(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    lua_Integer backlog = luaL_optinteger(L, 2, 511);
    /* Listed before listen(2): listing allocates, and a memory error must not leave the
     * socket listening but missing from luahost.listeners(). */
    table_set_socket(L, s->host->listeners_ref, s, 1);
    if (listen(s->conn.fd, (int)backlog) < 0) {
        int err = errno;
        if (!s->listening)
            table_clear_socket(L, s->host->listeners_ref, s);
        return lh_push_error(L, -err, NULL);
    }
    became_listener(L, s, 1);
    lua_pushboolean(L, 1);
    return 1;
}

static int sock_connect(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    net_addr addr;
    int nres;
    if (resolve_args(L, 2, 0, &addr, &nres, s) < 0)
        return nres;
    int rc = net_connect(s->conn.fd, &addr);
    if (rc < 0)
        return lh_push_error(L, rc, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

/* As in Python: the errno of the connect as a number, 0 on success. */
static int sock_connect_ex(lua_State *L)
{
    lh_socket *s = check_open(L, 1);
    net_addr addr;
    int nres;
    if (resolve_args(L, 2, 0, &addr, &nres, s) < 0)
        return nres;
    lua_pushinteger(L, -net_connect(s->conn.fd, &addr));
    return 1;
}

static int l_socket(lua_State *L)
{
    static const char *const families[] = {"inet", "inet6", "unix", NULL};
    static const int family_values[] = {AF_INET, AF_INET6, AF_UNIX};
    static const char *const types[] = {"stream", "dgram", NULL};
    int family = family_values[luaL_checkoption(L, 1, "inet", families)];
    int type = luaL_checkoption(L, 2, "stream", types) ? SOCK_DGRAM : SOCK_STREAM;
    lh_socket *s = lhsock_push(L, LH_HOST(L), -1, family);
    int fd = net_socket(family, type, 0);
    if (fd < 0)
        return lh_push_error(L, fd, NULL);
    s->conn.fd = fd;
    return 1;
}

/* Whether a and b (of one family) have the same host part, whatever their ports. */
static int same_host(const net_addr *a, const net_addr *b)
{
    if (a->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)&b->ss)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr,
                  &((const struct sockaddr_in6 *)&b->ss)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

/* Pushes the listener already bound to addr, if there is one. A script (or its next
 * version, on reload) asking again for an address gets the same socket. */
static int push_listener_on(lua_State *L, lh_host *host, const net_addr *addr)
{
    net_addr bound;
    if (addr->ss.ss_family != AF_INET && addr->ss.ss_family != AF_INET6)
        return 0;
    int port_offset = addr->ss.ss_family == AF_INET ? offsetof(struct sockaddr_in, sin_port)
                                                    : offsetof(struct sockaddr_in6, sin6_port);
    int any_port = memcmp((const char *)&addr->ss + port_offset, "\0\0", 2) == 0;
    /* Port 0 asks for a new port, except that a reloading script asking again for what
     * its first load asked gets that listener back rather than a different port. */
    if (any_port && !host->reloading)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, host->listeners_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lh_socket *s = lhsock_test(L, -1);
        if (s && s->conn.fd >= 0 && net_sockname(s->conn.fd, &bound) == 0 &&
            bound.len == addr->len &&
            (any_port ? s->listening == LISTENING_ANY_PORT && s->generation < host->generation &&
                            same_host(&bound, addr)
                      : memcmp(&bound.ss, &addr->ss, addr->len) == 0)) {
            reload_journal_listener(L, host, -1, s->generation);
            s->generation = host->generation;
            lua_replace(L, -3);
            lua_pop(L, 1);
            return 1;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

static int l_listen(lua_State *L)
{
    net_addr addr;
    int nres;
    if (resolve_args(L, 1, 1, &addr, &nres, NULL) < 0)
        return nres;
    if (push_listener_on(L, LH_HOST(L), &addr))
        return 1;
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer backlog = 511;
    int reuseport = 0;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "backlog");
        backlog = luaL_optinteger(L, -1, 511);
        lua_getfield(L, 3, "reuseport");
        reuseport = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    lh_socket *s = lhsock_push(L, LH_HOST(L), -1, addr.ss.ss_family);
    int fd = net_socket(addr.ss.ss_family, SOCK_STREAM, 1);
    if (fd < 0)
        return lh_push_error(L, fd, NULL);
    s->conn.fd = fd;
    int rc = net_bind_listen(fd, &addr, (int)backlog, reuseport);
    if (rc < 0) {
        char where[NET_ADDRSTRLEN + 20];
        memcpy(where, "cannot listen on ", 18);
        net_addr_format(&addr, where + 17, sizeof where - 17);
        lhsock_close(L, s->host, s, 0);
        return lh_push_error(L, rc, where);
    }
    became_listener(L, s, -1);
    if (lua_tointeger(L, 2) == 0)
        s->listening = LISTENING_ANY_PORT;
    return 1;
}

static int l_connect(lua_State *L)
{
    net_addr addr;
    int nres;
    if (resolve_args(L, 1, 0, &addr, &nres, NULL) < 0)
        return nres;
    lh_socket *s = lhsock_push(L, LH_HOST(L), -1, addr.ss.ss_family);
    int fd = net_socket(addr.ss.ss_family, SOCK_STREAM, 1);
    if (fd < 0)
        return lh_push_error(L, fd, NULL);
    s->conn.fd = fd;
    int rc = net_connect(fd, &addr);
    if (rc < 0 && rc != -EINPROGRESS) {
        lhsock_close(L, s->host, s, 0);
        return lh_push_error(L, rc, NULL);
    }
    return 1;
}

static const luaL_Reg socket_methods[] = {
    {"accept", sock_accept},
    {"recv", sock_recv},
    {"send", sock_send},
    {"write", sock_write},
    {"pending", sock_pending},
    {"setlimit", sock_setlimit},
    {"on_drain", sock_on_drain},
    {"shutdown", sock_shutdown},
    {"close", sock_close},
    {"abort", sock_abort},
    {"fileno", sock_fileno},
    {"getpeername", sock_getpeername},
    {"getsockname", sock_getsockname},
    {"setblocking", sock_setblocking},
    {"setsockopt", sock_setsockopt},
    {"getsockopt", sock_getsockopt},
    {"bind", sock_bind},
    {"listen", sock_listen},
    {"connect", sock_connect},
    {"connect_ex", sock_connect_ex},
    {NULL, NULL},
};

static const luaL_Reg socket_metamethods[] = {
    {"__gc", sock_gc},
    {"__close", sock_gc},
    {"__tostring", sock_tostring},
    {NULL, NULL},
};

static const luaL_Reg module_functions[] = {
    {"socket", l_socket},       {"listen", l_listen}, {"connect", l_connect},
    {"write_all", l_write_all}, {NULL, NULL},
};

void lhsock_open(lua_State *L, int module, int host)
{
    if (luaL_newmetatable(L, LH_SOCKET)) {
        luaL_setfuncs(L, socket_metamethods, 0);
        luaL_newlib(L, socket_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lh_setfuncs(L, module_functions, module, host);
}
