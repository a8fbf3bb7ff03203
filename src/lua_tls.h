/* lua_tls.h: TLS for scripts: luahost.tls_context, listen's and connect's tls option,
 * and the socket methods starttls, handshake and tls_info. */
#ifndef LUAHOST_LUA_TLS_H
#define LUAHOST_LUA_TLS_H

#include "lhaux.h"
#include "lua_socket.h"
#include "lua_timer.h"

/* A host's TLS part: the sockets it gives TLS state to, and the timers that bound their
 * handshakes. */
typedef struct lh_tls {
    lh_sockets *sockets;
    lh_timers *timers;
    int timeouts_ref; /* weak-keyed: socket -> the timer bounding its handshake */
} lh_tls;

/* Sets the sockets' TLS hooks (accepting on a TLS listener, a handshake's readiness, a
 * TLS socket closing). */
void lhtls_init(lua_State *L, lh_tls *ctx, lh_sockets *sockets, lh_timers *timers);
/* Puts tls_context into the module table and wraps its listen and connect (made by
 * lhlisten_open) with their tls option; adds the socket methods. */
void lhtls_open(lua_State *L, int module, int host, lh_tls *ctx);
/* The host is closing (its timers are cancelled): lets go of the timers' table. */
void lhtls_release(lua_State *L, lh_tls *ctx);

#endif
