/* lua_task_core.h: the state of luahost.task (lua/luahost/task.lua) that a message's
 * path reads and writes, in C fields: a stream's core, a task's core and the module's
 * state, each a userdata whose user values hold the Lua values its pointers point to.
 * task.lua reaches the same state by integer keys (core[TC_BUF]), so there is one copy
 * of it, and a script that reaches a core can give it only values of each field's type. */
#ifndef LUAHOST_LUA_TASK_CORE_H
#define LUAHOST_LUA_TASK_CORE_H

#include "lua_socket.h"

#define LH_TASK_CORE  "luahost.task.core"
#define LH_TASK_TCORE "luahost.task.taskcore"
#define LH_TASK_STATE "luahost.task.state"

/* The keys task.lua reads and writes a stream's core by. */
enum {
    TC_SOCK = 1, /* read only: the socket it was made for */
    TC_BUF,      /* what was read and not yet taken: a string */
    TC_READER,   /* the task waiting to read (accept, connect), or false */
    TC_DRAINER,  /* the task waiting in send for output to drain, or false */
    TC_DRAINED,  /* the last read left nothing: wait before reading */
    TC_EVENTS,   /* what its key is registered for, or false */
    TC_TIMEOUT,  /* seconds, or false */
    TC_DISCARDING,
    TC_HIGH, /* the high water of its output */
};

/* The keys of a task's core. */
enum {
    TT_CO = 1, /* its coroutine, or false once it ended */
    TT_STREAM, /* the stream it waits on, or false */
    TT_SLOT,   /* TC_READER or TC_DRAINER: where that stream's core holds it */
    TT_TIMER,  /* the timer of its wait, or false */
    TT_CANCELLING,
};

#define TT_HAS_TIMER 2 /* a task core's timer is a luahost.timer */

/* The key of the module's state. */
enum { TS_CURRENT = 1 /* the task running now, or false */ };

/* A stream's core's user values. */
enum { TCU_SOCK = 1, TCU_BUF, TCU_READER, TCU_DRAINER, TCU_STATE, TCU_COUNT = TCU_STATE };
/* A task's core's. */
enum { TTU_SELF = 1, TTU_CO, TTU_STREAM, TTU_TIMER, TTU_COUNT = TTU_TIMER };

typedef struct lh_task_tcore {
    lua_State *co;       /* the coroutine a user value holds, or NULL */
    const void *stream;  /* the stream a user value holds (lua_topointer), or NULL */
    int slot;            /* with stream */
    unsigned char timer; /* a user value holds its timer: TT_HAS_TIMER, or another value */
    unsigned char cancelling;
} lh_task_tcore;

typedef struct lh_task_state lh_task_state;

typedef struct lh_task_core {
    lh_socket *sock;      /* the socket its user value holds: set once, when made */
    const void *stream;   /* the stream its paths were made for, which they hold */
    lh_task_state *state; /* the module\'s state, which a user value holds */
    lh_task_tcore *held;  /* the task core a user value holds: the reader's, or the last */
    size_t buffered;      /* the buffer's length */
    lua_Number timeout;   /* with has_timeout */
    lua_Integer high;     /* the high water */
    lua_Integer events;   /* 0: not registered */
    unsigned char waits;  /* the task held waits to read */
    unsigned char has_timeout, drained, discarding;
} lh_task_core;

struct lh_task_state {
    lh_budget *budget;      /* each resume counts against it; a user value holds its host */
    lh_task_tcore *held;    /* the task core its user value holds: the current, or the last */
    lh_task_tcore *current; /* held, or NULL */
};

/* Make the metatables (once per Lua state, the task core's first), leaving each on the
 * stack. */
void lhtc_metatable(lua_State *L);
void lhtt_metatable(lua_State *L);
void lhts_metatable(lua_State *L);
/* Makes metatable name (once per Lua state; leaves it pushed) with __index and
 * __newindex, each holding it and the task core's metatable as upvalues 1 and 2. */
void lhtask_metatable(lua_State *L, const char *name, lua_CFunction index, lua_CFunction newindex);
/* In such a metamethod: the userdata at index if its metatable is upvalue mt, else a
 * type error naming name. Cheaper than luaL_checkudata, which looks the name up. */
void *lhtask_check(lua_State *L, int index, int mt, const char *name);

/* Pushes a new core for the socket at index sock (checked by the socket metatable at
 * index mt, raising if it is not one), of the module whose state is at index state. */
lh_task_core *lhtc_push(lua_State *L, int sock, int mt, int state);
/* Sets c's buffer (at index core) to the string on the stack's top, popping it. */
void lhtc_set_buffer(lua_State *L, lh_task_core *c, int core, size_t len);
/* Makes the task core at index tcore (whose pointer is t) the one c (at index core)
 * holds: a reader's. */
void lhtc_hold(lua_State *L, lh_task_core *c, int core, int tcore, lh_task_tcore *t);

/* Makes the core of the task at index task (a table), its coroutine being the thread at
 * index co, and puts it at the task's slot 1. */
lh_task_tcore *lhtt_push(lua_State *L, int task, int co);
/* In a metamethod of lhtask_metatable: the task core of the task (a table) at index
 * task, pushed; raises if it has none. */
lh_task_tcore *lhtt_of(lua_State *L, int task);
/* Pushes the task whose core is at index tcore. */
void lhtt_push_task(lua_State *L, int tcore);
/* Records that the task core t (at index tcore) waits on the stream at index stream. */
void lhtt_wait_on(lua_State *L, lh_task_tcore *t, int tcore, int stream, int slot);

/* Pushes a new state (no task current) for the host at index host, whose budget is b. */
lh_task_state *lhts_push(lua_State *L, int host, lh_budget *b);
/* Makes the task core t (at index tcore) current in s (at index state). */
void lhts_set_current(lua_State *L, lh_task_state *s, int state, int tcore, lh_task_tcore *t);

#endif
