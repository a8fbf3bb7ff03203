/* lua_socket.h: the luahost.socket type: accept, recv, send, buffered write (flushed by
 * the host within a limit), close, and the listeners a host keeps. System failures return
 * nil, message, errno; misuse raises. */
#ifndef LUAHOST_LUA_SOCKET_H
#define LUAHOST_LUA_SOCKET_H

#include <stdint.h>

#include "admission.h"
#include "budget.h"
#include "conn.h"
#include "lhaux.h"
#include "linger.h"
#include "net.h"
#include "selector.h"
#include "tls.h"

#define LH_SOCKET "luahost.socket"

/* recv() reads into this much of the host's scratch space before making a string. */
#define LH_SCRATCH_SIZE 65536

typedef struct lh_socket lh_socket;

/* A host's sockets. */
typedef struct lh_sockets {
    selector *sel; /* the host's selector: buffered output is flushed through it */
    const net_io *io;
    uint32_t max_output; /* each new socket's output limit */
    char *scratch;       /* LH_SCRATCH_SIZE bytes */
    admission *adm;
    linger_list *linger;
    lh_budget *budget; /* on_drain callbacks run within it */
    lh_logger *log;
    lh_journal *journal;
    lh_anchor *anchor; /* each socket holds the host */
    int listeners_ref; /* table: socket pointer -> listening socket */
    int drain_ref;     /* weak-keyed: socket -> its on_drain callback */
    int handles_ref;   /* weak-valued: socket pointer -> socket, to call on_drain with */
    int spare_ref;     /* a socket accept made but found no client for, to use next time */
    /* Called before a socket's fd is closed, to unregister it from every selector, so no
     * event for a reused fd number can reach the old registration. */
    void (*closing)(void *ud, lua_State *L, lh_socket *s);
    void *closing_ud;
    /* Where luahost.listen gets its sockets when this process does not bind its own (a
     * --workers worker: the master binds and logs): a listening fd or -errno. NULL: the
     * host binds. */
    int (*provide_listener)(void *ud, const net_addr *addr, int backlog);
    void *provide_ud;
    /* TLS (lua_tls.c sets these): a listener with a context accepted s, which needs its
     * TLS state; and the host's own readiness came for s while its handshake runs. */
    void (*tls_accepted)(void *ud, lua_State *L, lh_socket *listener, lh_socket *s);
    void (*tls_ready)(void *ud, lua_State *L, lh_socket *s);
    void (*tls_closing)(void *ud, lua_State *L, lh_socket *s); /* before its state goes */
    void *tls_ud;
    int closed;
} lh_sockets;

struct lh_socket {
    conn conn; /* conn.fd is -1 once closed; first, so the selector's host_data casts back */
    lh_sockets *ctx;
    int generation;         /* a listener: the script load that last asked for it */
    uint16_t registrations; /* selectors it is registered with */
    uint8_t family;
    uint8_t flags; /* LH_LISTENING..., LH_HAS_DRAIN */
    /* NULL for plain TCP; else a connection's tls_conn, or with LH_TLS_LISTENER the
     * tls_ctx a listener's connections are made with. One test of it is all the plain
     * path pays. */
    void *tls;
};

enum {
    LH_LISTENING = 1,
    LH_LISTENING_ANY_PORT = 2, /* with LH_LISTENING: port 0 was asked */
    LH_HAS_DRAIN = 4,          /* on_drain was set once: look in the drain table */
    LH_TLS_LISTENER = 8,       /* tls is a tls_ctx (a listener's), not a tls_conn */
};

/* s's TLS state: its tls_conn, or NULL for plain TCP and for a listener. */
static inline tls_conn *lhsock_tls(const lh_socket *s)
{
    return (s->flags & LH_TLS_LISTENER) ? NULL : (tls_conn *)s->tls;
}

/* Lets go of s's TLS state or its listener's context. */
void lhsock_tls_release(lh_socket *s);

/* Pushes the failure rc of a TLS call on s (tls_error's message, or the system's). */
int lhsock_push_tls_error(lua_State *L, lh_socket *s, int rc);

void lhsock_init(lua_State *L, lh_sockets *ctx, selector *sel, uint32_t max_output, admission *adm,
                 linger_list *linger, lh_budget *budget, lh_logger *log, lh_journal *journal,
                 lh_anchor *anchor);
/* Makes the socket metatable (once per Lua state) and puts write_all and listeners into
 * the module table; host is the host userdata's index. */
void lhsock_open(lua_State *L, int module, int host, lh_sockets *ctx);
/* Adds methods to the socket type (made by lhsock_open); each gets the metatable as its
 * upvalues, which lhsock_check compares with. */
