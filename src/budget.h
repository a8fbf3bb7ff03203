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

/* Where the running callback is, for the stall watchdog (stall.h), which reads it from a
 * signal handler: noted before the callback starts, so the handler only copies it. */
typedef struct lh_where {
    int on;                      /* a stall watchdog reads it: note each callback */
    const char *volatile source; /* the callback's chunk ("@path"), kept alive below */
    volatile int line;           /* where the callback is defined */
    volatile int fd;             /* whose event it was called for; -1: none */
    const void *noted;           /* the function last noted (kept in the registry) */
} lh_where;

typedef struct lh_budget {
    long max_instructions; /* per callback; 0: no budget */
    long used;             /* instructions counted for the running callback */
    lua_State *running;    /* the thread running a callback, for the watchdog */
    const char *what;      /* what runs, for the error: "callback" or "main chunk" */
    volatile sig_atomic_t in_callback;
    volatile sig_atomic_t epoch; /* one more per callback */
    volatile sig_atomic_t armed; /* the counting hook is set */
    int watched;                 /* the watchdog guards this budget */
    int per_wait;                /* the main chunk at start: counted afresh after each wait */
    lh_where where;
} lh_budget;

/* A bracket put aside while the loop runs from inside it (the main chunk calling
 * luahost.step or run). */
typedef struct lh_budget_saved {
    lua_State *running;
    long used;
    const char *what;
    int in_callback, per_wait;
    const char *source;
    int line, fd;
} lh_budget_saved;

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

/* Runs the main chunk (below nargs arguments) as budget_pcall does, as what: "main
 * chunk". With per_wait, the count starts afresh after each wait that may block
 * (sel:select, luahost.step or run), so a client running its own select loop in the
 * main chunk is bounded between waits, not in all; the bracket is then not one callback
 * for the stall watchdog while it waits. */
int budget_pcall_chunk(lua_State *L, lh_budget *b, int nargs, int per_wait);

/* Puts aside the running bracket, if any, while the host loop runs from inside it, and
 * takes it up again (counted afresh if per_wait). Inline: the loop calls them every
 * round, and mostly there is no bracket. */
void budget_put_aside(lh_budget *b, lh_budget_saved *saved);
void budget_take_up(lh_budget *b, const lh_budget_saved *saved);
static inline void budget_suspend(lh_budget *b, lh_budget_saved *saved)
{
    saved->in_callback = b->in_callback;
    if (saved->in_callback)
        budget_put_aside(b, saved);
}

static inline void budget_resume(lh_budget *b, const lh_budget_saved *saved)
{
    if (saved->in_callback)
        budget_take_up(b, saved);
}

/* Around a wait that may block: returns 1 if the running bracket (a main chunk counted
 * per wait) was put aside for it, to pass to budget_wait_end. */
static inline int budget_wait_begin(lh_budget *b)
{
    if (!b || !b->in_callback || !b->per_wait)
        return 0;
    b->in_callback = 0;
    return 1;
}

static inline void budget_wait_end(lh_budget *b, int waited)
{
    if (!waited)
        return;
    b->used = 0;
    b->epoch++;
    b->in_callback = 1;
}

/* Notes where the function at index func is defined, and fd (-1: none), before it runs,
 * for the stall watchdog; nothing when none watches. Allocates nothing. */
void budget_note_where(lh_budget *b, lua_State *L, int func, int fd);
static inline void budget_note(lh_budget *b, lua_State *L, int func, int fd)
{
    if (b->where.on)
        budget_note_where(b, L, func, fd);
}
/* Makes the registry slot budget_note_where keeps the function in, so that noting never
 * allocates; the stall watchdog calls it when it starts. */
void budget_note_init(lh_budget *b, lua_State *L);

/* The watchdog: SIGVTALRM every 50 ms of the process's CPU time, guarding b (one per
 * process: the executable's host). 0 or -errno. */
int budget_start_watchdog(lh_budget *b);
/* Stops it if it guards b: its ticks must never reach a freed budget. */
void budget_stop_watchdog(lh_budget *b);

/* lua_resume(co, L, nargs, nresults) counted as the guarded coroutine.resume counts it:
 * within the budget of the callback running, if one is; raises in L (co dead of it) past
 * the budget. For resumers written in C (luahost.task's). */
int budget_coresume(lua_State *L, lh_budget *b, lua_State *co, int nargs, int *nresults);

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
