/* budget.h: script code runs within an instruction budget: a callback past it raises, so
 * a runaway loop costs one connection, not the server. A CPU-time watchdog arms the
 * count only for a callback that has already run a while, so callbacks that return in
 * time pay nothing; coroutines are counted too. */
#ifndef LUAHOST_BUDGET_H
#define LUAHOST_BUDGET_H

#include <lua.h>
#include <signal.h>
#include <stddef.h>

/* Instructions a callback may run before it is aborted, unless --max-instructions says. */
#define LH_DEFAULT_MAX_INSTRUCTIONS 100000000L
/* The budget is counted in steps of this many instructions. */
#define LH_BUDGET_STEP 1000

typedef struct lh_budget {
    long max_instructions; /* per callback; 0: no budget */
    long used;             /* instructions counted for the running callback */
    lua_State *running;    /* the thread running a callback, for the watchdog */
    volatile sig_atomic_t in_callback;
    volatile sig_atomic_t epoch; /* one more per callback */
    volatile sig_atomic_t armed; /* the counting hook is set */
    int watched;                 /* the watchdog guards this budget */
} lh_budget;

void budget_init(lh_budget *b, long max_instructions);

/* Brackets one callback about to run on L, whether it returns or raises. Under the
 * watchdog the count starts once a callback has run for a tick; without it (luahost.so
 * in another program) every instruction is counted, which is exact but slower. */
static inline void budget_begin(lh_budget *b, lua_State *L);
static inline void budget_end(lh_budget *b, lua_State *L);
/* Sets the counting hook on L now (budget_begin does, for a budget no watchdog guards). */
void budget_arm(lh_budget *b, lua_State *L);

/* Calls the function below nargs arguments in protected mode with lh_traceback as the
 * message handler, within the budget, as lua_pcall does (results or the error message
 * are left on the stack). */
int budget_pcall(lua_State *L, lh_budget *b, int nargs, int nresults);

/* The watchdog: SIGVTALRM every 50 ms of the process's CPU time, guarding b (one per
 * process: the executable's host). 0 or -errno. */
int budget_start_watchdog(lh_budget *b);
/* Stops it if it guards b: its ticks must never reach a freed budget. */
void budget_stop_watchdog(lh_budget *b);

/* --max-memory: the Lua state's allocator counts what it holds and refuses past the
 * limit, so a callback that allocates too much gets a memory error, not the host. */
typedef struct lh_memory {
    size_t used;
    size_t limit; /* 0: none */
} lh_memory;

/* A lua_Alloc over malloc within the lh_memory given as ud. */
void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* Replaces coroutine.resume and coroutine.wrap so that a runaway loop inside a coroutine
 * is caught like any other (hooks are per thread). */
void budget_guard_coroutines(lua_State *L, lh_budget *b);

/* Inline: dispatch brackets every callback with them. */
static inline void budget_begin(lh_budget *b, lua_State *L)
{
    b->used = 0;
    b->running = L;
    *(lh_budget **)lua_getextraspace(L) = b; /* the hook has only L */
    b->epoch++;
    b->in_callback = 1;
    if (b->max_instructions > 0 && !b->watched)
        budget_arm(b, L);
}

static inline void budget_end(lh_budget *b, lua_State *L)
{
    b->in_callback = 0;
    if (b->armed) {
        lua_sethook(L, NULL, 0, 0);
        b->armed = 0;
    }
}

#endif
