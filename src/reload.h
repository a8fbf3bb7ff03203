/* reload.h: swapping the script while the server runs. The new main chunk runs with
 * every change it makes journaled; if it fails, the journal is rolled back and the old
 * script keeps serving. If it succeeds, the old script's on_reload callbacks run, the
 * listeners it no longer asks for close, and the keys it did not take over are handed
 * to luahost.adopt. */
#ifndef LUAHOST_RELOAD_H
#define LUAHOST_RELOAD_H

#include "lhaux.h"
#include "lua_selector.h"
#include "lua_socket.h"
#include "lua_timer.h"

typedef struct lh_reload {
    lh_journal journal; /* what the bindings below see of the loads; record is ours */
    lh_selectors *selectors;
    lh_sockets *sockets;
    lh_timers *timers;
    lh_budget *budget; /* the new chunk, on_reload and adopt run within it */
    lh_logger *log;
    const int *stopping; /* set by the loop: luahost.stop() was called */
    int journal_ref;     /* while reloading: what the new script changed, to roll back */
    int on_reload_ref;   /* the running script's on_reload callbacks */
    int module_ref;      /* the module table, where a script sets luahost.adopt */
    int script_ref;      /* {path =, args =, env =}: what a reload loads, and how */
    int requested;       /* SIGHUP or --watch asked for a reload after this round */
} lh_reload;

void lhreload_init(lua_State *L, lh_reload *r, lh_selectors *selectors, lh_sockets *sockets,
                   lh_timers *timers, lh_budget *budget, lh_logger *log);
/* Puts reload, generation and on_reload into the module table (at index module, which
 * the reload keeps for luahost.adopt); host is the host userdata's index. */
void lhreload_open(lua_State *L, int module, int host, lh_reload *r);
/* The script a reload loads: the table at index, {path =, args = {...}, env =} (env: the
 * table its chunks run in, nil for the globals). */
void lhreload_set_script(lua_State *L, lh_reload *r, int index);

/* Loads path as the new script. Pushes true, or nil and the error (logged) when it
 * failed to compile or raised (running past the budget or out of memory included), in
 * which case everything is as it was; returns the number of results. With guarded (the
 * reloads SIGHUP and --watch ask for), a load that registers nothing, makes no timer and
 * asks for no listener is refused too, unless it calls luahost.stop(): an empty or half-written
 * file must not stop the server. All the memory the reload needs outside the new chunk is allocated
 * before anything changes, and neither rollback nor commit allocates, so running out of
 * memory cannot leave it half done. */
int lhreload_run(lua_State *L, lh_reload *r, const char *path, int guarded);
/* Runs the reload that SIGHUP or --watch asked for, if any. */
void lhreload_if_requested(lua_State *L, lh_reload *r);

/* The host is closing: lets go of the script's tables and callbacks. */
void lhreload_release(lua_State *L, lh_reload *r);

#endif
