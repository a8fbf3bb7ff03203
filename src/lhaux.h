/* lhaux.h: what every Lua binding of luahost shares, as lauxlib is for Lua's own
 * libraries: the error convention, the message handler, module functions with their
 * context, the journal a reload keeps, and the anchor that keeps a host alive while
 * objects point into it. Knows no binding in particular. */
#ifndef LUAHOST_LHAUX_H
#define LUAHOST_LHAUX_H

#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>

#include "log.h"

/* Pushes a system failure: nil, "wouldblock" for -EAGAIN, else nil, "what: message"
 * (or the message alone), errno. Returns the number of results. */
int lh_push_error(lua_State *L, int neg_errno, const char *what);

/* Message handler for lua_pcall: the error, whatever its value, as a string with a
 * traceback, as lua.c does. */
int lh_traceback(lua_State *L);

/* Logs the error message on the stack top as "where: message", then pops it. */
void lh_report_error(lua_State *L, lh_logger *log, const char *where);

/* Sets funcs into the table at index table. Each gets two upvalues: the host userdata
 * at index host (so the host lives as long as its functions) and ctx, the part of it
 * the functions work on, which LH_CTX gives back. */
void lh_setfuncs(lua_State *L, const luaL_Reg *funcs, int table, int host, void *ctx);
#define LH_CTX(L) lua_touserdata((L), lua_upvalueindex(2))

/* Sets funcs into the table at index t, each with the metatable at index mt as upvalue
 * 1: methods recognise their object by comparing its metatable with it (lua_rawequal). */
void lh_set_methods(lua_State *L, const luaL_Reg *funcs, int t, int mt);

/* A host is a full userdata that other objects (sockets, timers, selectors) point into
 * with C pointers. It stays anchored in the registry while it is open and, once closed,
 * until the last of those objects has been collected; then it can be collected too. */
typedef struct lh_anchor {
    int ref;        /* the host in the registry, or LUA_NOREF once let go */
    size_t holders; /* objects alive that point into it */
    int closed;
} lh_anchor;

/* Anchors the userdata at index. */
void lh_anchor_init(lua_State *L, lh_anchor *a, int index);
/* A new object points into the host; it calls lh_anchor_release when collected. */
void lh_anchor_hold(lh_anchor *a);
void lh_anchor_release(lua_State *L, lh_anchor *a);
/* The host is closed: it is let go once nothing points into it. */
void lh_anchor_close(lua_State *L, lh_anchor *a);

/* What a reload records before each change the new script's main chunk makes, so that
 * a failed reload can undo it: kinds of change, with the stack index of the object and
 * one more number. */
enum lh_change {
    LH_MADE_SOCKET,     /* index: a socket made (closed on failure) */
    LH_MADE_LISTENER,   /* index: a socket that became a listener (closed on failure) */
    LH_ASKED_LISTENER,  /* index: a listener asked for again; arg: its generation before */
    LH_MADE_TIMER,      /* index: a timer scheduled (cancelled on failure) */
    LH_CANCELLED_TIMER, /* index: a timer cancelled (scheduled again on failure) */
    LH_CHANGED_KEY,     /* index: a selector; arg: the fd whose registration changes */
    LH_LISTENER_TLS,    /* index: a listener whose TLS context changes (put back on failure) */
};

/* The script's loads, as the bindings below the reload see them: which load runs, and
 * while a new one's main chunk runs, the hook that records its changes. */
typedef struct lh_journal {
    int generation; /* which load of the script runs: 1, then one more per reload */
    int reloading;  /* a new load's main chunk is running */
    void (*record)(void *ud, lua_State *L, int change, int index, int arg);
    void *ud;
} lh_journal;

/* Records a change, if a reload is running. */
static inline void lh_journal_note(const lh_journal *j, lua_State *L, int change, int index,
                                   int arg)
{
    if (j->reloading)
        j->record(j->ud, L, change, index, arg);
}

#endif
