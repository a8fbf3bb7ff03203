/* lua_sockopt.c: a socket's options and addresses: setsockopt, getsockopt, setblocking,
 * getpeername, getsockname. Options go through the host's socket calls, so a simulated
 * world answers for its own sockets. */
#include "lua_sockopt.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static int sock_getpeername(lua_State *L)
{
    net_addr addr;
    lh_socket *s = lhsock_check_open(L, 1);
    int rc = s->ctx->io->peername(s->ctx->io, s->conn.fd, &addr);
    return rc < 0 ? lh_push_error(L, rc, NULL) : lhsock_push_addr(L, &addr);
}

static int sock_getsockname(lua_State *L)
{
    net_addr addr;
    int rc = net_sockname(lhsock_check_open(L, 1)->conn.fd, &addr);
    return rc < 0 ? lh_push_error(L, rc, NULL) : lhsock_push_addr(L, &addr);
}

static int sock_setblocking(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
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
    lh_socket *s = lhsock_check_open(L, 1);
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
    const net_io *io = s->ctx->io;
    int rc = io->setsockopt(io, s->conn.fd, option_levels[which], option_codes[which], value);
    if (rc < 0)
        return lh_push_error(L, rc, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

/* Booleans for flags, numbers for sizes; "error" is SO_ERROR: 0, or the errno of a
 * failed non-blocking connect (read it once the socket turns writable). */
static int sock_getsockopt(lua_State *L)
{
    lh_socket *s = lhsock_check_open(L, 1);
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

static const luaL_Reg socket_methods[] = {
    {"getpeername", sock_getpeername}, {"getsockname", sock_getsockname},
    {"setblocking", sock_setblocking}, {"setsockopt", sock_setsockopt},
    {"getsockopt", sock_getsockopt},   {NULL, NULL},
};

void lhsockopt_open(lua_State *L)
{
    lhsock_add_methods(L, socket_methods);
}
