/* lua_listen.c: making sockets: luahost.listen, luahost.connect and luahost.socket, and
 * the bind, listen, connect and connect_ex methods. A script (or its next version, on
 * reload) asking again for an address it listens on gets the same listener. */
#include "lua_listen.h"

#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

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
    lh_socket *s = lhsock_check_open(L, 1);
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

static int sock_listen(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
    lua_Integer backlog = luaL_optinteger(L, 2, 511);
    int was_listening = s->flags & LH_LISTENING;
    lhsock_add_listener(L, s->ctx, 1);
    if (listen(s->conn.fd, (int)backlog) < 0) {
        int err = errno;
        if (!was_listening)
            lhsock_remove_listener(L, s);
        return lh_push_error(L, -err, NULL);
    }
    if (!was_listening)
        lhsock_log_listening(s);
    lua_pushboolean(L, 1);
    return 1;
}

static int sock_connect(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
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
    lh_socket *s = lhsock_check_open(L, 1);
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
    lh_socket *s = lhsock_push(L, (lh_sockets *)LH_CTX(L), -1, family);
    int fd = net_socket(family, type, 0);
    if (fd < 0)
        return lh_push_error(L, fd, NULL);
    s->conn.fd = fd;
    if (type == SOCK_STREAM) /* set before connecting, it holds once connected */
        lhsock_nodelay(s->ctx, fd, family);
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

/* Whether listener s is the one a script asking for addr gets back. Port 0 asks for a
 * new port, except that a reloading script asking again for what an earlier load asked
 * for gets that listener rather than a different port. */
static int listener_matches(const lh_socket *s, const net_addr *addr, int any_port, int generation)
{
    net_addr bound;
    if (s->conn.fd < 0 || net_sockname(s->conn.fd, &bound) < 0 || bound.len != addr->len)
        return 0;
    if (!any_port)
        return memcmp(&bound.ss, &addr->ss, addr->len) == 0;
    return (s->flags & LH_LISTENING_ANY_PORT) && s->generation < generation &&
           same_host(&bound, addr);
}

/* Pushes the listener already bound to addr, if there is one, and returns 1. */
static int push_listener_on(lua_State *L, lh_sockets *ctx, const net_addr *addr)
{
    if (addr->ss.ss_family != AF_INET && addr->ss.ss_family != AF_INET6)
        return 0;
    int port_offset = addr->ss.ss_family == AF_INET ? offsetof(struct sockaddr_in, sin_port)
                                                    : offsetof(struct sockaddr_in6, sin6_port);
    int any_port = memcmp((const char *)&addr->ss + port_offset, "\0\0", 2) == 0;
    if (any_port && !ctx->journal->reloading)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx->listeners_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lh_socket *s = (lh_socket *)lua_touserdata(L, -1);
        if (listener_matches(s, addr, any_port, ctx->journal->generation)) {
            lh_journal_note(ctx->journal, L, LH_ASKED_LISTENER, -1, s->generation);
            s->generation = ctx->journal->generation;
            lua_replace(L, -3);
            lua_pop(L, 1);
            return 1;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

/* Binds a listening socket for s: 0 or -errno (s keeps the fd either way, to close). */
static int own_listener(lh_socket *s, const net_addr *addr, int backlog, int reuseport)
{
    int fd = net_socket(addr->ss.ss_family, SOCK_STREAM, 1);
    if (fd < 0)
        return fd;
    s->conn.fd = fd;
    return net_bind_listen(fd, addr, backlog, reuseport);
}

/* Takes s's listening socket from the provider set at setup: 0 or -errno. */
static int provided_listener(lh_sockets *ctx, lh_socket *s, const net_addr *addr, int backlog)
{
    int fd = ctx->provide_listener(ctx->provide_ud, addr, backlog);
    if (fd >= 0)
        s->conn.fd = fd;
    return fd < 0 ? fd : 0;
}

/* luahost.listen(host, port[, {backlog =, reuseport =}]). */
static int l_listen(lua_State *L)
{
    lh_sockets *ctx = (lh_sockets *)LH_CTX(L);
    net_addr addr;
    int nres;
    if (resolve_args(L, 1, 1, &addr, &nres, NULL) < 0)
        return nres;
    if (!ctx->closed && push_listener_on(L, ctx, &addr))
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
    lh_socket *s = lhsock_push(L, ctx, -1, addr.ss.ss_family);
    int rc = ctx->provide_listener ? provided_listener(ctx, s, &addr, (int)backlog)
                                   : own_listener(s, &addr, (int)backlog, reuseport);
    if (rc < 0) {
        char where[NET_ADDRSTRLEN + 20];
        memcpy(where, "cannot listen on ", 18);
        net_addr_format(&addr, where + 17, sizeof where - 17);
        lhsock_close(L, s, 0);
        return lh_push_error(L, rc, where);
    }
    lhsock_add_listener(L, ctx, -1);
    if (lua_tointeger(L, 2) == 0)
        s->flags |= LH_LISTENING_ANY_PORT;
    if (!ctx->provide_listener) /* a provider says it once, for every process it serves */
        lhsock_log_listening(s);
    return 1;
}

/* luahost.connect(host, port): non-blocking; done when the socket turns writable. */
static int l_connect(lua_State *L)
{
    net_addr addr;
    int nres;
    if (resolve_args(L, 1, 0, &addr, &nres, NULL) < 0)
        return nres;
    lh_socket *s = lhsock_push(L, (lh_sockets *)LH_CTX(L), -1, addr.ss.ss_family);
    int fd = net_socket(addr.ss.ss_family, SOCK_STREAM, 1);
    if (fd < 0)
        return lh_push_error(L, fd, NULL);
    s->conn.fd = fd;
    lhsock_nodelay(s->ctx, fd, addr.ss.ss_family);
    int rc = net_connect(fd, &addr);
    if (rc < 0 && rc != -EINPROGRESS) {
        lhsock_close(L, s, 0);
        return lh_push_error(L, rc, NULL);
    }
    return 1;
}

static const luaL_Reg socket_methods[] = {
    {"bind", sock_bind},
    {"listen", sock_listen},
    {"connect", sock_connect},
    {"connect_ex", sock_connect_ex},
    {NULL, NULL},
};

static const luaL_Reg module_functions[] = {
    {"socket", l_socket},
    {"listen", l_listen},
    {"connect", l_connect},
    {NULL, NULL},
};

void lhlisten_open(lua_State *L, int module, int host, lh_sockets *ctx)
{
    lhsock_add_methods(L, socket_methods);
    lh_setfuncs(L, module_functions, module, host, ctx);
}