void lhsock_add_methods(lua_State *L, const luaL_Reg *methods);

/* Pushes a new socket. The userdata is made before any fd is attached (as liolib does),
 * so a memory error cannot leak one: callers set conn.fd once they own it. */
lh_socket *lhsock_push(lua_State *L, lh_sockets *ctx, int fd, int family);
/* The socket at index, or NULL: a userdata with the socket metatable. */
lh_socket *lhsock_test(lua_State *L, int index);
/* For methods (lhsock_add_methods gives them the metatable as upvalue 1): the socket at
 * index, else a type error. Inline: every method call makes this check. */
static inline lh_socket *lhsock_check(lua_State *L, int index)
{
    void *p = lua_touserdata(L, index);
    if (p && lua_getmetatable(L, index)) {
        int same = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
        if (same)
            return (lh_socket *)p;
    }
    luaL_typeerror(L, index, LH_SOCKET);
    return NULL;
}

/* For methods: the socket at index, which must be open: using a closed one is the
 * script's mistake ("attempt to use a closed socket"). */
static inline lh_socket *lhsock_check_open(lua_State *L, int index)
{
    lh_socket *s = lhsock_check(L, index);
    if (s->conn.fd < 0)
        luaL_error(L, "attempt to use a closed socket");
    return s;
}

/* s:recv without the type check: reads at most want bytes into into (the host's
 * scratch, or the script's buffer). Returns the bytes read, 0 at the end of the stream,
 * or -errno; the end (or a failure) is marked as seen by the script, which the host
 * needs to tell a script that ignores it. Plain sockets only: a TLS one reads through its
 * TLS state (sock_recv). */
ssize_t lhsock_recv(lh_socket *s, char *into, size_t want);

/* s:write(data) without the type check: buffers what the kernel does not take; past the
 * output limit resets s at once (logged) and returns -ENOBUFS. Returns the bytes
 * pending or -errno. */
ssize_t lhsock_write(lua_State *L, lh_socket *s, const char *data, size_t len);

/* Turns Nagle's algorithm off on a TCP socket (family AF_INET or AF_INET6), as Redis,
 * nginx and Go do: a server's small replies go out at once rather than wait for the
 * peer's ACK, which a client with delayed ACKs holds back up to 40 ms. A script opts out
 * with setsockopt("nodelay", false). Failure is ignored. */
void lhsock_nodelay(const lh_sockets *ctx, int fd, int family);

/* Pushes an address as two results, host and port; returns 2. */
int lhsock_push_addr(lua_State *L, const net_addr *addr);

/* Closes s: unregisters it everywhere, then hands its pending output to the lingering
 * closes (graceful) or drops it, closing with a reset then (and logging it) so that the
 * peer does not take the cut stream for a whole one. The socket is closed to Lua at once. */
void lhsock_close(lua_State *L, lh_socket *s, int graceful);
/* Closes s at once with a reset whatever it had pending, logging the peer, why, and the
 * bytes dropped: those pending plus refused (bytes of a write the limit turned away). */
void lhsock_reset(lua_State *L, lh_socket *s, size_t refused, const char *why);
/* The peer's address (a listener's own), else "fd N"; returns whether it had one. */
int lhsock_describe(const lh_socket *s, char *out, size_t outlen);

/* The host's selector reported s writable: sends what is buffered, and runs s's on_drain
 * callback once it has all gone. */
void lhsock_flush(lua_State *L, lh_sockets *ctx, lh_socket *s);

/* Records the socket at index as a listener of the running load (allocates: call it
 * before listen(2), so a memory error cannot leave a listener the host does not know). */
void lhsock_add_listener(lua_State *L, lh_sockets *ctx, int index);
/* Forgets that s is a listener (its listen(2) failed, or it is closing). */
void lhsock_remove_listener(lua_State *L, lh_socket *s);
/* Logs "listening on HOST:PORT", which tests and supervisors wait for. */
void lhsock_log_listening(const lh_socket *s);
/* Withholds (or gives back) READ on every listener watched by the host's selector. */
void lhsock_pause_listeners(lua_State *L, lh_sockets *ctx, int paused);
/* Closes every listener. Closing one only clears its own entry, which a traversal
 * allows, so this needs no memory. */
void lhsock_close_listeners(lua_State *L, lh_sockets *ctx);
/* Closes the listeners no load since generation asked for. */
void lhsock_close_unwanted_listeners(lua_State *L, lh_sockets *ctx, int generation);

/* The host is closing: sockets still alive behave as closed from now on. */
void lhsock_release(lua_State *L, lh_sockets *ctx);

#endif
